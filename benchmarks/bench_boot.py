#!/usr/bin/env python3
"""Guest boot timeline: `doit start profile=local` under TCG, start -> healthy.

Builds the local profile (the real HyperBEAM and the AO compute unit under the
production hyperbeam.service) in its own build directory, with the cached
trixie kernel, the cached base root of the test suite when there is one, and
the AmdSev OVMF vector as firmware (emulated boots use QEMU's default firmware
anyway). Then runs `doit start` with launch.accel tcg and timestamps every line
of the guest's serial console as it arrives on the host. Prints:

- the timeline: QEMU started (console file created), kernel start ("Linux
  version"), initramfs /init, switch_root (systemd's first line), the unit
  that starts the service, multi-user.target, first healthy HTTP answer
  (`doit start` returned), each as host seconds since `doit start` and, where
  the line has one, the guest kernel's own timestamp;
- with --analyze: the guest runs with `systemd.log_target=kmsg
  printk.devkmsg=on` added to its command line (a different cmdline, so a
  different measurement: an analysis run, not the timed one). PID 1 then logs
  every unit's start and stop to the console with kernel timestamps: the
  benchmark prints systemd's "Startup finished in ..." line and a blame list
  (Starting -> Started/Finished per unit, longest first) and the chain of the
  service's unit.

    python3 benchmarks/bench_boot.py [--runs N] [--analyze] [--append ARGS] [--set YAML] [--workdir DIR]
        [--keep]

Slow: one build (minutes; mmdebstrap when the base root is not cached), then
minutes per TCG boot on 2 busy cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
KTIME = re.compile(r"\[\s*(\d+\.\d{6})\]")   # printk time (may follow console noise)
ANALYZE_CMDLINE = "systemd.log_target=kmsg printk.devkmsg=on"

# (label, regex on the console line without colour codes); first match wins
MARKERS = (
    ("kernel start (Linux version)", re.compile(r"Linux version ")),
    ("initramfs /init runs", re.compile(r"Run /init as init process")),
    ("root mounted, systemd starts", re.compile(r"systemd \d+[^ ]* running in system mode")),
    ("udev coldplug done", re.compile(r"(Finished|Started).*systemd-udev-trigger")),
    ("network online", re.compile(r"Reached target.*network-online")),
    ("hyperbeam.service started", re.compile(r"Started.*hyperbeam\.service")),
    ("multi-user.target reached", re.compile(r"Reached target.*multi-user")),
    ("systemd: Startup finished", re.compile(r"Startup finished in")),
)
UNIT_EVENT = re.compile(r"systemd\[1\]: (Starting|Started|Finished|Mounting|Mounted|"
                        r"Reached target) ([^ ]+?)(?: - |\.\.\.|\.$| )")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doit(args: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return time.monotonic() - t0, proc


class ConsoleTail(threading.Thread):
    """Reads the console file as it grows; (host seconds since t0, line) per line."""

    def __init__(self, path: Path, t0: float):
        super().__init__(daemon=True)
        self.path, self.t0 = path, t0
        self.lines: list[tuple[float, str]] = []
        self.created: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.path.exists() and not self.stop.is_set():
            time.sleep(0.02)
        if self.stop.is_set():
            return
        self.created = time.monotonic() - self.t0
        buf = b""
        with open(self.path, "rb") as fh:
            while True:
                chunk = fh.read(65536)
                if chunk:
                    buf += chunk
                    *done, buf = buf.split(b"\n")
                    now = time.monotonic() - self.t0
                    for raw in done:
                        text = ANSI.sub("", raw.decode(errors="replace")).replace("\r", "").strip()
                        if text:
                            self.lines.append((now, text))
                elif self.stop.is_set():
                    return
                else:
                    time.sleep(0.02)


def guest_time(line: str) -> float | None:
    m = KTIME.search(line)
    return float(m.group(1)) if m else None


def timeline(tail: ConsoleTail, healthy: float) -> list[tuple[str, float, float | None]]:
    rows: list[tuple[str, float, float | None]] = []
    if tail.created is not None:
        rows.append(("QEMU started (console created)", tail.created, None))
    for label, rx in MARKERS:
        for t, line in tail.lines:
            if rx.search(line):
                rows.append((label, t, guest_time(line)))
                break
    rows.append(("first healthy HTTP answer (start returned)", healthy, None))
    return rows


def blame(lines: list[tuple[float, str]]) -> tuple[list[tuple[float, str]], str]:
    """Per unit: first Starting/Mounting -> Started/Finished/Mounted, from PID 1's kmsg."""
    begun: dict[str, float] = {}
    took: dict[str, float] = {}
    finished = ""
    for _t, line in lines:
        if "Startup finished in" in line:
            finished = line.split("systemd[1]: ", 1)[-1]
        m = UNIT_EVENT.search(line)
        kt = guest_time(line)
        if not m or kt is None:
            continue
        verb, unit = m.groups()
        if verb in ("Starting", "Mounting"):
            begun.setdefault(unit, kt)
        elif verb in ("Started", "Finished", "Mounted") and unit in begun and unit not in took:
            took[unit] = kt - begun[unit]
    return sorted(((v, k) for k, v in took.items()), reverse=True), finished


