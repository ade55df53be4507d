"""Unit tests for hbos.stages.verity and hbos.stages.rootfs: command lines, ids, tree checks."""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import BuildError
from hbos.stages import rootfs, verity
from hbos.util import tree as htree


def _cfg(tmp_path: Path, text: str = "") -> hconfig.Config:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\n" + text)
    return hconfig.load(overlay=overlay)


# ---------------------------------------------------------------- ids


INPUTS = {"base_rootfs_sha256": "a" * 64, "kernel": {"version": "6.1"}, "debug": False}


def test_derive_ids_is_deterministic_and_well_formed():
    ids = verity.derive_ids(INPUTS)
    assert ids == verity.derive_ids(dict(reversed(list(INPUTS.items()))))
    assert re.fullmatch(r"[0-9a-f]{64}", ids["salt"])
    for key in ("verity_uuid", "fs_uuid"):
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                            ids[key])
    assert ids["verity_uuid"] != ids["fs_uuid"]


@pytest.mark.parametrize("change", [{"base_rootfs_sha256": "b" * 64}, {"debug": True},
                                    {"kernel": {"version": "6.2"}}])
def test_derive_ids_changes_with_every_input(change):
    before, after = verity.derive_ids(INPUTS), verity.derive_ids({**INPUTS, **change})
    assert all(before[k] != after[k] for k in before)


# ---------------------------------------------------------- command lines


def test_veritysetup_format_argv():
    assert verity.veritysetup_format_argv(Path("/v/guest.img"), Path("/v/hash_tree.bin"),
                                          "u-u-i-d", "ab" * 32) == [
        "veritysetup", "format", "/v/guest.img", "/v/hash_tree.bin", "--format=1",
        "--hash=sha256", "--data-block-size=4096", "--hash-block-size=4096",
        "--uuid=u-u-i-d", f"--salt={'ab' * 32}"]


def test_veritysetup_verify_argv():
    assert verity.veritysetup_verify_argv(Path("/d"), Path("/h"), "cd" * 32) == [
        "veritysetup", "verify", "/d", "/h", "cd" * 32]


def test_mkfs_erofs_argv_fixes_time_and_uuid():
    assert verity.mkfs_erofs_argv(Path("/t"), Path("/i"), "u", 1704067200) == [
        "mkfs.erofs", "--quiet", "-T1704067200", "-Uu", "/i", "/t"]
    assert verity.mkfs_erofs_argv(Path("/t"), Path("/i"), "u", 1, "lz4hc")[4] == "-zlz4hc"


def test_mkfs_ext4_argv_uses_4k_blocks():
    argv = rootfs.mkfs_ext4_argv(Path("/t"), Path("/i"), "u", 8 << 20)
    assert argv == ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", "/t", "-U", "u",
                    "-E", "hash_seed=u,root_owner=0:0", "-L", "hbos-root", "-m", "0",
                    "/i", "8192k"]


def test_ext4_size_is_block_aligned_with_headroom():
    size = rootfs.ext4_size(100 << 20)
    assert size % 4096 == 0 and size >= (125 << 20) + (64 << 20)


def test_parse_root_hash():
    out = "VERITY header information for x\nSalt:  ab\nRoot hash:      " + "0f" * 32 + "\n"
    assert verity.parse_root_hash(out) == "0f" * 32
    with pytest.raises(BuildError):
        verity.parse_root_hash("Root hash: nothex\n")


def test_mmdebstrap_argv(tmp_path):
    cfg = _cfg(tmp_path, "rootfs: {packages: [systemd, udev], path_exclude: [/usr/share/man/*],"
                         " path_include: [], mirror: 'http://snapshot.debian.org/archive/debian/20240101T000000Z'}\n")
    assert rootfs.mmdebstrap_argv(cfg, Path("/b/rootfs.tar")) == [
        "mmdebstrap", "--variant=minbase", "--format=tar", "--include=systemd,udev",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--customize-hook=echo hbos > \"$1/etc/hostname\"",
        "--customize-hook=printf 'nameserver 10.0.2.3\\n' > \"$1/etc/resolv.conf\"",
        "trixie", "/b/rootfs.tar", "http://snapshot.debian.org/archive/debian/20240101T000000Z"]


def test_extract_argv_leaves_out_device_nodes():
    argv = rootfs.extract_argv(Path("/b/rootfs.tar"), Path("/t"))
    assert argv[:6] == ["tar", "--extract", "--file", "/b/rootfs.tar", "--directory", "/t"]
    assert "--exclude=./dev/*" in argv and "--numeric-owner" in argv


# ---------------------------------------------------------- system files


def test_system_files_non_debug_masks_every_getty(tmp_path):
    files = verity.system_files(_cfg(tmp_path))
    for unit in verity.GETTY_UNITS:
        assert files[f"etc/systemd/system/{unit}"] == verity.Link("/dev/null")
    assert not any("autologin" in k for k in files)
    assert files["etc/systemd/system/multi-user.target.wants/systemd-networkd.service"] == \
        verity.Link("/lib/systemd/system/systemd-networkd.service")
    assert "DHCP=ipv4" in files["etc/systemd/network/80-hbos-wired.network"]
    assert "debug=0" in files["etc/hbos/image.conf"]


def test_system_files_debug_is_explicit(tmp_path):
    files = verity.system_files(_cfg(tmp_path, "debug: true\n"))
    assert "--autologin root" in files[
        "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"]
    assert not any(v == verity.Link("/dev/null") for k, v in files.items()
                   if any(k.endswith(f"/{unit}") for unit in verity.GETTY_UNITS))
    # a debug image keeps systemd.debug_shell (systemd-debug-generator)
    assert "etc/systemd/system-generators/systemd-debug-generator" not in files
    assert "debug=1" in files["etc/hbos/image.conf"]


