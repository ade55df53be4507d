"""Host programs the stages call, and the Debian package that provides each."""

from __future__ import annotations

import shutil

from hbos.errors import ToolMissing

# program -> Debian package providing it
PACKAGES: dict[str, str] = {
    "busybox": "busybox-static",
    "cpio": "cpio",
    "depmod": "kmod",
    "modprobe": "kmod",
    "docker": "docker.io",
    "git": "git",
    "dpkg-deb": "dpkg",
    "dpkg": "dpkg",
    "apt-get": "apt",
    "apt-cache": "apt",
    "gzip": "gzip",
    "zstd": "zstd",
    "mkfs.erofs": "erofs-utils",
    "mkfs.ext4": "e2fsprogs",
    "mksquashfs": "squashfs-tools",
    "mmdebstrap": "mmdebstrap",
    "unshare": "util-linux",
    "chroot": "coreutils",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "veritysetup": "cryptsetup-bin",
    "ldd": "libc-bin",
    "nasm": "nasm",
    "iasl": "acpica-tools",
    "grub-mkimage": "grub-common",
    "mkfs.msdos": "dosfstools",
    "mcopy": "mtools",
    "make": "make",
    "gcc": "build-essential",
    "xz": "xz-utils",
    "tar": "tar",
    "patch": "patch",
    "g++": "g++",
    "python3": "python3",
}


def package_for(program: str) -> str:
    """The Debian package that provides `program` (best guess: its own name)."""
    return PACKAGES.get(program, program)


def find(program: str) -> str | None:
    """Absolute path of `program` on PATH (or in the sbin dirs), or None."""
    return shutil.which(program) or shutil.which(
        program, path="/usr/local/sbin:/usr/sbin:/sbin")


def require(program: str) -> str:
    """Absolute path of `program`, or ToolMissing naming its Debian package."""
    path = find(program)
    if path is None:
        pkg = package_for(program)
        raise ToolMissing(f"required program '{program}' is not installed",
                          hint=f"install it with: apt-get install {pkg}")
    return path


def missing(programs: list[str]) -> dict[str, str]:
    """{program: package} for each of `programs` that is not installed."""
    return {p: package_for(p) for p in programs if find(p) is None}
