"""Which host programs the configured stages need, and whether they are here: the
check `doit init` runs (tools.PACKAGES names the Debian package of each)."""

from __future__ import annotations

import re
import sys

from hbos.config import Config
from hbos.errors import ToolMissing
from hbos.util import run, tools

COMMIT = re.compile(r"^[0-9a-fA-F]{40}$")   # a pinned ref: nothing to resolve
BASE = ["dpkg-deb", "depmod", "modprobe", "cpio", "gzip", "busybox", "veritysetup",
        "mmdebstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "tar"]
# Programs the edk2 firmware build calls (hbos.stages.edk2 checks these same lists).
FIRMWARE_BUILD = ["make", "gcc", "g++", "patch", "python3", "nasm", "iasl",
                  "grub-mkimage", "mkfs.msdos", "mcopy"]
# Files the firmware build needs from packages that provide no program.
FIRMWARE_FILES = {
    "/usr/include/uuid/uuid.h": "uuid-dev",
    "/usr/lib/grub/x86_64-efi/linux.mod": "grub-efi-amd64-bin",
}


def needed(cfg: Config) -> list[str]:
    """Programs the stages selected by `cfg` call."""
    progs = list(BASE)
    if cfg.kernel.source == "package":
        progs.append("apt-get")
    if cfg.image.filesystem == "erofs":
        progs.append("mkfs.erofs")
    if cfg.initramfs.compression == "zstd":
        progs.append("zstd")
    if cfg.content.source == "docker":
        progs.append("docker")
        if not all(COMMIT.match(ref) for ref in (cfg.content.hyperbeam_ref, cfg.content.ao_ref)):
            progs.append("git")      # branches and tags are resolved with git ls-remote
    if cfg.content.source == "hyperbeam":
        progs.extend(["unshare", "chroot"])   # the build root (mmdebstrap is in BASE)
    if not cfg.firmware.ovmf and cfg.firmware.source == "build":
        progs.extend(FIRMWARE_BUILD)
    return progs


def check(cfg: Config, install: bool = False) -> None:
    """Print each missing program with its Debian package; install them if asked."""
    missing = tools.missing(needed(cfg))
    if not missing:
        print(f"init: all {len(needed(cfg))} host tools present", file=sys.stderr)
        return
    packages = sorted(set(missing.values()))
    for prog, pkg in sorted(missing.items()):
        print(f"init: missing {prog:<20} (Debian package: {pkg})", file=sys.stderr)
    if install:
        run.run(["apt-get", "install", "-y", "--no-install-recommends", *packages],
                env={"DEBIAN_FRONTEND": "noninteractive"})
        return
    raise ToolMissing(f"{len(missing)} host tool(s) missing",
                      hint=f"apt-get install {' '.join(packages)}  (or: doit init install=yes)")
