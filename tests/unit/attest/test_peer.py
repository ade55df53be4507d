"""hyperbeam-check: HyperBEAM's launch digest algorithm (firmware hash over its reference
OVMF layout) fed our snp_trusted entry, and its offline-reproducible report checks.

The firmware of these builds is the AmdSev OVMF vector (edk2-stable202405 layout, what the
project's own edk2 2025.02 AmdSevX64 build lays out too: it has the SVSM_CAA section) and
its pre-202405 sibling, whose layout is HyperBEAM's reference OVMF-1.55.fd's.
"""

from __future__ import annotations

import json

import pytest

from hbos.attest import peer, report
from hbos.cli import main as cli_main
from hbos.measure import digest, sevsnp
from tests.support.graph import load_dodo
from tests.support.release_fixtures import make_build
from tests.support.snp_test_ca import patch


@pytest.fixture
def pre2024_ovmf(vectors):
    return vectors / "measurement" / "ovmf_AmdSev_suffix_pre202405.bin"


def test_reference_layout_is_the_pre202405_amdsev_layout(pre2024_ovmf, amdsev_ovmf):
    parsed = sevsnp.read_ovmf(pre2024_ovmf).layout
    ref = peer.HYPERBEAM_REFERENCE
    assert (parsed.sections, parsed.reset_eip, parsed.hashes_table_gpa) == \
        (ref.sections, ref.reset_eip, ref.hashes_table_gpa)
    newer = sevsnp.read_ovmf(amdsev_ovmf, "ours").layout
    assert "SVSM_CAA at 0x80f000" in peer.first_difference(newer, ref)


def test_peer_digest_matches_sev_snp_measure_vectors(amdsev_ovmf):
    """With the firmware's own layout, HyperBEAM's algorithm is the standard one: the
    sev-snp-measure vectors of tests/vectors/README.md."""
    layout = sevsnp.read_ovmf(amdsev_ovmf, "AmdSev vector").layout
    entry = {"vcpus": 1, "vcpu_type": 5, "vmm_type": 1, "guest_features": 0x21,
             "firmware": "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa"
                         "16aff8c374c2a55c467a50da6d466b74",
             "kernel": digest.EMPTY_SHA256, "initrd": digest.EMPTY_SHA256,
             "append": digest.cmdline_sha256("console=ttyS0 loglevel=7")}
    assert peer.peer_digest(entry, layout) == (
        "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba"
        "7e534442e7e1e17895dfe778d0228977")
    assert peer.peer_digest({**entry, "guest_features": 1}, layout) == (
        "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362"
        "f390ef83a92046c042e706363b4b08fa")
    assert peer.peer_digest(entry) != peer.peer_digest(entry, layout)


def test_doit_measure_writes_snp_trusted_in_hyperbeams_format(tmp_path, amdsev_ovmf):
    _, paths = make_build(tmp_path, amdsev_ovmf)
    graph = load_dodo(tmp_path, f"firmware: {{ovmf: {tmp_path / 'fw' / 'OVMF.fd'}}}\n")
    task = graph["tasks"]["measure"]
    assert str(paths.snp_trusted) in task["targets"]
    (action,) = task["actions"][0]
    assert action() is None
    record = json.loads(paths.measurement.read_text())
    trusted = json.loads(paths.snp_trusted.read_text())
    assert isinstance(trusted, list) and len(trusted) == 1
    entry = trusted[0]
    assert list(entry) == list(peer.COMMITTED_PARAMETERS)
    assert entry["vcpu_type"] == record["vcpu_type"] and isinstance(entry["vcpus"], int)
    assert entry["firmware"] == record["firmware"] and len(entry["firmware"]) == 96
    assert entry["append"] == record["append"] and len(entry["kernel"]) == 64


def _check(tmp_path, ovmf, capsys, *extra):
    _, paths = make_build(tmp_path, ovmf)
    rc = cli_main(["hyperbeam-check", "--inputs", str(paths.measurement), *extra])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return rc, out.out, paths


def test_our_amdsev_build_is_refused_and_the_reason_named(tmp_path, amdsev_ovmf, capsys):
    rc, out, paths = _check(tmp_path, amdsev_ovmf, capsys)
    assert rc == 1, out
    assert "REJECTS" in out
    assert ("first difference: metadata section 5: our OVMF has SVSM_CAA at 0x80f000 "
            "(0x1000 bytes), HyperBEAM's reference OVMF-1.55.fd has SNP_KERNEL_HASHES at "
            "0x80f000") in out
    record = json.loads(paths.measurement.read_text())
    assert f"our expected digest:        {record['expected_hash']}" in out


def test_a_pre202405_layout_build_is_accepted(tmp_path, pre2024_ovmf, capsys):
    rc, out, paths = _check(tmp_path, pre2024_ovmf, capsys, "--json")
    assert rc == 0, out
    data = json.loads(out)
    assert data["accepted"] and data["reason"] is None
    assert data["hyperbeam_digest"] == data["our_digest"] == \
        json.loads(paths.measurement.read_text())["expected_hash"]


def test_report_checks_hyperbeam_runs_offline(tmp_path, pre2024_ovmf, vectors, capsys):
    att = vectors / "attestation"
    rep = report.load(att / "hbos-benign-report.bin")
    _, paths = make_build(tmp_path, pre2024_ovmf)
    record = json.loads(paths.measurement.read_text())
    # a report whose MEASUREMENT is what the peer computes, TCBs equal, debug off
    good = report.parse_binary(bytes(patch(rep.raw, measurement=bytes.fromhex(
        record["expected_hash"]))))
    c = peer.check(record, report=good)
    assert c.accepted, c.report_lines
    # debug on, CURRENT_TCB != REPORTED_TCB, a VLEK: each named
    bad = report.parse_binary(bytes(patch(good.raw, policy=good.policy | 1 << 19,
                                          current_tcb=good.fields["reported_tcb"] + (1 << 48),
                                          flags=1 << 2)))
    c = peer.check(record, report=bad)
    text = "\n".join(c.report_lines)
    assert not c.accepted
    assert "POLICY.DEBUG (bit 19) is set" in text
    assert "CURRENT_TCB (bl=3 tee=0 snp=21 ucode=209)" in text
    assert "signed with a VLEK" in text
    # the real report: another image, so not the digest a peer computes
    rc = cli_main(["hyperbeam-check", "--inputs", str(paths.measurement), "--report",
                   str(att / "hbos-benign-report.bin")])
    out = capsys.readouterr().out
    assert rc == 1 and "MEASUREMENT d841d812c23fa10e... is not the digest" in out


def test_usage_errors(tmp_path, capsys):
    mj = tmp_path / "m.json"
    mj.write_text(json.dumps({"expected_hash": None}))
    assert cli_main(["hyperbeam-check", "--inputs", str(mj)]) == 2
    assert "missing field" in capsys.readouterr().err
    assert cli_main(["hyperbeam-check", "--inputs", ""]) == 2
    assert "--inputs is empty" in capsys.readouterr().err
    assert cli_main(["hyperbeam-check", "--inputs", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
