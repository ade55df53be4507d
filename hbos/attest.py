"""Verify an SEV-SNP attestation report against the expected launch measurement.

Every check is a named step with a status (pass / fail / skip) and a reason:

  signature    ECDSA P-384 / SHA-384 over report bytes 0x000..0x29F with the VCEK
               (ABI spec "ATTESTATION_REPORT", SIGNATURE at 0x2A0: R, S 72-byte LE)
  chain        ARK self-signed, ARK -> ASK -> VCEK (RSA-PSS SHA-384) for the product
  hwid         the VCEK's hwID extension equals the report's CHIP_ID
  vcek_tcb     the VCEK was issued for the report's REPORTED_TCB (the TCB it is derived at)
  tcb          REPORTED_TCB >= the configured minimum, component by component
  policy       POLICY equals the expected guest policy
  debug        POLICY.DEBUG (bit 19) is off, unless a debug build / --allow-debug
  measurement  MEASUREMENT equals the expected launch digest
  report_data, family_id, image_id, vmpl   when an expectation is given

The signature, chain, hwid, vcek_tcb and debug steps always run; the others run
only when there is an expectation (a build tree always gives them). Any
failure makes the verdict a failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hbos import certs
from hbos.errors import AttestationError
from hbos.report import POLICY_BITS, POLICY_DEBUG_BIT, SIG_ALGO_ECDSA_P384_SHA384, Report, Tcb

PASS, FAIL, SKIP = "pass", "fail", "skip"
STEP_ORDER = ("signature", "chain", "hwid", "vcek_tcb", "tcb", "policy", "debug",
              "measurement", "report_data", "family_id", "image_id", "vmpl")


@dataclass
class Step:
    name: str
    status: str
    detail: str
    expected: str | None = None
    actual: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Expectations:
    """What the report must say. None = no expectation (the step is skipped)."""
    measurement: str | None = None
    # why there is no measurement although one was asked for (e.g. expected_hash null)
    measurement_missing: str | None = None
    policy: int | None = None
    min_tcb: Tcb | None = None
    report_data: bytes | None = None
    family_id: bytes | None = None
    image_id: bytes | None = None
    vmpl: int | None = None
    allow_debug: bool = False


@dataclass
class Verification:
    report: Report
    product: str
    steps: list[Step]
    explanation: Any = None  # hbos.explain.Explanation when the measurement was searched

    @property
    def ok(self) -> bool:
        return not any(s.status == FAIL for s in self.steps)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def failed(self) -> list[str]:
        return [s.name for s in self.steps if s.status == FAIL]

    def as_dict(self) -> dict[str, Any]:
        r = self.report
        return {
            "ok": self.ok,
            "failed": self.failed,
            "product": self.product,
            "steps": [s.as_dict() for s in self.steps],
            "report": {"source": r.source, **r.as_dict(self.product)},
            "explanation": self.explanation.as_dict() if self.explanation else None,
        }


# ----------------------------------------------------------------- steps


def check_signature(report: Report, vcek: x509.Certificate) -> Step:
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        return Step("signature", FAIL, f"SIGNATURE_ALGO is {report.signature_algo}, expected 1 "
                                       "(ECDSA P-384 with SHA-384)")
    try:
        key = certs.vcek_public_key(vcek)
    except AttestationError as exc:
        return Step("signature", FAIL, exc.message)
    r, s = report.signature_rs
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return Step("signature", FAIL, "the VCEK did not sign this report (bytes 0x000-0x29F "
                                       "were altered, or this is another chip's or TCB's VCEK)")
    return Step("signature", PASS, "ECDSA P-384/SHA-384 by the VCEK over bytes 0x000-0x29F")


def check_chain(chain: certs.Chain, vcek: x509.Certificate) -> Step:
    try:
        summary = certs.verify_chain(chain, vcek)
    except AttestationError as exc:
        return Step("chain", FAIL, f"{exc.message} (product {chain.product})")
    return Step("chain", PASS, summary)


def check_hwid(report: Report, info: certs.VcekInfo, product: str) -> Step:
    chip = report.chip_id
    if not any(chip):
        return Step("hwid", FAIL, "CHIP_ID is zero (MASK_CHIP_ID is set): the report does not "
                                  "name its chip")
    if info.hwid is None:
        return Step("hwid", FAIL, "the VCEK has no hwID extension (1.3.6.1.4.1.3704.1.4)")
    want = chip[:8] if product == "Turin" else chip
    if info.hwid != want:
        return Step("hwid", FAIL, "the VCEK belongs to another chip", expected=want.hex(),
                    actual=info.hwid.hex())
    return Step("hwid", PASS, f"VCEK hwID = CHIP_ID {chip.hex()[:16]}...")


def check_vcek_tcb(report: Report, info: certs.VcekInfo, product: str) -> Step:
    reported = report.tcb("reported_tcb", product).as_dict()
    differ = {k: (v, info.tcb.get(k)) for k, v in reported.items() if info.tcb.get(k) != v}
    if differ:
        text = ", ".join(f"{k} report {a} / VCEK {b}" for k, (a, b) in differ.items())
        return Step("vcek_tcb", FAIL, f"the VCEK was issued for another TCB: {text}")
    return Step("vcek_tcb", PASS, f"VCEK issued for REPORTED_TCB {Tcb(**reported)}")


def check_tcb(report: Report, minimum: Tcb | None, product: str) -> Step:
    reported = report.tcb("reported_tcb", product)
    if minimum is None:
        return Step("tcb", SKIP, "no minimum TCB given", actual=str(reported))
    low = reported.below(minimum)
    if low:
        return Step("tcb", FAIL, f"REPORTED_TCB below the minimum: {', '.join(low)}",
                    expected=f">= {minimum}", actual=str(reported))
    return Step("tcb", PASS, "REPORTED_TCB >= minimum", expected=f">= {minimum}",
                actual=str(reported))


def policy_text(policy: int) -> str:
    flags = [name for bit, name in POLICY_BITS.items() if policy >> bit & 1 and bit != 17]
    abi = f"ABI >= {policy >> 8 & 0xFF}.{policy & 0xFF}"
    return f"{policy:#x} ({', '.join(flags + [abi])})"


def check_policy(report: Report, expected: int | None, ignore_debug: bool = False) -> Step:
    """POLICY == expected; with debug allowed (debug build / --allow-debug) the DEBUG bit is
    left to the debug step, so a debug launch of a policy without it still matches."""
    if expected is None:
        return Step("policy", SKIP, "no expected policy given", actual=hex(report.policy))
    mask = ~(1 << POLICY_DEBUG_BIT) if ignore_debug else ~0
    if report.policy & mask != expected & mask:
        changed = (expected ^ report.policy) & mask
        bits = [POLICY_BITS.get(b, f"bit {b}") for b in range(64) if changed >> b & 1]
        return Step("policy", FAIL, f"POLICY differs in {', '.join(bits)}",
                    expected=policy_text(expected), actual=policy_text(report.policy))
    return Step("policy", PASS, "POLICY as expected", expected=hex(expected),
                actual=hex(report.policy))


def check_debug(report: Report, allow: bool) -> Step:
    if not report.debug_allowed:
        return Step("debug", PASS, "POLICY.DEBUG (bit 19) is off")
    if allow:
        return Step("debug", PASS, "POLICY.DEBUG is on; allowed (debug build / --allow-debug)")
    return Step("debug", FAIL, "POLICY.DEBUG (bit 19) is on: the host can read and change "
                               "guest memory", expected="debug off")


def check_measurement(report: Report, expect: Expectations) -> Step:
    actual = report.measurement.hex()
    if expect.measurement_missing:
        return Step("measurement", FAIL, expect.measurement_missing, actual=actual)
    if expect.measurement is None:
        return Step("measurement", SKIP, "no expected measurement given", actual=actual)
    if actual != expect.measurement.lower():
        return Step("measurement", FAIL, "MEASUREMENT differs from the expected launch digest",
                    expected=expect.measurement.lower(), actual=actual)
    return Step("measurement", PASS, "MEASUREMENT equals the expected launch digest",
                expected=actual, actual=actual)


def _check_bytes(name: str, label: str, actual: bytes, expected: bytes | None) -> Step:
    if expected is None:
        return Step(name, SKIP, f"no expected {label} given")
    if actual != expected:
        return Step(name, FAIL, f"{label} differs", expected=expected.hex(), actual=actual.hex())
    return Step(name, PASS, f"{label} as expected")


def check_vmpl(report: Report, expected: int | None) -> Step:
    if expected is None:
        return Step("vmpl", SKIP, "no expected VMPL given", actual=str(report.vmpl))
    if report.vmpl != expected:
        return Step("vmpl", FAIL, "VMPL differs", expected=str(expected), actual=str(report.vmpl))
    return Step("vmpl", PASS, f"VMPL {expected}")


# ----------------------------------------------------------------- verify


def resolve_product(explicit: str | None, report: Report,
                    vcek: x509.Certificate | None = None) -> str:
    """The product: given, else the report's CPUID (v3+), else the VCEK's productName."""
    if explicit:
        return certs.product_name(explicit)
    if report.product:
        return report.product
    if vcek is not None:
        name = certs.vcek_info(vcek).product_name or ""
        for p in certs.PRODUCTS:
            if name.startswith(p):
                return p
    return "Milan"


def verify(report: Report, vcek: x509.Certificate, chain: certs.Chain,
           expect: Expectations) -> Verification:
    """Run every step; never raises for a failed check (each step says why)."""
    product = chain.product
    info = certs.vcek_info(vcek)
    steps = [
        check_signature(report, vcek),
        check_chain(chain, vcek),
        check_hwid(report, info, product),
        check_vcek_tcb(report, info, product),
        check_tcb(report, expect.min_tcb, product),
        check_policy(report, expect.policy, ignore_debug=expect.allow_debug),
        check_debug(report, expect.allow_debug),
        check_measurement(report, expect),
        _check_bytes("report_data", "REPORT_DATA", report.report_data, expect.report_data),
        _check_bytes("family_id", "FAMILY_ID", report.family_id, expect.family_id),
        _check_bytes("image_id", "IMAGE_ID", report.image_id, expect.image_id),
        check_vmpl(report, expect.vmpl),
    ]
    return Verification(report, product, steps)


# ----------------------------------------------------- expectations & output


def parse_hex_bytes(value: str, size: int, what: str, *, pad: bool = False) -> bytes:
    """Hex text -> bytes of `size` (shorter values zero-padded on the right when pad)."""
    text = value.strip().lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise AttestationError(f"{what} is not hex: {value!r}") from None
    if pad and len(raw) < size:
        raw = raw + bytes(size - len(raw))
    if len(raw) != size:
        raise AttestationError(f"{what} must be {size} bytes ({2 * size} hex digits), "
                               f"got {len(raw)}")
    return raw


def load_measurement_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise AttestationError(f"{p} does not exist",
                               hint="run `doit measure` first, or pass --measurement HEX") \
            from None
    except json.JSONDecodeError as exc:
        raise AttestationError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise AttestationError(f"{p}: expected a JSON object")
    return data


def measurement_expectation(record: dict[str, Any], source: str) -> dict[str, Any]:
    """Expectations fields from a measurement.json record (expected_hash, and what
    the build pinned under "vm": guest_policy, family_id, image_id; "debug")."""
    out: dict[str, Any] = {}
    expected = record.get("expected_hash")
    if expected:
        out["measurement"] = parse_hex_bytes(str(expected), 48, f"{source}: expected_hash").hex()
    else:
        reason = record.get("expected_hash_reason") or "it records no expected_hash"
        out["measurement_missing"] = f"{source} has no expected launch digest: {reason}"
    vm = record.get("vm") or {}
    if isinstance(vm.get("guest_policy"), int):
        out["policy"] = vm["guest_policy"]
    for key in ("family_id", "image_id"):
        if isinstance(vm.get(key), str) and vm[key]:
            out[key] = parse_hex_bytes(vm[key], 16, f"{source}: vm.{key}", pad=True)
    if record.get("debug") is True:
        out["allow_debug"] = True
    return out


def expectations_from_build(cfg, paths, *, allow_debug: bool = False,
                            report_data: bytes | None = None, vmpl: int | None = None
                            ) -> tuple[Expectations, dict[str, Any]]:
    """Expectations of the current build: measurement.json's expected_hash, and the
    config's vm.guest_policy, vm.min_committed_tcb, vm.family_id/image_id and debug."""
    record = load_measurement_json(paths.measurement)
    fields = measurement_expectation(record, str(paths.measurement))
    vm = cfg.vm
    t = vm.min_committed_tcb
    fields.update(
        policy=vm.guest_policy,
        min_tcb=Tcb(bootloader=t.bootloader, tee=t.tee, snp=t.snp, microcode=t.microcode),
        family_id=bytes.fromhex(vm.family_id), image_id=bytes.fromhex(vm.image_id),
        allow_debug=allow_debug or cfg.debug or fields.get("allow_debug", False),
        report_data=report_data, vmpl=vmpl)
    return Expectations(**fields), record


def format_table(v: Verification) -> str:
    """The readable verdict: one row per step, expected/actual where they differ."""
    r = v.report
    lines = [f"report: {r.source} (version {r.version}, {v.product}, VMPL {r.vmpl}, "
             f"chip {r.chip_id.hex()[:16]}...)"]
    width = max(len(n) for n in STEP_ORDER)
    for s in v.steps:
        mark = {PASS: "ok  ", FAIL: "FAIL", SKIP: "skip"}[s.status]
        lines.append(f"  {mark}  {s.name:<{width}}  {s.detail}")
        if s.status == FAIL and (s.expected or s.actual):
            if s.expected:
                lines.append(f"        {'':<{width}}  expected {s.expected}")
            if s.actual:
                lines.append(f"        {'':<{width}}  actual   {s.actual}")
    if v.explanation is not None:
        e = v.explanation
        lines.append(f"  explain: {e.message} ({e.candidates} candidates searched in "
                     f"{e.seconds:.2f} s)")
    lines.append("VERIFIED" if v.ok else f"NOT VERIFIED: failed {', '.join(v.failed)}")
    return "\n".join(lines)
