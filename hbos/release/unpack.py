"""Unpacking a release tarball: only what its manifest names, no byte more.

hbos.util.archive refuses unsafe members (escaping paths and links, devices,
duplicates); this adds what a release knows about itself, checked before a
byte is written: manifest.json is read from the tarball first (bounded), then
every member must be a regular file the manifest names, with exactly the
manifest's size, and the manifest's total must fit the free space. Each file
is then written in chunks and never past its manifest size. So a small
tarball holding a 6 GiB file of zeros (a gzip bomb) is refused after reading
its headers, having written nothing; download_release and verify-release both
unpack through here, with the same free-space limit.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from pathlib import Path

from hbos.errors import ReleaseError, UnsafeArchive
from hbos.release import layout
from hbos.util import archive, limits
from hbos.util.fsutil import atomic_path

RESERVE = 64 << 20  # left free on the disk after unpacking a release
SIGNATURE_BYTES = 64 << 10  # manifest.json.sig: a small JSON document (hbos.release.provenance)
CHUNK = 1 << 20


def free_space(directory: Path) -> int:
    """Bytes a release may take in `directory` (its free space less RESERVE)."""
    return max(0, shutil.disk_usage(directory).free - RESERVE)


def _manifest(tar: tarfile.TarFile, by_name: dict[str, tarfile.TarInfo],
              name: str) -> layout.Manifest:
    m = by_name.get(layout.MANIFEST)
    if m is None or not m.isfile():
        raise ReleaseError(f"{name}: no {layout.MANIFEST} in the tarball")
    if m.size > limits.MANIFEST_BYTES:
        raise ReleaseError(f"{name}: {layout.MANIFEST} is larger than "
                           f"{limits.MANIFEST_BYTES} bytes ({m.size} bytes)")
    fh = tar.extractfile(m)
    assert fh is not None
    source = f"{name}:{layout.MANIFEST}"
    data = limits.parse_json(fh.read(limits.MANIFEST_BYTES + 1), source, "release manifest",
                             ReleaseError)
    return layout.Manifest.parse(data, source)


def plan(tar: tarfile.TarFile, name: str, max_bytes: int | None) -> list[tarfile.TarInfo]:
    """The members to write, after refusing anything the manifest does not allow."""
    try:
        members = archive.check_members(tar, name)
        by_name = {posixpath.normpath(m.name): m for m in members}
        manifest = _manifest(tar, by_name, name)
    except archive.CORRUPT as exc:
        raise UnsafeArchive(f"{name}: not a readable tar archive "
                            f"({exc.__class__.__name__}: {exc})") from None
    sizes = {f.name: f.size for f in manifest.files}
    sizes[layout.MANIFEST] = by_name[layout.MANIFEST].size
    sig = by_name.get(layout.SIGNATURE)
    if sig is not None:  # signs manifest.json, so the manifest cannot name it: bound it here
        if sig.size > SIGNATURE_BYTES:
            raise ReleaseError(f"{name}: {layout.SIGNATURE} is larger than {SIGNATURE_BYTES} "
                               f"bytes ({sig.size} bytes)")
        sizes[layout.SIGNATURE] = sig.size
    for norm, m in by_name.items():
        if norm not in sizes:
            raise ReleaseError(f"{name}: unexpected file not in the manifest: '{m.name}'")
        if not m.isfile():
            raise ReleaseError(f"{name}: member '{m.name}' is not a regular file")
        if m.size != sizes[norm]:
            raise ReleaseError(f"{name}: member '{m.name}' holds {m.size} bytes, the manifest "
                               f"says {sizes[norm]}")
    missing = sorted(set(sizes) - set(by_name))
    if missing:
        raise ReleaseError(f"{name}: missing file(s): {', '.join(missing)}")
    total = sum(sizes.values())
    if max_bytes is not None and total > max_bytes:
        raise ReleaseError(f"{name}: its files need {total} bytes, more than the {max_bytes} "
                           "free at the destination")
    return [by_name[n] for n in sorted(sizes)]


def extract(tarball: str | os.PathLike, dest: str | os.PathLike, *,
            max_bytes: int | None = None) -> None:
    """Unpack a release tarball into `dest` (atomically), refusing first what
    the manifest does not name or size, or what does not fit in max_bytes."""
    tarball = Path(tarball)
    try:
        tar = tarfile.open(tarball, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise UnsafeArchive(f"{tarball}: not a readable tar archive "
                            f"({archive.one_line(exc)})") from None
    with tar:
        members = plan(tar, tarball.name, max_bytes)
        with atomic_path(dest) as tmp:
            tmp.mkdir(parents=True)
            for m in members:
                _write(tar, m, tmp / posixpath.normpath(m.name), tarball.name)


def _write(tar: tarfile.TarFile, m: tarfile.TarInfo, target: Path, name: str) -> None:
    """Copy one member, never past its (manifest-checked) size."""
    written = 0
    try:
        src = tar.extractfile(m)
        assert src is not None
        with src, open(target, "xb") as out:
            while chunk := src.read(min(CHUNK, m.size - written + 1)):
                written += len(chunk)
                if written > m.size:
                    raise ReleaseError(f"{name}: member '{m.name}' holds more than its "
                                       f"{m.size} bytes")
                out.write(chunk)
    except archive.CORRUPT as exc:
        raise UnsafeArchive(f"{name}: extraction failed: {exc.__class__.__name__}: "
                            f"{exc}") from None
    if written != m.size:
        raise UnsafeArchive(f"{name}: member '{m.name}' is truncated ({written} of "
                            f"{m.size} bytes)")
    os.chmod(target, 0o644)
    try:
        os.utime(target, (m.mtime, m.mtime))
    except (OverflowError, ValueError, OSError):
        pass  # an absurd header mtime: the file keeps the time it was written
