"""package_release: the build's launchable files -> build/release/ + release.tar.gz.

Reproducible: the same build gives the same tarball sha256. Members are
sorted, every header is normalized (mtime = SOURCE_DATE_EPOCH, uid/gid 0 with
empty owner names, mode 0644, PAX format), and the gzip header carries no
file name and mtime 0 (RFC 1952 2.3.1: MTIME 0 means "no time stamp").
Files are streamed into the archive, never read whole into memory.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import sys
import tarfile
import tomllib
from pathlib import Path

from hbos import __version__
from hbos.attest import reference
from hbos.errors import HbosError, ReleaseError
from hbos.measure import identity
from hbos.release import layout, provenance, verify
from hbos.stages import vmconfig
from hbos.stages.measure import write_measurement
from hbos.util.fsutil import atomic_path, read_json, sha256_file, write_json, write_text

TAR_CHUNK = 1 << 20


def sources(cfg, paths) -> dict[str, Path]:
    """Release file name -> the build artifact it comes from.

    Kernel, initrd and firmware are the files the build's vm-config.toml
    names: those are what the measurement covers.
    """
    vm = vmconfig.load(paths.vm_config)
    return {
        layout.IMAGE: paths.verity_image,
        layout.HASH_TREE: paths.hash_tree,
        layout.KERNEL: Path(vm["kernel_file"]),
        layout.INITRD: Path(vm["initrd_file"]),
        layout.FIRMWARE: Path(vm["ovmf_file"]),
        layout.VM_CONFIG: paths.vm_config,
        layout.MEASUREMENT: paths.measurement,
    }


def check_sources(src: dict[str, Path]) -> None:
    missing = [f"{name} ({path})" for name, path in sorted(src.items()) if not path.is_file()]
    if missing:
        raise ReleaseError(f"cannot package the release: missing artifact(s): {', '.join(missing)}",
                           hint="build them first: doit build_guest_image measure")


_FILE_KEY = re.compile(r"^(?P<key>kernel_file|initrd_file|ovmf_file)[ \t]*=.*$", re.MULTILINE)


def rewrite_vm_config(text: str) -> str:
    """The VM definition with its file paths replaced by the release's names.

    Every other line stays byte for byte; the result must parse to the same
    values apart from the three file keys.
    """
    seen: list[str] = []

    def repl(m: re.Match) -> str:
        seen.append(m["key"])
        return f"{m['key']} = {json.dumps(layout.VM_FILES[m['key']])}"

    out = _FILE_KEY.sub(repl, text)
    if sorted(seen) != sorted(layout.VM_FILES):
        raise ReleaseError(f"vm-config.toml: expected one line each for "
                           f"{', '.join(sorted(layout.VM_FILES))}, found {sorted(seen)}")
    before, after = tomllib.loads(text), tomllib.loads(out)
    if {k: v for k, v in before.items() if k not in layout.VM_FILES} != \
            {k: v for k, v in after.items() if k not in layout.VM_FILES} \
            or {k: after[k] for k in layout.VM_FILES} != layout.VM_FILES:
        raise ReleaseError("vm-config.toml: rewriting its file paths changed other values")
    return out


def _place(src: Path, dst: Path, *, link: bool) -> None:
    """Hardlink the big images (stages replace them by rename, never in place),
    copy the rest (they may live outside build/, e.g. a user's firmware)."""
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


# measurement.json fields of the launch identity (hbos.measure.identity.measurement_fields),
# carried from the build's measurement into the release's.
IDENTITY_FIELDS = ("host_data", "node_configuration", "id_key_digest", "author_key_digest",
                   "guest_svn", "snp_nif")


def release_measurement(root: Path, source_date_epoch: int, built: dict | None = None) -> dict:
    """measurement.json of the release's own files, with release-relative paths."""
    given = built or {}
    carried = {k: given[k] for k in IDENTITY_FIELDS if k in given}
    record = write_measurement(root / layout.VM_CONFIG, root / layout.MEASUREMENT,
                               source_date_epoch=source_date_epoch,
                               extra=lambda rec: carried)
    for role, name in (("kernel", layout.KERNEL), ("initrd", layout.INITRD),
                       ("firmware", layout.FIRMWARE)):
        record["files"][role]["path"] = name
    write_json(root / layout.MEASUREMENT, record)
    return record


def build_release_dir(cfg, paths, tmp: Path) -> layout.Manifest:
    """Fill `tmp` with the release files and manifest; return the manifest."""
    src = sources(cfg, paths)
    check_sources(src)
    built = read_json(paths.measurement)
    tmp.mkdir(parents=True)
    for name in (layout.IMAGE, layout.HASH_TREE, layout.KERNEL, layout.INITRD,
                 layout.FIRMWARE):
        _place(src[name], tmp / name, link=name in layout.LARGE)
    write_text(tmp / layout.VM_CONFIG, rewrite_vm_config(paths.vm_config.read_text()))
    try:
        record = release_measurement(tmp, cfg.source_date_epoch, built)
    except HbosError as exc:
        raise ReleaseError(f"cannot measure the release: {exc.message}") from None
    digest = record.get("expected_hash")
    if not digest:
        raise ReleaseError("the release has no expected launch digest "
                           f"({record.get('expected_hash_reason', 'firmware missing')})")
    if built.get("expected_hash") != digest:
        raise ReleaseError(f"{paths.measurement} expects {built.get('expected_hash')} but the "
                           f"files to package give {digest}",
                           hint="the measurement is stale: run doit measure")
    reference.write(tmp / layout.REFERENCE_VALUES, record, layout.MEASUREMENT)
    files = [layout.file_entry(tmp / n) for n in layout.PAYLOAD]
    if cfg.identity.enabled:
        files += signed_files(cfg, paths, tmp, files)
    manifest = layout.Manifest(
        name=cfg.release.name, tool_version=__version__,
        source_date_epoch=cfg.source_date_epoch, launch_digest=digest,
        files=tuple(files),
        ports=tuple(sorted(dataclasses.asdict(cfg.ports).items())))
    write_json(tmp / layout.MANIFEST, manifest.to_json())
    if cfg.identity.enabled:
        sign_manifest(cfg, tmp)
    verify.check_digest(tmp, manifest)  # the checks a downloader runs, minus re-hashing
    verify.check_identity(tmp, manifest)
    return manifest


def signed_files(cfg, paths, tmp: Path, files: list) -> list:
    """identity.enabled: the ID block, ID auth and provenance.json, as manifest entries."""
    for name, src in ((layout.ID_BLOCK, paths.id_block), (layout.ID_AUTH, paths.id_auth)):
        if not src.is_file():
            raise ReleaseError(f"identity.enabled but {src} does not exist",
                               hint="run: doit id_block")
        shutil.copyfile(src, tmp / name)
    extra = [layout.file_entry(tmp / n) for n in (layout.ID_BLOCK, layout.ID_AUTH)]
    provenance.write_provenance(cfg, paths, tmp, files + extra)
    return extra + [layout.file_entry(tmp / layout.PROVENANCE)]


def sign_manifest(cfg, tmp: Path) -> None:
    key = identity.load_private(identity.key_files(cfg).private(identity.AUTHOR))
    digest = provenance.sign_release(tmp, key)
    print(f"package_release: signed by author key {digest}", file=sys.stderr)


def tar_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    """A normalized header: nothing in it depends on who built it, or when."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tarball(root: Path, names: list[str], out: Path, *, mtime: int,
                  compresslevel: int = 6) -> str:
    """Deterministic tar.gz of `names` (files directly under `root`); returns its sha256."""
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                              compresslevel=compresslevel) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT,
                             bufsize=TAR_CHUNK) as tar:
            for name in sorted(names):
                path = root / name
                with open(path, "rb") as fh:
                    tar.addfile(tar_info(name, os.fstat(fh.fileno()).st_size, mtime), fh)
            # closing order: tar (end blocks), gzip (trailer), then the file
        digest = sha256_file(tmp)
    return digest


def package_release(cfg, paths) -> None:
    with atomic_path(paths.release_dir) as tmp:
        manifest = build_release_dir(cfg, paths, tmp)
    names = [*layout.PAYLOAD, layout.MANIFEST]
    names += [n for n in (*layout.OPTIONAL, layout.SIGNATURE)
              if (paths.release_dir / n).exists()]
    digest = write_tarball(paths.release_dir, names, paths.release_tarball,
                           mtime=cfg.source_date_epoch, compresslevel=cfg.release.compresslevel)
    write_text(paths.release_tarball_sha256, f"{digest}  {paths.release_tarball.name}\n")
    print(f"package_release: {paths.release_tarball} sha256 {digest}\n"
          f"  expected launch digest {manifest.launch_digest}\n"
          f"  install elsewhere with: doit download_release --url URL --sha256 {digest}")
