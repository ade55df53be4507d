"""The directory-tree operations the build stages share (as mkosi's tree.py).

- walk(): every entry below a root, depth first, each directory's entries
  sorted by their bytes, with the entry's lstat: the traversal the functions
  here and the stages' own loops over a tree use;
- clone(): recreate a tree as hard links (`cp -a --link`; a copy across
  filesystems), owners, modes, times and symlinks kept;
- copy(): copy files, directories and symlinks (nothing else) with modes,
  regular files optionally hard-linked;
- ensure_dir(): mkdir -p with mode 0755 whatever the umask;
- normalize_mtimes(), normalize_owners(): the reproducibility passes;
- manifest(), fingerprint(): what a tree holds (with sha256s), or a cheap stat digest;
- size(): bytes for sizing a filesystem image.

Users: content (prebuilt trees, normalisation), rootfs (clone, modules, size),
verity (clone, overlay, mtimes), initramfs (mtimes and member list), hb_node.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

from hbos.errors import BuildError, CommandFailed
from hbos.util import run
from hbos.util.fsutil import sha256_file

Entry = tuple[str, str, os.stat_result]   # (full path, path relative to the root, lstat)


def _sorted_entries(directory: str) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as it:
        return sorted(it, key=lambda e: os.fsencode(e.name))


def walk(root: str | os.PathLike) -> Iterator[Entry]:
    """Every entry below `root` (not root itself), depth first: each directory
    right before its contents, siblings in byte order; symlinks are listed, never
    followed. Paths are str (os.scandir's), not Path: this runs over whole roots."""
    stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = [
        ("", iter(_sorted_entries(os.fspath(root))))]
    while stack:
        prefix, entries = stack[-1]
        e = next(entries, None)
        if e is None:
            stack.pop()
            continue
        rel = prefix + e.name
        st = e.stat(follow_symlinks=False)
        yield e.path, rel, st
        if stat.S_ISDIR(st.st_mode):
            stack.append((rel + "/", iter(_sorted_entries(e.path))))


def manifest(root: str | os.PathLike) -> list[dict[str, Any]]:
    """[{path, type, size, sha256, mode, target?}] for every entry, sorted by path."""
    entries: list[dict[str, Any]] = []
    for full, rel, st in walk(root):
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            entries.append({"path": rel, "type": "symlink",
                            "target": os.readlink(full), "mode": mode})
        elif stat.S_ISDIR(st.st_mode):
            entries.append({"path": rel, "type": "dir", "mode": mode})
        elif stat.S_ISREG(st.st_mode):
            entries.append({"path": rel, "type": "file", "size": st.st_size,
                            "sha256": sha256_file(full), "mode": mode})
        else:
            entries.append({"path": rel, "type": "special", "mode": mode})
    entries.sort(key=lambda e: e["path"])
    return entries


def fingerprint(root: str | os.PathLike) -> str:
    """sha256 over (path, mode, size, mtime_ns, link target) of every entry: a cheap
    "did this tree change" without reading the files."""
    h = hashlib.sha256()
    for full, rel, st in walk(root):
        link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
        h.update(f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0{link}\n".encode())
    return h.hexdigest()


def ensure_dir(path: Path) -> None:
    """mkdir -p with mode 0755 for every directory it creates (whatever the umask)."""
    missing = []
    while not path.exists() and not path.is_symlink():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir()
        os.chmod(d, 0o755)


def link_or_copy(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Hard-link a build artifact into an image tree (no data copied), else copy.

    Only for files the build never edits in place; mkfs reads them, and the
    tree's mtime normalization sets the same time on the shared inode.
    """
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dest, follow_symlinks=False)


def clone_argv(src: Path, dest: Path, link: bool = True) -> list[str]:
    """cp recreating src's contents in dest: owners, modes, times, symlinks kept;
    regular files hard-linked (no data copied) unless link=False."""
    return ["cp", "-a", *(["--link"] if link else []), f"{src}/.", str(dest)]


def clone(src: Path, dest: Path, log: Path | None = None) -> None:
    """Recreate src at dest as hard links (a copy if src is on another filesystem)."""
    dest.mkdir(parents=True)
    try:
        run.run(clone_argv(src, dest), log=log, quiet=True)
    except CommandFailed:
        shutil.rmtree(dest)
        dest.mkdir(parents=True)
        run.run(clone_argv(src, dest, link=False), log=log, quiet=True)


def copy(src: Path, dest: Path, *, link: bool = False, what: str = "",
         skip: Callable[[str, os.stat_result], bool] | None = None) -> int:
    """Copy the tree `src` into `dest` (created if missing): directories and
    regular files with their modes, symlinks as they are; returns the files copied.

    link: hard-link regular files where possible (link_or_copy). skip(rel, lstat):
    leave an entry (and, for a directory, everything below it) out. A device
    node, fifo or socket is refused, naming `what` (e.g. content.path)."""
    ensure_dir(dest)
    skipped: list[str] = []
    count = 0
    for s, rel, st in walk(src):
        if any(rel.startswith(p) for p in skipped):
            continue
        if skip is not None and skip(rel, st):
            skipped.append(f"{rel}/")
            continue
        d = dest / rel
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISDIR(st.st_mode):
            d.mkdir()
            os.chmod(d, stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            if link:
                link_or_copy(s, d)
            else:
                shutil.copyfile(s, d)
                os.chmod(d, stat.S_IMODE(st.st_mode))
            count += 1
        else:
            raise BuildError(f"{what or src}: {s} is a device node, fifo or socket; "
                             f"a tree to copy holds only files, directories and symlinks")
    return count


def normalize_mtimes(root: Path, epoch: int) -> None:
    """Every entry's mtime (and atime) = epoch, symlinks themselves included."""
    for full, _rel, _st in walk(root):
        os.utime(full, (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def normalize_owners(root: Path, uid: int = 0, gid: int = 0) -> None:
    """Everything uid:gid (root:root). Only possible, and done, as root."""
    if os.geteuid() != 0:
        return
    for full, _rel, _st in walk(root):
        os.lchown(full, uid, gid)
    os.lchown(root, uid, gid)


def size(root: Path) -> int:
    """A block per entry plus the lstat size of every non-directory (for sizing
    ext4; a symlink to a directory counts as a directory, as os.walk lists it)."""
    total = 0
    for full, _rel, st in walk(root):
        total += 4096
        if stat.S_ISDIR(st.st_mode) or (stat.S_ISLNK(st.st_mode) and os.path.isdir(full)):
            continue
        total += st.st_size
    return total
