"""A test-only certificate authority shaped like AMD's (ARK -> ASK/ASVK -> VCEK/VLEK, RSA-PSS
SHA-384, AMD's extensions) and a signer for attestation reports.

Its root is NOT AMD's: `trust(monkeypatch)` adds its ARK fingerprint to the pinned set for
the duration of one test (the only override; production code has no hook for it). Used for
the cases no public data covers: revoked ASKs in a CRL, expired and not-yet-valid
certificates, every policy bit and every pin on a report we can sign ourselves.
"""

from __future__ import annotations

import datetime
import struct
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID, ObjectIdentifier

from hbos.attest import certs, report
from hbos.attest.report import SIGNED_SIZE

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
UTC = datetime.timezone.utc
T0 = datetime.datetime(2025, 1, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, product: str = "Milan", kind: str = "VCEK") -> None:
        self.product, self.kind = product, kind
        self.ark_key = rsa.generate_private_key(65537, 2048)
        self.ask_key = rsa.generate_private_key(65537, 2048)
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        self.ark = self.cert(f"ARK-{product}", self.ark_key, f"ARK-{product}", self.ark_key,
                             serial=1)
        mid = f"SEV-{product}" if kind == "VCEK" else f"SEV-VLEK-{product}"
        self.ask = self.cert(mid, self.ask_key, f"ARK-{product}", self.ark_key, serial=0x51)

    def cert(self, cn, key, issuer_cn, signer, *, serial=1, extensions=(),
             not_before=T0, not_after=T0 + datetime.timedelta(days=3650)):
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(issuer_cn))
             .public_key(key.public_key()).serial_number(serial)
             .not_valid_before(not_before).not_valid_after(not_after))
        for oid, value in extensions:
            b = b.add_extension(x509.UnrecognizedExtension(ObjectIdentifier(oid), value),
                                critical=False)
        return b.sign(signer, hashes.SHA384(), rsa_padding=PSS)

    def leaf(self, rep: report.Report, **validity) -> x509.Certificate:
        """A VCEK (hwID = CHIP_ID) or VLEK (no hwID) for the report's REPORTED_TCB."""
        tcb = rep.tcb("reported_tcb", self.product)
        ext = [(certs.OID_SPL[k], bytes([0x02, 0x01, v])) for k, v in
               (("bootloader", tcb.bootloader), ("tee", tcb.tee), ("snp", tcb.snp))]
        ext.append((certs.OID_SPL["microcode"], bytes([0x02, 0x02, 0x00, tcb.microcode])))
        if self.kind == "VCEK":
            ext.append((certs.OID_HWID, rep.chip_id))
        mid = f"SEV-{self.product}" if self.kind == "VCEK" else f"SEV-VLEK-{self.product}"
        return self.cert(f"SEV-{self.kind}", self.leaf_key, mid, self.ask_key, serial=2,
                         extensions=ext, **validity)

    def sign(self, raw: bytes | bytearray) -> report.Report:
        raw = bytearray(raw)
        r, s = decode_dss_signature(self.leaf_key.sign(bytes(raw[:SIGNED_SIZE]),
                                                       ec.ECDSA(hashes.SHA384())))
        raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
        raw[0x2E8:0x330] = s.to_bytes(72, "little")
        return report.parse_binary(bytes(raw), "test-report")

    def chain(self) -> certs.Chain:
        return certs.Chain(self.product, self.ark, self.ask, self.kind)

    def crl(self, revoked=(), *, this_update=T0, next_update=T0 + datetime.timedelta(days=30),
            signer=None):
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
             .last_update(this_update).next_update(next_update))
        for serial in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                          .revocation_date(this_update).build())
        return b.sign(signer or self.ark_key, hashes.SHA384(), rsa_padding=PSS)

    def trust(self, monkeypatch) -> None:
        """Pin this CA's ARK for one test (monkeypatch undoes it)."""
        monkeypatch.setitem(certs.AMD_ARK_SPKI_SHA256, self.product,
                            certs.ark_fingerprint(self.ark))

    def write_dir(self, d: Path) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        p = self.product.lower()
        (d / f"ark_{p}.pem").write_bytes(self.ark.public_bytes(Encoding.PEM))
        (d / f"{'ask' if self.kind == 'VCEK' else 'asvk'}_{p}.pem").write_bytes(
            self.ask.public_bytes(Encoding.PEM))
        return d


def patch(raw: bytes, **fields) -> bytearray:
    """Report bytes with integer fields (policy, flags, vmpl, platform_info, version,
    current_major/minor) or byte fields replaced."""
    out = bytearray(raw)
    for name, value in fields.items():
        _, off, size, kind, _ = report.FIELD_BY_NAME[name]
        if isinstance(value, bytes):
            out[off:off + size] = value
        else:
            fmt = {1: "<B", 4: "<I", 8: "<Q"}[size]
            struct.pack_into(fmt, out, off, value)
    return out
