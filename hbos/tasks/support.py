"""Glue between dodo.py and the hbos package.

- `load_config()` reads doit's command-line variables (config=FILE,
  profile=NAME) and exits with one line on a config error (no traceback).
- the doit action adapter is hbos/tasks/adapter.py (`action()`, one for every task).
- `SizeAwareChecker` keeps no-op runs cheap: mtime+size decide for large
  files, small files whose mtime moved are compared by md5.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from doit.dependency import FileChangedChecker

from hbos import config as hconfig
from hbos.errors import ConfigError, HbosError

# Files above this size are judged by mtime and size only (never re-hashed).
HASH_LIMIT = 16 << 20


def load_config(get_var: Callable[[str, Any], Any]) -> hconfig.Config:
    try:
        cfg = hconfig.load(get_var("base", None), overlay=get_var("config", None),
                           profile=get_var("profile", None))
        make_build_dir(cfg)
        return cfg
    except HbosError as exc:
        print(f"hbos: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _source_of_build_dir(cfg: hconfig.Config) -> str:
    """The config file that sets build_dir: the overlay when it does, else config.yaml."""
    from hbos.util import limits
    if len(cfg.sources) > 1:
        try:
            over = limits.load_yaml(cfg.sources[-1], limits.CONFIG_BYTES, "config file",
                                    ConfigError)
        except ConfigError:
            over = None
        if isinstance(over, dict) and "build_dir" in over:
            return cfg.sources[-1]
    return cfg.sources[0] if cfg.sources else "config"


def make_build_dir(cfg: hconfig.Config) -> Path:
    """Create build_dir, or say in one line why it cannot be (before doit opens its db)."""
    where = _source_of_build_dir(cfg)
    try:
        path = cfg.path(cfg.build_dir)
    except (RuntimeError, ValueError) as exc:  # '~nosuchuser', a NUL byte
        raise ConfigError(f"{where}: build_dir: unusable path {cfg.build_dir!r} ({exc})") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{where}: build_dir: {path} exists and is not a directory") from None
    except NotADirectoryError:
        raise ConfigError(f"{where}: build_dir: {path} lies below a file, not a "
                          "directory") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: build_dir: {path} cannot be created "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: build_dir: {path} is not writable by this user")
    return path


def strs(paths: Iterable[os.PathLike | str]) -> list[str]:
    """Normalized absolute path strings (doit compares paths as strings)."""
    return [os.path.abspath(os.fspath(p)) for p in paths]


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

