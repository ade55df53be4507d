"""Will a HyperBEAM peer accept this node? `snp_trusted` entries and the peer's own digest.

A HyperBEAM node verifies a peer's attestation (its `dev_snp` device, read at
permaweb/HyperBEAM's snp_verification / snp_launch_digest* / snp_ovmf /
snp_certificates modules) by:

1. finding the peer's committed launch parameters in its `snp_trusted` list,
   matching every key of `snp_enforced_keys` (default: all eight of
   COMMITTED_PARAMETERS below);
2. recomputing the launch digest from them itself: the GCTX is seeded with the
   entry's `firmware` (the OVMF launch hash), then the SEV metadata sections, the
   SEV hashes table GPA and the reset EIP come from a *reference* OVMF the node
   ships (`OVMF-1.55.fd`), not from the peer's firmware; then one VMSA per vCPU;
3. refusing a policy with DEBUG (bit 19) set;
4. fetching the VCEK from AMD's KDS with the report's CHIP_ID (all 64 bytes) and
   its CURRENT_TCB (not REPORTED_TCB), product Milan unless configured, and
   checking the report's signature with it (VCEK only: no VLEK chain).

So a node whose OVMF lays its metadata out differently from that reference OVMF
is refused by every peer even with a perfect `snp_trusted` entry. The reference
layout below is the pre-edk2-stable202405 AmdSev layout (kernel hashes page at
0x80f000, table at 0x80fc00, no SVSM_CAA section): recomputing the two real
reports in HyperBEAM's own test data (test/snp_attestation and
test/admissible-report.eterm, commit b2743e4) from their trusted entries gives
their MEASUREMENT with this layout and not with the 202405 one. A unit test
checks the table against tests/vectors/measurement/ovmf_AmdSev_suffix_pre202405.bin.

`hbos hyperbeam-check` (hbos.cli.hyperbeam_check) runs check() and prints its verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hbos.attest.report import Report
from hbos.errors import MeasurementError
from hbos.measure import sevsnp
from hbos.measure.digest import RUST_CPU_TYPES, RUST_VMM_TYPES, Firmware, LaunchInputs, parse_inputs
from hbos.util.fsutil import write_text

COMMITTED_PARAMETERS = ("vcpus", "vcpu_type", "vmm_type", "guest_features", "firmware",
                        "kernel", "initrd", "append")

HYPERBEAM_REFERENCE = sevsnp.OvmfLayout(
    name="HyperBEAM's reference OVMF-1.55.fd",
    sections=(("SNP_SEC_MEM", 0x800000, 0x9000), ("SNP_SEC_MEM", 0x80A000, 0x3000),
              ("SNP_SECRETS", 0x80D000, 0x1000), ("CPUID", 0x80E000, 0x1000),
              ("SNP_KERNEL_HASHES", 0x80F000, 0x1000), ("SNP_SEC_MEM", 0x810000, 0x10000)),
    reset_eip=0x80B004, hashes_table_gpa=0x80FC00)


# ---------------------------------------------------------------- snp_trusted


def trusted_entry(record: dict[str, Any], source: str = "measurement.json") -> dict[str, Any]:
    """The `snp_trusted` entry of a build, in HyperBEAM's format: the eight committed
    parameters, integers for vcpus / vcpu_type (the sev crate's CpuType) / vmm_type
    (1 QEMU, 2 EC2) / guest_features, lower-case hex for the four hashes."""
    inputs, fw = parse_inputs(record, source)
    if fw is None:
        raise MeasurementError(f"{source} has no firmware launch hash, so there is no "
                               "snp_trusted entry to give a peer",
                               hint="build with a firmware (doit firmware, or firmware.ovmf)")
    if inputs.vcpu_type not in RUST_CPU_TYPES:
        raise MeasurementError(f"{source}: vCPU type {inputs.vcpu_type} has no sev-crate "
                               "CpuType number, which HyperBEAM needs")
    return {
        "vcpus": inputs.vcpus,
        "vcpu_type": RUST_CPU_TYPES.index(inputs.vcpu_type),
        "vmm_type": {v: k for k, v in RUST_VMM_TYPES.items()}[inputs.vmm_type],
        "guest_features": inputs.guest_features,
        "firmware": fw.lower(),
        "kernel": inputs.kernel_sha256.lower(),
        "initrd": inputs.initrd_sha256.lower(),
        "append": inputs.cmdline_sha256.lower(),
    }


def write_trusted(path: str | Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """build/snp_trusted.json: HyperBEAM's `snp_trusted` list (one entry, or none when the
    build has no firmware hash)."""
    try:
        entries = [trusted_entry(record)]
    except MeasurementError:
        entries = []
    write_text(path, json.dumps(entries, indent=2) + "\n")
    return entries


# -------------------------------------------------------------- the digest


def peer_digest(entry: dict[str, Any], layout: sevsnp.OvmfLayout = HYPERBEAM_REFERENCE) -> str:
    """The launch digest a HyperBEAM peer computes from `entry` (its algorithm: firmware hash
    as the GCTX seed, metadata / hashes table / reset EIP from `layout`)."""
    cpu = RUST_CPU_TYPES[entry["vcpu_type"]]
    inputs = LaunchInputs(entry["kernel"], entry["initrd"], entry["append"], entry["vcpus"],
                          cpu, entry["guest_features"], RUST_VMM_TYPES[entry["vmm_type"]])
    return sevsnp.launch_digest(
        bytes.fromhex(entry["firmware"]), layout, inputs.kernel_hashes(), vcpus=inputs.vcpus,
        cpu_signature=sevsnp.CPU_SIGNATURES[cpu], guest_features=inputs.guest_features,
        vmm_type=inputs.vmm_type).hex()


def first_difference(ours: sevsnp.OvmfLayout, ref: sevsnp.OvmfLayout) -> str | None:
    """The first way `ours` lays out what the digest measures differently from `ref`."""
    for i in range(max(len(ours.sections), len(ref.sections))):
        a = ours.sections[i] if i < len(ours.sections) else None
        b = ref.sections[i] if i < len(ref.sections) else None
        if a != b:
            return (f"metadata section {i + 1}: our OVMF has {_section(a)}, {ref.name} has "
                    f"{_section(b)}")
    if ours.reset_eip != ref.reset_eip:
        return f"reset EIP: ours {_address(ours.reset_eip)}, {ref.name} {_address(ref.reset_eip)}"
    if ours.hashes_table_gpa != ref.hashes_table_gpa:
        return (f"SEV hashes table: ours at {_address(ours.hashes_table_gpa)}, {ref.name} at "
                f"{_address(ref.hashes_table_gpa)}")
    return None


def _section(s: tuple[str, int, int] | None) -> str:
    return "nothing" if s is None else f"{s[0]} at {s[1]:#x} ({s[2]:#x} bytes)"


def _address(value: int | None) -> str:
    return "none" if value is None else f"{value:#x}"


@dataclass
class Check:
    entry: dict[str, Any]
    ours: str | None        # our expected digest (measurement.json)
    peers: str              # what a HyperBEAM peer computes from the entry
    reason: str | None      # why they differ (None: they agree)
    report_lines: list[str]
    report_ok: bool = True

    @property
    def accepted(self) -> bool:
        return self.reason is None and self.report_ok

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "snp_trusted_entry": self.entry,
                "our_digest": self.ours, "hyperbeam_digest": self.peers,
                "reason": self.reason, "report": self.report_lines}


def check(record: dict[str, Any], *, ovmf: str | None = None, report: Report | None = None,
          product: str | None = None, source: str = "measurement.json") -> Check:
    """Does HyperBEAM's algorithm, fed our snp_trusted entry, reproduce our digest (and the
    report's MEASUREMENT)? Names the first difference."""
    entry = trusted_entry(record, source)
    ours = record.get("expected_hash")
    peers = peer_digest(entry)
    reason = None
    if ours is None or peers != str(ours).lower():
        fw_path = ovmf or ((record.get("files") or {}).get("firmware") or {}).get("path")
        diff = None
        if fw_path and Path(fw_path).is_file():
            diff = first_difference(Firmware(fw_path).image.layout, HYPERBEAM_REFERENCE)
        if diff:
            reason = (f"{diff}: a peer lays our firmware hash over its own reference OVMF "
                      "layout, so it computes another digest")
        elif ours is None:
            reason = f"{source} has no expected digest to compare"
        else:
            reason = ("the digests differ although the firmware layout is not known to differ"
                      + ("" if fw_path and Path(fw_path).is_file() else
                         f" (our OVMF {fw_path or '(unknown)'} is not available: --ovmf FILE)"))
    lines: list[str] = []
    ok = True
    if report is not None:
        ok, lines = _report_checks(report, ours, peers, product)
    return Check(entry, ours, peers, reason, lines, ok)


