"""The pinned source set the `hyperbeam` stage builds from: fetch, verify, unpack.

resources/hyperbeam-sources.json names each source: HyperBEAM at one commit,
every dependency its rebar.config names (each at one commit), the pc plugin,
WAMR and LMDB. Each entry has two pins:

- `sha256`: of the archive file as the source mirror holds it (a `git
  archive` of the commit, gzip -n; LMDB: Debian's orig tarball);
- `tree`: of the unpacked content (tree_digest: every file's path below the
  archive's one top folder, its sha256 and executable bit, every symlink's
  target), so an archive with other compression or another top folder name
  (GitHub's generated tarball of the same commit) verifies too.

Where an archive comes from (sources.mirror): a directory holding the files,
a URL prefix they are fetched from, or "" for each entry's upstream `url`.
A file the mirror lacks is fetched from its upstream URL, saying so. Every
archive lands in build/downloads/ and is used only when a pin matches: its
bytes (sha256), or else its unpacked tree (tree).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hbos.errors import BuildError, ConfigError, DownloadError, HashMismatch, UnsafeArchive
from hbos.paths import RESOURCES
from hbos.util import archive, fetch, fsutil, tree as htree

PINS = RESOURCES / "hyperbeam-sources.json"


@dataclass(frozen=True)
class Source:
    name: str
    repo: str
    commit: str
    file: str        # the archive's file name (in a mirror, in build/downloads)
    sha256: str      # of the archive bytes
    tree: str        # tree_digest of the unpacked content
    url: str         # upstream
    dest: str        # where it goes in the build tree (relative to /build)
    licence: str
    # fnmatch patterns of files the mirror's archive lacks (SOURCES.md): left out of
    # the tree digest and removed after unpacking, so every archive gives one tree
    omit: tuple[str, ...] = ()
    # when set, only the paths matching one of these patterns are kept (the mirror
    # holds a part of a repository: ao's servers/cu): the rest is omitted alike
    only: tuple[str, ...] = ()


def load(path: Path = PINS) -> list[Source]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [Source(**{**entry, "omit": tuple(entry.get("omit", ())),
                          "only": tuple(entry.get("only", ()))})
                for entry in data["sources"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a source pin list ({exc})") from None


def by_name(sources: list[Source], name: str) -> Source:
    for s in sources:
        if s.name == name:
            return s
    raise ConfigError(f"{PINS}: no source named {name!r}")


def _left_out(path: str, omit: tuple[str, ...], only: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in omit) or \
        bool(only) and not any(fnmatch.fnmatch(path, p) for p in only)


def omitted(root: Path, omit: tuple[str, ...], only: tuple[str, ...] = ()) -> list[str]:
    """The files and links below `root` that `omit` (or, when set, not `only`) leaves out."""
    return [e["path"] for e in htree.manifest(root)
            if e["type"] != "dir" and _left_out(e["path"], omit, only)]


def tree_digest(root: Path, omit: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> str:
    """sha256 over the sorted (path, sha256 and executable bit | symlink target)
    of everything below `root` but `omit`; directories, owners, times and the
    other mode bits (umask, tar filters) do not count."""
    h = hashlib.sha256()
    for entry in htree.manifest(root):
        if _left_out(entry["path"], omit, only):
            continue
        if entry["type"] == "file":
            h.update(f"f {entry['path']} {entry['sha256']} {entry['mode'] & 0o100:o}\n".encode())
        elif entry["type"] == "symlink":
            h.update(f"l {entry['path']} {entry['target']}\n".encode())
    return h.hexdigest()


def mirror_location(mirror: str, source: Source, resolve) -> tuple[str, Path | None]:
    """(url, local path) of `source` in the mirror; ("", None) when no mirror is set."""
    if not mirror:
        return "", None
    if mirror.startswith(("http://", "https://")):
        return mirror.rstrip("/") + "/" + source.file, None
    return "", resolve(mirror) / source.file


def fetch_one(source: Source, mirror: str, downloads: Path, resolve, say) -> Path:
    """The archive in build/downloads/, fetched if missing; not yet verified."""
    dest = downloads / source.file
    if dest.is_file():
        return dest
    downloads.mkdir(parents=True, exist_ok=True)
    url, local = mirror_location(mirror, source, resolve)
    if local is not None:
        if local.is_file():
            with fsutil.atomic_path(dest) as tmp:
                shutil.copyfile(local, tmp)
            return dest
        say(f"  {source.name}: not in the mirror {local.parent}; fetching {source.url}")
    elif url:
        try:
            fetch.download(url, dest)
            return dest
        except DownloadError as exc:
            say(f"  {source.name}: {exc}; fetching {source.url}")
    try:
        fetch.download(source.url, dest)
    except DownloadError as exc:
        raise BuildError(f"cannot fetch {source.name} ({source.repo} {source.commit[:12]}): "
                         f"{exc}", hint="set sources.mirror to a directory holding "
                                        f"{source.file}") from None
    return dest


def unpack(source: Source, archive_path: Path, dest: Path) -> str:
    """Extract the archive's one top folder to `dest` and check the pins; returns
    which pin matched ("sha256" or "tree"). A mismatch removes the download."""
    actual = fsutil.sha256_file(archive_path)
    by_bytes = actual == source.sha256
    scratch = dest.parent / f".unpack-{source.name}-{os.getpid()}"
    fsutil.remove(scratch)
    try:
        try:
            archive.extract(archive_path, scratch)
        except UnsafeArchive:
            if not by_bytes:
                fsutil.remove(archive_path)   # not what was pinned: fetch again next time
            raise
        tops = os.listdir(scratch)
        if len(tops) != 1 or not (scratch / tops[0]).is_dir():
            raise BuildError(f"{archive_path}: expected one top folder, found {sorted(tops)[:5]}")
        top = scratch / tops[0]
        for rel in omitted(top, source.omit, source.only):
            os.unlink(top / rel)
        if not by_bytes:
            got = tree_digest(top)
            if got != source.tree:
                fsutil.remove(archive_path)
                raise HashMismatch(f"{source.name}: {archive_path.name} matches neither pin "
                                   f"(archive sha256 {actual}, "
                                   f"tree {got}; pinned {source.sha256} / {source.tree})")
        fsutil.remove(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(top, dest)
    finally:
        fsutil.remove(scratch)
    return "sha256" if by_bytes else "tree"
