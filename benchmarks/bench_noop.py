#!/usr/bin/env python3
"""Start-up cost: `doit list` and a no-op `doit measure`, against the floor
`python3 -c 'import doit.doit_cmd'`, in CPU time (user + system of the child)
and wall time.

The no-op build is the whole local-profile graph (base root from the test cache
when present, the sample content, the AmdSev OVMF vector as firmware) plus a
2 GB dummy artifact used as the initrd, so vm_config and measure depend on it:
a no-op run must only stat it, never re-hash it.

Targets (issue 21, item 8): `doit list` <= 2x the CPU time of importing
doit.doit_cmd, in a clean venv (--clean-venv: a fresh venv with this project
installed from its wheel, nothing else); the no-op <= 2x as well. Medians, all
commands interleaved in one run so the machine's load hits them alike. Prints
the numbers; asserts nothing.

Python's bytecode cache is on, as for a user (in a temporary
PYTHONPYCACHEPREFIX, warmed once, so nothing is written into the tree);
--no-bytecode compiles every module on each run. --dodo may be given more than
once to compare checkouts (e.g. before and after a change) in the same run;
--list-only skips the no-op build (which needs `python3 -m tests.support.prepare`).

    python3 benchmarks/bench_noop.py [--runs 5] [--clean-venv] [--list-only]
                                     [--dodo OLD/dodo.py --dodo dodo.py] [--no-bytecode]
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


ENV = dict(os.environ)
PYTHON = sys.executable


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child) of one run."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    after = os.times()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return elapsed, cpu


def doit(dodo: Path, *args: str) -> tuple[float, float]:
    return timed([PYTHON, "-m", "doit", "-f", str(dodo), *args], dodo.parent)


def floor() -> tuple[float, float]:
    return timed([PYTHON, "-c", "import doit.doit_cmd"], ROOT)


def clean_venv(where: Path) -> str:
    """A fresh venv with this project installed from a wheel (and its dependencies,
    from the package index): no other site packages, no editable finder."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    py = str(where / "bin" / "python3")
    subprocess.run([py, "-m", "pip", "install", "-q", str(ROOT)], check=True)
    return py


def medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))


def main() -> int:
    global PYTHON
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-bytecode", action="store_true",
                    help="PYTHONDONTWRITEBYTECODE=1: compile every module on each run")
    ap.add_argument("--dodo", type=Path, action="append",
                    help="a dodo.py to time (repeat to compare checkouts; default: this one)")
    ap.add_argument("--clean-venv", action="store_true",
                    help="run in a fresh venv with this project installed from its wheel")
    ap.add_argument("--list-only", action="store_true", help="time `doit list` only, not the no-op build")
    args = ap.parse_args()
    dodos = [d.resolve() for d in (args.dodo or [ROOT / "dodo.py"])]
    pycache = tempfile.TemporaryDirectory(prefix="hbos-bench-pyc-")
    if args.no_bytecode:
        ENV["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        ENV["PYTHONPYCACHEPREFIX"] = pycache.name
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.clean_venv:
            PYTHON = clean_venv(tmp / "venv")
        over = tmp / "over.yaml"
        over.write_text(f"build_dir: {tmp / 'build'}\n")
        if not args.list_only:
            deb = cached_kernel_deb()
            if not deb.is_file():
                sys.exit("run `python3 -m tests.support.prepare` first (needs the cached kernel .deb), "
                         "or pass --list-only")
            dummy = tmp / "dummy-2g.img"
            with open(dummy, "wb") as fh:  # real 2 GiB of data, not a sparse hole
                block = os.urandom(1 << 20)
                for _ in range(2048):
                    fh.write(block)
            over.write_text(f"build_dir: {tmp / 'build'}\nkernel: {{source: deb, deb: {deb}}}\n"
                            f"initramfs: {{path: {dummy}}}\nfirmware: {{ovmf: {VECTOR_OVMF}}}\n")
            from hbos import config as hconfig
            from hbos.paths import Paths
            cfg = hconfig.load(profile="local", overlay=over)
            cached = Paths(cache_dir() / "base-rootfs" / rootfs_cache_key(cfg))
            if cached.base_rootfs.is_file():  # the test suite's cached base root
                link_base_rootfs(cached, Paths.from_config(cfg))
        cold = {d: doit(d, "measure", "profile=local", f"config={over}")[0]
                for d in dodos} if not args.list_only else {}
        floor()  # warm the bytecode cache for doit itself
        for d in dodos:
            doit(d, "list", "profile=local", f"config={over}")
        floors: list[tuple[float, float]] = []
        lists: dict[Path, list[tuple[float, float]]] = {d: [] for d in dodos}
        noops: dict[Path, list[tuple[float, float]]] = {d: [] for d in dodos}
        for _ in range(args.runs):  # interleaved: load on the machine hits every command alike
            floors.append(floor())
            for d in dodos:
                lists[d].append(doit(d, "list", "profile=local", f"config={over}"))
                if not args.list_only:
                    noops[d].append(doit(d, "measure", "profile=local", f"config={over}"))
    pycache.cleanup()
    base_wall, base_cpu = medians(floors)
    print(f"python: {PYTHON}{' (clean venv)' if args.clean_venv else ''}  "
          f"bytecode cache: {'off' if args.no_bytecode else 'on'}  runs: {args.runs}")
    print(f"import doit.doit_cmd        cpu {base_cpu:.3f} s  wall {base_wall:.3f} s")
    for d in dodos:
        print(f"dodo: {d}")
        if d in cold:
            print(f"  build (incl. hashing 2 GiB once): {cold[d]:.2f} s")
        rows = [("doit list", lists[d])] + ([("doit measure (no-op)", noops[d])] if noops[d] else [])
        for name, runs in rows:
            wall, cpu = medians(runs)
            print(f"  {name:<24}cpu {cpu:.3f} s  wall {wall:.3f} s  "
                  f"ratio cpu {cpu / base_cpu:.2f}  wall {wall / base_wall:.2f}")
    print("target: every cpu ratio <= 2.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
