"""doit's file check for this build: cheap on multi-GB artifacts.

`SizeAwareChecker` (DOIT_CONFIG's check_file_uptodate) keeps no-op runs cheap:
mtime and size decide for large files, which are never re-hashed; a small file
whose mtime moved is compared by md5, so a touched but unchanged file rebuilds
nothing.
"""

from __future__ import annotations

import hashlib
import os

from doit.dependency import FileChangedChecker

# Files above this size are judged by mtime and size only (never re-hashed).
HASH_LIMIT = 16 << 20


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class SizeAwareChecker(FileChangedChecker):
    """State is [mtime, size, md5|None]; md5 only for files up to HASH_LIMIT."""

    def check_modified(self, file_path, file_stat, state):
        if not isinstance(state, list) or len(state) != 3:
            return True
        mtime, size, digest = state
        if file_stat.st_mtime == mtime and file_stat.st_size == size:
            return False
        if file_stat.st_size != size or digest is None:
            return True
        return _md5(file_path) != digest

    def get_state(self, dep, current_state):
        st = os.stat(dep)
        if isinstance(current_state, list) and len(current_state) == 3 \
                and current_state[0] == st.st_mtime and current_state[1] == st.st_size:
            return None
        digest = _md5(dep) if st.st_size <= HASH_LIMIT else None
        return [st.st_mtime, st.st_size, digest]

