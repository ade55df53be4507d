"""`doit setup_host`: install the snp-release bundle's host components.

(Without an AMDSEV snp-release bundle configured, setup_host installs the stock Debian trixie
stack instead: hbos.host.debian. With one, the bundle's QEMU must find its
shared libraries on this host first: host_debian.check_bundle_qemu.)

What is installed (an AMDESE/AMDSEV snp-release tree):
- the host kernel: linux/host/linux-image-*.deb (not -dbg) with `dpkg -i`,
  as the release's install.sh does;
- its QEMU and OVMF: the usr/local/ tree copied into /usr/local/
  (bin/qemu-system-x86_64, share/qemu/OVMF*.fd, ...);
- kvm.conf (kvm_amd options) into /etc/modprobe.d/ when the release has one.

The release's install.sh itself is not run: it decides Debian by
`ID_LIKE = debian` (unset on Debian itself, where it falls to dnf) and
apt-installs the distribution's QEMU and OVMF, which lack SNP support.

The plan is printed first; nothing changes without root and a confirmation
(`--yes`, or a "y" on a terminal). A second run finds every package installed
at the release's version (dpkg status) and every file identical (sha256), and
says "nothing to do". Everything reads and writes under `root` and runs
commands through `runner`, so tests use a fake root and record the commands.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from hbos.errors import HbosError, HostError
from hbos.util import debpkg
from hbos.util.fsutil import atomic_path, sha256_file

SUPPORTED_OS = ("debian", "ubuntu")
Runner = Callable[[Sequence[str]], object]


# ----------------------------------------------------------------- reading packages


@dataclass(frozen=True)
class Deb:
    path: Path
    package: str
    version: str

    @property
    def kernel_release(self) -> str | None:
        """linux-image-6.9.0-rc7-snp-host-05b10142ac6a -> 6.9.0-rc7-snp-host-05b10142ac6a."""
        return self.package[len("linux-image-"):] if self.package.startswith("linux-image-") \
            else None


def read_deb(path: Path) -> Deb:
    """Package and Version from the .deb's control file (dpkg-deb)."""
    try:
        got = debpkg.fields(path, "Package", "Version")
    except HbosError as exc:
        raise HostError(f"cannot read the package name and version of {path}: {exc.message}",
                        hint="the snp-release bundle's linux/host/ must hold Debian packages") from None
    if "Package" not in got or "Version" not in got:
        raise HostError(f"{path}: its control file has no Package or Version field")
    return Deb(path, got["Package"], got["Version"])


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


def os_release(root: Path) -> dict[str, str]:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        return {k: v.strip().strip('"') for k, _, v in
                (line.partition("=") for line in text.splitlines() if "=" in line)}
    return {}


def require_debian(root: Path) -> str:
    info = os_release(root)
    ids = {info.get("ID", "")} | set(info.get("ID_LIKE", "").split())
    name = info.get("PRETTY_NAME") or info.get("ID") or "unknown"
    if not ids & set(SUPPORTED_OS):
        raise HostError(f"setup_host supports Debian and Ubuntu hosts only; this host is {name} "
                        f"({root / 'etc/os-release'})",
                        hint="install the snp-release bundle's host kernel, QEMU and OVMF by hand")
    return name


# ----------------------------------------------------------------- the plan


@dataclass(frozen=True)
class FileCopy:
    src: Path
    rel: str            # destination relative to root


@dataclass
class Plan:
    install: list[Deb] = field(default_factory=list)
    current: list[Deb] = field(default_factory=list)        # already at the release's version
    copies: list[FileCopy] = field(default_factory=list)
    same_files: int = 0
    kernel_release: str | None = None

    @property
    def empty(self) -> bool:
        return not self.install and not self.copies

    def describe(self, root: Path) -> str:
        lines = ["setup_host plan:"]
        installed = installed_packages(root)
        for deb in self.install:
            was = installed.get(deb.package)
            change = f"(installed: {was})" if was else "(not installed)"
            lines.append(f"  dpkg -i   {deb.package} {deb.version} {change}")
        for c in self.copies:
            state = "replace" if os.path.lexists(root / c.rel) else "add"
            lines.append(f"  {state:<8}  /{c.rel}")
        for deb in self.current:
            lines.append(f"  keep      {deb.package} {deb.version} (already installed)")
        if self.same_files:
            lines.append(f"  keep      {self.same_files} file(s) already identical")
        return "\n".join(lines)


def host_debs(release: Path) -> list[Path]:
    debs = [p for p in sorted((release / "linux/host").glob("linux-image-*.deb"))
            if "-dbg" not in p.name]
    if not debs:
        raise HostError(f"the snp-release bundle at {release} has no host kernel "
                        "(linux/host/linux-image-*.deb)")
    return debs


