"""AMD KDS fetch and cache, against pytest-httpserver serving the vector certificates."""

from __future__ import annotations

import pytest

from hbos.attest import kds, report
from hbos.attest.report import Tcb
from hbos.cli import main as cli_main
from hbos.errors import AttestationError

CHIP = bytes(range(64))


def test_urls_exact():
    tcb = Tcb(bootloader=3, tee=0, snp=20, microcode=209)
    assert kds.cert_chain_url("https://kdsintf.amd.com/", "milan") == \
        "https://kdsintf.amd.com/vcek/v1/Milan/cert_chain"
    assert kds.vcek_url("https://kdsintf.amd.com", "Genoa", CHIP, tcb) == (
        f"https://kdsintf.amd.com/vcek/v1/Genoa/{CHIP.hex()}"
        "?blSPL=3&teeSPL=0&snpSPL=20&ucodeSPL=209")
    turin = Tcb(bootloader=1, tee=2, snp=3, microcode=4, fmc=5)
    assert kds.vcek_url("http://k", "Turin", CHIP, turin) == (
        f"http://k/vcek/v1/Turin/{CHIP[:8].hex()}?fmcSPL=5&blSPL=1&teeSPL=2&snpSPL=3&ucodeSPL=4")



# certificates expire: verify at a fixed time (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("fixed_verification_time")

@pytest.fixture
def att(vectors):
    return vectors / "attestation"


@pytest.fixture
def hbos_report(att):
    return report.load(att / "hbos-benign-report.bin")


def serve(httpserver, att, rep):
    chain = (att / "certs" / "ask_milan.pem").read_bytes() + \
        (att / "certs" / "ark_milan.pem").read_bytes()
    httpserver.expect_request("/vcek/v1/Milan/cert_chain").respond_with_data(
        chain, content_type="application/x-pem-file")
    httpserver.expect_request(
        f"/vcek/v1/Milan/{rep.chip_id.hex()}",
        query_string="blSPL=3&teeSPL=0&snpSPL=20&ucodeSPL=209").respond_with_data(
        (att / "hbos-vcek.crt").read_bytes(), content_type="application/x-x509-ca-cert")
    # no real AMD CRL is public test data: here the KDS has none (404), so revocation is
    # "unknown"; the CRL itself is tested with a test CA below
    httpserver.expect_request("/vcek/v1/Milan/crl").respond_with_data("Not Found", status=404)


def test_fetch_then_cache(httpserver, att, hbos_report, tmp_path):
    serve(httpserver, att, hbos_report)
    base = httpserver.url_for("/")
    tcb = hbos_report.tcb("reported_tcb")
    chain = kds.fetch_chain(base, "milan", tmp_path)
    vcek = kds.fetch_vcek(base, "Milan", hbos_report.chip_id, tcb, tmp_path)
    assert chain.ark.subject.rfc4514_string().startswith("CN=ARK-Milan")
    assert vcek.subject.rfc4514_string().startswith("CN=SEV-VCEK")
    assert len(httpserver.log) == 2
    assert kds.chain_cache_path(tmp_path, "Milan").is_file()
    assert kds.vcek_cache_path(tmp_path, "Milan", hbos_report.chip_id, tcb).is_file()
    # second time: from the cache, no request
    kds.fetch_chain(base, "Milan", tmp_path)
    kds.fetch_vcek(base, "Milan", hbos_report.chip_id, tcb, tmp_path)
    assert len(httpserver.log) == 2


def test_cli_end_to_end_through_kds(httpserver, att, hbos_report, tmp_path, capsys):
    serve(httpserver, att, hbos_report)
    rc = cli_main(["verify-report", "--report", str(att / "hbos-benign-report.bin"),
                   "--kds-url", httpserver.url_for("/"), "--cache-dir", str(tmp_path),
                   "--measurement", hbos_report.measurement.hex()])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "VERIFIED, except crl" in out and "404" in out


def test_unknown_chip_is_a_clear_error(httpserver, att, hbos_report, tmp_path):
    serve(httpserver, att, hbos_report)
    httpserver.expect_request(f"/vcek/v1/Milan/{CHIP.hex()}").respond_with_data(
        "Not Found", status=404)
    with pytest.raises(AttestationError, match=r"VCEK from AMD KDS.*404") as exc:
        kds.fetch_vcek(httpserver.url_for("/"), "Milan", CHIP, Tcb(0, 0, 0, 0), tmp_path)
    assert "--vcek" in str(exc.value)
    assert not list(tmp_path.rglob("*.der"))


