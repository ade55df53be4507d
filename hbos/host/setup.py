"""`doit setup_host`: which SNP host stack to install, and installing an SNP bundle's.

`setup_from_config()` (the doit action) chooses: without an SNP bundle
configured, the stock Debian trixie stack (hbos.host.debian.setup_debian);
with one, the bundle's QEMU must first find its shared libraries on this host
(hbos.host.debian.check_bundle_qemu), then `setup_bundle()` here installs its
host parts. The choice lives here, above both paths: this module imports
hbos.host.debian, which imports nothing from this one; what both paths share
(os-release, dpkg status, the running kernel, confirmation, the runner) is in
hbos.host.system, below both.

What is installed from the SNP bundle (an AMDESE/AMDSEV snp-release-* tree):
- the host kernel: linux/host/linux-image-*.deb (not -dbg) with `dpkg -i`,
  as the bundle's install.sh does;
- its QEMU and OVMF: the usr/local/ tree copied into /usr/local/
  (bin/qemu-system-x86_64, share/qemu/OVMF*.fd, ...);
- kvm.conf (kvm_amd options) into /etc/modprobe.d/ when the bundle has one.

The bundle's install.sh itself is not run: it decides Debian by
`ID_LIKE = debian` (unset on Debian itself, where it falls to dnf) and
apt-installs the distribution's QEMU and OVMF, which lack SNP support.

The plan is printed first; nothing changes without root and a confirmation
(`--yes`, or a "y" on a terminal). A second run finds every package installed
at the bundle's version (dpkg status) and every file identical (sha256), and
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

from hbos.config import Config
from hbos.errors import HbosError, HostError
from hbos.host import debian, system
from hbos.paths import Paths
from hbos.stages import snp_bundle
from hbos.util import debpkg
from hbos.util.fsutil import atomic_path, sha256_file

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
                        hint="the SNP bundle's linux/host/ must hold Debian packages") from None
    if "Package" not in got or "Version" not in got:
        raise HostError(f"{path}: its control file has no Package or Version field")
    return Deb(path, got["Package"], got["Version"])


# ----------------------------------------------------------------- the plan


@dataclass(frozen=True)
class FileCopy:
    src: Path
    rel: str            # destination relative to root


@dataclass
class Plan:
    install: list[Deb] = field(default_factory=list)
    current: list[Deb] = field(default_factory=list)        # already at the bundle's version
    copies: list[FileCopy] = field(default_factory=list)
    same_files: int = 0
    kernel_release: str | None = None

    @property
    def empty(self) -> bool:
        return not self.install and not self.copies

    def describe(self, root: Path) -> str:
        lines = ["setup_host plan:"]
        installed = system.installed_packages(root)
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


def host_debs(bundle: Path) -> list[Path]:
    debs = [p for p in sorted((bundle / "linux/host").glob("linux-image-*.deb"))
            if "-dbg" not in p.name]
    if not debs:
        raise HostError(f"the SNP bundle at {bundle} has no host kernel "
                        "(linux/host/linux-image-*.deb)")
    return debs


def bundle_files(bundle: Path) -> list[FileCopy]:
    """usr/local/** (files and symlinks) and kvm.conf, with their destinations."""
    out = []
    local = bundle / "usr/local"
    if local.is_dir():
        for p in sorted(local.rglob("*")):
            if p.is_symlink() or p.is_file():
                out.append(FileCopy(p, str(p.relative_to(bundle))))
    if (bundle / "kvm.conf").is_file():
        out.append(FileCopy(bundle / "kvm.conf", "etc/modprobe.d/kvm.conf"))
    return out


def _same(src: Path, dst: Path) -> bool:
    if src.is_symlink() or dst.is_symlink():
        return src.is_symlink() and dst.is_symlink() and os.readlink(src) == os.readlink(dst)
    if not dst.is_file() or src.stat().st_size != dst.stat().st_size:
        return False
    return sha256_file(src) == sha256_file(dst)


def make_plan(bundle: Path, root: Path) -> Plan:
    plan = Plan()
    installed = system.installed_packages(root)
    for path in host_debs(bundle):
        deb = read_deb(path)
        plan.kernel_release = plan.kernel_release or deb.kernel_release
        (plan.current if installed.get(deb.package) == deb.version else plan.install).append(deb)
    for copy in bundle_files(bundle):
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


def apply(plan: Plan, root: Path, runner: system.Runner) -> None:
    if plan.install:
        runner(dpkg_install_argv(plan.install, root))
    for c in plan.copies:
        print(f"+ install {c.src} /{c.rel}", file=sys.stderr)
        copy_file(c.src, root / c.rel)


def finish_message(plan: Plan, root: Path) -> str:
    kver = plan.kernel_release or "the SNP host kernel"
    if plan.kernel_release and system.running_kernel(root) == plan.kernel_release:
        return f"setup_host: the SNP host kernel {kver} is running; check the host: doit check_host"
    return (f"setup_host: reboot into the SNP host kernel {kver} (pick it in the GRUB menu if it "
            "is not the default), then check the host: doit check_host")


def setup_bundle(bundle: Path, root: Path | str = "/", *, yes: bool = False,
                 interactive: bool | None = None, euid: int | None = None,
                 runner: system.Runner | None = None, log: Path | None = None,
                 ask: Callable[[str], str] = input) -> Plan:
    """Install the bundle's host components into `root`; return the plan carried out."""
    root = Path(root)
    name = system.require_debian(root)
    plan = make_plan(Path(bundle), root)
    if plan.empty:
        print(f"setup_host: nothing to do: {len(plan.current)} package(s) at the bundle's "
              f"version, {plan.same_files} file(s) identical ({name})")
        print(finish_message(plan, root))
        return plan
    print(plan.describe(root))
    system.confirm(yes=yes, interactive=interactive, euid=euid, ask=ask)
    apply(plan, root, runner or system.default_runner(log))
    print(finish_message(plan, root))
    return plan


def setup_from_config(cfg: Config, paths: Paths, yes: bool = False) -> None:
    """doit setup_host: an SNP bundle configured: its host kernel, QEMU (whose
    libraries must resolve here: ldd) and OVMF. None: stock Debian trixie packages."""
    log = paths.log("setup_host")
    if not snp_bundle.configured(cfg):
        debian.setup_debian("/", yes=yes, log=log)
        return
    debian.check_bundle_qemu(snp_bundle.qemu(paths))
    setup_bundle(snp_bundle.root(paths), "/", yes=yes, log=log)
