"""Unit tests for hbos.stages.initramfs: command lines, parsers, the rendered /init."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import BuildError
from hbos.paths import Paths
from hbos.stages import initramfs


def _cfg(tmp_path: Path, text: str = "") -> hconfig.Config:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\n" + text)
    return hconfig.load(overlay=overlay)


SHOW_DEPENDS = """\
insmod /k/lib/modules/6.1.0-x/kernel/drivers/virtio/virtio_ring.ko 
insmod /k/lib/modules/6.1.0-x/kernel/drivers/virtio/virtio.ko 
insmod /k/lib/modules/6.1.0-x/kernel/drivers/block/virtio_blk.ko queue_depth=64
builtin ext4
"""

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd0b5f2000)
\tlibcryptsetup.so.12 => /lib/x86_64-linux-gnu/libcryptsetup.so.12 (0x00007f8addad5000)
\tlibpopt.so.0 => /lib/x86_64-linux-gnu/libpopt.so.0 (0x00007f8addac6000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f8addb7c000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f8add88d000)
"""


def test_show_depends_argv():
    assert initramfs.show_depends_argv(Path("/k"), "6.1.0-x", "dm-verity") == [
        "modprobe", "-d", "/k", "-S", "6.1.0-x", "--show-depends", "dm-verity"]


def test_parse_show_depends_keeps_order_and_drops_parameters():
    assert initramfs.parse_show_depends(SHOW_DEPENDS) == [
        ("insmod", "/k/lib/modules/6.1.0-x/kernel/drivers/virtio/virtio_ring.ko"),
        ("insmod", "/k/lib/modules/6.1.0-x/kernel/drivers/virtio/virtio.ko"),
        ("insmod", "/k/lib/modules/6.1.0-x/kernel/drivers/block/virtio_blk.ko"),
        ("builtin", "ext4"),
    ]


def test_parse_show_depends_keeps_spaces_in_the_build_path():
    """A build directory may hold spaces (issue 16 item 12: any build path)."""
    text = ("insmod /b dir/k/lib/modules/6.1/kernel/virtio.ko.xz \n"
            "insmod /b dir/k/lib/modules/6.1/kernel/x y.ko opt=1\nbuiltin ext4\n")
    assert initramfs.parse_show_depends(text) == [
        ("insmod", "/b dir/k/lib/modules/6.1/kernel/virtio.ko.xz"),
        ("insmod", "/b dir/k/lib/modules/6.1/kernel/x y.ko"), ("builtin", "ext4")]


def test_parse_ldd_resolves_files_and_loader_skips_vdso():
    assert initramfs.parse_ldd(LDD) == [
        Path("/lib/x86_64-linux-gnu/libcryptsetup.so.12"),
        Path("/lib/x86_64-linux-gnu/libpopt.so.0"),
        Path("/lib64/ld-linux-x86-64.so.2"),
        Path("/lib/x86_64-linux-gnu/libc.so.6"),
    ]


def test_parse_ldd_missing_library_is_an_error():
    with pytest.raises(BuildError, match="libjson-c.so.5"):
        initramfs.parse_ldd("\tlibjson-c.so.5 => not found\n")


def test_cpio_argv_is_reproducible_newc():
    argv = initramfs.cpio_argv(Path("/b/x.cpio"))
    assert argv == ["cpio", "--create", "--null", "--format=newc", "--reproducible",
                    "--owner=0:0", "--quiet", "-O", "/b/x.cpio"]


def test_compress_argv_stores_no_name_or_time():
    assert initramfs.compress_argv("gzip", Path("/b/x.cpio"), Path("/b/out")) == [
        "gzip", "-n", "-9", "-f", "/b/x.cpio"]
    assert initramfs.compress_argv("zstd", Path("/b/x.cpio"), Path("/b/out")) == [
        "zstd", "-q", "-19", "-T1", "--no-progress", "-f", "-o", "/b/out", "/b/x.cpio"]


