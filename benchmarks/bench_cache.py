#!/usr/bin/env python3
"""Artifact cache: two clean build directories of the local profile, one cache.

Runs `doit profile=local build_guest_image` (firmware included: the local
profile builds the OVMF from Debian's edk2 source) in two fresh build
directories that share one `cache_dir`:

1. cold: the cache is empty (or as --cache-dir left it): the firmware, the base
   root and the kernel .deb are built and stored;
2. warm: a second clean build directory restores them from the cache.

Prints each build's wall time, which stages were restored from / stored in
the cache, and both expected_hash values (measurement.json); exit status 1
when the expected hashes differ. Asserts no time (goal: warm <= 150 s on the
project's 2-core machine, see docs/cache.md).

    python3 benchmarks/bench_cache.py [--workdir DIR] [--cache-dir DIR] [--keep]

Slow: the cold build runs mmdebstrap and the edk2 build (10+ minutes on 2
cores). --cache-dir reuses a cache across runs (then "cold" is warm too).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["build_guest_image"]   # measure needs the firmware: it is built too


def build(workdir: Path, name: str, cache_dir: Path, timeout: float) -> tuple[float, str, Path]:
    build_dir = workdir / name
    build_dir.mkdir(parents=True)
    overlay = build_dir / "overlay.yaml"
    overlay.write_text(f"build_dir: {build_dir / 'build'}\ncache_dir: {cache_dir}\n")
    argv = [sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), *TARGETS,
            "profile=local", f"config={overlay}"]
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    (build_dir / "doit.out").write_text(out)
    if proc.returncode != 0:
        sys.exit(f"{name}: doit failed ({proc.returncode}) after {took:.0f} s:\n{out[-4000:]}")
    return took, out, build_dir / "build" / "measurement.json"


def cache_lines(out: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines()
            if "from cache" in ln or "in cache" in ln or ln.startswith("cache:")]


def ran(out: str) -> list[str]:
    return [ln[2:].strip() for ln in out.splitlines() if ln.startswith(". ")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="parent of the two build dirs (default: a temp dir)")
    ap.add_argument("--cache-dir", type=Path, help="the shared cache (default: empty, in the workdir)")
    ap.add_argument("--keep", action="store_true", help="keep the build dirs (and a default cache)")
    ap.add_argument("--timeout", type=float, default=7200)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hbos-cache-bench-"))
    cache_dir = args.cache_dir or workdir / "cache"
    results = {}
    try:
        for name in ("cold", "warm"):
            took, out, measurement = build(workdir, name, cache_dir, args.timeout)
            expected = json.loads(measurement.read_text())["expected_hash"]
            results[name] = (took, expected)
            print(f"{name}: {took:7.1f} s  expected_hash {expected}", flush=True)
            for line in cache_lines(out):
                print(f"  {line}")
            print(f"  ran: {' '.join(ran(out))}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir / "cold", ignore_errors=True)
            shutil.rmtree(workdir / "warm", ignore_errors=True)
            if args.cache_dir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    same = results["cold"][1] == results["warm"][1]
    print(f"warm/cold: {results['warm'][0] / results['cold'][0]:.2f}; expected_hash "
          f"{'identical' if same else 'DIFFERS'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
