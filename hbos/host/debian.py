"""`doit setup_host` on a stock Debian trixie host, and the SNP bundle's QEMU libraries.

Debian 13 "trixie" ships the whole SNP host stack: `linux-image-amd64` (6.12,
CONFIG_KVM_AMD_SEV=y; kvm_amd enables sev_snp by itself where the BIOS and the
SEV firmware allow it) and `qemu-system-x86` (10.0, `sev-snp-guest`). Without an
SNP bundle, setup_host (hbos.host.setup.setup_from_config, which
chooses) installs exactly those from Debian with apt-get, under the same rules as
the bundle path, shared through hbos.host.system: the plan first, root and a
confirmation (`--yes`, or "y" on a terminal), and "nothing to do" when both are
installed already. The OVMF is ours (the firmware stage), not a package.

With an SNP bundle, its QEMU (built on Ubuntu 22.04) may need libraries a
fresh host lacks: `missing_libraries()` runs `ldd` on it and names each missing
library with the Debian package that provides it, where known.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from hbos.errors import HostError
from hbos.host import system
from hbos.util import run

# What a stock trixie SNP host needs from Debian.
PACKAGES = ("linux-image-amd64", "qemu-system-x86")
SUITES = ("trixie",)      # Debian releases with SNP in the stock kernel and QEMU
MIN_VERSION_ID = 13

# Libraries an Ubuntu-built SNP bundle's QEMU commonly links that a minimal
# Debian host may lack, and the Debian (trixie) package shipping each.
LIBRARY_PACKAGES: dict[str, str] = {
    "libslirp.so.0": "libslirp0",
    "libpixman-1.so.0": "libpixman-1-0",
    "libfdt.so.1": "libfdt1",
    "libaio.so.1": "libaio1t64",
    "liburing.so.2": "liburing2",
    "libnuma.so.1": "libnuma1",
    "libgnutls.so.30": "libgnutls30t64",
    "libpng16.so.16": "libpng16-16t64",
    "libjpeg.so.8": "libjpeg-turbo8 (Ubuntu; Debian has libjpeg62-turbo: rebuild the QEMU)",
    "libzstd.so.1": "libzstd1",
    "libglib-2.0.so.0": "libglib2.0-0t64",
    "libgmodule-2.0.so.0": "libglib2.0-0t64",
    "libgio-2.0.so.0": "libglib2.0-0t64",
    "libgobject-2.0.so.0": "libglib2.0-0t64",
    "libcapstone.so.4": "libcapstone4 (bookworm; trixie has libcapstone5: rebuild the QEMU)",
    "libcapstone.so.5": "libcapstone5",
    "libseccomp.so.2": "libseccomp2",
    "libcap-ng.so.0": "libcap-ng0",
    "libudev.so.1": "libudev1",
    "libusb-1.0.so.0": "libusb-1.0-0",
    "libgbm.so.1": "libgbm1",
    "libepoxy.so.0": "libepoxy0",
    "libSDL2-2.0.so.0": "libsdl2-2.0-0",
    "libgtk-3.so.0": "libgtk-3-0t64",
    "libvdeplug.so.2": "libvdeplug2t64",
    "libspice-server.so.1": "libspice-server1",
    "libbpf.so.1": "libbpf1",
    "libbpf.so.0": "libbpf0 (bookworm; trixie has libbpf1: rebuild the QEMU)",
    "libnettle.so.8": "libnettle8t64",
    "libhogweed.so.6": "libhogweed6t64",
    "libgmp.so.10": "libgmp10",
    "libfuse3.so.3": "libfuse3-4",
    "libncursesw.so.6": "libncursesw6",
    "libtinfo.so.6": "libtinfo6",
    "libssh.so.4": "libssh-4",
    "libcurl-gnutls.so.4": "libcurl3t64-gnutls",
    "librbd.so.1": "librbd1",
    "librados.so.2": "librados2",
    "libiscsi.so.7": "libiscsi7",
    "libnfs.so.13": "libnfs13",
    "libnfs.so.14": "libnfs14",
    "libibverbs.so.1": "libibverbs1",
    "librdmacm.so.1": "librdmacm1t64",
    "libpmem.so.1": "libpmem1",
    "libsasl2.so.2": "libsasl2-2",
    "libxkbcommon.so.0": "libxkbcommon0",
}


# ----------------------------------------------------------------- which host


def debian_release(info: dict[str, str]) -> tuple[str, int | None]:
    """(codename, VERSION_ID as int) of a Debian os-release, ("", None) otherwise."""
    if info.get("ID") != "debian":
        return "", None
    vid = info.get("VERSION_ID", "")
    return info.get("VERSION_CODENAME", ""), int(vid) if vid.isdigit() else None


def is_stock_snp_debian(info: dict[str, str]) -> bool:
    codename, version = debian_release(info)
    return codename in SUITES or (version is not None and version >= MIN_VERSION_ID)


# ----------------------------------------------------------------- the plan


@dataclass
class DebianPlan:
    install: list[str] = field(default_factory=list)
    current: dict[str, str] = field(default_factory=dict)   # package -> installed version

    @property
    def empty(self) -> bool:
        return not self.install

    def describe(self) -> str:
        lines = ["setup_host plan (stock Debian: no SNP bundle configured):"]
        for pkg in self.install:
            lines.append(f"  apt-get install  {pkg} (not installed)")
        for pkg, version in self.current.items():
            lines.append(f"  keep             {pkg} {version} (already installed)")
        return "\n".join(lines)


def make_plan(installed: dict[str, str]) -> DebianPlan:
    plan = DebianPlan()
    for pkg in PACKAGES:
        if pkg in installed:
            plan.current[pkg] = installed[pkg]
        else:
            plan.install.append(pkg)
    return plan


def apt_install_argv(packages: Sequence[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def setup_debian(root: Path | str = "/", *, yes: bool = False, interactive: bool | None = None,
                 euid: int | None = None, runner: system.Runner | None = None,
                 log: Path | None = None, ask: Callable[[str], str] = input) -> DebianPlan:
    """Install the stock trixie SNP host packages (see the module docstring)."""
    root = Path(root)
    name = system.require_debian(root)
    info = system.os_release(root)
    if not is_stock_snp_debian(info):
        raise HostError(f"this host is {name}: its Debian kernel and QEMU have no SEV-SNP "
                        "(stock SNP support starts with Debian 13 trixie)",
                        hint="upgrade the host to Debian trixie, or configure an SNP bundle "
                             "(snp_release.url or snp_release.path) for AMD's forks")
    plan = make_plan(system.installed_packages(root))
    if plan.empty:
        print(f"setup_host: nothing to do: {', '.join(f'{p} {v}' for p, v in plan.current.items())}"
              f" installed ({name})")
        print(finish_message(root))
        return plan
    print(plan.describe())
    system.confirm(yes=yes, interactive=interactive, euid=euid, ask=ask)
    (runner or system.default_runner(log))(apt_install_argv(plan.install))
    print(finish_message(root))
    return plan


def finish_message(root: Path) -> str:
    release = system.running_kernel(root)
    if system.kernel_version(release) >= system.UPSTREAM_SNP_KERNEL:
        return (f"setup_host: kernel {release} is running (SNP host support since 6.11); "
                "check the host: doit check_host")
    return ("setup_host: reboot into Debian's linux-image-amd64 kernel (6.12), then check "
            "the host: doit check_host")


# ----------------------------------------------------------------- the SNP bundle's QEMU libraries


def parse_missing(ldd_output: str) -> list[str]:
    """Library names `ldd` reports as "not found"."""
    out = []
    for line in ldd_output.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+not found", line)
        if m:
            out.append(m.group(1))
    return list(dict.fromkeys(out))


def missing_libraries(binary: Path, ldd: Callable[[Path], str] | None = None
                      ) -> dict[str, str]:
    """{library: Debian package (or "unknown package")} that `binary` cannot resolve."""
    if ldd is None:
        def ldd(path: Path) -> str:
            proc = run.run(["ldd", str(path)], check=False, quiet=True)
            return (proc.stdout + proc.stderr).decode(errors="replace")
    return {lib: LIBRARY_PACKAGES.get(lib, "unknown package")
            for lib in parse_missing(ldd(binary))}


def check_bundle_qemu(binary: Path, ldd: Callable[[Path], str] | None = None) -> None:
    """HostError naming every missing library of the SNP bundle's QEMU and its package."""
    missing = missing_libraries(binary, ldd)
    if not missing:
        print(f"setup_host: {binary}: every shared library resolves (ldd)", file=sys.stderr)
        return
    listing = "\n".join(f"  {lib:<24} (Debian package: {pkg})" for lib, pkg in missing.items())
    pkgs = sorted({p for p in missing.values() if " " not in p})
    raise HostError(f"the SNP bundle's QEMU {binary} cannot start: {len(missing)} shared "
                    f"librar{'y' if len(missing) == 1 else 'ies'} missing:\n{listing}",
                    hint=(f"apt-get install {' '.join(pkgs)}" if pkgs else
                          "install the libraries above") +
                    "; or use Debian trixie's own QEMU 10 (no SNP bundle needed)")
