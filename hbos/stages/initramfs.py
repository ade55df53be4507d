"""The initramfs that opens the dm-verity root: build/initramfs.cpio.gz (or .zst).

Contents: busybox (static) as every shell tool, veritysetup plus the shared
libraries `ldd` resolves for it (never a hand-kept list), the kernel modules the
boot needs with their dependency closure from modules.dep (`modprobe
--show-depends`), and /init rendered from templates/init.sh.j2.

Compressed modules (Debian trixie ships `.ko.xz`; busybox `insmod` cannot load
them) are decompressed at build time into plain `.ko` files (xz and gzip with
Python's lzma/gzip, zstd with `zstd -d`): decompression is deterministic, so the
initramfs stays reproducible. initramfs.json lists, for every module, the file
it came from and the sha256 of what was packed. The full module tree (compressed,
as Debian ships it) goes into the root image instead (hbos.stages.rootfs), where udev
loads sev-guest and tsm_report.

Reproducible (docs/reproducibility.md): every member's mtime is
SOURCE_DATE_EPOCH, owners are 0:0, members are sorted (C locale), cpio runs
with `--reproducible` (renumbered inodes, no device numbers, newc format) and
the compressor stores no name or timestamp (`gzip -n`; zstd stores none).
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import stat
import sys
from pathlib import Path

from hbos.config import Config
from hbos.errors import BuildError
from hbos.paths import Paths
from hbos.stages import kernel
from hbos.util import run, templates, tools, tree as htree
from hbos.util.fsutil import atomic_path, sha256_file, write_json

# Modules every boot needs: the virtio transports and disks (virtio-blk, and
# virtio-scsi + sd for hosts that attach disks as SCSI), the NIC, dm-verity and
# overlayfs for the writable paths. The root filesystem's module is added per
# image.filesystem; OPTIONAL ones are included only where the kernel has them
# (trixie's 6.12 and the SNP bundle's kernel have sev-guest; Debian's cloud
# kernel 6.1 has none).
BOOT_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "virtio_net",
                "dm-verity", "overlay")
OPTIONAL_MODULES = ("sev-guest",)
# module file suffixes kmod knows, and how each is undone at build time
COMPRESSED_SUFFIXES = (".xz", ".gz", ".zst")
FS_MODULES = {"erofs": "erofs", "ext4": "ext4"}
# the debug disk (base_image: ext4, boot=normal) boots with this same initramfs;
# trixie's kernel builds ext4 as a module (Debian's 6.1 cloud kernel had it built in)
DEBUG_DISK_MODULE = FS_MODULES["ext4"]

# Writable paths of the verity root: an overlay (tmpfs upper, seeded from the
# image) or a fresh tmpfs.
OVERLAY_DIRS = ("etc", "var", "root", "home")
TMPFS_DIRS = ("tmp",)

VERITYSETUP = "/usr/sbin/veritysetup"
BUSYBOX = "/usr/bin/busybox"
# busybox applets /init and a debug shell use, linked into /bin
APPLETS = ("sh", "mount", "umount", "mkdir", "cat", "echo", "sleep", "insmod", "switch_root",
           "poweroff", "reboot", "ls", "stat", "chmod", "grep", "dmesg", "cut", "tr", "test",
           "[", "ln", "rm", "mknod", "uname", "head", "tail", "sync")


def boot_modules(cfg: Config) -> list[str]:
    """The modules to resolve: boot set + root filesystem + the debug disk's + extra_modules
    (ordered, unique)."""
    wanted = [*BOOT_MODULES, FS_MODULES[cfg.image.filesystem], DEBUG_DISK_MODULE,
              *cfg.initramfs.extra_modules]
    return list(dict.fromkeys(wanted))


def show_depends_argv(root: Path, version: str, module: str) -> list[str]:
    """modprobe lists `module`'s closure (deps first) from ROOT/lib/modules/VERSION."""
    return ["modprobe", "-d", str(root), "-S", version, "--show-depends", module]


# "insmod PATH [PARAMS]": PATH may hold spaces (a build directory's), so it runs
# to the first module suffix followed by a blank or the end of the line
INSMOD_LINE = re.compile(r"insmod (.+?\.ko(?:\.xz|\.gz|\.zst)?)(?:\s|$)")


