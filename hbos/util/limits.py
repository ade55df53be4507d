"""Limits on what the tool reads, and the bounded way to read a file.

The config, measurement inputs, VM definitions, release manifests and
firmware are read through `read_bytes`: only a regular file, never more than
a size fitting what it is, so `--inputs /dev/zero` or a directory gives one
line, not a hang or a traceback. `load_json` / `load_yaml` / `load_toml` add
the UTF-8 and syntax checks and a nesting limit, and raise the caller's own
error type (ConfigError, MeasurementError, ReleaseError ...) with the file
named. Attestation reports and certificates have their own bounded reader
(hbos.attest.report.read_bounded), as have a release's small files
(hbos.release.layout.read_small).

The VM ranges (vCPUs, memory, guest_features) are checked with the same
numbers wherever they enter: config.yaml, `measure --inputs`, a VM definition
and a release.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hbos.errors import HbosError

KIB = 1 << 10
MIB = 1 << 20

# -- file sizes (bytes) ---------------------------------------------------
CONFIG_BYTES = 1 * MIB        # config.yaml, an overlay
INPUTS_BYTES = 1 * MIB        # measurement.json, inputs.json
VM_CONFIG_BYTES = 64 * KIB    # vm-config.toml
MANIFEST_BYTES = 1 * MIB      # a release's manifest.json
OVMF_BYTES = 64 * MIB         # an OVMF image (AmdSevX64 is 4 MiB)

# Deeper than any file of ours; parsers recurse, so a bomb of brackets must
# become one line, not a RecursionError.
MAX_DEPTH = 32


@dataclass(frozen=True)
class Range:
    what: str
    lo: int
    hi: int

    def problem(self, value: Any) -> str | None:
        """Why `value` is not an integer in this range, or None."""
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {value!r}"
        if not self.lo <= value <= self.hi:
            return f"must be between {self.lo} and {self.hi}, got {value}"
        return None


# -- the VM's ranges: one set of numbers everywhere ------------------------
VCPUS = Range("the vCPU count", 1, 512)                        # QEMU's q35 maximum is 1024
MEMORY_MIB = Range("the memory size (MiB)", 128, 4 << 20)      # 128 MiB .. 4 TiB
GUEST_FEATURES = Range("guest_features (SEV_FEATURES, 64 bits)", 0, 2**64 - 1)
U64 = Range("a 64-bit value", 0, 2**64 - 1)


def check_range(rng: Range, value: Any, key: str, source: str,
                error: type[HbosError] = HbosError) -> int:
    """`value` as an int inside `rng`, else error("SOURCE: KEY: ...")."""
    problem = rng.problem(value)
    if problem:
        raise error(f"{source}: {key}: {problem}")
    return value


# -- reading --------------------------------------------------------------


def read_bytes(path: str | os.PathLike, limit: int, what: str,
               error: type[HbosError] = HbosError) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else one-line `error`."""
    p = Path(path)
    try:
        # O_NONBLOCK: opening a fifo must not wait for a writer.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {p} is a directory, not a file")
        raise error(f"{what} {p} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if st.st_size > limit:
            raise error(f"{what} {p} is larger than {limit} bytes ({st.st_size} bytes)")
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{what} {p} is larger than {limit} bytes")
    return data


def decode(data: bytes, path: str | os.PathLike, what: str,
           error: type[HbosError] = HbosError) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                    f"offset {exc.start})") from None


def read_text(path: str | os.PathLike, limit: int, what: str,
              error: type[HbosError] = HbosError) -> str:
    return decode(read_bytes(path, limit, what, error), path, what, error)


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of lists/dicts, counted no further than limit + 1 (iterative)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    seen: set[int] = set()
    while todo:
        item, d = todo.pop()
        if not isinstance(item, (dict, list, tuple)):
            continue
        d += 1
        deepest = max(deepest, d)
        if d > limit or id(item) in seen:   # YAML aliases share objects
            continue
        seen.add(id(item))
        children = item.values() if isinstance(item, dict) else item
        todo.extend((c, d) for c in children)
    return deepest


