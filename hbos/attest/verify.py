"""Verify an SEV-SNP attestation report against the expected launch measurement.

Every check is a named step with a status (pass / fail / skip / unknown) and a reason:

  signing_key   FLAGS.SIGNING_KEY (bits 4:2 at 0x48) names VCEK (0) or VLEK (1), and the
                certificate given is of that kind; "none" (7) or a reserved value fails
  signature     ECDSA P-384 / SHA-384 over report bytes 0x000..0x29F with the VCEK/VLEK
                (ABI spec "ATTESTATION_REPORT", SIGNATURE at 0x2A0: R, S 72-byte LE)
  chain         ARK (pinned) self-signed, ARK -> ASK -> VCEK or ARK -> ASVK -> VLEK
                (RSA-PSS SHA-384) for the product
  validity      every certificate of the chain is valid at the verification time (--at)
  crl           AMD's CRL for the product, signed by the ARK, does not list the ASK/ASVK;
                "unknown" when no current CRL can be had (a failure with --require-crl)
  hwid          the VCEK's hwID extension equals the report's CHIP_ID (does not apply to
                a VLEK, which is not bound to a chip)
  vcek_tcb      the VCEK/VLEK was issued for the report's REPORTED_TCB
  policy_sanity POLICY per the ABI: bit 17 set, bits 63:26 clear, MIGRATE_MA off unless
                allowed, the firmware at least the ABI version the policy asks for
  report_version, tcb, launch_tcb, policy, debug, measurement, report_data, host_data,
  id_key_digest, author_key_digest, family_id, image_id, vmpl, platform_info
                each against its expectation, when one is given

The signing_key, signature, chain, validity, crl, hwid, vcek_tcb, policy_sanity and
debug steps always run; the others run only when there is an expectation (a build tree
always gives the measurement, policy, TCB and ids). Any failure makes the verdict a
failure, and so does an expectation whose step did not run.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hbos.attest import certs
from hbos.attest.report import (
    PLATFORM_INFO_BITS,
    POLICY_BITS,
    POLICY_DEBUG_BIT,
    POLICY_HIGHEST_DEFINED_BIT,
    POLICY_MIGRATE_MA_BIT,
    POLICY_RESERVED_ONE_BIT,
    SIG_ALGO_ECDSA_P384_SHA384,
    Report,
    Tcb,
    read_bounded,
)
from hbos.errors import AttestationError

PASS, FAIL, SKIP, UNKNOWN = "pass", "fail", "skip", "unknown"
STEP_ORDER = ("signing_key", "signature", "chain", "validity", "crl", "hwid", "vcek_tcb",
              "report_version", "policy_sanity", "tcb", "launch_tcb", "policy", "debug",
              "measurement", "report_data", "host_data", "id_key_digest", "author_key_digest",
              "family_id", "image_id", "vmpl", "platform_info")


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
    # more trusted launch digests (reference values: a fleet running two releases)
    trusted_measurements: tuple[str, ...] = ()
    # why there is no measurement although one was asked for (e.g. expected_hash null)
    measurement_missing: str | None = None
    policy: int | None = None
    min_tcb: Tcb | None = None
    min_tcb_by_product: dict[str, Tcb] | None = None  # reference values: one per product
    min_launch_tcb: Tcb | None = None
    min_report_version: int | None = None
    report_data: bytes | None = None
    host_data: bytes | None = None
    id_key_digest: bytes | None = None
    author_key_digest: bytes | None = None
    family_id: bytes | None = None
    image_id: bytes | None = None
    vmpl: int | None = None
    platform_info: tuple[int, int] | None = None  # (bits required set, bits required clear)
    allow_debug: bool = False
    allow_migrate_ma: bool = False
    at: datetime.datetime | None = None  # verification time; None: now
    require_crl: bool = False

    def requested(self) -> set[str]:
        """The steps an expectation was given for: each must run and pass."""
        out = {name for name in ("report_data", "host_data", "id_key_digest",
                                 "author_key_digest", "family_id", "image_id", "vmpl", "policy",
                                 "platform_info", "min_launch_tcb", "min_report_version")
               if getattr(self, name) is not None}
        out = {{"min_launch_tcb": "launch_tcb",
                "min_report_version": "report_version"}.get(n, n) for n in out}
        if self.measurement is not None or self.trusted_measurements:
            out.add("measurement")
        if self.min_tcb is not None or self.min_tcb_by_product:
            out.add("tcb")
        if self.require_crl:
            out.add("crl")
        return out


@dataclass(frozen=True)
class Revocation:
    """What is known about revocation: a CRL to check, or why there is none."""
    crl: x509.CertificateRevocationList | None = None
    source: str = ""
    unavailable: str | None = None  # reason no CRL could be had


@dataclass
class Verification:
    report: Report
    product: str
    steps: list[Step]
    explanation: Any = None  # hbos.measure.explain.Explanation when the measurement was searched
    requested: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        if any(s.status == FAIL for s in self.steps):
            return False
        ran = {s.name for s in self.steps if s.status == PASS}
        return self.requested <= ran

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def failed(self) -> list[str]:
        ran = {s.name for s in self.steps if s.status == PASS}
        out = [s.name for s in self.steps
               if s.status == FAIL or (s.name in self.requested and s.name not in ran)]
        return out + sorted(self.requested - ran - set(out))

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


def check_signing_key(report: Report, leaf: x509.Certificate | None) -> Step:
    kind = report.signing_key
    if kind not in certs.KEY_KINDS:
        return Step("signing_key", FAIL, f"FLAGS.SIGNING_KEY is {kind}: no VCEK or VLEK signed "
                                         "this report, so nothing can vouch for it",
                    expected="VCEK or VLEK", actual=kind)
    given = certs.leaf_kind(leaf) if leaf is not None else None
    if given is not None and given != kind:
        return Step("signing_key", FAIL, f"the report is signed with a {kind} but the "
                                         f"certificate given is a {given}",
                    expected=kind, actual=given)
    return Step("signing_key", PASS, f"signed with the {kind} (FLAGS.SIGNING_KEY)")


def check_signature(report: Report, vcek: x509.Certificate) -> Step:
    kind = report.signing_key if report.signing_key in certs.KEY_KINDS else "VCEK"
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
        return Step("signature", FAIL, f"the {kind} did not sign this report (bytes 0x000-0x29F "
                                       f"were altered, or this is another chip's or TCB's "
                                       f"{kind})")
    return Step("signature", PASS, f"ECDSA P-384/SHA-384 by the {kind} over bytes 0x000-0x29F")


def check_chain(chain: certs.Chain, vcek: x509.Certificate) -> Step:
    try:
        summary = certs.verify_chain(chain, vcek)
    except AttestationError as exc:
        return Step("chain", FAIL, f"{exc.message} (product {chain.product})")
    return Step("chain", PASS, summary)


def _named(chain: certs.Chain, leaf: x509.Certificate) -> list[tuple[str, x509.Certificate]]:
    return [(f"ARK-{chain.product}", chain.ark),
            (f"{chain.intermediate} {certs._cn(chain.ask.subject)}", chain.ask),
            (chain.kind, leaf)]


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def check_validity(chain: certs.Chain, leaf: x509.Certificate,
                   at: datetime.datetime | None) -> Step:
    when = at or now_utc()
    problems = certs.validity_problems(_named(chain, leaf), when)
    stamp = when.isoformat(timespec="seconds")
    if problems:
        return Step("validity", FAIL, f"at {stamp}: {'; '.join(problems)}")
    leaf_end = leaf.not_valid_after_utc.isoformat(timespec="seconds")
    return Step("validity", PASS, f"every certificate valid at {stamp} ({chain.kind} until "
                                  f"{leaf_end})")


def check_crl(chain: certs.Chain, revocation: Revocation | None,
              at: datetime.datetime | None, require: bool) -> Step:
    """The ASK/ASVK is not on the ARK's CRL. No current CRL: unknown (fail when required)."""
    missing = FAIL if require else UNKNOWN
    req = " (--require-crl)" if require else ""
    if revocation is None or revocation.crl is None:
        why = revocation.unavailable if revocation else "no CRL was looked up"
        return Step("crl", missing, f"revocation unknown: {why}{req}")
    crl = revocation.crl
    try:
        certs.verify_crl(crl, chain.ark)
    except AttestationError as exc:
        return Step("crl", FAIL, f"{revocation.source}: {exc.message}")
    when = at or now_utc()
    nxt = crl.next_update_utc
    if nxt is not None and when > nxt:
        return Step("crl", missing, f"revocation unknown: the CRL ({revocation.source}) is out "
                                    f"of date (nextUpdate {nxt.isoformat()}){req}")
    mid = f"{chain.intermediate} {certs._cn(chain.ask.subject)}"
    entry = crl.get_revoked_certificate_by_serial_number(certs.serial_number(chain.ask))
    if entry is not None:
        return Step("crl", FAIL, f"{mid} (serial {certs.serial_number(chain.ask):#x}) is revoked "
                                 f"since {entry.revocation_date_utc.isoformat()} "
                                 f"(ARK-{chain.product}'s CRL)")
    return Step("crl", PASS, f"{mid} not revoked (ARK-{chain.product}'s CRL, nextUpdate "
                             f"{nxt.isoformat() if nxt else 'none'})")