def parse_show_depends(text: str) -> list[tuple[str, str]]:
    """[("insmod", path) | ("builtin", name)] from `modprobe --show-depends` output."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        insmod = INSMOD_LINE.match(line.strip())
        words = line.split()
        if insmod:
            out.append(("insmod", insmod.group(1)))
        elif len(words) >= 2 and words[0] == "builtin":
            out.append((words[0], words[1]))
    return out


def module_closure(root: Path, version: str, modules: list[str],
                   optional: tuple[str, ...] = ()) -> tuple[list[Path], list[str]]:
    """(ordered .ko files to load, names that are built in).

    Dependencies come before their users; each file appears once. A module in
    `optional` that the kernel lacks is skipped; any other is an error.
    """
    files: list[Path] = []
    builtin: list[str] = []
    for module in [*modules, *optional]:
        proc = run.run(show_depends_argv(root, version, module), quiet=True, check=False)
        if proc.returncode != 0:
            if module in optional:
                continue
            raise BuildError(f"kernel {version} has no module '{module}'",
                             hint="remove it from initramfs.extra_modules, or use a kernel that has it")
        for kind, what in parse_show_depends(proc.stdout.decode()):
            if kind == "builtin":
                builtin.append(what)
            elif Path(what) not in files:
                files.append(Path(what))
    return files, list(dict.fromkeys(builtin))


def parse_ldd(text: str) -> list[Path]:
    """Library files named by `ldd` output (the vDSO has no file and is skipped)."""
    libs: list[Path] = []
    for line in text.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
            if target.startswith("/"):
                libs.append(Path(target))
            elif target.startswith("not found") or not target:
                raise BuildError(f"ldd: library not found: {line}")
        elif line.startswith("/"):
            libs.append(Path(line.split(" (", 1)[0]))
    return list(dict.fromkeys(libs))


def shared_libraries(binary: str) -> list[Path]:
    """The shared libraries (and the dynamic loader) `binary` needs, from ldd.

    LD_PRELOAD is emptied for ldd: ldd lists preloaded libraries too, and what
    the builder's environment preloads (libfaketime, a profiler, ...) must not
    land in the initramfs (issue 16 item 12)."""
    proc = run.run(["ldd", binary], quiet=True, check=False, env={"LD_PRELOAD": ""})
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        if "not a dynamic executable" in (text + proc.stderr.decode(errors="replace")):
            return []
        raise BuildError(f"ldd {binary} failed: {run.tail(proc.stderr.decode(), 3)}")
    return parse_ldd(text)


def plain_module_name(path: Path) -> Path:
    """foo.ko.xz -> foo.ko (a plain .ko stays as it is)."""
    return path.with_suffix("") if path.suffix in COMPRESSED_SUFFIXES else path


def decompress_module(src: Path, dest: Path) -> str:
    """Write `src` (.ko, .ko.xz, .ko.gz or .ko.zst) to `dest` uncompressed; the
    compression undone ("" for a plain module). Deterministic: same src, same bytes."""
    htree.ensure_dir(dest.parent)
    if src.suffix == ".xz":
        try:
            dest.write_bytes(lzma.decompress(src.read_bytes()))
        except lzma.LZMAError as exc:
            raise BuildError(f"cannot decompress kernel module {src}: {exc}") from None
        return "xz"
    if src.suffix == ".gz":
        try:
            dest.write_bytes(gzip.decompress(src.read_bytes()))
        except (OSError, EOFError) as exc:
            raise BuildError(f"cannot decompress kernel module {src}: {exc}") from None
        return "gzip"
    if src.suffix == ".zst":
        tools.require("zstd")
        run.run(["zstd", "-d", "-q", "-f", "-o", str(dest), str(src)], quiet=True)
        return "zstd"
    shutil.copyfile(src, dest)
    return ""


def compress_argv(compression: str, cpio_file: Path, out: Path) -> list[str]:
    """A compressor writing `out` that stores neither file name nor timestamp."""
    if compression == "gzip":
        # gzip -n: no name, no mtime in the header; --keep/-c are avoided so
        # the output is cpio_file.gz, renamed to `out` by pack()
        return ["gzip", "-n", "-9", "-f", str(cpio_file)]
    return ["zstd", "-q", "-19", "-T1", "--no-progress", "-f", "-o", str(out), str(cpio_file)]


def cpio_argv(archive: Path) -> list[str]:
    """cpio reading NUL-separated member names on stdin (run in the staging dir)."""
    return ["cpio", "--create", "--null", "--format=newc", "--reproducible",
            "--owner=0:0", "--quiet", "-O", str(archive)]


def render_init(cfg: Config, modules: list[str], version: str) -> str:
    return templates.render("init.sh.j2", modules=modules, kernel_version=version,
                            filesystem=cfg.image.filesystem, overlay_dirs=OVERLAY_DIRS,
                            tmpfs_dirs=TMPFS_DIRS)


def _copy_file(src: Path, dest: Path) -> None:
    htree.ensure_dir(dest.parent)
    shutil.copyfile(src, dest)
    os.chmod(dest, stat.S_IMODE(os.stat(src).st_mode))


def stage(cfg: Config, paths: Paths, tree: Path) -> dict:
    """Populate `tree` with everything the initramfs holds; return a manifest."""
    info = kernel.info(paths)
    version = info["version"]
    busybox = tools.require("busybox")
    veritysetup = tools.require("veritysetup")
    for d in ("bin", "sbin", "dev", "proc", "sys", "run", "newroot", "etc", "lib", "lib64"):
        htree.ensure_dir(tree / d)         # 0755 whatever the umask
    if shared_libraries(busybox):
        raise BuildError(f"{busybox} is not statically linked",
                         hint="install busybox-static (apt-get install busybox-static)")
    _copy_file(Path(busybox), tree / "bin" / "busybox")
    for applet in APPLETS:
        (tree / "bin" / applet).symlink_to("busybox")
    _copy_file(Path(veritysetup), tree / "sbin" / "veritysetup")
    libs = shared_libraries(veritysetup)
    for lib in libs:
        # copy the resolved file under the name the loader looks for
        _copy_file(lib.resolve(), tree / lib.relative_to("/"))

    root = paths.kernel_modules
    files, builtin = module_closure(root, version, boot_modules(cfg), OPTIONAL_MODULES)
    moddir = (root / "lib" / "modules" / version).resolve()
    load = []
    sources: dict[str, dict[str, str]] = {}
    for ko in files:
        rel = Path(ko).resolve().relative_to(moddir)
        dest = Path("lib/modules") / version / plain_module_name(rel)
        undone = decompress_module(Path(ko), tree / dest)
        os.chmod(tree / dest, 0o644)
        load.append(str(dest))
        sources[str(dest)] = {"from": str(Path(ko).resolve().relative_to(root.resolve())),
                              "decompressed": undone or "no",
                              "sha256": sha256_file(tree / dest)}
    init = tree / "init"
    init.write_text(render_init(cfg, load, version))
    init.chmod(0o755)
    (tree / "etc" / "hbos-initramfs").write_text(f"kernel {version}\n")
    os.chmod(tree / "etc" / "hbos-initramfs", 0o644)
    return {"kernel_version": version, "modules": load, "builtin_modules": builtin,
            "module_sources": sources,
            "modules_note": "boot modules only, decompressed at build time for busybox "
                            "insmod; the kernel's full module tree is in the root image "
                            "(see verity.json kernel_modules)",
            "libraries": [str(p) for p in libs]}


def normalize(tree: Path, epoch: int) -> list[str]:
    """Set every entry's mtime to `epoch`; return member names, sorted (C locale)."""
    htree.normalize_mtimes(tree, epoch)
    return sorted((rel for _full, rel, _st in htree.walk(tree)), key=lambda n: n.encode())


