"""Reference values: what a verifier trusts about this build, in one small file.

`doit measure` writes build/reference-values.json beside measurement.json, a release
carries it, and `hbos verify-report --reference FILE` applies it. The format
(`format: hbos-reference-values/1`), every key but `format` and `measurements` optional:

  measurements       list of trusted launch digests (96 hex each); several are allowed,
                     e.g. a fleet running two releases (edit the file or merge() two)
  measurements_reason  why the list is empty (the build could not compute a digest)
  guest_policy       the exact POLICY (integer)
  min_tcb            {product: {bootloader, tee, snp, microcode[, fmc]}}: lowest
                     REPORTED_TCB per product (Milan, Genoa, Turin)
  family_id, image_id        16 bytes hex (32 digits)
  host_data                  32 bytes hex (64 digits), when the build sets it
  id_key_digest, author_key_digest   48 bytes hex (96 digits), when the build sets them
  debug              true: a debug build, whose policy may allow debugging
  tool_version       the hbos version that wrote it (informational)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hbos import __version__
from hbos.attest import certs
from hbos.attest.report import Tcb, read_bounded
from hbos.attest.verify import measurement_expectation
from hbos.errors import AttestationError
from hbos.util.fsutil import write_json

FORMAT = "hbos-reference-values/1"
MAX_FILE = 1024 * 1024
_HEX_SIZES = {"family_id": 16, "image_id": 16, "host_data": 32, "id_key_digest": 48,
              "author_key_digest": 48}
_KEYS = {"format", "measurements", "measurements_reason", "guest_policy", "min_tcb", "debug",
         "tool_version", *_HEX_SIZES}
_TCB_KEYS = ("bootloader", "tee", "snp", "microcode")


def _hex(value: Any, size: int, where: str) -> str:
    if not isinstance(value, str):
        raise AttestationError(f"{where} must be {2 * size} hex digits, got "
                               f"{type(value).__name__}")
    text = value.strip().lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise AttestationError(f"{where} is not hex: {value!r:.40}") from None
    if len(raw) != size:
        raise AttestationError(f"{where} must be {size} bytes ({2 * size} hex digits), got "
                               f"{len(raw)}")
    return raw.hex()


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AttestationError(f"{where} must be an integer {low}-{high}, got {value!r:.40}")
    return value


def _tcb(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise AttestationError(f"{where} must be an object with {', '.join(_TCB_KEYS)}")
    unknown = set(value) - set(_TCB_KEYS) - {"fmc"}
    if unknown:
        raise AttestationError(f"{where}: unknown key(s) {sorted(unknown)}")
    out = {k: _int(value.get(k, 0), f"{where}.{k}", 0, 255) for k in _TCB_KEYS}
    if value.get("fmc") is not None:
        out["fmc"] = _int(value["fmc"], f"{where}.fmc", 0, 255)
    return out


def from_measurement(record: dict[str, Any], source: str = "measurement.json") -> dict[str, Any]:
    """Reference values of a build, from its measurement.json record (hbos.measure.digest)."""

    fields = measurement_expectation(record, source)
    vm = record.get("vm") or {}
    ref: dict[str, Any] = {"format": FORMAT, "tool_version": __version__}
    if fields.get("measurement"):
        ref["measurements"] = [fields["measurement"]]
    else:
        ref["measurements"] = []
        ref["measurements_reason"] = fields.get("measurement_missing", "no expected_hash")
    if "policy" in fields:
        ref["guest_policy"] = fields["policy"]
    tcb = vm.get("min_commited_tcb", vm.get("min_committed_tcb"))
    if isinstance(tcb, dict):  # vm-config's TCB table also holds `_reserved`
        tcb = {k: v for k, v in tcb.items() if not k.startswith("_")}
    if tcb is not None:
        product = certs.product_name(str(vm.get("host_cpu_family") or "Milan"))
        ref["min_tcb"] = {product: _tcb(tcb, f"{source}: vm.min_commited_tcb")}
    for key in _HEX_SIZES:
        if key in fields:
            ref[key] = fields[key].hex()
    ref["debug"] = bool(fields.get("allow_debug", False))
    return ref


def write(path: str | Path, record: dict[str, Any], source: str = "measurement.json") -> dict:
    ref = from_measurement(record, source)
    write_json(path, ref)
    return ref


def validate(data: Any, source: str) -> dict[str, Any]:
    """The reference values of `data`, checked key by key (a wrong type is refused)."""
    if not isinstance(data, dict):
        raise AttestationError(f"{source}: expected a JSON object")
    unknown = set(data) - _KEYS
    if unknown:
        raise AttestationError(f"{source}: unknown key(s) {sorted(unknown)}",
                               hint=f"known: {', '.join(sorted(_KEYS))}")
    if data.get("format") != FORMAT:
        raise AttestationError(f"{source}: format is {data.get('format')!r}, expected {FORMAT!r}")
    ms = data.get("measurements")
    if not isinstance(ms, list):
        raise AttestationError(f"{source}: measurements must be a list of launch digests")
    out: dict[str, Any] = {"format": FORMAT, "measurements": [
        _hex(m, 48, f"{source}: measurements[{i}]") for i, m in enumerate(ms)]}
    if data.get("measurements_reason") is not None:
        if not isinstance(data["measurements_reason"], str):
            raise AttestationError(f"{source}: measurements_reason must be a string")
        out["measurements_reason"] = data["measurements_reason"]
    if data.get("guest_policy") is not None:
        out["guest_policy"] = _int(data["guest_policy"], f"{source}: guest_policy", 0,
                                   (1 << 64) - 1)
    if data.get("min_tcb") is not None:
        if not isinstance(data["min_tcb"], dict):
            raise AttestationError(f"{source}: min_tcb must be an object {{product: TCB}}")
        out["min_tcb"] = {}
        for product, tcb in data["min_tcb"].items():
            try:
                name = certs.product_name(product)
            except AttestationError as exc:
                raise AttestationError(f"{source}: min_tcb: {exc.message}", hint=exc.hint) \
                    from None
            out["min_tcb"][name] = _tcb(tcb, f"{source}: min_tcb.{product}")
    for key, size in _HEX_SIZES.items():
        if data.get(key) is not None:
            out[key] = _hex(data[key], size, f"{source}: {key}")
    if data.get("debug") is not None:
        if not isinstance(data["debug"], bool):
            raise AttestationError(f"{source}: debug must be true or false")
        out["debug"] = data["debug"]
    return out


def load(path: str | Path) -> dict[str, Any]:
    raw = read_bounded(path, MAX_FILE, "reference values file")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise AttestationError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise AttestationError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") \
            from None
    except RecursionError:
        raise AttestationError(f"{path}: JSON nested too deeply") from None
    return validate(data, str(path))


def merge(refs: list[dict[str, Any]]) -> dict[str, Any]:
    """One file trusting every measurement of `refs` (same policy, ids and digests required;
    the lowest TCB per product is the highest of the minimums)."""
    if not refs:
        raise AttestationError("nothing to merge")
    out = dict(refs[0])
    out["measurements"] = []
    for ref in refs:
        for key in ("guest_policy", "debug", *_HEX_SIZES):
            if ref.get(key) != out.get(key):
                raise AttestationError(f"cannot merge reference values that differ in {key}")
        out["measurements"] += [m for m in ref["measurements"] if m not in out["measurements"]]
        for product, tcb in (ref.get("min_tcb") or {}).items():
            have = out.setdefault("min_tcb", {}).get(product)
            out["min_tcb"][product] = tcb if have is None else \
                {k: max(have.get(k, 0), tcb.get(k, 0)) for k in set(have) | set(tcb)}
    out.pop("measurements_reason", None)
    return out


def expectation_fields(ref: dict[str, Any]) -> dict[str, Any]:
    """hbos.attest.verify.Expectations keyword arguments from validated reference values."""
    fields: dict[str, Any] = {}
    if ref["measurements"]:
        fields["trusted_measurements"] = tuple(ref["measurements"])
    else:
        fields["measurement_missing"] = ("the reference values trust no measurement: "
                                         + ref.get("measurements_reason", "the list is empty"))
    if "guest_policy" in ref:
        fields["policy"] = ref["guest_policy"]
    if ref.get("min_tcb"):
        fields["min_tcb_by_product"] = {p: Tcb(**t) for p, t in ref["min_tcb"].items()}
    for key in _HEX_SIZES:
        if key in ref:
            fields[key] = bytes.fromhex(ref[key])
    if ref.get("debug"):
        fields["allow_debug"] = True
    return fields
