"""Verification of the three real hardware reports (tests/vectors/attestation)
against their VCEKs and AMD's Milan roots, and every way it must fail."""

from __future__ import annotations

import json
import warnings

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from hbos.attest import certs, report, verify
from hbos.attest.report import SIGNED_SIZE, Report, Tcb
from hbos.attest.verify import Expectations
from hbos.cli import main as cli_main, verify_report
from hbos.errors import AttestationError
from hbos.tasks import adapter

REPORTS = {
    # name: (report file, VCEK file, measurement, policy, vmpl)
    "hbos": ("hbos-benign-report.bin", "hbos-vcek.crt",
             "d841d812c23fa10eb2d6bcffa7fc0ab1562044c81b5ad058a0df98692c9e264a"
             "2c88ed99eb6d2b6b0c0446a9d994661e", 0x30000, 1),
    "virtee": ("virtee-report-milan.hex", "virtee-vcek-milan.der",
               "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
               "3e1a0dc39b2c60bd95b9c480cd81841f", 0x30000, 0),
    "gosevguest": ("gosevguest-report.bin", "gosevguest-vcek.der",
                   "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
                   "6bdf8a9ece31a5a608eb0cf2e4872b01", 0xB0000, 0),
}



# certificates expire: verify at a fixed time (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("fixed_verification_time")

@pytest.fixture(scope="module")
def att(vectors):
    return vectors / "attestation"


@pytest.fixture(scope="module")
def milan(att):
    return certs.load_certs_dir(att / "certs", "milan")


def load(att, name):
    rep_file, vcek_file, measurement, policy, vmpl = REPORTS[name]
    return (report.load(att / rep_file), certs.load_cert_file(att / vcek_file),
            Expectations(measurement=measurement, policy=policy, vmpl=vmpl,
                         allow_debug=bool(policy >> 19 & 1)))


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_real_reports_verify_fully(att, milan, name):
    rep, vcek, expect = load(att, name)
    v = verify.verify(rep, vcek, milan, expect)
    assert v.ok, verify.format_table(v)
    for step in ("signature", "chain", "hwid", "vcek_tcb", "policy", "debug", "measurement",
                 "vmpl"):
        assert v.step(step).status == verify.PASS, step
    assert [s.name for s in v.steps] == list(verify.STEP_ORDER)


def _bit_positions():
    """A sample across the signed part: a stride through every field, plus the edges."""
    sample = {(off, off % 8) for off in range(0, SIGNED_SIZE, 11)}
    edges = {(0, 0), (0, 7), (3, 7), (0x08, 0), (0x34, 0), (0x50, 0), (0x8F, 7), (0x90, 0),
             (0xBF, 7), (0x180, 0), (0x19F, 7), (0x1A0, 0), (0x1DF, 7), (0x1F0, 3),
             (SIGNED_SIZE - 1, 0), (SIGNED_SIZE - 1, 7)}
    return sorted(sample | edges)


def _flipped(rep: Report, off: int, bit: int) -> Report:
    raw = bytearray(rep.raw)
    raw[off] ^= 1 << bit
    try:
        return report.parse_binary(bytes(raw))
    except AttestationError:
        # only VERSION flips can make the report unparseable (a rejection too);
        # check that the signature step would still catch them
        assert off < 4
        return Report(raw=bytes(raw), fields=dict(rep.fields), source="flipped")


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_any_flipped_signed_bit_fails_the_signature(att, milan, name):
    rep, vcek, expect = load(att, name)
    positions = _bit_positions() if name == "hbos" else [(0, 0), (0x90, 0), (SIGNED_SIZE - 1, 7)]
    for off, bit in positions:
        v = verify.verify(_flipped(rep, off, bit), vcek, milan, expect)
        assert v.step("signature").status == verify.FAIL, f"bit {bit} of byte {off:#x}"
        assert not v.ok


def test_flipped_signature_bytes_fail_too(att, milan):
    rep, vcek, expect = load(att, "hbos")
    for off in (0x2A0, 0x2E7, 0x2E8, 0x32F):
        assert verify.verify(_flipped(rep, off, 0), vcek, milan, expect).failed == ["signature"]


def test_vcek_of_another_chip_fails_hwid(att, milan):
    rep, _, expect = load(att, "hbos")
    other = certs.load_cert_file(att / REPORTS["virtee"][1])
    v = verify.verify(rep, other, milan, expect)
    assert v.step("hwid").status == verify.FAIL
    assert "another chip" in v.step("hwid").detail
    assert v.step("hwid").expected == rep.chip_id.hex()
    assert v.step("chain").status == verify.PASS  # a genuine VCEK, just not this chip's


