"""init's host-tool check: each missing program named with its Debian package."""

from __future__ import annotations

import pytest

from hbos import config as hconfig
from hbos.errors import ToolMissing
from hbos.stages import hosttools
from hbos.util import tools


def test_needed_follows_the_config():
    base = hosttools.needed(hconfig.load())
    # default: stock trixie kernel via apt, firmware built from source
    assert "docker" in base and "mkfs.erofs" in base and "nasm" in base and "apt-get" in base
    local = hosttools.needed(hconfig.load(profile="local"))
    assert "docker" not in local and "apt-get" in local and "nasm" in local


def test_missing_tools_name_their_packages(monkeypatch, capsys):
    present = {"dpkg-deb", "depmod", "modprobe", "cpio", "gzip", "busybox", "mmdebstrap",
               "mkfs.ext4", "qemu-img", "tar", "docker", "mkfs.erofs", "apt-get",
               *hosttools.FIRMWARE_BUILD}
    monkeypatch.setattr(tools, "find", lambda p: f"/usr/bin/{p}" if p in present else None)
    with pytest.raises(ToolMissing) as exc:
        hosttools.check(hconfig.load())
    err = capsys.readouterr().err
    assert "missing veritysetup" in err and "(Debian package: cryptsetup-bin)" in err
    assert "missing qemu-system-x86_64" in err and "(Debian package: qemu-system-x86)" in err
    assert str(exc.value).startswith("2 host tool(s) missing")
    assert "apt-get install cryptsetup-bin qemu-system-x86" in str(exc.value)


def test_install_runs_apt_get_for_exactly_the_missing_packages(monkeypatch):
    monkeypatch.setattr(tools, "find", lambda p: None if p == "veritysetup" else f"/bin/{p}")
    calls = []
    monkeypatch.setattr(hosttools.run, "run", lambda argv, **kw: calls.append(list(argv)))
    hosttools.check(hconfig.load(), install=True)
    assert calls == [["apt-get", "install", "-y", "--no-install-recommends", "cryptsetup-bin"]]


def test_require_names_the_package():
    with pytest.raises(ToolMissing) as exc:
        tools.require("definitely-not-a-program-hbos")
    assert "install it with: apt-get install definitely-not-a-program-hbos" in str(exc.value)


def test_every_listed_program_names_its_debian_package():
    programs = set(hosttools.BASE) | set(hosttools.FIRMWARE_BUILD) \
        | {"apt-get", "mkfs.erofs", "zstd", "docker"}
    assert programs <= set(tools.PACKAGES), programs - set(tools.PACKAGES)
