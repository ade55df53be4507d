"""hbos.util.tree: the one place for tree operations, on real small trees."""

from __future__ import annotations

import os
import stat

import pytest

from hbos.errors import BuildError
from hbos.util import tree as htree


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    (root / "b/sub").mkdir(parents=True)
    (root / "a-b").write_text("x")
    (root / "b/sub/f").write_text("hello")
    (root / "b/exe").write_text("#!/bin/sh\n")
    os.chmod(root / "b/exe", 0o755)
    os.symlink("sub", root / "b/link-dir")
    os.symlink("/absent", root / "dangling")
    return root


def test_walk_is_sorted_depth_first_and_lists_symlinks_unfollowed(src):
    rels = [rel for _full, rel, _st in htree.walk(src)]
    assert rels == ["a-b", "b", "b/exe", "b/link-dir", "b/sub", "b/sub/f", "dangling"]
    kinds = {rel: stat.S_IFMT(st.st_mode) for _f, rel, st in htree.walk(src)}
    assert kinds["b/link-dir"] == stat.S_IFLNK and kinds["b"] == stat.S_IFDIR


def test_copy_keeps_modes_and_links_and_can_skip(src, tmp_path):
    dest = tmp_path / "dest"
    count = htree.copy(src, dest, skip=lambda rel, st: rel == "b/sub")
    assert count == 2   # a-b and b/exe; b/sub and its file left out
    assert not (dest / "b/sub").exists()
    assert os.readlink(dest / "b/link-dir") == "sub"
    assert stat.S_IMODE((dest / "b/exe").stat().st_mode) == 0o755
    linked = tmp_path / "linked"
    htree.copy(src, linked, link=True)
    assert (linked / "b/sub/f").stat().st_ino == (src / "b/sub/f").stat().st_ino


def test_copy_refuses_a_fifo_naming_what(src, tmp_path):
    os.mkfifo(src / "b/pipe")
    with pytest.raises(BuildError, match="content.path: .*pipe is a device node, fifo"):
        htree.copy(src, tmp_path / "dest", what="content.path")


def test_ensure_dir_is_0755_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        htree.ensure_dir(tmp_path / "x/y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "x/y").stat().st_mode) == 0o755


def test_normalize_mtimes_reaches_every_entry_and_symlinks_themselves(src):
    htree.normalize_mtimes(src, 1700000000)
    assert {os.lstat(full).st_mtime for full, _r, _s in htree.walk(src)} == {1700000000}
    assert src.stat().st_mtime == 1700000000


def test_size_and_manifest_and_fingerprint(src):
    entries = 7
    assert htree.size(src) == 4096 * entries + 1 + 5 + len("#!/bin/sh\n") \
        + len("/absent")   # a symlink to a file counts its target's length, to a dir nothing
    manifest = htree.manifest(src)
    assert [e["path"] for e in manifest] == sorted(e["path"] for e in manifest)
    assert next(e for e in manifest if e["path"] == "b/sub/f")["size"] == 5
    before = htree.fingerprint(src)
    (src / "a-b").write_text("changed")
    assert htree.fingerprint(src) != before