def bundle_files(release: Path) -> list[FileCopy]:
    """usr/local/** (files and symlinks) and kvm.conf, with their destinations."""
    out = []
    local = release / "usr/local"
    if local.is_dir():
        for p in sorted(local.rglob("*")):
            if p.is_symlink() or p.is_file():
                out.append(FileCopy(p, str(p.relative_to(release))))
    if (release / "kvm.conf").is_file():
        out.append(FileCopy(release / "kvm.conf", "etc/modprobe.d/kvm.conf"))
    return out


def _same(src: Path, dst: Path) -> bool:
    if src.is_symlink() or dst.is_symlink():
        return src.is_symlink() and dst.is_symlink() and os.readlink(src) == os.readlink(dst)
    if not dst.is_file() or src.stat().st_size != dst.stat().st_size:
        return False
    return sha256_file(src) == sha256_file(dst)


def make_plan(release: Path, root: Path) -> Plan:
    plan = Plan()
    installed = installed_packages(root)
    for path in host_debs(release):
        deb = read_deb(path)
        plan.kernel_release = plan.kernel_release or deb.kernel_release
        (plan.current if installed.get(deb.package) == deb.version else plan.install).append(deb)
    for copy in bundle_files(release):
        if _same(copy.src, root / copy.rel):
            plan.same_files += 1
        else:
            plan.copies.append(copy)
    return plan


# ----------------------------------------------------------------- doing it


def dpkg_install_argv(debs: Sequence[Deb], root: Path) -> list[str]:
    """`dpkg -i` of the host kernel packages (into `root` when it is not /)."""
    argv = ["dpkg"]
    if Path(root).resolve() != Path("/"):
        argv.append(f"--root={root}")
    return argv + ["-i", *(str(d.path) for d in debs)]


def copy_file(src: Path, dst: Path) -> None:
    """Copy one file or symlink into place atomically, keeping its mode."""
    with atomic_path(dst) as tmp:
        if src.is_symlink():
            os.symlink(os.readlink(src), tmp)
        else:
            shutil.copy2(src, tmp)


def apply(plan: Plan, root: Path, runner: Runner) -> None:
    if plan.install:
        runner(dpkg_install_argv(plan.install, root))
    for c in plan.copies:
        print(f"+ install {c.src} /{c.rel}", file=sys.stderr)
        copy_file(c.src, root / c.rel)


def default_runner(log: Path | None) -> Runner:
    from hbos.util import run

    def runner(argv: Sequence[str]) -> object:
        return run.run(argv, log=log, env={"DEBIAN_FRONTEND": "noninteractive"})
    return runner


def _running_kernel(root: Path) -> str:
    try:
        return (root / "proc/sys/kernel/osrelease").read_text().strip()
    except OSError:
        return ""


def finish_message(plan: Plan, root: Path) -> str:
    kver = plan.kernel_release or "the SNP host kernel"
    if plan.kernel_release and _running_kernel(root) == plan.kernel_release:
        return f"setup_host: the SNP host kernel {kver} is running; check the host: doit check_host"
    return (f"setup_host: reboot into the SNP host kernel {kver} (pick it in the GRUB menu if it "
            "is not the default), then check the host: doit check_host")


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


def setup_host(release: Path, root: Path | str = "/", *, yes: bool = False,
               interactive: bool | None = None, euid: int | None = None,
               runner: Runner | None = None, log: Path | None = None,
               ask: Callable[[str], str] = input) -> Plan:
    """Install the bundle's host components into `root`; return the plan carried out."""
    root = Path(root)
    name = require_debian(root)
    plan = make_plan(Path(release), root)
    if plan.empty:
        print(f"setup_host: nothing to do: {len(plan.current)} package(s) at the release's "
              f"version, {plan.same_files} file(s) identical ({name})")
        print(finish_message(plan, root))
        return plan
    print(plan.describe(root))
    confirm(yes=yes, interactive=interactive, euid=euid, ask=ask)
    apply(plan, root, runner or default_runner(log))
    print(finish_message(plan, root))
    return plan


def setup_from_config(cfg, paths, yes: bool = False) -> None:
    """An AMDSEV snp-release bundle configured: its host kernel, QEMU (whose libraries must
    resolve here: ldd) and OVMF. None: stock Debian trixie packages (hbos.host.debian)."""
    from hbos.host import debian as host_debian
    from hbos.stages import snp_bundle as amdsev
    if not amdsev.configured(cfg):
        host_debian.setup_debian("/", yes=yes, log=paths.log("setup_host"))
        return
    host_debian.check_bundle_qemu(amdsev.qemu(paths))
    setup_host(amdsev.root(paths), "/", yes=yes, log=paths.log("setup_host"))
