"""setup_host with the real dpkg, into a fake root (`dpkg --root=DIR -i`).

The SNP bundle's host kernel .deb is built here with the real dpkg-deb (its
control.tar is xz-compressed, as real kernel packages are); setup_host then
runs its real command line. Nothing outside tmp_path changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hbos.host import setup, system
from tests.conftest import missing_prerequisite

pytestmark = [pytest.mark.integration]

KVER = "9.9.9-snp-host-test"


def build_deb(tmp: Path, out_dir: Path) -> Path:
    pkg = tmp / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "boot").mkdir()
    (pkg / "DEBIAN/control").write_text(
        f"Package: linux-image-{KVER}\nVersion: 9.9.9-1\nArchitecture: amd64\n"
        "Maintainer: test <test@example.org>\nDescription: test kernel\n")
    (pkg / f"boot/vmlinuz-{KVER}").write_bytes(b"not a kernel")
    out_dir.mkdir(parents=True)
    # no name_version_arch file name: package and version must come from control.tar.xz
    deb = out_dir / f"linux-image-{KVER}.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)],
                   check=True, capture_output=True)
    return deb


def test_real_dpkg_into_fake_root(tmp_path, capsys):
    if shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None:
        missing_prerequisite("dpkg/dpkg-deb not installed")
    if os.geteuid() != 0:  # CI runs as root; a developer's unprivileged run cannot
        pytest.skip("dpkg --root -i needs root")
    release = tmp_path / "snp-release"
    build_deb(tmp_path, release / "linux/host")
    (release / "usr/local/bin").mkdir(parents=True)
    (release / "usr/local/bin/qemu-system-x86_64").write_text("#!/bin/sh\n")
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc", "proc/sys/kernel"):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    (root / "var/lib/dpkg/available").write_text("")
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (root / "proc/sys/kernel/osrelease").write_text("6.1.0-27-amd64\n")

    plan = setup.setup_bundle(release, root, yes=True, euid=0, log=tmp_path / "setup.log")
    assert [d.package for d in plan.install] == [f"linux-image-{KVER}"]
    assert (root / f"boot/vmlinuz-{KVER}").read_bytes() == b"not a kernel"
    assert system.installed_packages(root)[f"linux-image-{KVER}"] == "9.9.9-1"
    assert (root / "usr/local/bin/qemu-system-x86_64").is_file()
    assert f"reboot into the SNP host kernel {KVER}" in capsys.readouterr().out

    again = setup.setup_bundle(release, root, yes=True, euid=0, log=tmp_path / "setup.log")
    assert again.empty
    assert "nothing to do" in capsys.readouterr().out
