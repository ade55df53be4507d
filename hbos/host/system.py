"""The host system under a root directory, as check_host reads it and setup_host changes it.

Both ways of installing the SNP host stack (hbos.host.debian: Debian's own
packages; hbos.host.setup: an SNP bundle's) and the host check
(hbos.host.check) read the same facts and follow the same rules. They live
here, below all three, so that none of them imports another for a helper:
- /etc/os-release, and the rule that setup_host runs on Debian or Ubuntu only;
- the packages dpkg records as installed (var/lib/dpkg/status);
- the running kernel (proc/sys/kernel/osrelease; read nowhere else) and its
  version, against the first upstream kernel with SNP host support;
- the rule before any change: root, then `--yes` or a "y" on a terminal;
- the runner that carries the commands out (tests inject a recording one).

Everything takes `root` (`/` normally, a fake tree in tests).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from hbos.errors import HostError
from hbos.util import debpkg, run

SUPPORTED_OS = ("debian", "ubuntu")
# Linux: upstream SNP host support landed in 6.11.
UPSTREAM_SNP_KERNEL = (6, 11)

# Carries out one command (argv); setup_host's only way to change the host.
Runner = Callable[[Sequence[str]], object]


# ----------------------------------------------------------------- reading the host


def os_release(root: Path) -> dict[str, str]:
    """/etc/os-release (else /usr/lib/os-release) as a dict; {} when neither exists."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        return {k: v.strip().strip('"') for k, _, v in
                (line.partition("=") for line in text.splitlines() if "=" in line)}
    return {}


def require_debian(root: Path) -> str:
    """The host's name when it is Debian or Ubuntu (ID or ID_LIKE); HostError otherwise."""
    info = os_release(root)
    ids = {info.get("ID", "")} | set(info.get("ID_LIKE", "").split())
    name = info.get("PRETTY_NAME") or info.get("ID") or "unknown"
    if not ids & set(SUPPORTED_OS):
        raise HostError(f"setup_host supports Debian and Ubuntu hosts only; this host is {name} "
                        f"({root / 'etc/os-release'})",
                        hint="install the SNP bundle's host kernel, QEMU and OVMF by hand")
    return name


def installed_packages(root: Path) -> dict[str, str]:
    """{package: version} of packages dpkg records as installed under `root`."""
    status = root / "var/lib/dpkg/status"
    try:
        text = status.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    out = {}
    for stanza in text.split("\n\n"):
        fields = debpkg.parse_stanza(stanza)
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out[fields["Package"]] = fields.get("Version", "")
    return out


def running_kernel(root: Path) -> str:
    """The running kernel's release (`uname -r`), "" when unreadable."""
    try:
        return (root / "proc/sys/kernel/osrelease").read_text(encoding="utf-8",
                                                               errors="replace").strip()
    except OSError:
        return ""


def kernel_version(release: str) -> tuple[int, int]:
    """6.12.117+deb13-amd64 -> (6, 12); (0, 0) when it does not start with a version."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# ----------------------------------------------------------------- changing the host


def confirm(*, yes: bool, interactive: bool | None, euid: int | None,
            ask: Callable[[str], str]) -> None:
    """Root, then --yes or a "y" on a terminal; HostError (nothing changed) otherwise."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        raise HostError("setup_host must run as root to install packages and files",
                        hint="sudo doit setup_host --yes")
    if not yes:
        interactive = sys.stdin.isatty() if interactive is None else interactive
        if not interactive:
            raise HostError("setup_host needs a confirmation and stdin is not a terminal",
                            hint="re-run with --yes: doit setup_host --yes")
        if ask("Proceed? [y/N] ").strip().lower() not in ("y", "yes"):
            raise HostError("setup_host: cancelled, nothing changed")


def default_runner(log: Path | None) -> Runner:
    """Run each command for real, non-interactively (apt-get, dpkg), logging to `log`."""
    def runner(argv: Sequence[str]) -> object:
        return run.run(argv, log=log, env={"DEBIAN_FRONTEND": "noninteractive"})
    return runner