def pack(tree: Path, epoch: int, compression: str, out: Path, log: Path | None = None) -> None:
    """tree -> reproducible compressed newc cpio at `out`."""
    names = normalize(tree, epoch)
    cpio_file = out.with_name(out.name + ".cpio")
    try:
        run.run(cpio_argv(cpio_file), cwd=tree, input=b"\0".join(n.encode() for n in names) + b"\0",
                log=log, quiet=True)
        tools.require(compression)
        run.run(compress_argv(compression, cpio_file, out), log=log, quiet=True)
        if compression == "gzip":
            os.replace(cpio_file.with_name(cpio_file.name + ".gz"), out)
    finally:
        for leftover in (cpio_file, cpio_file.with_name(cpio_file.name + ".gz")):
            if leftover.exists():
                leftover.unlink()


def build(cfg: Config, paths: Paths) -> None:
    """The initramfs stage: stage a tree, pack it, write initramfs.json beside it."""
    tools.require("cpio")
    tools.require("modprobe")
    out = paths.initramfs
    with atomic_path(paths.initramfs_dir) as tree:
        htree.ensure_dir(tree)
        manifest = stage(cfg, paths, tree)
        with atomic_path(out) as tmp:
            pack(tree, cfg.source_date_epoch, cfg.initramfs.compression, tmp,
                 log=paths.log("initramfs"))
    manifest.update({"file": out.name, "sha256": sha256_file(out),
                     "compression": cfg.initramfs.compression})
    write_json(paths.initramfs_manifest, manifest)
    print(f"initramfs: {out} ({len(manifest['modules'])} modules, "
          f"{out.stat().st_size // 1024} KiB)", file=sys.stderr)