def base_cache(cfg) -> Path | None:
    from tests.conftest import cache_dir, rootfs_cache_key
    d = cache_dir() / "base-rootfs" / rootfs_cache_key(cfg) / "base"
    return d if (d / "rootfs.tar").is_file() and (d / "rootfs.json").is_file() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, help="build directory parent (default: tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--runs", type=int, default=1, help="boots to time (default 1)")
    ap.add_argument("--analyze", action="store_true",
                    help=f"add '{ANALYZE_CMDLINE}' to the guest cmdline: blame list")
    ap.add_argument("--append", default="", metavar="ARGS",
                    help="add ARGS to the guest's kernel command line (to try one)")
    ap.add_argument("--blame", type=int, default=15, help="blame lines to print")
    ap.add_argument("--set", default="", metavar="YAML",
                    help="extra overlay lines to try a config change, e.g. "
                         "'vm: {vcpu_count: 2}' (top-level keys other than the "
                         "benchmark's own: build_dir, kernel, firmware, ports, launch, cmdline)")
    args = ap.parse_args()

    from hbos import config as hconfig
    from hbos.paths import Paths
    from tests.conftest import cached_kernel_deb
    deb = cached_kernel_deb()
    if not deb.is_file():
        sys.exit(f"no cached trixie kernel at {deb}: run python3 -m tests.support.prepare")
    ovmf = ROOT / "tests" / "vectors" / "measurement" / "ovmf_AmdSev_suffix.bin"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hbos-bench-boot-"))
    work.mkdir(parents=True, exist_ok=True)
    build = work / "build"
    port = free_port()
    base = hconfig.load(profile="local")
    overlay = work / "overlay.yaml"
    text = (f"build_dir: {build}\nkernel: {{source: deb, deb: {deb}}}\n"
            f"firmware: {{ovmf: {ovmf}}}\nports: {{hyperbeam: {port}}}\n"
            "launch: {accel: tcg, host_address: 127.0.0.1, health_timeout: 3600}\n")
    extra = " ".join(filter(None, [args.append, ANALYZE_CMDLINE if args.analyze else ""]))
    if extra:
        text += f'cmdline: "{base.cmdline.strip()} {extra}"\n'
    if args.set:
        text += args.set.rstrip("\n") + "\n"
    overlay.write_text(text)
    common = ["profile=local", f"config={overlay}"]
    cfg = hconfig.load(profile="local", overlay=overlay)
    paths = Paths.from_config(cfg)
    cached = base_cache(base)
    if cached and not paths.base_rootfs.exists():
        paths.base_dir.mkdir(parents=True, exist_ok=True)
        for name in ("rootfs.tar", "rootfs.json"):
            os.link(cached / name, paths.base_dir / name)
    print(f"bench_boot: work dir {work}; base root {'cached: ' + str(cached) if cached else 'built'}"
          f"; cmdline {cfg.cmdline}", flush=True)
    try:
        took, proc = doit(["measure", *common], timeout=4 * 3600)
        if proc.returncode != 0:
            sys.exit(f"doit measure failed after {took:.0f} s:\n{(proc.stdout + proc.stderr)[-4000:]}")
        print(f"build (doit measure): {took:.1f} s", flush=True)
        from hbos.launch import qemu
        console = qemu.RunFiles(paths.run_dir).console
        for run in range(1, args.runs + 1):
            console.unlink(missing_ok=True)
            t0 = time.monotonic()
            tail = ConsoleTail(console, t0)
            tail.start()
            took, proc = doit(["start", *common], timeout=3 * 3600)
            time.sleep(0.3)
            tail.stop.set()
            tail.join(5)
            if proc.returncode != 0:
                doit(["stop", *common], timeout=120)
                sys.exit(f"doit start failed after {took:.0f} s:\n{(proc.stdout + proc.stderr)[-4000:]}")
            print(f"\nrun {run}: start -> healthy {took:.1f} s", flush=True)
            print(f"  {'event':<44} {'host s':>8} {'guest s':>8}")
            for label, t, g in timeline(tail, took):
                print(f"  {label:<44} {t:8.1f} {'' if g is None else f'{g:8.1f}':>8}")
            units, finished = blame(tail.lines)
            if finished:
                print(f"  {finished}")
            if units:
                print(f"  blame (PID 1's kmsg: Starting -> Started/Finished, top {args.blame}):")
                for secs, unit in units[:args.blame]:
                    print(f"    {secs:7.2f} s  {unit}")
            shutil.copyfile(console, work / f"console-run{run}.log")
            stop_took, _ = doit(["stop", *common], timeout=300)
            print(f"  stop: {stop_took:.1f} s; console saved as {work / f'console-run{run}.log'}",
                  flush=True)
    finally:
        doit(["stop", *common], timeout=300)
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
