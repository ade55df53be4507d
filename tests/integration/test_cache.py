"""The artifact cache over the real task graph: two clean build directories
with one cache_dir restore the same base root, and `doit clean` leaves the
cache alone.

The entry is the local profile's real base root (the session's test cache,
built by mmdebstrap once), stored with the key the stage itself computes
(hbos.stages.rootfs.cache_inputs: mmdebstrap command, environment, versions): exactly
what a cold `doit base_rootfs` would have stored, without running mmdebstrap
again here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.paths import Paths
from hbos.stages import rootfs
from hbos.util import cache
from hbos.util.fsutil import sha256_file
from tests.conftest import doit, write_overlay

pytestmark = [pytest.mark.integration]


def executed(proc) -> set[str]:
    return set(re.findall(r"^\.  (\S+)", proc.stdout + proc.stderr, re.M))


def build_dir(root: Path, name: str, cache_dir: Path) -> tuple[Path, Paths]:
    d = root / name
    d.mkdir()
    overlay = write_overlay(d / "overlay.yaml", f"build_dir: {d / 'build'}\ncache_dir: {cache_dir}\n")
    return overlay, Paths.from_config(hconfig.load(profile="local", overlay=overlay))


def test_two_clean_build_dirs_restore_the_same_base_root(base_rootfs_cache, tmp_path):
    cache_dir = tmp_path / "cache"
    one_overlay, one = build_dir(tmp_path, "one", cache_dir)
    cfg = hconfig.load(profile="local", overlay=one_overlay)
    inputs = rootfs.cache_inputs(cfg)
    k = cache.key("base_rootfs", inputs)
    store = cache.Cache(cache_dir)
    assert store.store("base_rootfs", k, inputs, {"rootfs.tar": base_rootfs_cache.base_rootfs,
                                                  "rootfs.json": base_rootfs_cache.base_rootfs_manifest})
    want = {"rootfs.tar": sha256_file(base_rootfs_cache.base_rootfs),
            "rootfs.json": base_rootfs_cache.base_rootfs_manifest.read_bytes()}

    results = []
    for overlay, paths in ((one_overlay, one), build_dir(tmp_path, "two", cache_dir)):
        args = ["base_rootfs", "profile=local", f"config={overlay}"]
        proc = doit(args)
        assert executed(proc) == {"base_rootfs"}
        assert f"base_rootfs: restored from cache {k[:16]}" in proc.stderr
        assert "mmdebstrap" not in proc.stderr
        assert sha256_file(paths.base_rootfs) == want["rootfs.tar"]
        assert paths.base_rootfs_manifest.read_bytes() == want["rootfs.json"]
        results.append(paths)
        # up to date now; then doit clean removes the targets and never the cache
        assert executed(doit(args)) == set()
        doit(["clean", "profile=local", f"config={overlay}"])
        assert not paths.base_rootfs.exists()
        assert (cache_dir / "base_rootfs" / k / "entry.json").is_file()
    assert results[0].build != results[1].build
    # the entry survived both builds and both cleans, intact (re-checked)
    assert store.restore("base_rootfs", k, {"rootfs.tar": tmp_path / "check" / "rootfs.tar",
                                            "rootfs.json": tmp_path / "check" / "rootfs.json"})
    assert sha256_file(tmp_path / "check" / "rootfs.tar") == want["rootfs.tar"]
