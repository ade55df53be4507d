"""Build the SEV-SNP OVMF (OvmfPkg/AmdSev/AmdSevX64.dsc) from Debian's edk2 source.

Debian's binary ovmf packages do not ship the AmdSev build, but the edk2
source package (trixie, 2025.02) builds it. The steps, all under
build/firmware/ and logged to build/logs/firmware.log:

1. fetch the `.orig.tar.xz` and `.debian.tar.xz` from the Debian pool, each
   pinned by the sha256 the archive's `Sources` index lists;
2. unpack both safely with hbos.util.archive (for the orig tarball, its one
   absolute host symlink skipped and named) and
   apply debian/patches/series in order with `patch -p1`;
3. two snags of building outside Debian's packaging:
   - the orig tarball lacks BaseTools' brotli submodule: it is filled from the
     identical copy MdeModulePkg embeds (Debian's brotlicompress-disable.diff
     already drops BrotliCompress from the BaseTools build; the copy keeps a
     build without that patch working too);
   - Debian's grub has no `sevsecret` module although OvmfPkg/AmdSev/Grub/grub.sh
     lists it: it is dropped from the module list of the unpacked copy;
4. reproducibility: grub.sh packs grub.cfg into a FAT memdisk with mkfs.msdos
   (random volume id, creation time) and mcopy (file times = now); the copy is
   edited to `mkfs.msdos --invariant` and `mcopy -m` with grub.cfg's mtime set
   to SOURCE_DATE_EPOCH, and the build runs with SOURCE_DATE_EPOCH, TZ=UTC and
   LC_ALL=C (edksetup.sh pins PYTHONHASHSEED); the tree's path is padded to a
   fixed length, because GenFw reserves space for the absolute path of every
   module (see padded_tree());
5. `make -C BaseTools`, then `build -a X64 -t GCC5 -b RELEASE -p
   OvmfPkg/AmdSev/AmdSevX64.dsc` inside edksetup.sh's environment;
6. check that sev-snp-measure accepts the image (SEV metadata with the
   SNP_KERNEL_HASHES section) and place build/firmware/OVMF.fd atomically,
   with build/firmware/firmware.json recording sources, host tools and hashes.

Nothing outside build/ is modified.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hbos.config import Config
from hbos.errors import BuildError, ToolMissing
from hbos.measure import digest
from hbos.paths import Paths
from hbos.stages import hosttools
from hbos.util import archive, cache, fetch, run, tools
from hbos.util.fsutil import atomic_path, remove, sha256_file, write_json

GRUB_SCRIPT = "OvmfPkg/AmdSev/Grub/grub.sh"
GRUB_CFG = "OvmfPkg/AmdSev/Grub/grub.cfg"
BROTLI_BASETOOLS = "BaseTools/Source/C/BrotliCompress/brotli"
BROTLI_EMBEDDED = "MdeModulePkg/Library/BrotliCustomDecompressLib/brotli"
# Length of the edk2 WORKSPACE path (see padded_tree()).
WORKSPACE_LENGTH = 200


@dataclass(frozen=True)
class Source:
    """One pinned file of the Debian source package."""
    url: str
    sha256: str

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def sources(cfg: Config) -> tuple[Source, Source]:
    """(orig tarball, debian tarball) as pinned in config."""
    fw = cfg.firmware
    return (Source(fw.orig_url, fw.orig_sha256), Source(fw.debian_url, fw.debian_sha256))


# ----------------------------------------------------------------- fetching


def fetch_source(src: Source, downloads: Path, *, retries: int = 3,
                 backoff: float = 1.0) -> Path:
    """The pinned file in `downloads`, downloaded unless a verified copy is there.

    A sha256 mismatch raises HashMismatch showing both hashes and keeps
    nothing; a failed download raises DownloadError naming the URL.
    """
    dest = downloads / src.name
    if dest.is_file() and sha256_file(dest) == src.sha256.lower():
        return dest
    fetch.download(src.url, dest, sha256=src.sha256, retries=retries, backoff=backoff)
    return dest


# ------------------------------------------------------------ build inputs


def parse_series(text: str) -> list[str]:
    """Patch file names from a quilt `series` file, in order.

    Blank lines and `#` comments are skipped; per-patch options after the
    name (e.g. `-p1`) are ignored (every Debian edk2 patch is -p1).
    """
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line.split()[0])
    return names


def patch_argv(patch: Path) -> list[str]:
    """Apply one patch to the tree in the current directory (fails on fuzz-free rejects)."""
    return ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-i", str(patch)]


def grub_script(text: str, drop_modules: tuple[str, ...]) -> str:
    """OvmfPkg/AmdSev/Grub/grub.sh edited to build with Debian's grub, reproducibly.

    - modules in `drop_modules` (Debian's grub has no `sevsecret`) leave the
      GRUB_MODULES list;
    - `mkfs.msdos --invariant` fixes the volume id and creation time
      (dosfstools >= 4.2);
    - `mcopy -m` stamps grub.cfg with its own mtime instead of the time now
      (the caller sets that mtime to SOURCE_DATE_EPOCH).
    Raises BuildError when the script no longer has the expected shape, so a
    new edk2 cannot silently skip an edit.
    """
    match = re.search(r'GRUB_MODULES="(.*?)"', text, re.S)
    if not match:
        raise BuildError(f"{GRUB_SCRIPT}: no GRUB_MODULES list found")
    kept = [line for line in match.group(1).split("\n") if line.strip() not in drop_modules]
    text = text[:match.start(1)] + "\n".join(kept) + text[match.end(1):]
    for old, new in (("mkfs.msdos -C", "mkfs.msdos --invariant -C"),
                     ("mcopy -i", "mcopy -m -i")):
        if text.count(old) != 1:
            raise BuildError(f"{GRUB_SCRIPT}: expected one '{old}' to make reproducible, "
                             f"found {text.count(old)}")
        text = text.replace(old, new)
    return text


# A sourced script sees the caller's "$@": edksetup.sh would reject build's
# arguments (-a ...) and return 1 silently, so they are set aside first.
EDKSETUP_THEN_BUILD = 'args=("$@"); set --; . ./edksetup.sh && exec build "${args[@]}"'


def build_argv(cfg: Config, jobs: int) -> list[str]:
    """`build` inside edksetup.sh's environment (run from the tree's top)."""
    fw = cfg.firmware
    return ["bash", "-c", EDKSETUP_THEN_BUILD, "edk2-build",
            "-a", "X64", "-t", fw.toolchain, "-b", fw.build_type, "-p", fw.platform,
            "-n", str(jobs), *fw.build_options]


def basetools_argv(jobs: int) -> list[str]:
    return ["make", "-C", "BaseTools", f"-j{jobs}"]


def build_env(source_date_epoch: int) -> dict[str, str]:
    """Environment entries that keep the build independent of time and locale."""
    # (edksetup.sh itself exports PYTHONHASHSEED=1 for the Python build tools)
    return {"SOURCE_DATE_EPOCH": str(source_date_epoch), "TZ": "UTC", "LC_ALL": "C",
            "PYTHONDONTWRITEBYTECODE": "1"}


def missing_build_deps(find: Callable[[str], str | None] = tools.find,
                       exists: Callable[[str], bool] = os.path.exists) -> dict[str, str]:
    """{program or file: Debian package} for every build dependency not installed."""
    out = {p: tools.package_for(p) for p in hosttools.FIRMWARE_BUILD if find(p) is None}
    out.update({f: pkg for f, pkg in hosttools.FIRMWARE_FILES.items() if not exists(f)})
    return out


def require_build_deps() -> None:
    missing = missing_build_deps()
    if missing:
        pkgs = " ".join(sorted(set(missing.values())))
        raise ToolMissing(f"the firmware build needs {', '.join(missing)}, not installed",
                          hint=f"install them with: apt-get install {pkgs}")


# ----------------------------------------------------------------- stages


def _step(msg: str) -> None:
    print(f"firmware: {msg}", file=sys.stderr, flush=True)


def padded_tree(work: Path, name: str, length: int = WORKSPACE_LENGTH) -> Path:
    """`work/NAME___...`: the edk2 WORKSPACE path, padded to exactly `length` characters.

    GenFw sizes each PE image's CodeView debug entry by the length of the
    absolute .dll path (BaseTools/Source/C/GenFw/Elf64Convert.c: strlen of
    the image name); RELEASE zeroes the entry but keeps its space, so the
    length of the build directory changes 37 modules and the compressed FV.
    The characters themselves do not reach the image: two builds whose
    WORKSPACE paths have the same length are identical.
    """
    pad = length - len(str(work)) - 1 - len(name)
    if pad < 0 or pad + len(name) > 255:
        raise BuildError(f"cannot place the edk2 tree at a {length}-character path under {work} "
                         f"({len(str(work))} characters)",
                         hint="use a shorter build_dir: the firmware is only reproducible "
                              "from a fixed-length workspace path")
    return work / (name + "_" * pad)


def unpack(orig: Path, debian: Path, work: Path, length: int = WORKSPACE_LENGTH) -> Path:
    """Fresh edk2 tree with its debian/ directory under `work`; returns the tree.

    The tree's path has exactly `length` characters (padded_tree()).
    """
    remove(work)
    # The edk2 orig tarball holds one symlink to an absolute host path
    # (EmulatorPkg/Unix/Host/X11IncludeHack -> /opt/X11/include), which archive.py
    # rightly refuses: it points at the host, and the OVMF build does not use it.
    for link in archive.extract(orig, work / "orig", skip_host_symlinks=True):
        _step(f"  skipped the host symlink {link} (not used by the build)")
    tops = [p for p in (work / "orig").iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise BuildError(f"{orig.name}: expected one top directory, found {len(tops)}")
    archive.extract(debian, work / "debian-pkg")
    if not (work / "debian-pkg" / "debian" / "patches").is_dir():
        raise BuildError(f"{debian.name}: has no debian/patches directory")
    tree = padded_tree(work, tops[0].name, length)
    tops[0].rename(tree)
    (work / "debian-pkg" / "debian").rename(tree / "debian")
    remove(work / "debian-pkg")
    remove(work / "orig")
    return tree


def apply_patches(tree: Path, log: Path) -> int:
    series = tree / "debian" / "patches" / "series"
    names = parse_series(series.read_text()) if series.is_file() else []
    for name in names:
        run.run(patch_argv(tree / "debian" / "patches" / name), cwd=tree, log=log, quiet=True)
    return len(names)


def fill_brotli(tree: Path) -> bool:
    """Copy MdeModulePkg's embedded brotli into BaseTools' empty submodule dir."""
    target, embedded = tree / BROTLI_BASETOOLS, tree / BROTLI_EMBEDDED
    if (target.is_dir() and any(target.iterdir())) or not (embedded / "c").is_dir():
        return False
    remove(target)
    shutil.copytree(embedded, target, symlinks=True)
    return True


def fix_grub(tree: Path, drop_modules: tuple[str, ...], source_date_epoch: int) -> None:
    script = tree / GRUB_SCRIPT
    script.write_text(grub_script(script.read_text(), drop_modules))
    # mcopy -m copies this mtime into the FAT directory entry.
    os.utime(tree / GRUB_CFG, (source_date_epoch, source_date_epoch))


def find_output(tree: Path, cfg: Config) -> Path:
    fw = cfg.firmware
    hits = sorted(tree.glob(f"Build/*/{fw.build_type}_{fw.toolchain}/FV/OVMF.fd"))
    if len(hits) != 1:
        raise BuildError(f"the edk2 build finished but left {len(hits)} OVMF.fd files "
                         f"under {tree / 'Build'}")
    return hits[0]


def check_ovmf_image(path: Path) -> None:
    """sev-snp-measure must accept the image (hbos.measure.digest.Firmware checks the
    SEV metadata and its SNP_KERNEL_HASHES section; raises MeasurementError)."""
    digest.Firmware(path)


def host_tools() -> dict[str, str]:
    """First version line of each host tool that goes into the image."""
    out = {}
    for prog, arg in (("gcc", "--version"), ("nasm", "-v"), ("iasl", "-v"),
                      ("grub-mkimage", "--version"), ("mkfs.msdos", "--help"),
                      ("mcopy", "--version")):
        proc = run.run([prog, arg], check=False, quiet=True, log=None)
        text = (proc.stdout + proc.stderr).decode(errors="replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        hit = next((ln for ln in lines if re.search(r"\d+\.\d+|\d{6,}", ln)),
                   lines[0] if lines else "")
        out[prog] = hit
    return out


def toolchain() -> dict[str, str]:
    """Version lines of every host program the build runs (the cache key's part)."""
    out = host_tools()
    for prog, arg in (("make", "--version"), ("g++", "--version"), ("python3", "--version"),
                      ("patch", "--version"), ("bash", "--version")):
        proc = run.run([prog, arg], check=False, quiet=True, log=None)
        lines = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
        out[prog] = lines[0].strip() if lines else ""
    return out


def cache_inputs(cfg: Config) -> dict[str, Any]:
    """What determines OVMF.fd and firmware.json: the pinned sources, the build
    options, the firmware keys the stage reads (keep_tree aside: it changes no
    output), SOURCE_DATE_EPOCH, the workspace length, the host toolchain, and
    this module's own source (its edits to the tree are part of the recipe)."""
    require_build_deps()
    fw = cfg.firmware
    return {
        "sources": [{"url": s.url, "sha256": s.sha256.lower()} for s in sources(cfg)],
        "platform": fw.platform, "build_type": fw.build_type, "toolchain": fw.toolchain,
        "build_options": list(fw.build_options),
        "drop_grub_modules": list(fw.drop_grub_modules),
        "source_date_epoch": cfg.source_date_epoch,
        "workspace_length": WORKSPACE_LENGTH,
        "host_tools": toolchain(),
        "recipe": sha256_file(__file__),
    }


def build_ovmf(cfg: Config, paths: Paths) -> Path:
    """The firmware stage: restored from the artifact cache (hbos.util.cache) when it
    holds a build with the same inputs, else built (and stored)."""
    cache.cached(cfg, "firmware", lambda: cache_inputs(cfg),
                 {"OVMF.fd": paths.built_ovmf, "firmware.json": paths.firmware_manifest},
                 lambda: _build(cfg, paths), stage="firmware")
    return paths.built_ovmf


def _build(cfg: Config, paths: Paths) -> Path:
    """The whole firmware build: fetch, unpack, patch, build, check, place OVMF.fd."""
    fw = cfg.firmware
    log = paths.log("firmware")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    require_build_deps()
    started = time.monotonic()
    jobs = os.cpu_count() or 1
    env = build_env(cfg.source_date_epoch)

    _step(f"[1/6] fetching the pinned edk2 source ({', '.join(s.name for s in sources(cfg))})")
    orig, debian = (fetch_source(s, paths.downloads) for s in sources(cfg))

    work = paths.firmware_work
    _step(f"[2/6] unpacking into {work} (full output: {log})")
    tree = unpack(orig, debian, work)
    count = apply_patches(tree, log)
    _step(f"[3/6] applied {count} Debian patches; fixing grub.sh and BaseTools' brotli")
    if fill_brotli(tree):
        _step(f"  filled {BROTLI_BASETOOLS} from {BROTLI_EMBEDDED}")
    fix_grub(tree, fw.drop_grub_modules, cfg.source_date_epoch)

    _step("[4/6] building BaseTools")
    run.run(basetools_argv(jobs), cwd=tree, env=env, log=log, quiet=True)
    _step(f"[5/6] building {fw.platform} ({fw.build_type}, {fw.toolchain}, {jobs} jobs; "
          "several minutes)")
    run.run(build_argv(cfg, jobs), cwd=tree, env=env, log=log, quiet=True)

    out = find_output(tree, cfg)
    check_ovmf_image(out)
    seconds = round(time.monotonic() - started, 1)
    ovmf_sha256 = sha256_file(out)
    record: dict[str, Any] = {
        "sources": [{"url": s.url, "sha256": s.sha256} for s in sources(cfg)],
        "platform": fw.platform, "build_type": fw.build_type, "toolchain": fw.toolchain,
        "build_options": list(fw.build_options),
        "drop_grub_modules": list(fw.drop_grub_modules),
        "source_date_epoch": cfg.source_date_epoch,
        "workspace_length": len(str(tree)),
        "host_tools": host_tools(),
        "sha256": ovmf_sha256, "build_seconds": seconds,
    }
    write_json(paths.firmware_manifest, record)
    with atomic_path(paths.built_ovmf) as tmp:
        shutil.copyfile(out, tmp)
    _step(f"[6/6] {paths.built_ovmf} sha256 {ovmf_sha256} ({seconds} s); "
          "sev-snp-measure accepts it")
    if not fw.keep_tree:
        remove(work)
    return paths.built_ovmf
