"""hbos.host.system: what check_host and both setup_host paths read and share (fake roots only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hbos.errors import HostError
from hbos.host import system


def test_running_kernel_is_read_once_for_all(tmp_path):
    assert system.running_kernel(tmp_path) == ""              # unreadable: empty
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text("6.12.117+deb13-amd64\n")
    assert system.running_kernel(tmp_path) == "6.12.117+deb13-amd64"


def test_kernel_version():
    assert system.kernel_version("6.12.117+deb13-amd64") == (6, 12)
    assert system.kernel_version("6.9.0-rc7-snp-host-05b10142ac6a") == (6, 9)
    assert system.kernel_version("garbage") == (0, 0)
    assert system.kernel_version("6.11.0") >= system.UPSTREAM_SNP_KERNEL > (6, 10)


def test_os_release_falls_back_to_usr_lib(tmp_path):
    assert system.os_release(tmp_path) == {}
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text('ID=debian\nPRETTY_NAME="Debian GNU/Linux 13"\n')
    assert system.os_release(tmp_path) == {"ID": "debian", "PRETTY_NAME": "Debian GNU/Linux 13"}
    assert system.require_debian(tmp_path) == "Debian GNU/Linux 13"


def test_require_debian_refuses_others(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("ID=fedora\n")
    with pytest.raises(HostError, match="Debian and Ubuntu hosts only; this host is fedora"):
        system.require_debian(tmp_path)


def test_installed_packages_only_installed_ones(tmp_path):
    assert system.installed_packages(tmp_path) == {}
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(
        "Package: a\nStatus: install ok installed\nVersion: 1\n\n"
        "Package: b\nStatus: deinstall ok config-files\nVersion: 2\n")
    assert system.installed_packages(Path(tmp_path)) == {"a": "1"}
