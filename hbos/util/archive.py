"""Safe extraction of tar archives.

Every member is checked before anything is written: absolute paths, `..`,
symlinks or hardlinks that leave the destination, device nodes, fifos and
duplicate members are refused. Extraction goes to a temporary sibling
directory that is renamed into place only when complete.

The SNP bundle, content tarballs and the edk2 sources (hbos.stages.edk2, with
skip_host_symlinks) go through extract(). A release tarball goes through
hbos.release.unpack instead, which refuses members with check_members() here and
then writes only the files its manifest names.
"""

from __future__ import annotations

import lzma
import os
import posixpath
import tarfile
import zlib
from pathlib import Path

from hbos.errors import UnsafeArchive
from hbos.util.fsutil import atomic_path


def _inside(path: str) -> bool:
    norm = posixpath.normpath(path)
    return not (norm.startswith("/") or norm == ".." or norm.startswith("../"))


def _resolve(path: str, links: dict[str, str]) -> str | None:
    """`path` (relative to the archive root) with the archive's own symlinks
    followed; None when it leaves the root (or loops).

    normpath alone is not enough: `d/l -> ..` then `x -> d/l/..` looks inside
    lexically ("d") but resolves to the destination's parent.
    """
    parts: list[str] = []
    todo = path.split("/")
    hops = 0
    while todo:
        comp = todo.pop(0)
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(comp)
        target = links.get("/".join(parts))
        if target is not None:
            hops += 1
            if hops > 40 or target.startswith("/"):
                return None
            parts.pop()
            todo = target.split("/") + todo
    return "/".join(parts)


def check_members(tar: tarfile.TarFile, name: str,
                  skipped: list[str] | None = None) -> list[tarfile.TarInfo]:
    """Return the members of `tar` after refusing every unsafe one.

    skipped: when given, a symlink to an absolute path (a link to the building
    host, never into the tree) is left out and named there instead of refused."""
    seen: set[str] = set()
    files: set[str] = set()   # regular files so far: the only valid hardlink targets
    members = []
    candidates = tar.getmembers()
    if skipped is not None:
        host_links = [m for m in candidates if m.issym() and m.linkname.startswith("/")]
        skipped.extend(f"{m.name} -> {m.linkname}" for m in host_links)
        candidates = [m for m in candidates if m not in host_links]
    symlinks = {posixpath.normpath(m.name): m.linkname for m in candidates if m.issym()}
    for m in candidates:
        path = m.name
        norm = posixpath.normpath(path)
        if path.startswith("/") or not _inside(path):
            raise UnsafeArchive(f"{name}: member '{path}' would be written outside the destination")
        if m.isdev() or m.isfifo() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise UnsafeArchive(f"{name}: member '{path}' is a device node or fifo")
        if m.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(norm), m.linkname))
            if m.linkname.startswith("/") or not _inside(target) or _resolve(
                    posixpath.join(posixpath.dirname(norm), m.linkname), symlinks) is None:
                raise UnsafeArchive(f"{name}: symlink '{path}' -> '{m.linkname}' leaves the destination")
        if m.islnk():
            if m.linkname.startswith("/") or not _inside(m.linkname) \
                    or _resolve(m.linkname, symlinks) is None:
                raise UnsafeArchive(f"{name}: hardlink '{path}' -> '{m.linkname}' leaves the destination")
            if posixpath.normpath(m.linkname) not in files:
                raise UnsafeArchive(f"{name}: hardlink '{path}' -> '{m.linkname}' names no "
                                    "regular file stored before it")
        if m.isfile():
            files.add(norm)
        if norm in seen and not m.isdir():
            raise UnsafeArchive(f"{name}: member '{path}' appears more than once")
        seen.add(norm)
        members.append(m)
    # A member must not be reached through a symlink another member made.
    links = {posixpath.normpath(m.name) for m in members if m.issym()}
    for m in members:
        parts = posixpath.normpath(m.name).split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise UnsafeArchive(f"{name}: member '{m.name}' is written through a symlink")
    return members


# A truncated or corrupt compressed stream: gzip raises EOFError, zlib its own error.
_CORRUPT = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
CORRUPT = _CORRUPT


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (tarfile's "r:*" lists every method tried)."""
    return " ".join(str(exc).split())


def extract(archive: str | os.PathLike, dest: str | os.PathLike, *,
            max_bytes: int | None = None, skip_host_symlinks: bool = False) -> list[str]:
    """Extract `archive` (any tar compression) into `dest` atomically and safely.

    max_bytes: refuse, before writing anything, an archive whose files add up
    to more (e.g. the free space: a lying tarball must not fill the disk).
    skip_host_symlinks: leave out symlinks to absolute paths instead of refusing
    the archive; returns them ("name -> target"), else [].
    """
    skipped: list[str] | None = [] if skip_host_symlinks else None
    archive = Path(archive)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise UnsafeArchive(f"{archive}: not a readable tar archive "
                            f"({one_line(exc)})") from None
    with tar, atomic_path(dest) as tmp:
        try:
            members = check_members(tar, archive.name, skipped)
        except _CORRUPT as exc:  # reading the member list hit a damaged stream
            raise UnsafeArchive(f"{archive}: not a readable tar archive "
                                f"({exc.__class__.__name__}: {exc})") from None
        total = sum(m.size for m in members if m.isfile())
        if max_bytes is not None and total > max_bytes:
            raise UnsafeArchive(f"{archive}: its files need {total} bytes, more than the "
                                f"{max_bytes} allowed (free space at the destination)")
        tmp.mkdir(parents=True)
        try:
            tar.extractall(tmp, members=members, filter="tar")
        except _CORRUPT as exc:
            raise UnsafeArchive(f"{archive}: extraction failed: {exc}") from None
    return skipped or []
