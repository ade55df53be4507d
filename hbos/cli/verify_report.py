"""`hbos verify-report` and `doit verify_report`: check a report, print the verdict.

The CLI works without a build tree (a verifier holding only a release's
measurement.json, or just a digest); `doit verify_report` verifies against
the current build (measurement.json and the config's vm.* expectations).
Certificates come from --vcek / --certs-dir, else from AMD's KDS (cached).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from hbos.attest import certs, kds, reference, report as reportmod, verify
from hbos.attest.report import parse_tcb
from hbos.errors import AttestationError, MeasurementError
from hbos.measure import digest, explain

DEFAULT_CACHE = Path.home() / ".cache" / "hbos" / "certs"


# ------------------------------------------------------------ shared flow


def obtain_certs(rep: reportmod.Report, *, product: str | None, vcek_path: str | None,
                 certs_dir: str | None, kds_url: str, cache: Path):
    """(VCEK or VLEK, Chain) from files when given, else from the KDS (cached). The report's
    SIGNING_KEY decides which chain applies: ARK -> ASK -> VCEK or ARK -> ASVK -> VLEK."""
    kind = rep.signing_key
    vcek = certs.load_cert_file(vcek_path) if vcek_path else None
    prod = verify.resolve_product(product, rep, vcek)
    if kind == "VLEK" and vcek is None:
        raise AttestationError(
            "the report is signed with a VLEK, which AMD's KDS does not hand out",
            hint="pass the VLEK certificate from the host's certificate table (e.g. "
                 "`snpguest certificates`) with --vcek FILE")
    if certs_dir:
        chain = certs.load_certs_dir(certs_dir, prod, kind)
    else:
        chain = kds.fetch_chain(kds_url, prod, cache, kind)
    if vcek is None:
        try:
            vcek = kds.fetch_vcek(kds_url, prod, rep.chip_id, rep.tcb("reported_tcb", prod),
                                  cache)
        except AttestationError as exc:
            if product or rep.product:
                raise
            raise AttestationError(exc.message, hint=(
                f"the product was taken as {prod}: a version {rep.version} report does not "
                "name it; pass --product Genoa/Turin if the chip is not a Milan, or --vcek "
                "FILE")) from None
    return vcek, chain


def crl_file_name(product: str, kind: str) -> str:
    """The CRL file --certs-dir may hold: crl_<product>.der (vlek_crl_<product>.der)."""
    return f"{'' if kind == 'VCEK' else 'vlek_'}crl_{product.lower()}.der"


def obtain_revocation(chain: certs.Chain, *, crl_path: str | None, certs_dir: str | None,
                      kds_url: str, cache: Path) -> verify.Revocation:
    """The CRL: --crl FILE; else with --certs-dir (offline) DIR/crl_<product>.der when
    present; else AMD's KDS (cached until its nextUpdate). None found: unknown, with why."""
    if crl_path:
        return verify.Revocation(certs.load_crl_file(crl_path), source=crl_path)
    if certs_dir:
        f = Path(certs_dir) / crl_file_name(chain.product, chain.kind)
        if f.is_file():
            return verify.Revocation(certs.load_crl_file(f), source=str(f))
        return verify.Revocation(unavailable=f"offline (--certs-dir) and no {f.name} there; "
                                             "pass --crl FILE")
    try:
        crl = kds.fetch_crl(kds_url, chain.product, chain.kind, cache, chain.ark)
    except AttestationError as exc:
        return verify.Revocation(unavailable=exc.message)
    return verify.Revocation(crl, source=kds.crl_url(kds_url, chain.product, chain.kind))


def maybe_explain(v: verify.Verification, record: dict[str, Any] | None,
                  ovmf: str | None) -> None:
    """On a measurement mismatch with known build inputs, search for the differing parameter."""
    step = v.step("measurement")
    if step.status != verify.FAIL or not step.expected or record is None:
        return
    if not all(k in record for k in ("kernel", "initrd", "append", "vcpus")):
        step.detail += " (cannot search launch parameters: the measurement record holds no " \
                       "launch inputs)"
        return
    fw_path = ovmf or ((record.get("files") or {}).get("firmware") or {}).get("path")
    if not fw_path or not Path(fw_path).is_file():
        step.detail += (f" (cannot search launch parameters: firmware {fw_path or '(unknown)'} "
                        "is not available; hbos verify-report takes --ovmf FILE)")
        return
    try:
        inputs, fw_hash = digest.parse_inputs(record, "measurement.json")
        firmware = digest.Firmware(fw_path, launch_hash=fw_hash)
        v.explanation = explain.explain(firmware, inputs, v.report.measurement)
    except MeasurementError as exc:
        step.detail += f" (cannot search launch parameters: {exc.message})"


