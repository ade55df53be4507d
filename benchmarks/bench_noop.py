#!/usr/bin/env python3
"""No-op rebuild cost: `doit measure` on a built tree vs `doit list`.

The whole local-profile graph (base root from the test cache when present,
the sample content, the AmdSev OVMF vector as firmware) plus a 2 GB dummy
artifact used as the initrd, so vm_config and measure depend on it. A no-op run must only stat it, never re-hash it.
Target: no-op <= 1.5x `doit list` and < 1 s. Prints the numbers; asserts nothing.

    python3 benchmarks/bench_noop.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import cache_dir, cached_kernel_deb, link_base_rootfs, rootfs_cache_key  # noqa: E402

VECTOR_OVMF = ROOT / "tests" / "vectors" / "measurement" / "ovmf_AmdSev_suffix.bin"


def doit(*args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), *args],
                          cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"doit {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    deb = cached_kernel_deb()
    if not deb.is_file():
        sys.exit("run `python3 -m tests.prepare` first (needs the cached kernel .deb)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dummy = tmp / "dummy-2g.img"
        with open(dummy, "wb") as fh:  # real 2 GiB of data, not a sparse hole
            block = os.urandom(1 << 20)
            for _ in range(2048):
                fh.write(block)
        over = tmp / "over.yaml"
        over.write_text(f"build_dir: {tmp / 'build'}\nkernel: {{source: deb, deb: {deb}}}\n"
                        f"initramfs: {{path: {dummy}}}\nfirmware: {{ovmf: {VECTOR_OVMF}}}\n")
        from hbos import config as hconfig
        from hbos.paths import Paths
        cfg = hconfig.load(profile="local", overlay=over)
        cached = Paths(cache_dir() / "base-rootfs" / rootfs_cache_key(cfg))
        if cached.base_rootfs.is_file():  # the test suite's cached base root
            link_base_rootfs(cached, Paths.from_config(cfg))
        cold = doit("measure", "profile=local", f"config={over}")
        lists = [doit("list", "profile=local", f"config={over}") for _ in range(args.runs)]
        noops = [doit("measure", "profile=local", f"config={over}") for _ in range(args.runs)]
    lst, noop = statistics.median(lists), statistics.median(noops)
    print(f"build (incl. hashing 2 GiB once): {cold:.2f} s")
    print(f"doit list            median of {args.runs}: {lst:.3f} s")
    print(f"doit measure (no-op) median of {args.runs}: {noop:.3f} s")
    print(f"ratio no-op / list: {noop / lst:.2f}  (target <= 1.5, and no-op < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
