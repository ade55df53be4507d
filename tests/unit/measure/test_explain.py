"""The measurement-mismatch explainer, on a build-like input set (AmdSev OVMF
fixture, guest_features 0x1, 4 vCPUs) and report-like digests computed by
hbos.measure.digest.launch_digest with one parameter changed."""

from __future__ import annotations

import hashlib
import json

import pytest
from sevsnpmeasure.gctx import GCTX

from hbos.attest import certs, report, verify
from hbos.cli import verify_report
from hbos.measure import explain, sevsnp
from hbos.measure.digest import EMPTY_SHA256, Firmware, LaunchInputs, cmdline_sha256, inputs_record, launch_digest


@pytest.fixture(scope="module")
def firmware(amdsev_ovmf):
    return Firmware(amdsev_ovmf)


@pytest.fixture(scope="module")
def build_inputs():
    return LaunchInputs(kernel_sha256="11" * 32, initrd_sha256=EMPTY_SHA256,
                        cmdline_sha256=cmdline_sha256("console=ttyS0 root=/dev/vda"), vcpus=4,
                        vcpu_type="EPYC-v4", guest_features=0x1)


def digest(firmware, inputs, **change) -> bytes:
    return bytes.fromhex(launch_digest(firmware, inputs.replace(**change)))


def test_extend_vmsa_equals_the_library_step():
    ld, page = bytes(range(48)), bytes(4096)
    gctx = GCTX(seed=ld)
    gctx.update_vmsa_page(page)
    assert sevsnp.extend_vmsa(ld, hashlib.sha384(page).digest()) == gctx.ld()


def test_guest_features_0x21_is_explained(firmware, build_inputs):
    e = explain.explain(firmware, build_inputs, digest(firmware, build_inputs,
                                                       guest_features=0x21))
    assert e.found
    assert e.match["guest_features"] == 0x21 and e.match["vcpus"] == 4
    assert "guest_features 0x21" in e.message and "debug_swap" in e.message
    assert "vCPUs" not in e.message
    assert e.seconds >= 0 and e.candidates > 512


def test_seven_vcpus_is_explained(firmware, build_inputs):
    e = explain.explain(firmware, build_inputs, digest(firmware, build_inputs, vcpus=7))
    assert e.found
    assert e.match["vcpus"] == 7 and e.match["guest_features"] == 0x1
    assert e.message == "matches with 7 vCPUs (the build has 4)"


def test_cpu_type_and_combined_changes(firmware, build_inputs):
    e = explain.explain(firmware, build_inputs, digest(firmware, build_inputs,
                                                       vcpu_type="EPYC-Genoa"))
    assert e.found and "EPYC-Genoa" in e.message and "EPYC-v4" in e.message
    e = explain.explain(firmware, build_inputs,
                        digest(firmware, build_inputs, vcpus=512, guest_features=0x21))
    assert e.found and e.match["vcpus"] == 512 and e.match["guest_features"] == 0x21


def test_other_image_is_reported_as_such(firmware, build_inputs):
    other = digest(firmware, build_inputs, kernel_sha256="22" * 32)
    e = explain.explain(firmware, build_inputs, other)
    assert not e.found
    assert "the image" in e.message and "firmware differs" in e.message


def test_every_vcpu_count_found_incrementally(firmware, build_inputs):
    for n in (1, 2, 3, 64):
        matches, _ = explain.search(firmware, build_inputs, digest(firmware, build_inputs,
                                                                   vcpus=n), max_vcpus=64)
        assert {m["vcpus"] for m in matches} == {n}


def test_candidate_features():
    c = explain.candidate_features(0x1)
    assert c[0] == 0x1 and 0x21 in c and 0x3 in c and len(c) == len(set(c))
    assert explain.feature_names(0x21) == ["snp_active", "debug_swap"]


def test_verification_explains_a_measurement_mismatch(vectors, amdsev_ovmf, firmware,
                                                      build_inputs, tmp_path):
    """A report whose MEASUREMENT was launched with 7 vCPUs, against a 4-vCPU build."""
    att = vectors / "attestation"
    real = report.load(att / "hbos-benign-report.bin")
    raw = bytearray(real.raw)
    raw[0x90:0xC0] = digest(firmware, build_inputs, vcpus=7)
    rep = report.parse_binary(bytes(raw), "report-like")
    record = inputs_record(build_inputs, firmware, launch_digest(firmware, build_inputs))
    record["files"] = {"firmware": {"path": str(amdsev_ovmf)}}
    mj = tmp_path / "measurement.json"
    mj.write_text(json.dumps(record))
    expect = verify.Expectations(**verify.measurement_expectation(record, str(mj)))
    v = verify.verify(rep, certs.load_cert_file(att / "hbos-vcek.crt"),
                      certs.load_certs_dir(att / "certs", "milan"), expect)
    verify_report.maybe_explain(v, record, None)
    assert "measurement" in v.failed
    assert v.explanation is not None and v.explanation.match["vcpus"] == 7
    table = verify.format_table(v)
    assert "matches with 7 vCPUs (the build has 4)" in table and "candidates searched in" in table
    assert v.as_dict()["explanation"]["found"] is True


def test_cli_explains_with_ovmf(vectors, amdsev_ovmf, firmware, build_inputs, tmp_path, capsys):
    from hbos.cli import main as cli_main
    att = vectors / "attestation"
    raw = bytearray((att / "hbos-benign-report.bin").read_bytes())
    raw[0x90:0xC0] = digest(firmware, build_inputs, guest_features=0x21)
    rep = tmp_path / "report.bin"
    rep.write_bytes(bytes(raw))
    record = inputs_record(build_inputs, firmware, launch_digest(firmware, build_inputs))
    mj = tmp_path / "measurement.json"
    mj.write_text(json.dumps(record))  # no files.firmware: --ovmf names it
    args = ["verify-report", "--report", str(rep), "--vcek", str(att / "hbos-vcek.crt"),
            "--certs-dir", str(att / "certs"), "--measurement-json", str(mj)]
    assert cli_main(args) == 1
    assert "firmware (unknown) is not available" in capsys.readouterr().out
    assert cli_main(args + ["--ovmf", str(amdsev_ovmf), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert set(data["failed"]) == {"signature", "measurement"}  # edited bytes are signed
    assert data["explanation"]["match"]["guest_features"] == 0x21
    assert "debug_swap" in data["explanation"]["message"]