def run(report_path: str, expect: verify.Expectations, *, record: dict[str, Any] | None,
        product: str | None, vcek_path: str | None, certs_dir: str | None, kds_url: str,
        cache: Path, ovmf: str | None = None, explain_mismatch: bool = True,
        crl_path: str | None = None) -> verify.Verification:
    rep = reportmod.load(report_path)
    if rep.signing_key not in certs.KEY_KINDS:
        return verify.refused(rep, verify.resolve_product(product, rep), expect)
    vcek, chain = obtain_certs(rep, product=product, vcek_path=vcek_path, certs_dir=certs_dir,
                               kds_url=kds_url, cache=cache)
    revocation = obtain_revocation(chain, crl_path=crl_path, certs_dir=certs_dir,
                                   kds_url=kds_url, cache=cache)
    v = verify.verify(rep, vcek, chain, expect, revocation)
    if explain_mismatch:
        maybe_explain(v, record, ovmf)
    return v


def emit(v: verify.Verification, as_json: bool) -> None:
    if as_json:
        json.dump(v.as_dict(), sys.stdout, indent=2)
        print()
    else:
        print(verify.format_table(v))


# ------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", required=True, metavar="FILE",
                   help="the attestation report: 1184-byte binary, hex text, or the Rust sev "
                        "crate's JSON")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--measurement-json", metavar="FILE",
                   help="a build's or release's measurement.json (expected_hash; also its "
                        "pinned vm.guest_policy/family_id/image_id; inputs for --explain)")
    m.add_argument("--measurement", metavar="HEX", help="the expected launch digest (96 hex)")
    p.add_argument("--reference", metavar="FILE", action="append",
                   help="reference values (build/reference-values.json, or a release's): "
                        "trusted measurement(s), policy, minimum TCB per product, ids and "
                        "digests; repeat it to trust several releases at once; flags given "
                        "as well override them")
    p.add_argument("--vcek", metavar="FILE", help="the chip's VCEK, or the VLEK of a "
                                                   "VLEK-signed report (PEM or DER); default: "
                                                   "the VCEK fetched from the KDS")
    p.add_argument("--certs-dir", metavar="DIR",
                   help="offline ARK/ASK: DIR/ark_<product>.pem and DIR/ask_<product>.pem "
                        "(DIR/asvk_<product>.pem for a VLEK; DIR/crl_<product>.der is used "
                        "when there)")
    p.add_argument("--crl", metavar="FILE", help="AMD's CRL for the product (DER or PEM); "
                                                 "default: from the KDS, cached")
    p.add_argument("--require-crl", action="store_true",
                   help="fail when no current CRL can be had (default: revocation unknown)")
    p.add_argument("--at", metavar="TIME", help="verification time for certificate validity "
                                                "and the CRL: ISO 8601 or Unix seconds "
                                                "(default now)")
    p.add_argument("--product", metavar="NAME", help="Milan, Genoa or Turin (default: from the "
                                                     "report's CPUID or the VCEK, else Milan)")
    p.add_argument("--policy", metavar="INT", help="expected guest policy, e.g. 0x30000")
    p.add_argument("--min-tcb", metavar="TCB",
                   help="lowest acceptable REPORTED_TCB: bl=N,tee=N,snp=N,ucode=N or raw hex")
    p.add_argument("--report-data", metavar="HEX", help="expected REPORT_DATA (up to 64 bytes, "
                                                        "zero-padded)")
    p.add_argument("--family-id", metavar="HEX", help="expected FAMILY_ID (16 bytes)")
    p.add_argument("--image-id", metavar="HEX", help="expected IMAGE_ID (16 bytes)")
    p.add_argument("--host-data", metavar="HEX", help="expected HOST_DATA (32 bytes)")
    p.add_argument("--id-key-digest", metavar="HEX", help="expected ID_KEY_DIGEST (48 bytes)")
    p.add_argument("--author-key-digest", metavar="HEX",
                   help="expected AUTHOR_KEY_DIGEST (48 bytes)")
    p.add_argument("--vmpl", type=int, metavar="N", help="expected VMPL (0-3)")
    p.add_argument("--platform-info", metavar="SPEC",
                   help="PLATFORM_INFO bits that must be set (NAME=1) or clear (NAME=0), "
                        "comma-separated; names: " + ", ".join(
                            reportmod.PLATFORM_INFO_BITS.values()) + ", or bitN")
    p.add_argument("--min-launch-tcb", metavar="TCB", help="lowest acceptable LAUNCH_TCB "
                                                           "(same form as --min-tcb)")
    p.add_argument("--min-report-version", metavar="N", help="lowest acceptable report VERSION")
    p.add_argument("--allow-debug", action="store_true",
                   help="accept a report whose policy allows debugging")
    p.add_argument("--allow-migrate-ma", action="store_true",
                   help="accept a policy with MIGRATE_MA (bit 18) set")
    p.add_argument("--ovmf", metavar="FILE",
                   help="the OVMF the build measured (to explain a measurement mismatch)")
    p.add_argument("--no-explain", action="store_true",
                   help="do not search launch parameters on a measurement mismatch")
    p.add_argument("--kds-url", default=kds.DEFAULT_KDS, metavar="URL",
                   help=f"AMD Key Distribution Service (default {kds.DEFAULT_KDS})")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), metavar="DIR",
                   help="where KDS certificates are cached (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")


