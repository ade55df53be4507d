#!/usr/bin/env python3
"""Quickstart benchmark: cold build, warm rebuild, start-to-healthy (TCG).

Works on a copy of the project (tracked and untracked files, no build/), so
touching a content file never disturbs the checkout:

1. cold:  `doit <verity image> <hash tree> measure profile=local` in an empty
          build directory (base root filesystem, initramfs, firmware, content,
          verity, VM definition, measurement);
2. warm:  append a comment to the HyperBEAM unit's template
          (templates/hyperbeam.service.j2, rendered into the content: the
          local profile's content changes) and run the same command again:
          prints the tasks that ran;
3. start: `doit start profile=local` with everything built: wall time until it
          returns (the node answered its health endpoint), then `doit stop`.

    python3 benchmarks/bench_quickstart.py [--workdir DIR] [--keep] [--accel tcg|auto]

Prints one line per number. Slow (the cold build includes mmdebstrap and an
edk2 build): minutes to an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTENT_FILE = Path("templates/hyperbeam.service.j2")


def copy_project(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    src = dest / "src"
    for name in filter(None, files):
        rel = Path(name.decode())
        if rel.parts[0] in ("build", ".git") or not (ROOT / rel).is_file():
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    return src


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doit(src: Path, args: list[str], timeout: float) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(src / "dodo.py"), *args],
                          cwd=src, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"doit {' '.join(args)} failed ({proc.returncode}) after {took:.0f} s:\n"
                 f"{out[-4000:]}")
    return took, out


def ran(output: str) -> list[str]:
    """Tasks doit executed (". name" lines; "-- name" means up to date)."""
    return [ln[2:].strip() for ln in output.splitlines() if ln.startswith(". ")]


def tiny(runs: int) -> int:
    """start_vm -> healthy -> stop_vm with the integration test's busybox guest
    (real Debian cloud kernel, tiny initramfs), under TCG: the launcher's own cost."""
    sys.path.insert(0, str(ROOT))
    from hbos import config as hconfig
    from hbos.launch import start
    from hbos.paths import Paths
    from hbos.stages import kernel
    from tests.conftest import cached_kernel_deb
    from tests.integration.test_start import Guest
    work = Path(tempfile.mkdtemp(prefix="hbos-bench-tiny-"))
    try:
        kb = work / "kernel"
        kb.mkdir()
        (kb / "o.yaml").write_text(f"build_dir: {kb}\nkernel: {{source: deb, "
                                   f"deb: {cached_kernel_deb()}}}\n")
        kcfg = hconfig.load(overlay=kb / "o.yaml")
        kpaths = Paths.from_config(kcfg)
        kernel.unpack(kcfg, kpaths)
        ovmf = ROOT / "tests" / "vectors" / "measurement" / "ovmf_AmdSev_suffix.bin"
        (work / "g").mkdir()
        guest = Guest(work / "g", (kcfg, kpaths), ovmf)
        for i in range(runs):
            t0 = time.monotonic()
            guest.start()
            up = time.monotonic() - t0
            t1 = time.monotonic()
            start.stop_vm(guest.paths)
            print(f"tiny guest run {i + 1}: start -> healthy {up:.1f} s, stop {time.monotonic() - t1:.1f} s",
                  flush=True)
    finally:
        try:
            guest.kill()
        except NameError:
            pass
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, help="where the copy and build go (default: tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--accel", default="tcg", choices=["tcg", "auto"])
    ap.add_argument("--tiny", type=int, metavar="RUNS", default=0,
                    help="only time start/stop of the busybox test guest, RUNS times")
    args = ap.parse_args()
    if args.tiny:
        return tiny(args.tiny)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hbos-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = copy_project(work)
    build = work / "build"
    port = free_port()
    overlay = work / "overlay.yaml"
    overlay.write_text(f"build_dir: {build}\nports: {{hyperbeam: {port}}}\n"
                       f"launch: {{accel: {args.accel}, host_address: 127.0.0.1, "
                       "health_timeout: 3600}\n")
    common = ["profile=local", f"config={overlay}"]
    sys.path.insert(0, str(src))
    from hbos import config as hconfig  # noqa: E402  (the copy's package)
    from hbos.paths import Paths  # noqa: E402
    paths = Paths.from_config(hconfig.load(src / "config.yaml", overlay=overlay,
                                           profile="local"))
    targets = [str(paths.verity_image), str(paths.hash_tree), "measure"]
    print(f"bench: work dir {work}", flush=True)
    try:
        cold, out = doit(src, [*targets, *common], timeout=4 * 3600)
        print(f"cold build (local profile, base rootfs included): {cold:.1f} s "
              f"({len(ran(out))} tasks)", flush=True)
        noop, out = doit(src, [*targets, *common], timeout=3600)
        print(f"no-op rebuild: {noop:.1f} s (ran: {', '.join(ran(out)) or 'nothing'})",
              flush=True)
        with open(src / CONTENT_FILE, "a") as fh:
            fh.write(f"\n# bench {time.time()}\n")
        warm, out = doit(src, [*targets, *common], timeout=3600)
        print(f"warm rebuild after editing {CONTENT_FILE}: {warm:.1f} s "
              f"(ran: {', '.join(ran(out))})", flush=True)
        start, out = doit(src, ["start", *common], timeout=3 * 3600)
        print(f"doit start -> healthy ({args.accel}): {start:.1f} s", flush=True)
        doit(src, ["stop", *common], timeout=600)
    finally:
        pidfile = paths.run_dir / "qemu.pid"
        try:
            pid = int(pidfile.read_text())
            if str(pidfile).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
