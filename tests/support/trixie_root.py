"""A Debian trixie root holding QEMU 10 and libvirt's clients, for the tests.

Built once with `mmdebstrap --variant=apt --include=PACKAGES trixie DIR` and
cached in the test cache (cache_dir()/trixie-root/<key of the package list>).
Its programs run by chroot inside a private mount namespace (`unshare
--mount`): the paths a command names (build dirs, the OVMF vector) are
bind-mounted at the same path, /dev and /proc are mounted, and everything
vanishes with the process, so nothing is left mounted on the host. Root only;
elsewhere the fixture skips saying so (and fails under CI=true, where .ci/run
runs as root).

`wrapper(root, binds, out)` writes a script that runs the root's
qemu-system-x86_64 that way, so the launcher itself (`doit start --qemu
WRAPPER`) drives QEMU 10 with its real command line.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cache_dir, missing_prerequisite

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
# qemu-system-x86: QEMU 10 (sev-snp-guest, EPYC-v4; seabios comes with it);
# libvirt-clients: virt-xml-validate (+ libxml2-utils' xmllint, a dependency);
# libvirt-daemon-driver-qemu is not needed: no libvirtd runs here.
PACKAGES = ("qemu-system-x86", "libvirt-clients")


def cache_key() -> str:
    return hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(PACKAGES)}".encode()).hexdigest()[:16]


def build_root() -> Path:
    """The cached root, built if missing (mmdebstrap; a few minutes)."""
    base = cache_dir() / "trixie-root"
    root = base / cache_key()
    done = root.with_suffix(".done")
    if done.is_file() and (root / "usr/bin/qemu-system-x86_64").is_file():
        return root
    if shutil.which("mmdebstrap") is None:
        missing_prerequisite("mmdebstrap is not installed")
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{cache_key()}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(["mmdebstrap", "--variant=apt", "--mode=root",
                           f"--include={','.join(PACKAGES)}",
                           "--dpkgopt=path-exclude=/usr/share/doc/*",
                           "--dpkgopt=path-exclude=/usr/share/man/*",
                           SUITE, str(tmp), MIRROR],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        missing_prerequisite(f"mmdebstrap of the trixie QEMU root failed: "
                             f"{proc.stderr.strip()[-600:]}")
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    done.write_text(f"{SUITE} {' '.join(PACKAGES)}\n")
    return root


def chroot_argv(root: Path, binds: list[Path], argv: list[str]) -> list[str]:
    """argv run by chroot in `root`, in a private mount namespace with `binds`
    mounted at the same paths, /dev and /proc mounted, /tmp a fresh tmpfs."""
    script = [f'R={shlex.quote(str(root))}',
              'mount -t tmpfs tmpfs "$R/tmp"',
              'mount --rbind /dev "$R/dev"',
              'mount -t proc proc "$R/proc"']
    for b in dict.fromkeys(Path(p).resolve() for p in binds):
        q = shlex.quote(str(b))
        make = f'mkdir -p "$R"{q}' if b.is_dir() else f'mkdir -p "$R"$(dirname {q}); touch "$R"{q}'
        script += [make, f'mount --bind {q} "$R"{q}']
    script.append('exec chroot "$R" "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
            "; ".join(script), "sh", *argv]


def run(root: Path, binds: list[Path], argv: list[str], timeout: float = 120
        ) -> subprocess.CompletedProcess:
    return subprocess.run(chroot_argv(root, binds, argv), capture_output=True, text=True,
                          timeout=timeout)


def wrapper(root: Path, binds: list[Path], out: Path) -> Path:
    """A qemu-system-x86_64 stand-in script that runs the root's QEMU 10 (by chroot)."""
    argv = chroot_argv(root, binds, ["/usr/bin/qemu-system-x86_64"])
    out.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + ' "$@"\n')
    out.chmod(0o755)
    return out


def require_root_tools() -> None:
    if os.geteuid() != 0:
        missing_prerequisite("running trixie's QEMU 10 needs root (chroot and mount --bind "
                             "in a private mount namespace)")
    for prog in ("unshare", "chroot", "mount"):
        if shutil.which(prog) is None:
            missing_prerequisite(f"{prog} is not installed")


@pytest.fixture(scope="session")
def trixie_root() -> Path:
    """The cached trixie root (QEMU 10, virt-xml-validate), checked runnable."""
    require_root_tools()
    root = build_root()
    proc = run(root, [], ["/usr/bin/qemu-system-x86_64", "--version"])
    if proc.returncode != 0 or "QEMU emulator version 10." not in proc.stdout:
        pytest.fail(f"trixie's QEMU does not run by chroot: {proc.stdout}{proc.stderr}")
    return root