def _check_depth(data: Any, path: str | os.PathLike, what: str,
                 error: type[HbosError]) -> Any:
    if depth(data) > MAX_DEPTH:
        raise error(f"{what} {path} is nested more than {MAX_DEPTH} levels deep")
    return data


def _too_deep(path: str | os.PathLike, what: str, error: type[HbosError]) -> HbosError:
    return error(f"{what} {path} is nested more than {MAX_DEPTH} levels deep")


def parse_json(text: str | bytes, path: str | os.PathLike, what: str,
               error: type[HbosError] = HbosError) -> Any:
    if isinstance(text, bytes):
        text = decode(text, path, what, error)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise _too_deep(path, what, error) from None
    except ValueError as exc:   # e.g. an integer of more than 4300 digits
        raise error(f"{what} {path} is not usable JSON ({exc})") from None
    return _check_depth(data, path, what, error)


def load_json(path: str | os.PathLike, limit: int, what: str,
              error: type[HbosError] = HbosError) -> Any:
    return parse_json(read_text(path, limit, what, error), path, what, error)


class _TooDeep(Exception):
    pass


def _depth_loader():
    """yaml.SafeLoader that stops composing past MAX_DEPTH (PyYAML's parser is a
    state machine, its composer recursive and slow on deep input: stop early)."""
    import yaml  # PyYAML (~12 ms): only when a YAML file is read

    class DepthLimitedLoader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise _TooDeep()
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
    return DepthLimitedLoader


# Quoted scalars and comments (skipped), and flow brackets (counted).
_YAML_FLOW = re.compile(r"""'(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|(?:^|(?<=\s))#[^\n]*|[\[\]{}]""",
                        re.MULTILINE)


def flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow brackets ([ {) outside quotes and comments
    (counted up to MAX_DEPTH + 1).

    PyYAML's scanner is quadratic in flow nesting (5000 brackets take seconds
    before the composer sees a node), so a bracket bomb is refused before
    parsing; block nesting costs the square of its depth in indentation, which
    the size limit bounds, and the composer stops it (_depth_loader).
    """
    depth = deepest = 0
    for m in _YAML_FLOW.finditer(text):
        tok = m.group()
        if tok in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                break  # deep enough to refuse: stop scanning
        elif tok in ("]", "}"):
            depth = max(0, depth - 1)
    return deepest


def _load_fast(yaml: Any, text: str) -> Any:
    """libyaml's safe loader when present (its parser and composer are C: ~10x faster
    on config.yaml, which every doit run reads); any error, and a missing libyaml,
    go through the depth-limited pure-Python loader, whose errors the caller words.
    The flow_depth check before and _check_depth after apply to both."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return yaml.load(text, Loader=fast)
        except (yaml.YAMLError, RecursionError, ValueError):
            pass
    return yaml.load(text, Loader=_depth_loader())  # a SafeLoader subclass


def load_yaml(path: str | os.PathLike, limit: int, what: str,
              error: type[HbosError] = HbosError) -> Any:
    import yaml  # PyYAML (~12 ms): only when a YAML file is read

    text = read_text(path, limit, what, error)
    if flow_depth(text) > MAX_DEPTH:
        raise _too_deep(path, what, error)
    try:
        data = _load_fast(yaml, text)
    except _TooDeep:
        raise _too_deep(path, what, error) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise error(f"{path}{pos}: YAML syntax error: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: YAML syntax error: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise _too_deep(path, what, error) from None
    except ValueError as exc:   # e.g. an integer of more than 4300 digits
        raise error(f"{path}: unusable YAML value ({exc})") from None
    return _check_depth(data, path, what, error)


def load_toml(path: str | os.PathLike, limit: int, what: str,
              error: type[HbosError] = HbosError) -> dict[str, Any]:
    text = read_text(path, limit, what, error)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML ({exc})") from None
    except RecursionError:
        raise _too_deep(path, what, error) from None
    except ValueError as exc:
        raise error(f"{what} {path} is not usable TOML ({exc})") from None
    return _check_depth(data, path, what, error)
