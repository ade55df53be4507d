"""Build B of the reproducibility tests: the same build under another environment.

Debian's reprotest is the reference for what to vary (its "variations"): a
control build runs as the test suite does; the experiment build runs the same
doit command in another build directory with everything below changed, and
every artifact must come out bit-identical (docs/reproducibility.md lists what
is varied, how, and what this machine cannot vary).

- build_path: another, deeper build directory (and content source path);
- umask: 0077 instead of the runner's (usually 0022);
- time: a later date (libfaketime, `faketime -m -f +398d`: 398 days on, so
  another year, month and weekday; NO_FAKE_STAT=1, so stat() shows files' real
  mtimes);
- timezone: TZ=GMT-14 (the runner: UTC or unset);
- locales: LANG/LC_ALL=fr_CH.UTF-8, LANGUAGE=fr_CH:fr;
- domain_host: hostname and domainname in a new UTS namespace (`unshare --uts`);
- home, user_group: HOME, USER, LOGNAME changed (the uid stays 0: see the docs);
- exec_path: an extra, empty directory first on PATH;
- environment: an extra variable (reprotest's CAPTURE_ENVIRONMENT);
- kernel, aslr: `setarch x86_64 --uname-2.6 -R` (another uname release, no ASLR);
- num_cpus: `taskset -c 0` (one CPU);
- fileordering: build B's content source is read through a disorderfs mount
  with shuffled directory entries (`disordered`; the build dir cannot be on
  it: veritysetup format fails to write its header on a FUSE file).

`build_overlay` is the one place that writes the config overlay of a build
here (control or experiment): each build gets its own build_dir and nothing
else that could be shared (add per-build caches there).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

FAKETIME_OFFSET = "+398d"
UMASK = "0077"
HOSTNAME = "hbos-reprotest-b"
DOMAINNAME = "reprotest.invalid"
# run by `unshare --uts sh -c SCRIPT sh HOST DOMAIN UMASK CMD...`
UTS_SCRIPT = 'hostname "$1" && domainname "$2" && umask "$3" && shift 3 && exec "$@"'


@dataclass(frozen=True)
class Variation:
    """How build B differs from build A: a command prefix and environment changes."""
    home: Path
    extra_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def prefix(self) -> list[str]:
        return ["unshare", "--uts", "sh", "-c", UTS_SCRIPT, "sh", HOSTNAME, DOMAINNAME, UMASK,
                "setarch", "x86_64", "--uname-2.6", "-R",
                "taskset", "-c", "0",
                "faketime", "-m", "-f", FAKETIME_OFFSET]

    def environ(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        env.update({
            "TZ": "GMT-14", "LANG": "fr_CH.UTF-8", "LC_ALL": "fr_CH.UTF-8",
            "LANGUAGE": "fr_CH:fr", "HOME": str(self.home), "USER": "hbos-reprotest",
            "LOGNAME": "hbos-reprotest", "PATH": f"{self.extra_path}:{base.get('PATH', '')}",
            "CAPTURE_ENVIRONMENT": "i_capture_the_environment",
            # a later date moves the clock, not the mtimes already on disk: without
            # this libfaketime shifts every stat() result too (reprotest sets it as well)
            "NO_FAKE_STAT": "1", **self.env})
        return env


def variation(root: Path) -> Variation:
    """A Variation whose HOME and extra PATH entry live under root (created)."""
    home, extra = root / "home-b", root / "extra-bin"
    home.mkdir(parents=True, exist_ok=True)
    extra.mkdir(parents=True, exist_ok=True)
    return Variation(home=home, extra_path=extra)


REQUIRED_TOOLS = ("unshare", "setarch", "taskset", "faketime", "hostname", "domainname",
                  "disorderfs", "fusermount")


def disorderfs_argv(backing: Path, mountpoint: Path) -> list[str]:
    """reprotest's fileordering: directory entries come back in random order."""
    return ["disorderfs", "--shuffle-dirents=yes", "--multi-user=yes", "--quiet",
            str(backing), str(mountpoint)]


@contextlib.contextmanager
def disordered(root: Path) -> Iterator[Path]:
    """root/mnt: a disorderfs view of root/backing (both created), unmounted on exit."""
    backing, mnt = root / "backing", root / "mnt"
    backing.mkdir(parents=True, exist_ok=True)
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(disorderfs_argv(backing, mnt), check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["fusermount", "-u", str(mnt)], check=False, capture_output=True)


def missing_tools() -> list[str]:
    return [t for t in REQUIRED_TOOLS if shutil.which(t) is None]


def can_unshare_uts() -> bool:
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


def build_overlay(build_dir: Path, *, kernel_deb: Path | None = None, ovmf: Path | None = None,
                  content: Path | None = None, extra: str = "") -> Path:
    """The config overlay of one build (control or experiment), written into build_dir."""
    build_dir.mkdir(parents=True, exist_ok=True)
    text = f"build_dir: {build_dir / 'build'}\n"
    # no artifact cache: build B must build everything it compares, not restore build A's
    text += "cache_dir: ''\n"
    if kernel_deb is not None:
        text += f"kernel: {{source: deb, deb: {kernel_deb}}}\n"
    if ovmf is not None:
        text += f"firmware: {{ovmf: {ovmf}}}\n"
    if content is not None:
        text += f"content: {{source: dir, path: {content}}}\n"
    path = build_dir / "overlay.yaml"
    path.write_text(text + extra)
    return path


def doit_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), *args]


def varied_doit(v: Variation, args: list[str], *, timeout: float = 3600
                ) -> subprocess.CompletedProcess:
    """doit ARGS as build B: under the variation's prefix and environment."""
    argv = v.prefix() + doit_argv(args)
    proc = subprocess.run(argv, cwd=ROOT, env=v.environ(dict(os.environ)),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"varied doit {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
