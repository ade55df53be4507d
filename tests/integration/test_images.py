"""The guest image stages with the real tools: reproducibility, content changes,
the initramfs's contents, verity's own check, base image, bad input.

Fixtures (tests/conftest.py, "Guest image fixtures"): the local profile's base
root is built once with mmdebstrap and cached; every build here runs the real
graph (`doit measure profile=local`) in its own build dir with the default (trixie)
kernel, a test content tree and the AmdSev OVMF vector as firmware.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import BuildError, DownloadError
from hbos.stages import initramfs, rootfs, verity
from hbos.util.fsutil import sha256_file
from tests.conftest import TEST_MARKER, build_guest, write_overlay, write_test_content

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _artifacts(guest) -> dict[str, str]:
    p = guest.paths
    return {name: sha256_file(path) for name, path in (
        ("initramfs", p.initramfs), ("guest.img", p.verity_image),
        ("hash_tree.bin", p.hash_tree), ("roothash.txt", p.roothash),
        ("vmlinuz", p.vmlinuz), ("rootfs.tar", p.base_rootfs))}


@pytest.fixture(scope="module")
def guest_b(base_rootfs_cache, kernel_deb, amdsev_ovmf, tmp_path_factory):
    """A second, independent build from the same config (own dirs, own content copy)."""
    root = tmp_path_factory.mktemp("guest-b")
    content = write_test_content(root / "content-src")
    return build_guest(root / "guest", base_cache=base_rootfs_cache, kernel_deb=kernel_deb,
                       ovmf=amdsev_ovmf, content=content)


# -------------------------------------------------------------- reproducible


def test_two_clean_builds_are_bit_identical(guest_build, guest_b):
    assert guest_build.paths.build != guest_b.paths.build
    a, b = _artifacts(guest_build), _artifacts(guest_b)
    assert a == b
    ma, mb = guest_build.measurement, guest_b.measurement
    assert ma["expected_hash"] and len(ma["expected_hash"]) == 96
    assert ma["expected_hash"] == mb["expected_hash"]


def test_roothash_reaches_cmdline_and_measurement(guest_build):
    vm_config = guest_build.paths.vm_config.read_text()
    assert f"verity_roothash={guest_build.roothash}" in vm_config
    assert "boot=verity verity_disk=/dev/vda verity_hashtree=/dev/vdb" in vm_config
    assert guest_build.roothash in guest_build.paths.measurement.read_text()


def test_noop_then_content_change_rebuilds_only_downstream(guest_b):
    noop = guest_b.doit("measure")
    for task in ("initramfs", "base_rootfs", "verity", "vm_config", "measure"):
        assert f"-- {task}" in noop.stdout, noop.stdout
    before = _artifacts(guest_b)
    before_measure = guest_b.measurement["expected_hash"]
    stamps = {k: p.stat().st_mtime_ns for k, p in (
        ("initramfs", guest_b.paths.initramfs), ("vmlinuz", guest_b.paths.vmlinuz),
        ("rootfs.tar", guest_b.paths.base_rootfs))}

    src = Path(guest_b.cfg.content.path) / "opt" / "hbos-test" / "www" / "index.html"
    src.write_text(f"{TEST_MARKER} changed\n")
    run = guest_b.doit("measure")
    for task in ("content", "verity", "vm_config", "measure"):
        assert f".  {task}" in run.stdout, run.stdout
    for task in ("initramfs", "base_rootfs", "kernel"):
        assert f"-- {task}" in run.stdout, run.stdout
    after = _artifacts(guest_b)
    for changed in ("guest.img", "hash_tree.bin", "roothash.txt"):
        assert after[changed] != before[changed], changed
    for same in ("initramfs", "vmlinuz", "rootfs.tar"):
        assert after[same] == before[same], same
    assert guest_b.measurement["expected_hash"] != before_measure
    assert {k: p.stat().st_mtime_ns for k, p in (
        ("initramfs", guest_b.paths.initramfs), ("vmlinuz", guest_b.paths.vmlinuz),
        ("rootfs.tar", guest_b.paths.base_rootfs))} == stamps


# ---------------------------------------------------------------- initramfs


def _newc_members(data: bytes) -> list[dict]:
    """Parse a newc cpio archive: name, mode, uid, gid, mtime, ino per member."""
    out, off = [], 0
    while True:
        hdr = data[off:off + 110]
        assert hdr[:6] == b"070701", f"not newc at {off}"
        f = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, _nlink, mtime, size, *_rest, namesize, _check = f
        name = data[off + 110:off + 110 + namesize - 1].decode()
        off = (off + 110 + namesize + 3) & ~3
        off = (off + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append({"name": name, "mode": mode, "uid": uid, "gid": gid, "mtime": mtime,
                    "ino": ino})


def test_initramfs_contents(guest_build):
    members = _newc_members(gzip.decompress(guest_build.initrd.read_bytes()))
    names = [m["name"] for m in members]
    assert names == sorted(names, key=str.encode)
    epoch = guest_build.cfg.source_date_epoch
    assert all(m["mtime"] == epoch and m["uid"] == 0 and m["gid"] == 0 for m in members)
    assert [m["ino"] for m in members] == sorted(m["ino"] for m in members)  # renumbered
    for required in ("init", "bin/busybox", "sbin/veritysetup", "lib64/ld-linux-x86-64.so.2"):
        assert required in names
    for lib in initramfs.shared_libraries("/usr/sbin/veritysetup"):
        assert str(lib).lstrip("/") in names, lib
    kos = {Path(n).name for n in names if n.endswith(".ko")}
    import json
    record = json.loads(guest_build.paths.initramfs_manifest.read_text())
    builtin = {m.replace("-", "_") + ".ko" for m in record["builtin_modules"]}
    for mod in ("virtio_pci.ko", "virtio_blk.ko", "virtio_scsi.ko", "sd_mod.ko",
                "virtio_net.ko", "dm-verity.ko", "dm-mod.ko", "erofs.ko", "overlay.ko",
                "net_failover.ko"):
        # trixie's 6.12 builds virtio_pci (and virtio_ring) into the kernel
        assert mod in kos or mod.replace("-", "_") in builtin, mod
    # the default (trixie) kernel has sev-guest: packed decompressed (busybox insmod)
    assert "sev-guest.ko" in kos and not [n for n in names if n.endswith(".ko.xz")]


# ------------------------------------------------------------------ verity


def test_verity_verify_detects_a_flipped_byte(guest_build, tmp_path):
    image = tmp_path / "guest.img"
    shutil.copyfile(guest_build.image, image)
    ok = subprocess.run(["veritysetup", "verify", image, guest_build.hash_tree,
                         guest_build.roothash], capture_output=True)
    assert ok.returncode == 0
    with open(image, "r+b") as fh:
        fh.seek(8192 + 100)
        byte = fh.read(1)
        fh.seek(8192 + 100)
        fh.write(bytes([byte[0] ^ 0x01]))
    bad = subprocess.run(["veritysetup", "verify", image, guest_build.hash_tree,
                          guest_build.roothash], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "verification failed at position 8192" in (bad.stdout + bad.stderr).lower()


def test_verity_manifest_records_salt_from_inputs(guest_build):
    import json
    record = json.loads(guest_build.paths.verity_manifest.read_text())
    assert record["roothash"] == guest_build.roothash
    assert verity.derive_ids(record["inputs"])["salt"] == record["salt"]
    dump = subprocess.run(["veritysetup", "dump", guest_build.hash_tree],
                          capture_output=True, text=True, check=True).stdout
    assert record["salt"] in dump and record["verity_uuid"] in dump
    assert guest_build.image.stat().st_size % 4096 == 0


def rebuild_image_with(guest_build, tmp_path, name: str, extra: str):
    """The session guest's verity image rebuilt with `extra` config, in a build
    dir of its own that reuses the built kernel and base root (symlinked)."""
    from hbos.paths import Paths
    overlay = write_overlay(tmp_path / f"{name}.yaml", guest_build.overlay.read_text() + extra)
    cfg = hconfig.load(profile="local", overlay=overlay)
    paths = Paths(tmp_path / f"{name}-build")
    paths.build.mkdir()
    paths.kernel_dir.symlink_to(guest_build.paths.kernel_dir)
    paths.base_dir.mkdir()
    for f in (guest_build.paths.base_rootfs, guest_build.paths.base_rootfs_manifest):
        (paths.base_dir / f.name).symlink_to(f)
    roothash = verity.build(cfg, paths, guest_build.paths.content_tree,
                            guest_build.paths.content_manifest)
    return cfg, paths, roothash


def test_ext4_root_uses_4k_blocks_and_verifies(guest_build, tmp_path):
    cfg, paths, roothash = rebuild_image_with(guest_build, tmp_path, "ext4",
                                              "image: {filesystem: ext4}\n")
    image = paths.verity_image
    with open(image, "rb") as fh:
        fh.seek(1024 + 24)   # ext4 superblock s_log_block_size: block = 1024 << n
        log_block = int.from_bytes(fh.read(4), "little")
        fh.seek(1024 + 56)
        magic = int.from_bytes(fh.read(2), "little")
    assert magic == 0xEF53 and (1024 << log_block) == 4096
    assert roothash != guest_build.roothash
    subprocess.run(["veritysetup", "verify", image, paths.hash_tree, roothash], check=True)
    # a consistent filesystem (link counts of the hard-link-cloned tree included)
    subprocess.run(["e2fsck", "-f", "-n", image], check=True, capture_output=True)


# ------------------------------------------------------------- base image


def test_base_image_is_a_qcow2_ext4(guest_build):
    proc = guest_build.doit("base_image")
    assert proc.returncode == 0
    info = subprocess.run(["qemu-img", "info", "--output=json", guest_build.paths.base_image],
                          capture_output=True, text=True, check=True).stdout
    assert '"format": "qcow2"' in info


# -------------------------------------------------------------- bad input


def test_unreachable_mirror_names_the_url(tmp_path):
    overlay = write_overlay(tmp_path / "o.yaml", f"build_dir: {tmp_path}\n"
                            "rootfs: {mirror: 'http://127.0.0.1:9/debian'}\n")
    cfg = hconfig.load(overlay=overlay)
    with pytest.raises(DownloadError, match=r"http://127\.0\.0\.1:9/debian/dists/trixie/Release"):
        rootfs.check_mirror(cfg, timeout=5)


def test_content_with_a_fifo_is_refused_with_its_path(guest_build, tmp_path):
    import os
    tree = write_test_content(tmp_path / "content")
    os.mkfifo(tree / "opt" / "hbos-test" / "pipe")
    with pytest.raises(BuildError, match="opt/hbos-test/pipe"):
        verity.build(guest_build.cfg, guest_build.paths, tree, tmp_path / "none.json")


def test_zstd_initramfs_is_reproducible(guest_build, tmp_path):
    from hbos.paths import Paths
    overlay = write_overlay(tmp_path / "zstd.yaml", guest_build.overlay.read_text()
                            + "initramfs: {compression: zstd}\n")
    cfg = hconfig.load(profile="local", overlay=overlay)
    digests = []
    for name in ("a", "b"):
        paths = Paths(tmp_path / name, initramfs_compression="zstd")
        paths.build.mkdir()
        paths.kernel_dir.symlink_to(guest_build.paths.kernel_dir)
        initramfs.build(cfg, paths)
        assert paths.initramfs.name == "initramfs.cpio.zst"
        subprocess.run(["zstd", "-t", "-q", paths.initramfs], check=True)
        digests.append(sha256_file(paths.initramfs))
    assert digests[0] == digests[1]


def test_debug_image_differs_and_says_so(guest_build, tmp_path):
    from hbos.stages import vmconfig
    cfg, paths, roothash = rebuild_image_with(guest_build, tmp_path, "debug", "debug: true\n")
    assert roothash != guest_build.roothash
    assert "hbos.debug=1" in vmconfig.kernel_cmdline(cfg, roothash)
    assert "hbos.debug=1" not in guest_build.cmdline
    assert b"--autologin root" in paths.verity_image.read_bytes()
    assert b"--autologin root" not in guest_build.image.read_bytes()