def check_hwid(report: Report, info: certs.VcekInfo, product: str) -> Step:
    if report.signing_key == "VLEK":
        return Step("hwid", SKIP, "does not apply: a VLEK is not bound to one chip (CHIP_ID "
                                  "may be masked); the VLEK's TCB is still checked")
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
    kind = "VLEK" if report.signing_key == "VLEK" else "VCEK"
    reported = report.tcb("reported_tcb", product).as_dict()
    differ = {k: (v, info.tcb.get(k)) for k, v in reported.items() if info.tcb.get(k) != v}
    if differ:
        text = ", ".join(f"{k} report {a} / {kind} {b}" for k, (a, b) in differ.items())
        return Step("vcek_tcb", FAIL, f"the {kind} was issued for another TCB: {text}")
    return Step("vcek_tcb", PASS, f"{kind} issued for REPORTED_TCB {Tcb(**reported)}")


def check_report_version(report: Report, minimum: int | None) -> Step:
    if minimum is None:
        return Step("report_version", SKIP, "no minimum report version given",
                    actual=str(report.version))
    if report.version < minimum:
        return Step("report_version", FAIL, "report VERSION below the minimum",
                    expected=f">= {minimum}", actual=str(report.version))
    return Step("report_version", PASS, f"VERSION {report.version} >= {minimum}")