# ---------------------------------------------------------- content tree


def test_check_content_tree_refuses_fifo_and_socket(tmp_path):
    (tmp_path / "ok").write_text("x")
    verity.check_content_tree(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(BuildError, match="pipe"):
        verity.check_content_tree(tmp_path)
    os.unlink(tmp_path / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(BuildError, match="sock"):
            verity.check_content_tree(tmp_path)
    finally:
        sock.close()


def test_check_content_tree_refuses_long_names(tmp_path):
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / ("n" * 20)).write_text("x")
    with pytest.raises(BuildError, match=r"opt/nnnn"):
        verity.check_content_tree(tmp_path, name_max=16)
    verity.check_content_tree(tmp_path)


def test_check_content_tree_missing(tmp_path):
    with pytest.raises(BuildError, match="does not exist"):
        verity.check_content_tree(tmp_path / "nope")


def _merged_root(tmp_path: Path) -> Path:
    tree = tmp_path / "root"
    (tree / "usr" / "lib").mkdir(parents=True)
    (tree / "lib").symlink_to("usr/lib")
    (tree / "etc").mkdir()
    (tree / "etc" / "resolv.conf").symlink_to("/run/resolv.conf")
    (tree / "var").mkdir()
    (tree / "var" / "run").symlink_to("/run")
    return tree


def test_safe_dest_follows_merged_usr_only(tmp_path):
    tree = _merged_root(tmp_path)
    assert verity.safe_dest(tree, "lib/modules/x") == tree / "usr" / "lib" / "modules" / "x"
    assert verity.safe_dest(tree, "etc/resolv.conf") == tree / "etc" / "resolv.conf"
    with pytest.raises(BuildError, match="var/run"):
        verity.safe_dest(tree, "var/run/evil")
    with pytest.raises(BuildError):
        verity.safe_dest(tree, "../escape")


def test_overlay_copies_files_links_modes(tmp_path):
    tree = _merged_root(tmp_path)
    src = tmp_path / "content"
    (src / "lib" / "x").mkdir(parents=True)
    (src / "lib" / "x" / "tool").write_text("#!/bin/sh\n")
    (src / "lib" / "x" / "tool").chmod(0o750)
    (src / "etc").mkdir()
    (src / "etc" / "resolv.conf").write_text("nameserver 1.1.1.1\n")
    (src / "etc" / "alias").symlink_to("resolv.conf")
    assert verity.overlay(src, tree) == 3
    tool = tree / "usr" / "lib" / "x" / "tool"
    assert tool.read_text() == "#!/bin/sh\n" and stat.S_IMODE(tool.stat().st_mode) == 0o750
    assert not (tree / "etc" / "resolv.conf").is_symlink()
    assert os.readlink(tree / "etc" / "alias") == "resolv.conf"


def test_overlay_refuses_file_over_directory(tmp_path):
    tree = _merged_root(tmp_path)
    src = tmp_path / "content"
    src.mkdir()
    (src / "etc").write_text("not a dir")
    with pytest.raises(BuildError, match="etc"):
        verity.overlay(src, tree)


def test_modules_dir_on_merged_usr(tmp_path):
    tree = _merged_root(tmp_path)
    assert rootfs.modules_dir(tree) == tree / "usr/lib" / "modules"
    plain = tmp_path / "plain"
    (plain / "lib").mkdir(parents=True)
    assert rootfs.modules_dir(plain) == plain / "lib" / "modules"


def test_rootfs_up_to_date_follows_recorded_config(tmp_path):
    from hbos.paths import Paths
    from hbos.util.fsutil import write_json
    cfg = _cfg(tmp_path)
    paths = Paths.from_config(cfg)
    check = rootfs.up_to_date(cfg, paths)
    assert not check()
    paths.base_dir.mkdir(parents=True)
    paths.base_rootfs.write_bytes(b"x" * 10)
    write_json(paths.base_rootfs_manifest, {"sha256": "0" * 64, "size": 10,
                                            **rootfs.recorded_config(cfg)})
    assert check()
    other = _cfg(tmp_path, "rootfs: {packages: [systemd]}\n")
    assert not rootfs.up_to_date(other, Paths.from_config(other))()
    paths.base_rootfs.write_bytes(b"x" * 11)   # a truncated or replaced tarball
    assert not check()


def test_clone_argv_hard_links_and_keeps_attributes():
    assert htree.clone_argv(Path("/b/base/tree-x"), Path("/b/v/tree")) == [
        "cp", "-a", "--link", "/b/base/tree-x/.", "/b/v/tree"]
    assert "--link" not in htree.clone_argv(Path("/s"), Path("/d"), link=False)


def test_tree_clone_links_files_and_recreates_dirs(tmp_path):
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc").chmod(0o750)
    (src / "etc" / "f").write_text("x")
    (src / "l").symlink_to("etc/f")
    htree.clone(src, tmp_path / "dst")
    dst = tmp_path / "dst"
    assert (dst / "etc" / "f").stat().st_ino == (src / "etc" / "f").stat().st_ino
    assert stat.S_IMODE((dst / "etc").stat().st_mode) == 0o750
    assert os.readlink(dst / "l") == "etc/f"
    assert (dst / "etc").stat().st_ino != (src / "etc").stat().st_ino
