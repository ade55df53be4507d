#!/usr/bin/env python3
"""No-op rebuild cost: `doit measure` on a built tree vs `doit list`, both
against the floor: `python3 -c 'import doit.doit_cmd'`.

The whole local-profile graph (base root from the test cache when present,
the sample content, the AmdSev OVMF vector as firmware) plus a 2 GB dummy
artifact used as the initrd, so vm_config and measure depend on it. A no-op run must only stat it, never re-hash it.
Targets (issue 16): `doit list` and the no-op <= 2x the import of doit.doit_cmd
(medians, measured interleaved in the same run). Prints the numbers; asserts nothing.

Python's bytecode cache is on, as for a user (in a temporary
PYTHONPYCACHEPREFIX, warmed once, so nothing is written into the tree);
--no-bytecode measures with PYTHONDONTWRITEBYTECODE=1 (every hbos module
compiled on each run). --dodo FILE times another checkout's dodo.py (before/after).

    python3 benchmarks/bench_noop.py [--runs 5] [--no-bytecode] [--dodo PATH/dodo.py]
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


DODO = ROOT / "dodo.py"
ENV = dict(os.environ)


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def doit(*args: str) -> float:
    return timed([sys.executable, "-m", "doit", "-f", str(DODO), *args], DODO.parent)


def floor() -> float:
    return timed([sys.executable, "-c", "import doit.doit_cmd"], DODO.parent)


def main() -> int:
    global DODO
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-bytecode", action="store_true",
                    help="PYTHONDONTWRITEBYTECODE=1: compile every module on each run")
    ap.add_argument("--dodo", type=Path, default=DODO, help="the dodo.py to time")
    args = ap.parse_args()
    DODO = args.dodo.resolve()
    pycache = tempfile.TemporaryDirectory(prefix="hbos-bench-pyc-")
    if args.no_bytecode:
        ENV["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        ENV["PYTHONPYCACHEPREFIX"] = pycache.name
    deb = cached_kernel_deb()
    if not deb.is_file():
        sys.exit("run `python3 -m tests.support.prepare` first (needs the cached kernel .deb)")
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
        floor()  # warm the bytecode cache for doit itself
        floors, lists, noops = [], [], []
        for _ in range(args.runs):  # interleaved: load on the machine hits all three alike
            floors.append(floor())
            lists.append(doit("list", "profile=local", f"config={over}"))
            noops.append(doit("measure", "profile=local", f"config={over}"))
    pycache.cleanup()
    base, lst, noop = (statistics.median(x) for x in (floors, lists, noops))
    print(f"dodo: {DODO}  bytecode cache: {'off' if args.no_bytecode else 'on'}")
    print(f"build (incl. hashing 2 GiB once): {cold:.2f} s")
    print(f"import doit.doit_cmd median of {args.runs}: {base:.3f} s")
    print(f"doit list            median of {args.runs}: {lst:.3f} s  ratio {lst / base:.2f}")
    print(f"doit measure (no-op) median of {args.runs}: {noop:.3f} s  ratio {noop / base:.2f}")
    print("target: both ratios <= 2.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