def check_policy_sanity(report: Report, allow_migrate_ma: bool) -> Step:
    """POLICY as the ABI allows it (spec Table 9 "Guest Policy Structure")."""
    pol = report.policy
    problems = []
    if not pol >> POLICY_RESERVED_ONE_BIT & 1:
        problems.append("reserved bit 17 (must be one) is clear")
    high = pol >> (POLICY_HIGHEST_DEFINED_BIT + 1)
    if high:
        bits = [str(b) for b in range(POLICY_HIGHEST_DEFINED_BIT + 1, 64) if pol >> b & 1]
        problems.append(f"reserved bit(s) {', '.join(bits)} (must be zero) set")
    if pol >> POLICY_MIGRATE_MA_BIT & 1 and not allow_migrate_ma:
        problems.append("MIGRATE_MA (bit 18) is on: a migration agent may move the guest "
                        "(--allow-migrate-ma accepts it)")
    abi = (pol >> 8 & 0xFF, pol & 0xFF)
    fw = (report.fields.get("current_major", 0), report.fields.get("current_minor", 0))
    if abi > fw:
        problems.append(f"the policy asks for ABI >= {abi[0]}.{abi[1]} but the firmware is "
                        f"{fw[0]}.{fw[1]}")
    if problems:
        return Step("policy_sanity", FAIL, "; ".join(problems), actual=policy_text(pol))
    return Step("policy_sanity", PASS, f"POLICY {pol:#x} well-formed (bit 17 set, reserved bits "
                                       f"clear, ABI {abi[0]}.{abi[1]} <= firmware "
                                       f"{fw[0]}.{fw[1]})")


def check_tcb(report: Report, minimum: Tcb | None, product: str,
              by_product: dict[str, Tcb] | None = None) -> Step:
    reported = report.tcb("reported_tcb", product)
    if minimum is None and by_product:
        minimum = by_product.get(product)
        if minimum is None:
            return Step("tcb", FAIL, f"the reference values give no minimum TCB for {product} "
                                     f"(only {', '.join(sorted(by_product))})",
                        actual=str(reported))
    if minimum is None:
        return Step("tcb", SKIP, "no minimum TCB given", actual=str(reported))
    low = reported.below(minimum)
    if low:
        return Step("tcb", FAIL, f"REPORTED_TCB below the minimum: {', '.join(low)}",
                    expected=f">= {minimum}", actual=str(reported))
    return Step("tcb", PASS, "REPORTED_TCB >= minimum", expected=f">= {minimum}",
                actual=str(reported))