def _report_checks(rep: Report, ours: str | None, peers: str,
                   product: str | None) -> tuple[bool, list[str]]:
    """HyperBEAM's own steps that can be reproduced offline, on a report."""
    lines: list[str] = []
    ok = True
    m = rep.measurement.hex()
    if m == peers:
        lines.append("ok    MEASUREMENT equals the digest a peer computes")
    else:
        ok = False
        which = " (it is our expected digest)" if ours and m == str(ours).lower() else ""
        lines.append(f"FAIL  MEASUREMENT {m[:16]}... is not the digest a peer computes{which}")
    if rep.debug_allowed:
        ok = False
        lines.append("FAIL  POLICY.DEBUG (bit 19) is set: HyperBEAM refuses debug guests")
    else:
        lines.append("ok    POLICY.DEBUG is off")
    if rep.signing_key != "VCEK":
        ok = False
        lines.append(f"FAIL  the report is signed with a {rep.signing_key}: HyperBEAM only "
                     "fetches VCEKs")
    prod = product or rep.product or "Milan"
    current, reported = rep.tcb("current_tcb", prod), rep.tcb("reported_tcb", prod)
    if current != reported:
        ok = False
        lines.append(f"FAIL  HyperBEAM fetches the VCEK for CURRENT_TCB ({current}), but the "
                     f"report is signed by the VCEK of REPORTED_TCB ({reported}): the "
                     "signature check fails until the host reports its current TCB")
    else:
        lines.append(f"ok    VCEK fetched with CURRENT_TCB ({current}) = REPORTED_TCB")
    if prod != "Milan":
        lines.append(f"note  product {prod}: HyperBEAM asks the KDS for Milan unless the peer "
                     "is configured with the product"
                     + ("; and it sends all 64 bytes of CHIP_ID, where Turin's KDS wants 8"
                        if prod == "Turin" else ""))
    return ok, lines


def format_check(c: Check) -> str:
    lines = ["snp_trusted entry: " + json.dumps(c.entry, separators=(",", ":")),
             f"our expected digest:        {c.ours}",
             f"HyperBEAM peer's digest:    {c.peers}"]
    if c.reason:
        lines.append(f"first difference: {c.reason}")
    lines += [f"report: {line}" for line in c.report_lines]
    lines.append("a HyperBEAM peer ACCEPTS this node" if c.accepted else
                 "a HyperBEAM peer REJECTS this node")
    return "\n".join(lines)
