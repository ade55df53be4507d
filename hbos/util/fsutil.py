"""Small file helpers: atomic writes, streaming hashes, JSON files, removal (tree
manifests are hbos.util.tree.manifest)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (never whole into memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `target` on success.

    On any exception the temporary file or directory is removed and `target`
    is left as it was, so an interrupted stage never leaves a half-written
    target behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove_stale(target)
    remove(tmp)
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink() and tmp.is_dir():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            remove(old)
        else:
            os.replace(tmp, target)
    finally:
        remove(tmp)


def _remove_stale(target: Path) -> None:
    """Remove temporaries left by killed builds (their process is gone)."""
    for sibling in target.parent.glob(f".{target.name}.*-*"):
        pid = sibling.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            remove(sibling)


def remove(path: str | os.PathLike) -> None:
    """Remove a file, symlink or directory tree if it exists."""
    p = Path(path)
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode())


def write_json(target: str | os.PathLike, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_json_if_changed(target: str | os.PathLike, data: Any) -> bool:
    """write_json only when the file's text would differ (its mtime then stays, so
    doit sees nothing new); True if written."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    try:
        if Path(target).read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_text(target, text)
    return True


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