def test_genoa_chain_for_milan_vcek_fails_chain(att):
    rep, vcek, expect = load(att, "hbos")
    genoa = certs.load_certs_dir(att / "certs", "genoa")
    v = verify.verify(rep, vcek, genoa, expect)
    assert v.failed == ["chain"]
    assert "Genoa" in v.step("chain").detail


def test_measurement_mismatch_fails_exactly_that_step(att, milan):
    rep, vcek, expect = load(att, "hbos")
    wrong = "00" * 48
    v = verify.verify(rep, vcek, milan, Expectations(**{**expect.__dict__, "measurement": wrong}))
    assert v.failed == ["measurement"]
    assert v.step("measurement").expected == wrong
    assert v.step("measurement").actual == REPORTS["hbos"][2]


def test_policy_mismatch_fails_exactly_that_step(att, milan):
    rep, vcek, expect = load(att, "hbos")
    v = verify.verify(rep, vcek, milan, Expectations(**{**expect.__dict__, "policy": 0x70000}))
    assert v.failed == ["policy"]
    assert "MIGRATE_MA" in v.step("policy").detail


def test_debug_policy_fails_unless_allowed(att, milan):
    rep, vcek, _ = load(att, "gosevguest")
    assert verify.verify(rep, vcek, milan, Expectations()).failed == ["debug"]
    assert verify.verify(rep, vcek, milan, Expectations(allow_debug=True)).ok


def test_only_given_expectations_run(att, milan):
    rep, vcek, _ = load(att, "hbos")
    v = verify.verify(rep, vcek, milan, Expectations())
    assert v.ok
    skipped = {s.name for s in v.steps if s.status == verify.SKIP}
    assert skipped == {"tcb", "policy", "measurement", "report_data", "family_id", "image_id",
                       "vmpl", "report_version", "launch_tcb", "host_data", "id_key_digest",
                       "author_key_digest", "platform_info"}
    assert v.step("crl").status == verify.UNKNOWN  # no CRL looked up: unknown, not a pass


def test_tcb_minimum(att, milan):
    rep, vcek, expect = load(att, "hbos")
    at = Expectations(**{**expect.__dict__, "min_tcb": Tcb(3, 0, 20, 209)})
    assert verify.verify(rep, vcek, milan, at).ok
    above = Expectations(**{**expect.__dict__, "min_tcb": Tcb(3, 0, 21, 209)})
    v = verify.verify(rep, vcek, milan, above)
    assert v.failed == ["tcb"] and "snp 20 < 21" in v.step("tcb").detail


def test_optional_fields(att, milan):
    rep, vcek, expect = load(att, "hbos")
    good = Expectations(**{**expect.__dict__, "report_data": rep.report_data,
                           "family_id": bytes(16), "image_id": bytes(16)})
    assert verify.verify(rep, vcek, milan, good).ok
    for key, value in (("report_data", bytes(64)), ("family_id", b"\1" * 16),
                       ("image_id", b"\2" * 16), ("vmpl", 0)):
        v = verify.verify(rep, vcek, milan, Expectations(**{**good.__dict__, key: value}))
        assert v.failed == [key]


def test_json_form_gives_the_same_verdict(att, milan):
    _, vcek, expect = load(att, "hbos")
    binary = verify.verify(report.load(att / "hbos-benign-report.bin"), vcek, milan, expect)
    as_json = verify.verify(report.load(att / "hbos-benign-report.json"), vcek, milan, expect)
    a, b = binary.as_dict(), as_json.as_dict()
    a["report"].pop("source"), b["report"].pop("source")
    assert a == b and a["ok"]
    wrong = Expectations(**{**expect.__dict__, "measurement": "11" * 48})
    assert verify.verify(report.load(att / "hbos-benign-report.json"), vcek, milan,
                         wrong).failed == verify.verify(
        report.load(att / "hbos-benign-report.bin"), vcek, milan, wrong).failed == ["measurement"]