def _int(value: str, what: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise AttestationError(f"{what} must be an integer (0x... for hex), got {value!r}") \
            from None


def parse_time(value: str) -> datetime.datetime:
    """--at: ISO 8601 (a time without a zone is UTC) or Unix seconds."""
    text = value.strip()
    try:
        if text.lstrip("-").replace(".", "", 1).isdigit():
            return datetime.datetime.fromtimestamp(float(text), datetime.timezone.utc)
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise AttestationError(f"--at {value!r} is not a time",
                               hint="ISO 8601 (2026-01-31T12:00:00Z) or Unix seconds") from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def parse_platform_info(text: str) -> tuple[int, int]:
    """'smt_en=0,tsme_en=1,bit7=0' -> (bits that must be set, bits that must be clear)."""
    names = {v: b for b, v in reportmod.PLATFORM_INFO_BITS.items()}
    required = forbidden = 0
    for part in text.replace(" ", "").split(","):
        key, sep, value = part.partition("=")
        key = key.lower()
        if key in names:
            bit = names[key]
        elif key.startswith("bit") and key[3:].isdigit() and int(key[3:]) < 64:
            bit = int(key[3:])
        else:
            raise AttestationError(f"--platform-info: unknown bit {key!r}",
                                   hint=f"one of {', '.join(names)} or bitN (0-63)")
        if not sep or value not in ("0", "1"):
            raise AttestationError(f"--platform-info: write {key}=1 (must be set) or "
                                   f"{key}=0 (must be clear), got {part!r}")
        if value == "1":
            required |= 1 << bit
        else:
            forbidden |= 1 << bit
    return required, forbidden


def refuse_empty(args: argparse.Namespace) -> None:
    """An empty value for any option is a usage error: never a step silently skipped."""
    for key, value in vars(args).items():
        if isinstance(value, list):  # a repeatable option: each occurrence counts
            value = next((v for v in value if isinstance(v, str) and not v.strip()), None)
        if isinstance(value, str) and not value.strip() and not key.startswith("_"):
            raise AttestationError(f"--{key.replace('_', '-')} is empty",
                                   hint="give a value or leave the option out")


def expectations_from_args(args: argparse.Namespace) -> tuple[verify.Expectations,
                                                                dict[str, Any] | None]:
    refuse_empty(args)
    fields: dict[str, Any] = {}
    record = None
    if args.reference:
        refs = [reference.load(f) for f in args.reference]
        fields.update(reference.expectation_fields(reference.merge(refs)))
    if args.measurement_json is not None:
        record = verify.load_measurement_json(args.measurement_json)
        fields.update(verify.measurement_expectation(record, args.measurement_json))
    if args.measurement is not None:
        fields["measurement"] = verify.parse_hex_bytes(args.measurement, 48, "--measurement").hex()
        fields.pop("measurement_missing", None)
        fields.pop("trusted_measurements", None)
    if args.policy is not None:
        fields["policy"] = _int(args.policy, "--policy")
        if not 0 <= fields["policy"] < 1 << 64:
            raise AttestationError(f"--policy must be a 64-bit value, got {args.policy}")
    if args.min_tcb is not None:
        fields["min_tcb"] = parse_tcb(args.min_tcb)
    if args.min_launch_tcb is not None:
        fields["min_launch_tcb"] = parse_tcb(args.min_launch_tcb)
    if args.min_report_version is not None:
        fields["min_report_version"] = _int(args.min_report_version, "--min-report-version")
    if args.report_data is not None:
        fields["report_data"] = verify.parse_hex_bytes(args.report_data, 64, "--report-data",
                                                       pad=True)
    if args.family_id is not None:
        fields["family_id"] = verify.parse_hex_bytes(args.family_id, 16, "--family-id", pad=True)
    if args.image_id is not None:
        fields["image_id"] = verify.parse_hex_bytes(args.image_id, 16, "--image-id", pad=True)
    for key, size in verify.DIGEST_FIELDS.items():
        value = getattr(args, key)
        if value is not None:
            fields[key] = verify.parse_hex_bytes(value, size, f"--{key.replace('_', '-')}")
    if args.platform_info is not None:
        fields["platform_info"] = parse_platform_info(args.platform_info)
    if args.vmpl is not None:
        if not 0 <= args.vmpl <= 3:
            raise AttestationError(f"--vmpl must be 0-3, got {args.vmpl}")
        fields["vmpl"] = args.vmpl
    if args.at is not None:
        fields["at"] = parse_time(args.at)
    fields["require_crl"] = args.require_crl
    fields["allow_migrate_ma"] = args.allow_migrate_ma
    # measurement.json's "debug": true (a debug build) allows debug; so does --allow-debug
    fields["allow_debug"] = args.allow_debug or fields.get("allow_debug", False)
    return verify.Expectations(**fields), record


def main(args: argparse.Namespace) -> int:
    expect, record = expectations_from_args(args)
    v = run(args.report, expect, record=record, product=args.product, vcek_path=args.vcek,
            certs_dir=args.certs_dir, kds_url=args.kds_url, cache=Path(args.cache_dir),
            ovmf=args.ovmf, explain_mismatch=not args.no_explain, crl_path=args.crl)
    emit(v, args.json)
    return 0 if v.ok else 1


# ------------------------------------------------------------------ doit

def verify_report(cfg, paths, report: str = "", vcek: str = "", certs_dir: str = "",
                  report_data: str = "", vmpl: str = "", allow_debug: bool = False,
                  json: bool = False, at: str = "", crl: str = "",
                  require_crl: bool = False) -> None:
    """`doit verify_report`: its keyword names are hbos.tasks.params.VERIFY_REPORT (run by hbos.tasks.adapter)."""
    if not report:
        raise AttestationError("no report given", hint="doit verify_report --report FILE")
    expect, record = verify.expectations_from_build(
        cfg, paths, allow_debug=allow_debug,
        report_data=verify.parse_hex_bytes(report_data, 64, "--report-data", pad=True)
        if report_data else None,
        vmpl=_int(vmpl, "--vmpl") if vmpl else None)
    expect = dataclasses.replace(expect, at=parse_time(at) if at else None,
                                 require_crl=require_crl)
    cache = cfg.path(cfg.attest.cert_cache) if cfg.attest.cert_cache else paths.cert_cache
    v = run(report, expect, record=record, product=cfg.vm.host_cpu_family,
            vcek_path=vcek or None, certs_dir=certs_dir or None,
            kds_url=cfg.attest.kds_url, cache=cache, explain_mismatch=cfg.attest.explain,
            crl_path=crl or None)
    emit(v, json)
    if not v.ok:
        raise AttestationError(f"attestation report NOT verified: failed {', '.join(v.failed)}")

