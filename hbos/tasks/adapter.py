"""The one doit adapter, and the config slice each stage reads.

dodo.py builds every task's action with `action("hbos.module:function", ...)`:
the stage module is imported only when the action runs (so `doit list` and a
no-op build never import sev-snp-measure, cryptography, jinja2 or requests),
the task's command-line params arrive as keyword arguments, and an HbosError
or OSError becomes doit's one-line TaskFailed instead of a traceback.

A stage declares the config keys it reads (`Reads`, dotted: "ports",
"release.name"). The same declaration gives the task's `config_changed` slice
and the view the stage function receives, which refuses any other key when
HBOS_STRICT_CONFIG=1 (the test suite sets it), so what a stage reads and what
reruns it cannot drift apart.

This module is imported at graph time: keep it to the standard library.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable

STRICT_ENV = "HBOS_STRICT_CONFIG"
# Not settings: where the config came from, and how paths in it resolve.
# cache_dir too: where the artifact cache lives changes no output, so it must
# not rerun a stage (hbos/util/cache.py explains this exception).
_ALWAYS = frozenset({"path", "root", "profile", "sources", "build_dir", "cache_dir"})


class UndeclaredConfig(AttributeError):
    """A stage read a config key it did not declare (a bug in the stage)."""


@dataclasses.dataclass(frozen=True)
class Reads:
    """The config keys a stage reads, as dotted paths from the top of config.yaml."""

    keys: tuple[str, ...]

    def __init__(self, *keys: str):
        object.__setattr__(self, "keys", tuple(keys))

    def covers(self, dotted: str) -> bool:
        """Is `dotted` declared, itself or through a declared parent?"""
        return any(dotted == k or dotted.startswith(k + ".") for k in self.keys)

    def below(self, dotted: str) -> bool:
        """Is some key below `dotted` declared (so a part of it may be read)?"""
        return any(k.startswith(dotted + ".") for k in self.keys)

    def slice(self, cfg: Any) -> dict[str, Any]:
        """The declared values as plain nested data, for doit's config_changed."""
        out: dict[str, Any] = {}
        for key in self.keys:
            value: Any = _real(cfg)
            node = out
            parts = key.split(".")
            for part in parts:
                value = getattr(value, part)
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            is_section = dataclasses.is_dataclass(value) and not isinstance(value, type)
            node[parts[-1]] = dataclasses.asdict(value) if is_section else value
        return out

    def view(self, cfg: Any, stage: str) -> "ConfigView":
        return ConfigView(_real(cfg), self, stage)


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def _real(cfg: Any) -> Any:
    return object.__getattribute__(cfg, "_cfg") if isinstance(cfg, ConfigView) else cfg


class ConfigView:
    """Read access to the declared part of a Config (or of one of its sections)."""

    __slots__ = ("_cfg", "_reads", "_stage", "_prefix")

    def __init__(self, cfg: Any, reads: Reads, stage: str, prefix: str = ""):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cfg, name)
        dotted = self._prefix + name
        if (not self._prefix and name in _ALWAYS) or self._reads.covers(dotted):
            return value
        if self._reads.below(dotted) and dataclasses.is_dataclass(value):
            return ConfigView(value, self._reads, self._stage, dotted + ".")
        if strict():
            raise UndeclaredConfig(
                f"stage {self._stage} read config key '{dotted}' it does not declare "
                f"(declared: {', '.join(self._reads.keys) or 'none'})")
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # doit -n N pickles the actions
        return (ConfigView, (self._cfg, self._reads, self._stage, self._prefix))

    def slice(self, *keys: str) -> dict[str, Any]:
        for key in keys:
            self.__getattr__(key)  # an undeclared key fails here (strict)
        return Reads(*keys).slice(self._cfg)

    def __repr__(self) -> str:
        return f"ConfigView({self._stage}: {', '.join(self._reads.keys)})"


@dataclasses.dataclass(frozen=True)
class Stage:
    """A build stage: the function that runs it and the config keys it reads."""

    name: str
    run: str          # "hbos.module:function", imported when the action runs
    reads: Reads

    def action(self, cfg: Any, *args: Any, **kwargs: Any) -> tuple[Callable[..., Any]]:
        """The doit action: run(view of cfg, *args, **kwargs)."""
        return action(self.run, self.reads.view(cfg, self.name), *args, **kwargs)

    def config_changed(self, cfg: Any) -> Any:
        """doit's config_changed on exactly the declared keys."""
        from doit.tools import config_changed
        return config_changed(self.reads.slice(cfg))


@dataclasses.dataclass(frozen=True)
class Late:
    """An action argument computed when the action runs: ref(*args)."""

    ref: str | Callable[..., Any]
    args: tuple[Any, ...] = ()


def late(ref: str | Callable[..., Any], *args: Any) -> Late:
    """An argument whose value exists only once earlier tasks ran (e.g. the AMDSEV
    snp-release bundle's OVMF, found in the unpacked bundle)."""
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
        from doit.exceptions import TaskFailed

        from hbos.errors import HbosError
        try:
            fn = resolve(ref)
            given = {k: _value(v) for k, v in kwargs.items()}
            call_args = tuple(_value(a) for a in args) + (
                (resolve(options)(**params),) if options else ())
            call_kwargs = given if options else {**given, **params}
            if lock is None:
                result = fn(*call_args, **call_kwargs)
            else:
                from hbos.util import lock as hlock
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


def guard_task_creators(namespace: dict[str, Any]) -> None:
    """Wrap dodo.py's task_* functions: an HbosError while the graph is built
    (e.g. firmware.source 'path' with no firmware.ovmf) exits with one line, as a
    config error at load does, instead of doit's traceback."""
    import functools
    import sys

    def guarded(creator: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(creator)   # doit orders tasks by the wrapped function's line
        def create(*args: Any, **kwargs: Any) -> Any:
            from hbos.errors import HbosError
            try:
                return creator(*args, **kwargs)
            except HbosError as exc:
                print(f"hbos: error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
        return create

    for name, value in list(namespace.items()):
        if name.startswith("task_") and callable(value):
            namespace[name] = guarded(value)