def test_vceks_load_without_leaking_the_serial_warning(att, milan):
    """AMD's serial-0 VCEKs: loading, reading the serial and verifying raise no warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in REPORTS:
            rep, vcek, expect = load(att, name)
            assert certs.serial_number(vcek) == 0
            assert verify.verify(rep, vcek, milan, expect).ok
    assert [str(w.message) for w in caught] == []
    # the filter is scoped: outside the loader the library still warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert certs.load_cert_file(att / "hbos-vcek.crt").serial_number == 0
    assert any("serial" in str(w.message) for w in caught)


def test_bad_certificate_is_not_hidden(att, tmp_path):
    data = bytearray((att / "virtee-vcek-milan.der").read_bytes())
    del data[100:140]
    bad = tmp_path / "bad.der"
    bad.write_bytes(bytes(data))
    with pytest.raises(AttestationError, match="not a valid DER X.509"):
        certs.load_cert_file(bad)
    with pytest.raises(AttestationError, match="does not exist"):
        certs.load_cert_file(tmp_path / "nope.pem")
    with pytest.raises(AttestationError, match="ask_turin.pem"):
        certs.load_certs_dir(tmp_path, "Turin")
    with pytest.raises(AttestationError, match="unknown product"):
        certs.product_name("Rome")


def test_vcek_extensions(att):
    info = certs.vcek_info(certs.load_cert_file(att / "hbos-vcek.crt"))
    assert info.product_name == "Milan-B0"
    assert info.tcb == {"bootloader": 3, "tee": 0, "snp": 20, "microcode": 209}
    assert info.hwid == report.load(att / "hbos-benign-report.bin").chip_id


# ------------------------------------------------------------------ CLI


def _cli(att, *extra):
    rep_file, vcek_file, *_ = REPORTS["hbos"]
    return ["verify-report", "--report", str(att / rep_file), "--vcek", str(att / vcek_file),
            "--certs-dir", str(att / "certs"), *extra]


def test_cli_verifies_and_prints_a_table(att, capsys):
    assert cli_main(_cli(att, "--measurement", REPORTS["hbos"][2], "--policy", "0x30000",
                         "--vmpl", "1", "--min-tcb", "bl=3,tee=0,snp=20,ucode=209")) == 0
    out = capsys.readouterr().out
    assert "VERIFIED" in out and "NOT VERIFIED" not in out
    assert "measurement" in out and "ok" in out


def test_cli_failure_exit_and_json(att, capsys):
    assert cli_main(_cli(att, "--measurement", "ab" * 48, "--json")) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["failed"] == ["measurement"]


def test_cli_pem_vcek_and_measurement_json(att, tmp_path, capsys):
    pem = tmp_path / "vcek.pem"
    pem.write_bytes(certs.load_cert_file(att / "hbos-vcek.crt").public_bytes(Encoding.PEM))
    mj = tmp_path / "measurement.json"
    mj.write_text(json.dumps({"expected_hash": REPORTS["hbos"][2],
                              "vm": {"guest_policy": 0x30000}}))
    rep_file = att / REPORTS["hbos"][0]
    assert cli_main(["verify-report", "--report", str(rep_file), "--vcek", str(pem),
                     "--certs-dir", str(att / "certs"), "--measurement-json", str(mj)]) == 0
    assert "VERIFIED" in capsys.readouterr().out
    mj.write_text(json.dumps({"expected_hash": REPORTS["hbos"][2],
                              "vm": {"guest_policy": 0x10000}}))
    assert cli_main(["verify-report", "--report", str(rep_file), "--vcek", str(pem),
                     "--certs-dir", str(att / "certs"), "--measurement-json", str(mj),
                     "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["failed"] == ["policy"]


def test_cli_user_errors_are_one_line(att, tmp_path, capsys):
    assert cli_main(_cli(att, "--measurement", "xyz")) == 2
    assert "--measurement is not hex" in capsys.readouterr().err
    assert cli_main(["verify-report", "--report", str(tmp_path / "none.bin")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(_cli(att, "--product", "Genoa")) == 1  # Milan VCEK, Genoa roots


# ----------------------------------------------------------------- doit action


@pytest.fixture
def build(tmp_path):
    from hbos import config as hconfig
    from hbos.paths import Paths
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\n")
    cfg = hconfig.load(overlay=overlay)
    paths = Paths.from_config(cfg)
    paths.build.mkdir(parents=True)
    return cfg, paths


def _action_kwargs(att, **kw):
    base = dict(report=str(att / REPORTS["hbos"][0]), vcek=str(att / REPORTS["hbos"][1]),
                certs_dir=str(att / "certs"), report_data="", vmpl="", allow_debug=False,
                json=False)
    base.update(kw)
    return base


def test_doit_action_against_a_build(att, build, capsys):
    from doit.exceptions import TaskFailed
    cfg, paths = build
    (action,) = adapter.action(verify_report.verify_report, cfg, paths)
    assert isinstance(action(**_action_kwargs(att)), TaskFailed)  # no measurement.json yet
    assert "doit measure" in capsys.readouterr().out + str(action(**_action_kwargs(att)))
    paths.measurement.write_text(json.dumps({"expected_hash": REPORTS["hbos"][2]}))
    assert action(**_action_kwargs(att, vmpl="1")) is None
    assert "VERIFIED" in capsys.readouterr().out
    failed = action(**_action_kwargs(att, vmpl="0"))
    assert isinstance(failed, TaskFailed) and "vmpl" in str(failed)
    paths.measurement.write_text(json.dumps({"expected_hash": None,
                                             "expected_hash_reason": "firmware missing"}))
    failed = action(**_action_kwargs(att))
    assert isinstance(failed, TaskFailed) and "measurement" in str(failed)
    assert "firmware missing" in capsys.readouterr().out


def test_allowed_debug_is_left_to_the_debug_step(att, milan):
    rep, vcek, _ = load(att, "gosevguest")  # policy 0xb0000
    assert verify.verify(rep, vcek, milan, Expectations(policy=0x30000, allow_debug=True)).ok
    v = verify.verify(rep, vcek, milan, Expectations(policy=0x30000))
    assert v.failed == ["policy", "debug"]
    v = verify.verify(rep, vcek, milan, Expectations(policy=0x20000, allow_debug=True))
    assert v.failed == ["policy"] and "SMT" in v.step("policy").detail


def test_hwid_rules(att):
    rep = report.load(att / REPORTS["hbos"][0])
    chip = rep.chip_id
    tcb = {"bootloader": 3, "tee": 0, "snp": 20, "microcode": 209}
    assert verify.check_hwid(rep, certs.VcekInfo("Milan-B0", chip, tcb), "Milan").status == "pass"
    # Turin VCEKs carry the first 8 bytes of CHIP_ID
    assert verify.check_hwid(rep, certs.VcekInfo("Turin", chip[:8], tcb), "Turin").status \
        == "pass"
    assert verify.check_hwid(rep, certs.VcekInfo("Milan-B0", chip[:8], tcb), "Milan").status \
        == "fail"
    assert "no hwID" in verify.check_hwid(rep, certs.VcekInfo(None, None, tcb), "Milan").detail
    masked = bytearray(rep.raw)
    masked[0x1A0:0x1E0] = bytes(64)
    step = verify.check_hwid(report.parse_binary(bytes(masked)),
                             certs.VcekInfo("Milan-B0", chip, tcb), "Milan")
    assert step.status == "fail" and "MASK_CHIP_ID" in step.detail


def test_vcek_for_another_tcb_fails_vcek_tcb(att):
    rep = report.load(att / REPORTS["hbos"][0])
    info = certs.VcekInfo("Milan-B0", rep.chip_id,
                          {"bootloader": 3, "tee": 0, "snp": 19, "microcode": 209})
    step = verify.check_vcek_tcb(rep, info, "Milan")
    assert step.status == "fail" and "snp report 20 / VCEK 19" in step.detail


def _forged_chain_and_report(rep: Report):
    """An attacker's self-made ARK-Milan -> ASK -> VCEK and a report signed with it."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)

    def cert(cn, key, issuer_cn, signer, extensions=()):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(
            NameOID.COMMON_NAME, cn)])).issuer_name(x509.Name([x509.NameAttribute(
                NameOID.COMMON_NAME, issuer_cn)])).public_key(key.public_key())
            .serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650)))
        for oid, value in extensions:
            b = b.add_extension(x509.UnrecognizedExtension(ObjectIdentifier(oid), value),
                                critical=False)
        return b.sign(signer, hashes.SHA384(), rsa_padding=pss)

    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    tcb = rep.tcb("reported_tcb")
    spl = [(certs.OID_SPL[k], bytes([0x02, 0x01, v])) for k, v in
           (("bootloader", tcb.bootloader), ("tee", tcb.tee), ("snp", tcb.snp))]
    spl.append((certs.OID_SPL["microcode"], bytes([0x02, 0x02, 0x00, tcb.microcode])))
    ark = cert("ARK-Milan", ark_key, "ARK-Milan", ark_key)
    ask = cert("SEV-Milan", ask_key, "ARK-Milan", ark_key)
    vcek = cert("SEV-VCEK", vcek_key, "SEV-Milan", ask_key,
                [(certs.OID_HWID, rep.chip_id), *spl])
    raw = bytearray(rep.raw)
    raw[0x90:0xC0] = b"\x42" * 48
    r, s = decode_dss_signature(vcek_key.sign(bytes(raw[:SIGNED_SIZE]),
                                              ec.ECDSA(hashes.SHA384())))
    raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
    raw[0x2E8:0x330] = s.to_bytes(72, "little")
    return certs.Chain("Milan", ark, ask), vcek, report.parse_binary(bytes(raw))


def test_self_made_root_is_not_amds(att):
    chain, vcek, forged = _forged_chain_and_report(report.load(att / REPORTS["hbos"][0]))
    v = verify.verify(forged, vcek, chain, Expectations(measurement="42" * 48))
    assert v.failed == ["chain"]  # everything else is consistent: only the pinned root says no
    assert "not AMD's root key" in v.step("chain").detail