def check_launch_tcb(report: Report, minimum: Tcb | None, product: str) -> Step:
    launch = report.tcb("launch_tcb", product)
    if minimum is None:
        return Step("launch_tcb", SKIP, "no minimum launch TCB given", actual=str(launch))
    low = launch.below(minimum)
    if low:
        return Step("launch_tcb", FAIL, f"LAUNCH_TCB below the minimum: {', '.join(low)}",
                    expected=f">= {minimum}", actual=str(launch))
    return Step("launch_tcb", PASS, "LAUNCH_TCB >= minimum", expected=f">= {minimum}",
                actual=str(launch))


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
    trusted = ([expect.measurement.lower()] if expect.measurement else []) + \
        [m.lower() for m in expect.trusted_measurements]
    if not trusted:
        return Step("measurement", SKIP, "no expected measurement given", actual=actual)
    if actual not in trusted:
        what = "the expected launch digest" if len(trusted) == 1 else \
            f"each of the {len(trusted)} trusted launch digests"
        return Step("measurement", FAIL, f"MEASUREMENT differs from {what}",
                    expected=" or ".join(trusted), actual=actual)
    detail = "MEASUREMENT equals the expected launch digest" if len(trusted) == 1 else \
        f"MEASUREMENT is trusted digest {trusted.index(actual) + 1} of {len(trusted)}"
    return Step("measurement", PASS, detail, expected=actual, actual=actual)


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


def platform_info_text(value: int) -> str:
    on = [PLATFORM_INFO_BITS.get(b, f"bit{b}") for b in range(64) if value >> b & 1]
    return f"{value:#x} ({', '.join(on) or 'none set'})"


def check_platform_info(report: Report, spec: tuple[int, int] | None) -> Step:
    value = report.platform_info
    if spec is None:
        return Step("platform_info", SKIP, "no PLATFORM_INFO requirement given",
                    actual=platform_info_text(value))
    required, forbidden = spec
    missing = required & ~value
    extra = forbidden & value
    problems = [f"{PLATFORM_INFO_BITS.get(b, f'bit{b}')} must be set" for b in range(64)
                if missing >> b & 1]
    problems += [f"{PLATFORM_INFO_BITS.get(b, f'bit{b}')} must be clear" for b in range(64)
                 if extra >> b & 1]
    if problems:
        return Step("platform_info", FAIL, f"PLATFORM_INFO: {', '.join(problems)}",
                    actual=platform_info_text(value))
    return Step("platform_info", PASS, f"PLATFORM_INFO {platform_info_text(value)} meets the "
                                       "requirement")


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


def refused(report: Report, product: str, expect: Expectations) -> Verification:
    """The verdict for a report no key signed: only the signing_key step can run."""
    steps = [check_signing_key(report, None)]
    steps += [Step(n, SKIP, "not checked: the report names no signing key")
              for n in STEP_ORDER[1:]]
    return Verification(report, product, steps, requested=expect.requested())


def verify(report: Report, vcek: x509.Certificate, chain: certs.Chain,
           expect: Expectations, revocation: Revocation | None = None) -> Verification:
    """Run every step; never raises for a failed check (each step says why)."""
    product = chain.product
    if report.signing_key not in certs.KEY_KINDS:
        return refused(report, product, expect)
    info = certs.vcek_info(vcek)
    steps = [
        check_signing_key(report, vcek),
        check_signature(report, vcek),
        check_chain(chain, vcek),
        check_validity(chain, vcek, expect.at),
        check_crl(chain, revocation, expect.at, expect.require_crl),
        check_hwid(report, info, product),
        check_vcek_tcb(report, info, product),
        check_report_version(report, expect.min_report_version),
        check_policy_sanity(report, expect.allow_migrate_ma),
        check_tcb(report, expect.min_tcb, product, expect.min_tcb_by_product),
        check_launch_tcb(report, expect.min_launch_tcb, product),
        check_policy(report, expect.policy, ignore_debug=expect.allow_debug),
        check_debug(report, expect.allow_debug),
        check_measurement(report, expect),
        _check_bytes("report_data", "REPORT_DATA", report.report_data, expect.report_data),
        _check_bytes("host_data", "HOST_DATA", report.host_data, expect.host_data),
        _check_bytes("id_key_digest", "ID_KEY_DIGEST", report.id_key_digest,
                     expect.id_key_digest),
        _check_bytes("author_key_digest", "AUTHOR_KEY_DIGEST", report.author_key_digest,
                     expect.author_key_digest),
        _check_bytes("family_id", "FAMILY_ID", report.family_id, expect.family_id),
        _check_bytes("image_id", "IMAGE_ID", report.image_id, expect.image_id),
        check_vmpl(report, expect.vmpl),
        check_platform_info(report, expect.platform_info),
    ]
    return Verification(report, product, steps, requested=expect.requested())


