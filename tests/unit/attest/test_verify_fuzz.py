"""Generated hostile input for the verifier's parsers (issue 17 items 1-3): random bytes,
random JSON types and nesting never give anything but AttestationError, and never a
VERIFIED verdict. Seeded, so a failure reproduces."""

from __future__ import annotations

import json
import random

import pytest

from hbos.attest import reference, report, verify
from hbos.errors import AttestationError

SEED = 1414


def _json_value(rnd: random.Random, depth: int = 0):
    kind = rnd.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rnd.choice([True, False])
    if kind == 2:
        return rnd.choice([0, -1, 1 << 64, 0x30000, rnd.randrange(-10**6, 10**6)])
    if kind == 3:
        return rnd.choice(["", "0x", "zz", "ab" * 48, "ab" * 16, "1" * 97, "\u00e9"])
    if kind == 4:
        return rnd.random()
    if kind == 5:
        return [_json_value(rnd, depth + 1) for _ in range(rnd.randrange(3))]
    keys = ["expected_hash", "vm", "guest_policy", "family_id", "image_id", "host_data",
            "id_key_digest", "author_key_digest", "debug", "measurements", "format",
            "min_tcb", "Milan", "snp"]
    return {rnd.choice(keys): _json_value(rnd, depth + 1) for _ in range(rnd.randrange(4))}


def test_random_bytes_never_crash_the_report_parser():
    rnd = random.Random(SEED)
    for i in range(400):
        size = rnd.choice([0, 1, 100, report.REPORT_SIZE - 1, report.REPORT_SIZE,
                           report.REPORT_SIZE + 0x20, rnd.randrange(5000)])
        data = bytes(rnd.randrange(256) for _ in range(size))
        if rnd.random() < 0.3:  # text-looking input: hex digits, JSON braces
            data = rnd.choice([b"{", b"0x", b" "]) + data.hex().encode()[:size]
        try:
            report.parse_bytes(data, f"case {i}")
        except AttestationError:
            pass


def test_deep_json_report_is_an_error_not_a_crash(tmp_path):
    f = tmp_path / "deep.json"
    f.write_text("[" * 50000 + "]" * 50000)
    with pytest.raises(AttestationError):
        report.load(f)  # larger than a report: refused before parsing
    deep = "{" + '"a":' * 1 + "[" * 20000 + "]" * 20000 + "}"
    try:
        report.parse_bytes(deep.encode(), "deep")
    except AttestationError:
        pass


def test_random_measurement_records_give_expectations_or_an_error():
    rnd = random.Random(SEED)
    for _ in range(1500):
        record = _json_value(rnd)
        if not isinstance(record, dict):
            record = {"vm": record}
        try:
            fields = verify.measurement_expectation(record, "m.json")
        except AttestationError:
            continue
        verify.Expectations(**fields)  # whatever passed is well-typed
        if "policy" in fields:
            assert isinstance(fields["policy"], int) and not isinstance(fields["policy"], bool)


def test_random_reference_values_validate_or_refuse():
    rnd = random.Random(SEED)
    for _ in range(1500):
        data = _json_value(rnd)
        if isinstance(data, dict) and rnd.random() < 0.5:
            data = {"format": reference.FORMAT, "measurements": [], **data}
        try:
            ref = reference.validate(data, "ref.json")
        except AttestationError:
            continue
        verify.Expectations(**reference.expectation_fields(ref))


def test_a_generated_report_is_never_verified_against_amd(vectors):
    """Random signed parts with a real VCEK and AMD's chain: never VERIFIED."""
    from hbos.attest import certs
    att = vectors / "attestation"
    vcek = certs.load_cert_file(att / "hbos-vcek.crt")
    chain = certs.load_certs_dir(att / "certs", "Milan")
    base = report.load(att / "hbos-benign-report.bin").raw
    rnd = random.Random(SEED)
    for _ in range(40):
        raw = bytearray(base)
        for _ in range(rnd.randrange(1, 8)):
            raw[rnd.randrange(4, report.SIGNED_SIZE)] = rnd.randrange(256)
        if raw == base:
            continue
        rep = report.parse_binary(bytes(raw))
        v = verify.verify(rep, vcek, chain, verify.Expectations())
        assert not v.ok
        assert json.dumps(v.as_dict())  # the verdict always serializes
