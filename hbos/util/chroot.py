"""A Debian build root: made once with mmdebstrap, its programs run by chroot.

make_root() builds `mmdebstrap --variant=apt --include=PACKAGES SUITE DIR
MIRROR` into a temporary sibling and renames it into place, with a record
(root.json: suite, mirror, packages and every installed package's version)
beside it; a root whose record names the same suite, mirror and packages is
reused as it is.

run_in() runs a command inside the root in private namespaces (`unshare
--mount --fork`, and `--net` unless the network is wanted): /proc and /dev are
mounted for the command only and vanish with it, so nothing stays mounted on
the host, and without the network namespace a build cannot reach anything
(proof that it needs no network). Root only (mmdebstrap --mode=root, chroot).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Callable, Sequence

from hbos.errors import BuildError, CommandFailed
from hbos.util import fsutil, run, tools


def record_path(root: Path) -> Path:
    return root.with_name(root.name + ".json")


def wanted(suite: str, mirror: str, packages: Sequence[str]) -> dict[str, Any]:
    return {"suite": suite, "mirror": mirror, "packages": sorted(packages)}


def reusable(root: Path, want: dict[str, Any]) -> bool:
    try:
        rec = fsutil.read_json(record_path(root))
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and {k: rec.get(k) for k in want} == want and \
        (root / "usr" / "bin").is_dir()


def mmdebstrap_argv(suite: str, mirror: str, packages: Sequence[str], dest: Path) -> list[str]:
    return ["mmdebstrap", "--variant=apt", "--mode=root",
            f"--include={','.join(sorted(packages))}",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            suite, str(dest), mirror]


def require_root_tools() -> None:
    if os.geteuid() != 0:
        raise BuildError("a build root needs root (mmdebstrap --mode=root, chroot)",
                         hint="run the build as root")
    for tool in ("mmdebstrap", "unshare", "chroot"):
        tools.require(tool)


def make_root(root: Path, suite: str, mirror: str, packages: Sequence[str], *,
              log: Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The build root at `root` (reused when its record matches); its record."""
    want = wanted(suite, mirror, packages)
    if reusable(root, want):
        return fsutil.read_json(record_path(root))
    require_root_tools()
    say(f"  mmdebstrap {suite} with {', '.join(sorted(packages))} (a few minutes)")
    fsutil.remove(record_path(root))
    with fsutil.atomic_path(root) as tmp:
        try:
            run.run(mmdebstrap_argv(suite, mirror, packages, tmp), log=log, quiet=True,
                    timeout=3600)
        except CommandFailed as exc:
            raise BuildError(f"mmdebstrap of the {suite} build root failed (full output in "
                             f"{log}):\n{run.tail(exc.output, 10)}") from None
    versions = run_in(root, ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"],
                      log=log, capture=True)
    rec = {**want, "installed": dict(line.split(" ", 1) for line in versions.splitlines()
                                     if " " in line)}
    fsutil.write_json(record_path(root), rec)
    return rec


def run_in_argv(root: Path, argv: Sequence[str], *, env: dict[str, str] | None = None,
                network: bool = False, cwd: str = "/") -> list[str]:
    """The host command line that runs argv inside `root` (see the module doc)."""
    inner = " ".join(shlex.quote(a) for a in
                     ["env", "-i", *[f"{k}={v}" for k, v in sorted((env or {}).items())],
                      *argv])
    script = (f"mount -t proc proc {shlex.quote(str(root / 'proc'))} && "
              f"mount --rbind /dev {shlex.quote(str(root / 'dev'))} && "
              f"exec chroot {shlex.quote(str(root))} /bin/sh -c "
              f"{shlex.quote(f'cd {shlex.quote(cwd)} && exec {inner}')}")
    return ["unshare", "--mount", "--fork", *([] if network else ["--net"]),
            "sh", "-c", script]


def run_in(root: Path, argv: Sequence[str], *, env: dict[str, str] | None = None,
           network: bool = False, cwd: str = "/", log: Path | None = None,
           timeout: float | None = None, capture: bool = False) -> str:
    """Run argv in `root`; its stdout when capture (else "", the output goes to log)."""
    proc = run.run(run_in_argv(root, argv, env=env, network=network, cwd=cwd),
                   log=None if capture else log, quiet=True, timeout=timeout)
    return proc.stdout.decode(errors="replace") if capture else ""