# ----------------------------------------------------- expectations & output


def parse_hex_bytes(value: str, size: int, what: str, *, pad: bool = False) -> bytes:
    """Hex text -> bytes of `size` (shorter values zero-padded on the right when pad)."""
    text = value.strip().lower().removeprefix("0x")
    if not text:
        raise AttestationError(f"{what} is empty: give {2 * size} hex digits, or leave the "
                               "option out")
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
        text = read_bounded(p, MAX_MEASUREMENT_JSON, "measurement file").decode("utf-8")
        data = json.loads(text)
    except AttestationError as exc:
        if "does not exist" in exc.message:
            raise AttestationError(exc.message, hint="run `doit measure` first, or pass "
                                                     "--measurement HEX") from None
        raise
    except UnicodeDecodeError:
        raise AttestationError(f"{p}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise AttestationError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise AttestationError(f"{p}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise AttestationError(f"{p}: expected a JSON object")
    return data


MAX_MEASUREMENT_JSON = 1024 * 1024
# 32-byte HOST_DATA, 48-byte key digests: measurement.json (issue 15) may carry them
DIGEST_FIELDS = {"host_data": 32, "id_key_digest": 48, "author_key_digest": 48}


def _typed(value: Any, kinds: tuple[type, ...], key: str, source: str, what: str) -> Any:
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise AttestationError(f"{source}: {key} must be {what}, got {type(value).__name__} "
                               f"{value!r:.40}")
    return value


def measurement_expectation(record: dict[str, Any], source: str) -> dict[str, Any]:
    """Expectations fields from a measurement.json record (expected_hash, and what
    the build pinned under "vm": guest_policy, family_id, image_id; "debug"; host_data,
    id_key_digest, author_key_digest at the top level or under "vm").

    A field of the wrong type is refused, never skipped: an expectation that cannot be
    read must not turn into a step that does not run."""
    out: dict[str, Any] = {}
    expected = record.get("expected_hash")
    if expected is not None:
        _typed(expected, (str,), "expected_hash", source, "96 hex digits or null")
        out["measurement"] = parse_hex_bytes(expected, 48, f"{source}: expected_hash").hex()
    else:
        reason = record.get("expected_hash_reason") or "it records no expected_hash"
        out["measurement_missing"] = f"{source} has no expected launch digest: {reason}"
    vm = record.get("vm")
    if vm is None:
        vm = {}
    _typed(vm, (dict,), "vm", source, "an object")
    if "guest_policy" in vm and vm["guest_policy"] is not None:
        out["policy"] = _typed(vm["guest_policy"], (int,), "vm.guest_policy", source,
                               "an integer")
        if not 0 <= out["policy"] < 1 << 64:
            raise AttestationError(f"{source}: vm.guest_policy {out['policy']} is not a 64-bit "
                                   "value")
    for key in ("family_id", "image_id"):
        if key in vm and vm[key] is not None:
            value = _typed(vm[key], (str,), f"vm.{key}", source, "a hex string")
            out[key] = parse_hex_bytes(value, 16, f"{source}: vm.{key}", pad=True)
    for key, size in DIGEST_FIELDS.items():
        for where, holder in ((key, record), (f"vm.{key}", vm)):
            if holder.get(key) is not None:
                value = _typed(holder[key], (str,), where, source, f"{2 * size} hex digits")
                out[key] = parse_hex_bytes(value, size, f"{source}: {where}")
    if "debug" in record:
        if _typed(record["debug"], (bool,), "debug", source, "true or false"):
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
        mark = {PASS: "ok  ", FAIL: "FAIL", SKIP: "skip", UNKNOWN: "??  "}[s.status]
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
    unknown = [s.name for s in v.steps if s.status == UNKNOWN]
    if not v.ok:
        lines.append(f"NOT VERIFIED: failed {', '.join(v.failed)}")
    elif unknown:
        lines.append(f"VERIFIED, except {', '.join(unknown)}: unknown (see above)")
    else:
        lines.append("VERIFIED")
    return "\n".join(lines)
