#!/usr/bin/env python3
"""The hyperbeam stage: cold build, restore from the artifact cache, reproducibility.

Runs the real stage (hbos.stages.hyperbeam.build: mmdebstrap build root, the
pinned sources from sources.mirror, the overlay, `rebar3 release`) of the
local profile in fresh build directories:

1. cold: cache disabled (a build root of its own, mmdebstrap included);
2. cold again in another directory (with --twice): the release must be the
   same bytes (hb.tar sha256; on a difference the differing files are listed);
3. cached: a fresh build directory with a cache that holds this build.

Prints each time, hb.tar's sha256, the release's file count and size. Asserts
nothing; exit status 1 when two cold builds differ.

    python3 benchmarks/bench_hyperbeam.py [--base DIR] [--twice] [--mirror DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hbos import config  # noqa: E402
from hbos.paths import Paths  # noqa: E402
from hbos.stages import hyperbeam  # noqa: E402
from hbos.util import cache as hcache  # noqa: E402


def build_once(build_dir: Path, cache_dir: str, mirror: str) -> tuple[Paths, float]:
    build_dir.mkdir(parents=True)
    overlay = build_dir / "overlay.yaml"
    overlay.write_text(f"build_dir: {build_dir}\ncache_dir: '{cache_dir}'\n"
                       + (f"sources: {{mirror: {mirror}}}\n" if mirror else ""))
    cfg = config.load(overlay=overlay, profile="local")
    paths = Paths.from_config(cfg)
    started = time.monotonic()
    hyperbeam.build(cfg, paths)
    return paths, time.monotonic() - started


def summary(paths: Paths) -> tuple[str, dict]:
    m = json.loads(paths.hyperbeam_manifest.read_text())
    return m["tar_sha256"], m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="parent of the build dirs (default: a temp dir)")
    ap.add_argument("--twice", action="store_true", help="a second cold build, compared")
    ap.add_argument("--mirror", default="", help="sources.mirror (default: the local profile's)")
    args = ap.parse_args()
    base = args.base or Path(tempfile.mkdtemp(prefix="hbos-hb-bench-"))
    cache = base / "cache"

    runs = [("cold (no cache)", *build_once(base / "cold-1", "", args.mirror))]
    if args.twice:
        runs.append(("cold again", *build_once(base / "cold-build-2", "", args.mirror)))
    # fill a cache from the first build's outputs, then restore into a fresh dir
    first = runs[0][1]
    cfg = config.load(overlay=_write(base / "fill.yaml", first.build, cache), profile="local")
    store = hcache.of(cfg)
    assert store is not None
    inputs = hyperbeam.cache_inputs(cfg)
    store.store("hyperbeam", hcache.key("hyperbeam", inputs), inputs,
                {"hb.tar": first.hyperbeam_tar, "manifest.json": first.hyperbeam_manifest})
    runs.append(("from the cache", *build_once(base / "cached", str(cache), args.mirror)))

    for label, paths, seconds in runs:
        sha, m = summary(paths)
        files = sum(1 for e in m["files"] if e["type"] == "file")
        print(f"{label:16} {seconds:7.1f} s  hb.tar {sha[:16]}  {files} files, "
              f"{m['size'] / 2**20:.1f} MiB")
    shas = {summary(p)[0] for _, p, _ in runs}
    if len(shas) == 1:
        print("reproducible: every build gave the same hb.tar")
        return 0
    a, b = (summary(p)[1] for _, p, _ in runs[:2])
    fa = {e["path"]: e for e in a["files"]}
    fb = {e["path"]: e for e in b["files"]}
    for path in sorted(set(fa) | set(fb)):
        if fa.get(path) != fb.get(path):
            print(f"  differs: {path}")
    return 1


def _write(path: Path, build: Path, cache: Path) -> Path:
    path.write_text(f"build_dir: {build}\ncache_dir: '{cache}'\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