def test_garbage_answer_is_not_cached(httpserver, hbos_report, tmp_path):
    httpserver.expect_request("/vcek/v1/Milan/cert_chain").respond_with_data(b"<html>busy")
    with pytest.raises(AttestationError, match="not a PEM certificate bundle"):
        kds.fetch_chain(httpserver.url_for("/"), "Milan", tmp_path)
    assert not kds.chain_cache_path(tmp_path, "Milan").exists()
    httpserver.expect_request(f"/vcek/v1/Milan/{hbos_report.chip_id.hex()}").respond_with_data(
        b"\x30\x03\x02\x01")
    with pytest.raises(AttestationError, match="not a valid DER"):
        kds.fetch_vcek(httpserver.url_for("/"), "Milan", hbos_report.chip_id,
                       hbos_report.tcb("reported_tcb"), tmp_path)
    assert not list(tmp_path.rglob("*.der"))


def test_cli_kds_failure_suggests_the_product(httpserver, att, hbos_report, tmp_path, capsys):
    chain = (att / "certs" / "ask_milan.pem").read_bytes() + \
        (att / "certs" / "ark_milan.pem").read_bytes()
    httpserver.expect_request("/vcek/v1/Milan/cert_chain").respond_with_data(chain)
    httpserver.expect_request(f"/vcek/v1/Milan/{hbos_report.chip_id.hex()}").respond_with_data(
        "Not Found", status=404)
    rc = cli_main(["verify-report", "--report", str(att / "hbos-benign-report.bin"),
                   "--kds-url", httpserver.url_for("/"), "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "404" in err and "--product" in err and "Traceback" not in err


def test_vlek_and_crl_urls():
    assert kds.cert_chain_url("https://kdsintf.amd.com", "genoa", "VLEK") == \
        "https://kdsintf.amd.com/vlek/v1/Genoa/cert_chain"
    assert kds.crl_url("https://kdsintf.amd.com/", "Turin") == \
        "https://kdsintf.amd.com/vcek/v1/Turin/crl"
    assert kds.crl_url("http://k", "Milan", "VLEK") == "http://k/vlek/v1/Milan/crl"


def test_vlek_chain_from_the_kds(httpserver, att, tmp_path):
    from cryptography.hazmat.primitives.serialization import Encoding

    from hbos.attest import certs
    asvk = certs.load_cert_file(att / "certs" / "asvk_milan.pem")
    ark = certs.load_cert_file(att / "certs" / "ark_milan.pem")
    httpserver.expect_request("/vlek/v1/Milan/cert_chain").respond_with_data(
        asvk.public_bytes(Encoding.PEM) + ark.public_bytes(Encoding.PEM))
    chain = kds.fetch_chain(httpserver.url_for("/"), "Milan", tmp_path, "VLEK")
    assert chain.kind == "VLEK" and chain.intermediate == "ASVK"
    assert kds.chain_cache_path(tmp_path, "Milan", "VLEK").is_file()
    vlek = certs.load_cert_file(att / "trustee-vlek.der")
    assert "SEV-VLEK-Milan" in certs.verify_chain(chain, vlek)


def test_crl_fetched_checked_and_cached_until_next_update(httpserver, tmp_path):
    import datetime

    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.support.snp_test_ca import T0, TestCA
    ca = TestCA("Milan")
    crl = ca.crl([0x51], this_update=T0, next_update=T0 + datetime.timedelta(days=7))
    httpserver.expect_request("/vcek/v1/Milan/crl").respond_with_data(
        crl.public_bytes(Encoding.DER))
    base = httpserver.url_for("/")
    got = kds.fetch_crl(base, "Milan", "VCEK", tmp_path, ca.ark, now=T0)
    assert got.get_revoked_certificate_by_serial_number(0x51) is not None
    assert kds.crl_cache_path(tmp_path, "Milan").is_file() and len(httpserver.log) == 1
    kds.fetch_crl(base, "Milan", "VCEK", tmp_path, ca.ark, now=T0 + datetime.timedelta(days=6))
    assert len(httpserver.log) == 1  # cached: before nextUpdate, no request
    kds.fetch_crl(base, "Milan", "VCEK", tmp_path, ca.ark, now=T0 + datetime.timedelta(days=8))
    assert len(httpserver.log) == 2  # past nextUpdate: fetched again
    # a CRL not signed by this ARK is refused and not kept
    with pytest.raises(AttestationError, match="does not verify"):
        kds.fetch_crl(base, "Milan", "VCEK", tmp_path / "other", TestCA("Milan").ark, now=T0)
    assert not kds.crl_cache_path(tmp_path / "other", "Milan").exists()


def test_unfetchable_crl_is_unknown_not_a_crash(httpserver, att, tmp_path):
    from hbos.attest import certs, verify
    from hbos.cli import verify_report
    httpserver.expect_request("/vcek/v1/Milan/crl").respond_with_data("gone", status=404)
    chain = certs.load_certs_dir(att / "certs", "Milan")
    rev = verify_report.obtain_revocation(chain, crl_path=None, certs_dir=None,
                                          kds_url=httpserver.url_for("/"), cache=tmp_path)
    assert rev.crl is None and "404" in rev.unavailable
    step = verify.check_crl(chain, rev, None, require=False)
    assert step.status == "unknown"
    assert verify.check_crl(chain, rev, None, require=True).status == "fail"
