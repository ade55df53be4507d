"""Reproducible anywhere (issue 16 item 12): a clean build under another environment
gives bit-identical artifacts.

Build A is the session's guest_build (tests/conftest.py: the runner's own
environment). Build B runs the same `doit measure profile=local` in another,
deeper build directory under every variation tests/support/reprotest.py applies (umask,
a later date through faketime, TZ, locale, hostname and domainname, HOME/USER,
PATH, kernel personality, ASLR, one CPU, and the content source read through
a disorderfs mount that shuffles directory entries). Same base root (the cached
mmdebstrap tarball, linked as in every image test), same kernel .deb, same
AmdSev OVMF vector. The firmware's own two-build check under the same
variations is test_firmware.py::test_firmware_is_reproducible_under_variations.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator

import pytest

from hbos.util.fsutil import sha256_file
from tests.conftest import GuestBuild, link_base_rootfs, missing_prerequisite, write_test_content
from tests.support import reprotest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def artifacts(guest: GuestBuild) -> dict[str, str]:
    """Every artifact a verifier rebuilds, by sha256, and the launch digest."""
    p = guest.paths
    out = {name: sha256_file(path) for name, path in (
        ("vmlinuz", p.vmlinuz), ("initramfs", p.initramfs), ("guest.img", p.verity_image),
        ("hash_tree.bin", p.hash_tree), ("roothash.txt", p.roothash),
        ("rootfs.tar", p.base_rootfs))}
    out["launch digest"] = guest.measurement["expected_hash"]
    out["verity.json salt/uuids"] = json.dumps(
        {k: json.loads(p.verity_manifest.read_text())[k]
         for k in ("roothash", "salt", "verity_uuid", "fs_uuid")}, sort_keys=True)
    return out


@pytest.fixture(scope="module")
def varied_guest(base_rootfs_cache, kernel_deb, amdsev_ovmf, tmp_path_factory
                 ) -> Iterator[GuestBuild]:
    missing = reprotest.missing_tools()
    if missing:
        missing_prerequisite(f"reprotest variations need {missing} (faketime: Debian "
                             f"package faketime; disorderfs: disorderfs and fuse; the rest "
                             f"util-linux and hostname)")
    if not reprotest.can_unshare_uts():
        missing_prerequisite("`unshare --uts` is not permitted (needs root)")
    root = tmp_path_factory.mktemp("reprotest") / "build B" / "deeper path"
    with contextlib.ExitStack() as stack:
        try:
            mnt = stack.enter_context(reprotest.disordered(root / "content"))
        except subprocess.CalledProcessError as exc:
            missing_prerequisite(f"cannot mount disorderfs (FUSE): {exc.stderr!r}")
        v = reprotest.variation(root)
        content = write_test_content(mnt / "content src")
        overlay = reprotest.build_overlay(root / "guest", kernel_deb=kernel_deb,
                                          ovmf=amdsev_ovmf, content=content)
        guest = GuestBuild(root / "guest", overlay)
        link_base_rootfs(base_rootfs_cache, guest.paths)
        reprotest.varied_doit(v, ["measure", "profile=local", f"config={overlay}"])
        yield guest


def test_guest_is_bit_identical_under_variations(guest_build, varied_guest):
    assert guest_build.paths.build != varied_guest.paths.build
    a, b = artifacts(guest_build), artifacts(varied_guest)
    assert len(a["launch digest"]) == 96
    differ = sorted(k for k in a if a[k] != b[k])
    assert not differ, f"differ under variations: {differ}\nA: {a}\nB: {b}"
