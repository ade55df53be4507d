"""One run at a time where two would collide.

`hold(path, what)` takes an exclusive flock on a file under build/locks/ and
writes the holder's pid into it; a second run fails at once with one line,
"<what>: another run holds it, pid N", instead of waiting or trampling the
first (two `doit start` killing each other's guest, two `download_release`
pruning each other's staging directories). The kernel drops the lock when the
holder exits, however it exits, so a killed run leaves no stale lock; the
file is opened close-on-exec, so a QEMU the holder spawns does not keep it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from hbos.errors import Busy


def _holder(fd: int) -> str:
    """The pid the holder wrote (it may not have written it yet: wait a moment)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.05)
    return "unknown"


@contextlib.contextmanager
def hold(path: Path, what: str) -> Iterator[None]:
    """Hold the lock `path` for the duration, or raise Busy naming the holder's pid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{what}: {path} is locked: another run holds it, "
                       f"pid {_holder(fd)}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)   # releases the flock

