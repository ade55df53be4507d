"""ATTESTATION_REPORT parsing: the three real reports in tests/vectors/attestation,
in binary, hex and sev-crate JSON form; versions 2, 3 and 5; malformed input."""

from __future__ import annotations

import json
import struct

import pytest

from hbos.attest import report
from hbos.attest.report import REPORT_SIZE, Tcb, parse_tcb
from hbos.errors import AttestationError

HBOS_MEASUREMENT = ("d841d812c23fa10eb2d6bcffa7fc0ab1562044c81b5ad058a0df98692c9e264a"
                    "2c88ed99eb6d2b6b0c0446a9d994661e")


@pytest.fixture(scope="module")
def att(vectors):
    return vectors / "attestation"


def test_hbos_report_fields(att):
    r = report.load(att / "hbos-benign-report.bin")
    assert r.version == 2
    assert r.policy == 0x30000
    assert r.vmpl == 1
    assert r.signature_algo == 1
    assert r.measurement.hex() == HBOS_MEASUREMENT
    assert r.tcb("reported_tcb") == Tcb(bootloader=3, tee=0, snp=20, microcode=209)
    assert r.chip_id.hex().startswith("cf52efcc8c7f7797")
    assert len(r.signed_bytes) == 0x2A0
    rr, ss = r.signature_rs
    assert rr == int.from_bytes(r.raw[0x2A0:0x2E8], "little") and ss > 0
    # v2 reports carry no CPUID fields
    assert "cpuid_fam_id" not in r.fields and r.product is None


def test_table_values_of_other_reports(att):
    hexr = report.load(att / "virtee-report-milan.hex")
    assert hexr.measurement.hex().startswith("7a1e5c266c0108dbc9bb")
    assert hexr.policy == 0x30000
    go = report.load(att / "gosevguest-report.bin")
    assert go.measurement.hex().startswith("b07af9620f3b839b4799")
    assert go.policy == 0xB0000 and go.debug_allowed


def test_json_form_is_byte_identical_to_binary(att):
    b = report.load(att / "hbos-benign-report.bin")
    j = report.load(att / "hbos-benign-report.json")
    assert j.raw == b.raw
    assert j.fields == b.fields


def test_hex_with_whitespace_and_prefix(att):
    raw = (att / "hbos-benign-report.bin").read_bytes()
    text = "0x" + "\n".join(raw[i:i + 32].hex() for i in range(0, len(raw), 32)) + "\n"
    assert report.parse_bytes(text.encode()).raw == raw


def test_msg_report_rsp_header_is_stripped(att):
    raw = (att / "gosevguest-report.bin").read_bytes()
    rsp = struct.pack("<II", 0, REPORT_SIZE) + bytes(24) + raw
    assert report.parse_bytes(rsp).raw == raw


@pytest.mark.parametrize("length", [0, 4, 0x90, 0x2A0, REPORT_SIZE - 1])
def test_truncated_binary_names_the_offset(att, length):
    raw = (att / "hbos-benign-report.bin").read_bytes()[:length]
    with pytest.raises(AttestationError, match=f"offset {length:#05x}"):
        report.parse_binary(raw)


def test_truncated_file_through_load(att, tmp_path):
    p = tmp_path / "short.bin"
    p.write_bytes((att / "hbos-benign-report.bin").read_bytes()[:0x95])
    with pytest.raises(AttestationError, match=r"truncated.*0x095.*measurement"):
        report.load(p)


def test_too_long_is_rejected(att):
    raw = (att / "hbos-benign-report.bin").read_bytes() + b"\0"
    with pytest.raises(AttestationError, match="0x4a0"):
        report.parse_binary(raw)


def test_bad_version(att):
    raw = bytearray((att / "hbos-benign-report.bin").read_bytes())
    raw[0:4] = (1).to_bytes(4, "little")
    with pytest.raises(AttestationError, match="version 1 at offset 0x000"):
        report.parse_binary(bytes(raw))


def test_bad_hex_names_position():
    with pytest.raises(AttestationError, match=r"'g' at hex digit 5 \(report offset 0x002\)"):
        report.parse_hex("02000g00")
    with pytest.raises(AttestationError, match="odd number"):
        report.parse_hex("020")


def test_json_errors(att):
    data = json.loads((att / "hbos-benign-report.json").read_text())
    bad = dict(data, measurement=data["measurement"][:47])
    with pytest.raises(AttestationError, match=r"'measurement' has 47 bytes.*0x090"):
        report.report_from_json(bad)
    with pytest.raises(AttestationError, match="did you mean 'measurement'"):
        report.report_from_json(dict(data, measurment=[0] * 48))
    missing = {k: v for k, v in data.items() if k != "chip_id"}
    with pytest.raises(AttestationError, match="missing report field 'chip_id'.*0x1a0"):
        report.report_from_json(missing)
    with pytest.raises(AttestationError, match="does not parse"):
        report.parse_bytes(b"{ not json")


def _with_version(raw: bytes, version: int, **bytes_at: bytes) -> bytes:
    out = bytearray(raw)
    out[0:4] = version.to_bytes(4, "little")
    for off, value in bytes_at.items():
        o = int(off[1:], 16)
        out[o:o + len(value)] = value
    return bytes(out)


def test_version3_cpuid_fields_and_product(att):
    raw = (att / "hbos-benign-report.bin").read_bytes()
    v3 = report.parse_binary(_with_version(raw, 3, x188=bytes([0x19, 0x11, 0x01])))
    assert (v3.cpuid_fam_id, v3.cpuid_mod_id, v3.cpuid_step) == (0x19, 0x11, 0x01)
    assert v3.product == "Genoa"
    assert report.parse_binary(_with_version(raw, 3, x188=bytes([0x19, 0x01, 0x01]))).product \
        == "Milan"
    assert "launch_mit_vector" not in v3.fields


def test_version5_turin_mitigation_vectors_and_tcb(att):
    raw = (att / "hbos-benign-report.bin").read_bytes()
    turin_tcb = bytes([1, 2, 3, 4, 0, 0, 0, 5])  # FMC, BL, TEE, SNP, rsvd x3, UCODE
    v5 = report.parse_binary(_with_version(
        raw, 5, x188=bytes([0x1A, 0x02, 0x00]), x180=turin_tcb,
        x1f8=(0x1234).to_bytes(8, "little"), x200=(0x5678).to_bytes(8, "little")))
    assert v5.product == "Turin"
    assert v5.launch_mit_vector == 0x1234 and v5.current_mit_vector == 0x5678
    assert v5.tcb("reported_tcb") == Tcb(bootloader=2, tee=3, snp=4, microcode=5, fmc=1)


def test_parse_tcb_forms():
    assert parse_tcb("bl=3,tee=0,snp=20,ucode=209") == Tcb(3, 0, 20, 209)
    raw = bytes([3, 0, 0, 0, 0, 0, 20, 209])
    assert parse_tcb(hex(int.from_bytes(raw, "little"))) == Tcb(3, 0, 20, 209)
    with pytest.raises(AttestationError, match="bad TCB component 'foo'"):
        parse_tcb("foo=1")
    with pytest.raises(AttestationError, match="0-255"):
        parse_tcb("snp=300")


def test_tcb_comparison():
    assert Tcb(3, 0, 20, 209).below(Tcb(3, 0, 20, 209)) == []
    assert Tcb(3, 0, 20, 209).below(Tcb(3, 0, 21, 0)) == ["snp 20 < 21"]
