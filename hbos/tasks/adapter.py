"""The doit adapter: how dodo.py turns the hbos package into tasks.

- `Stage`: a build stage, the function that runs it ("hbos.module:function",
  imported only when the action runs, so `doit list` and a no-op build never
  load sev-snp-measure's digest code, cryptography, jinja2 or requests) and the
  config keys it reads (hbos.config.Reads).
- `stage_task()`: a stage's task dict. dodo.py states only what differs
  (file_dep, targets, extra action arguments or up-to-date checks); the actions,
  the up-to-date check on exactly the declared config keys and `clean` come from
  here, so a stage task without its config check cannot be written.
- `action()`: a doit python-action calling a function by name, with the task's
  command-line params as keyword arguments; an HbosError or OSError becomes
  doit's one-line TaskFailed instead of a traceback (tasks without a stage, e.g.
  start, use it directly).
- `load_config()`, `guard_task_creators()`: a config error or an HbosError while
  the graph is built exits with one line, never a traceback.

This module is imported at graph time: the standard library, doit and light
hbos modules only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from hbos import config as hconfig
from hbos.config import Reads
from hbos.errors import ConfigError, HbosError
from hbos.util import limits, lock as hlock


@dataclasses.dataclass(frozen=True)
class Stage:
    """A build stage: the function that runs it and the config keys it reads.

    up_to_date: "hbos.module:function" giving the stage's up-to-date check as
    function(cfg, paths) when its record lives beside the artifact instead of
    in doit's database (base_rootfs); by default doit's config_changed on the
    declared keys.
    """

    name: str
    run: str          # "hbos.module:function", imported when the action runs
    reads: Reads
    up_to_date: str = ""

    def action(self, cfg: Any, *args: Any, **kwargs: Any) -> tuple[Callable[..., Any]]:
        """The doit action: run(view of cfg, *args, **kwargs)."""
        return action(self.run, self.reads.view(cfg, self.name), *args, **kwargs)

    def config_changed(self, cfg: Any, paths: Any = None) -> Any:
        """The up-to-date check on exactly the declared keys."""
        if self.up_to_date:
            return resolve(self.up_to_date)(self.reads.view(cfg, self.name), paths)
        return config_changed(self.reads.slice(cfg))


def stage_task(stage: Stage, cfg: Any, paths: Any, *, targets: Iterable[os.PathLike | str],
               file_dep: Iterable[os.PathLike | str] = (), uptodate: Iterable[Any] = (),
               args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
               **extra: Any) -> dict[str, Any]:
    """The task dict of a build stage: its action (run(view, paths, *args,
    **kwargs)), file_dep and targets as normalized strings, the config check
    first among its up-to-date checks, and clean."""
    return {
        "actions": [stage.action(cfg, paths, *args, **(kwargs or {}))],
        "file_dep": strs(file_dep),
        "targets": strs(targets),
        "uptodate": [stage.config_changed(cfg, paths), *uptodate],
        "clean": True,
        **extra,
    }


@dataclasses.dataclass(frozen=True)
class Late:
    """An action argument computed when the action runs: ref(*args)."""

    ref: str | Callable[..., Any]
    args: tuple[Any, ...] = ()


def late(ref: str | Callable[..., Any], *args: Any) -> Late:
    """An argument whose value exists only once earlier tasks ran (e.g. the SNP
    bundle's OVMF, found in the unpacked bundle: hbos.stages.firmware.resolve)."""
    return Late(ref, args)


def _value(arg: Any) -> Any:
    return resolve(arg.ref)(*arg.args) if isinstance(arg, Late) else arg


def resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """'hbos.module:function' -> the function (imported now); a callable as it is."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def action(ref: str | Callable[..., Any], *args: Any, lock: tuple[Any, str] | None = None,
           options: str | None = None, **kwargs: Any) -> tuple[Callable[..., Any]]:
    """A doit python-action calling ref(*args, **kwargs, **task_params), imported late.

    lock=(path, what): hold that lock (hbos.util.lock) while the function runs.
    options="hbos.module:function": turn the task params into one argument
    (e.g. launch options) instead of passing them as keywords.
    """
    name = ref if isinstance(ref, str) else getattr(ref, "__name__", "action")

    def run_stage(**params: Any) -> Any:
        try:
            fn = resolve(ref)
            given = {k: _value(v) for k, v in kwargs.items()}
            call_args = tuple(_value(a) for a in args) + (
                (resolve(options)(**params),) if options else ())
            call_kwargs = given if options else {**given, **params}
            if lock is None:
                result = fn(*call_args, **call_kwargs)
            else:
                with hlock.hold(*lock):
                    result = fn(*call_args, **call_kwargs)
        except HbosError as exc:
            return TaskFailed(str(exc))
        except OSError as exc:
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            return TaskFailed(f"{name.rpartition(':')[2]}: {exc.strerror or exc}{where}")
        except (KeyboardInterrupt, EOFError):
            return TaskFailed(f"{name.rpartition(':')[2]}: interrupted, see the output above")
        return result if isinstance(result, (dict, str)) else None

    run_stage.__name__ = name.rpartition(":")[2] or "action"
    # what the action will import, so a test can check every reference resolves
    late_refs = [a.ref for a in (*args, *kwargs.values()) if isinstance(a, Late)]
    refs = tuple(r for r in (ref, options, *late_refs) if isinstance(r, str))
    run_stage.refs = refs  # type: ignore[attr-defined]
    return (run_stage,)


def make_dirs(*dirs: Any) -> None:
    """The init task's first action: create each directory (and its parents)."""
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)


def strs(paths: Iterable[os.PathLike | str]) -> list[str]:
    """Normalized absolute path strings (doit compares paths as strings)."""
    return [os.path.abspath(os.fspath(p)) for p in paths]


# ----------------------------------------------------------------- graph time


def load_config(get_var: Callable[[str, Any], Any]) -> hconfig.Config:
    """The config for doit's command-line variables (base=, config=FILE,
    profile=NAME), with build_dir created; a config error exits with one line."""
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
    if len(cfg.files) > 1:
        try:
            over = limits.load_yaml(cfg.files[-1], limits.CONFIG_BYTES, "config file",
                                    ConfigError)
        except ConfigError:
            over = None
        if isinstance(over, dict) and "build_dir" in over:
            return cfg.files[-1]
    return cfg.files[0] if cfg.files else "config"


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


def guard_task_creators(namespace: dict[str, Any]) -> None:
    """Wrap dodo.py's task_* functions: an HbosError while the graph is built
    (e.g. firmware.source 'path' with no firmware.ovmf) exits with one line, as a
    config error at load does, instead of doit's traceback."""

    def guarded(creator: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(creator)   # doit orders tasks by the wrapped function's line
        def create(*args: Any, **kwargs: Any) -> Any:
            try:
                return creator(*args, **kwargs)
            except HbosError as exc:
                print(f"hbos: error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
        return create

    for name, value in list(namespace.items()):
        if name.startswith("task_") and callable(value):
            namespace[name] = guarded(value)