def test_boot_modules_follow_filesystem_and_extras(tmp_path):
    mods = initramfs.boot_modules(_cfg(tmp_path))
    assert mods[: len(initramfs.BOOT_MODULES)] == list(initramfs.BOOT_MODULES)
    assert "erofs" in mods and "ext4" in mods   # ext4: the debug disk (base_image)
    ext4 = initramfs.boot_modules(_cfg(tmp_path, "image: {filesystem: ext4}\n"
                                                 "initramfs: {extra_modules: [vsock, virtio_blk]}\n"))
    assert "ext4" in ext4 and "erofs" not in ext4 and ext4.count("ext4") == 1
    assert ext4.count("virtio_blk") == 1 and ext4[-1] == "vsock"


def test_initramfs_name_follows_compression(tmp_path):
    assert Paths.from_config(_cfg(tmp_path)).initramfs.name == "initramfs.cpio.gz"
    zstd = Paths.from_config(_cfg(tmp_path, "initramfs: {compression: zstd}\n"))
    assert zstd.initramfs.name == "initramfs.cpio.zst"


def _init(tmp_path, text="") -> str:
    return initramfs.render_init(_cfg(tmp_path, text),
                                 ["lib/modules/v/a.ko", "lib/modules/v/b.ko"], "v")


def test_init_loads_modules_in_order_and_parses(tmp_path):
    text = _init(tmp_path)
    a, b = text.index("/lib/modules/v/a.ko"), text.index("/lib/modules/v/b.ko")
    assert a < b
    script = tmp_path / "init"
    script.write_text(text)
    subprocess.run(["sh", "-n", str(script)], check=True)  # POSIX syntax


def test_init_defaults_and_arguments(tmp_path):
    text = _init(tmp_path)
    assert "BOOT=verity\n" in text and "FSTYPE=erofs\n" in text
    for arg in ("verity_disk=*", "verity_hashtree=*", "verity_roothash=*", "boot=*",
                "root=*", "hbos.debug=1"):
        assert f"{arg})" in text
    assert "FSTYPE=ext4\n" in _init(tmp_path, "image: {filesystem: ext4}\n")


def test_init_never_drops_to_a_shell_without_debug(tmp_path):
    text = _init(tmp_path)
    fail = text[text.index("fail() {"):text.index("\n}\n", text.index("fail() {"))]
    assert 'if [ "$DEBUG" = 1 ]' in fail and "exec sh" in fail and "poweroff -f" in fail
    # the only shell is inside the debug branch of fail()
    assert text.count("exec sh") == 1
    assert "hbos-init: FATAL:" in fail


def test_init_writable_paths(tmp_path):
    text = _init(tmp_path)
    assert "for d in etc var root home; do" in text
    assert "lowerdir=/newroot/$d,upperdir=$up/upper,workdir=$up/work" in text
    assert "for d in tmp; do" in text and "mount --move /run /newroot/run" in text
    for fs in ("/dev", "/proc", "/sys"):
        assert f"mount --move {fs} /newroot{fs}" in text
    assert 'exec switch_root /newroot "$INIT"' in text


def test_shared_libraries_ignore_what_the_environment_preloads(monkeypatch):
    """ldd lists LD_PRELOAD'd libraries too: a builder's libfaketime or profiler must
    not end up in the initramfs (found by tests/integration/test_reprotest.py)."""
    import shutil
    veritysetup, extra = shutil.which("veritysetup"), Path("/lib/x86_64-linux-gnu/libanl.so.1")
    if veritysetup is None or not extra.is_file() or shutil.which("ldd") is None:
        from tests.conftest import missing_prerequisite
        missing_prerequisite("needs veritysetup, ldd and glibc's libanl.so.1 (x86_64 Debian)")
    clean = initramfs.shared_libraries(veritysetup)
    assert clean and all(p.name != extra.name for p in clean)
    monkeypatch.setenv("LD_PRELOAD", str(extra))
    assert extra.name in subprocess.run(["ldd", veritysetup], capture_output=True,
                                        text=True).stdout      # what ldd alone does
    assert initramfs.shared_libraries(veritysetup) == clean
