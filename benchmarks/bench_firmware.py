#!/usr/bin/env python3
"""Firmware build time and reproducibility: two clean builds in two directories.

Each build runs the real firmware stage (hbos.stages.edk2.build_ovmf: unpack, patch,
BaseTools, AmdSevX64) in its own fresh build_dir with a different path, from
the same pinned sources (downloaded once, then copied). Prints each build's
time and OVMF.fd sha256, and on a difference the differing byte count and the
first differing offsets. Asserts nothing; exit status 1 when they differ.

    python3 benchmarks/bench_firmware.py [--base DIR] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hbos import config  # noqa: E402
from hbos.paths import Paths  # noqa: E402
from hbos.stages import edk2  # noqa: E402
from hbos.util.fsutil import sha256_file  # noqa: E402


def build_once(build_dir: Path, downloads: Path | None, keep: bool) -> tuple[Paths, float]:
    overlay = build_dir / "overlay.yaml"
    build_dir.mkdir(parents=True)
    overlay.write_text(f"build_dir: {build_dir}\ncache_dir: ''\nfirmware: {{keep_tree: {str(keep).lower()}}}\n")
    cfg = config.load(overlay=overlay, profile="local")
    paths = Paths.from_config(cfg)
    if downloads is not None:
        shutil.copytree(downloads, paths.downloads)
    started = time.monotonic()
    edk2.build_ovmf(cfg, paths)
    return paths, time.monotonic() - started


def differing(a: bytes, b: bytes) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="parent of the two build dirs (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the edk2 trees for diffing")
    args = ap.parse_args()
    base = args.base or Path(tempfile.mkdtemp(prefix="hbos-fw-bench-"))
    first, t1 = build_once(base / "one", None, args.keep)
    second, t2 = build_once(base / "build-two", first.downloads, args.keep)
    h1, h2 = sha256_file(first.built_ovmf), sha256_file(second.built_ovmf)
    print(f"build 1: {t1:7.1f} s  {h1}  {first.built_ovmf}")
    print(f"build 2: {t2:7.1f} s  {h2}  {second.built_ovmf}")
    if h1 == h2:
        print("reproducible: identical OVMF.fd from two clean builds in different directories")
        return 0
    diff = differing(first.built_ovmf.read_bytes(), second.built_ovmf.read_bytes())
    print(f"NOT reproducible: {len(diff)} bytes differ; first at "
          + ", ".join(hex(i) for i in diff[:8]))
    return 1


if __name__ == "__main__":
    sys.exit(main())
