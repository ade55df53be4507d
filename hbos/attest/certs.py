"""AMD's SEV-SNP certificate chain: ARK -> ASK -> VCEK (or ARK -> ASVK -> VLEK), the
VCEK's extensions, certificate validity and AMD's certificate revocation lists.

From AMD's "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
Specification" (publication 57230): the ARK (AMD Root Key, pinned below) is
self-signed, the ARK signs the ASK (AMD SEV Key), the ASK signs each chip's VCEK; all three
signatures are RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt. The
VCEK carries its chip and TCB in extensions under 1.3.6.1.4.1.3704.1
(Table 8 "VCEK Certificate Extensions"): productName (.1.2), the TCB security
patch levels blSPL (.3.1), teeSPL (.3.2), snpSPL (.3.3), ucodeSPL (.3.8),
fmcSPL (.3.9, Turin), and hwID (.4, the chip_id; 8 bytes on Turin).

A VLEK (Versioned Loaded Endorsement Key, spec 57230 "VLEK") is what a cloud
provider (AWS EC2) loads into the chip instead of a chip-unique VCEK: it is
signed by the ASVK (AMD SEV VLEK Key, CN "SEV-VLEK-<product>"), itself signed
by the same ARK; it carries the TCB extensions but no hwID. Each product has a
CRL signed by its ARK (RSA-PSS SHA-384) listing revoked ASKs/ASVKs.

AMD issues VCEKs with serial number 0. `cryptography` >= 42 warns on loading
them (RFC 5280 wants a positive serial); the loader below silences exactly
that warning, nothing else, and turns a refusal into a clear error.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning

from hbos.attest.report import read_bounded
from hbos.errors import AttestationError

PRODUCTS = ("Milan", "Genoa", "Turin")
AMD_OID = "1.3.6.1.4.1.3704.1"
OID_PRODUCT_NAME = AMD_OID + ".2"
OID_HWID = AMD_OID + ".4"
OID_SPL = {"bootloader": AMD_OID + ".3.1", "tee": AMD_OID + ".3.2", "snp": AMD_OID + ".3.3",
           "microcode": AMD_OID + ".3.8", "fmc": AMD_OID + ".3.9"}
PSS_SALT_LENGTH = 48
KEY_KINDS = ("VCEK", "VLEK")
# AMD's certificates are ~1.3-2.3 KB, a chain ~7 KB, a CRL ~1 KB: far below this
MAX_CERT_FILE = 256 * 1024

# sha256 of each AMD Root Key's SubjectPublicKeyInfo (DER), from AMD's published
# ARKs (https://kdsintf.amd.com/vcek/v1/{product}/cert_chain; the same files as
# virtee/sev's builtin certificates). A chain is only trusted when it ends in
# one of these, whatever --certs-dir or the KDS URL supplied.
AMD_ARK_SPKI_SHA256 = {
    "Milan": "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
    "Genoa": "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
    "Turin": "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
}


def product_name(product: str) -> str:
    """'milan' / 'Milan' -> 'Milan'; anything else is an error naming the choices."""
    for p in PRODUCTS:
        if product.lower() == p.lower():
            return p
    raise AttestationError(f"unknown product {product!r}",
                           hint=f"one of {', '.join(PRODUCTS)} (lower case is fine)")


def _serial_warning_filter() -> warnings.catch_warnings:
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    # Only the non-positive-serial warning: AMD's VCEKs have serial 0 by design.
    warnings.filterwarnings("ignore", message=r".*serial number.*",
                            category=CryptographyDeprecationWarning)
    return ctx


def load_cert(data: bytes, source: str) -> x509.Certificate:
    """One certificate, PEM or DER (told apart by content, not by file name)."""
    pem = b"-----BEGIN CERTIFICATE-----" in data
    ctx = _serial_warning_filter()
    try:
        if pem:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        hint = None
        if "serial" in str(exc).lower():
            hint = ("AMD certificates carry serial number 0; this cryptography release "
                    "refuses them")
        raise AttestationError(f"{source}: not a valid {'PEM' if pem else 'DER'} X.509 "
                               f"certificate ({exc})", hint=hint) from None
    finally:
        ctx.__exit__(None, None, None)


def serial_number(cert: x509.Certificate) -> int:
    """The serial (0 for AMD VCEKs); reading it warns like loading does, so filter alike."""
    ctx = _serial_warning_filter()
    try:
        return cert.serial_number
    finally:
        ctx.__exit__(None, None, None)


def read_cert_bytes(path: str | Path, what: str = "certificate") -> bytes:
    """A certificate/CRL file, bounded (see report.read_bounded)."""
    return read_bounded(path, MAX_CERT_FILE, what)


def load_cert_file(path: str | Path) -> x509.Certificate:
    return load_cert(read_cert_bytes(path), str(path))


def load_pem_chain(data: bytes, source: str) -> list[x509.Certificate]:
    """All certificates of a PEM bundle, in file order."""
    ctx = _serial_warning_filter()
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise AttestationError(f"{source}: not a PEM certificate bundle ({exc})") from None
    finally:
        ctx.__exit__(None, None, None)
    return certs


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


@dataclass(frozen=True)
class Chain:
    """ARK and intermediate of one product: the ASK for VCEKs, the ASVK for VLEKs (kept in
    `ask` either way; `kind` says which leaf it signs)."""
    product: str
    ark: x509.Certificate
    ask: x509.Certificate
    kind: str = "VCEK"

    @property
    def intermediate(self) -> str:
        return "ASK" if self.kind == "VCEK" else "ASVK"


def chain_from_certs(certs: list[x509.Certificate], product: str, source: str,
                     kind: str = "VCEK") -> Chain:
    """ARK and ASK (or ASVK) from a bundle (KDS's cert_chain lists ASK first, then ARK)."""
    ark = [c for c in certs if c.subject == c.issuer]
    ask = [c for c in certs if c.subject != c.issuer]
    mid = "ASK" if kind == "VCEK" else "ASVK"
    if len(ark) != 1 or len(ask) != 1:
        raise AttestationError(f"{source}: expected one ARK (self-signed) and one {mid}, got "
                               f"{len(certs)} certificate(s)")
    return Chain(product_name(product), ark[0], ask[0], kind)


def load_certs_dir(directory: str | Path, product: str, kind: str = "VCEK") -> Chain:
    """ark_<product>.pem and ask_<product>.pem (asvk_<product>.pem for a VLEK chain; product
    in lower case) from a directory."""
    product = product_name(product)
    d = Path(directory)
    mid = "ask" if kind == "VCEK" else "asvk"
    files = [d / f"{name}_{product.lower()}.pem" for name in ("ark", mid)]
    for f in files:
        if not f.is_file():
            raise AttestationError(f"{f} does not exist",
                                   hint=f"--certs-dir needs ark_{product.lower()}.pem and "
                                        f"{mid}_{product.lower()}.pem")
    return Chain(product, load_cert_file(files[0]), load_cert_file(files[1]), kind)


def _verify_pss(issuer: x509.Certificate, cert: x509.Certificate, label: str) -> None:
    """cert's signature by issuer's RSA key: RSASSA-PSS, SHA-384, salt 48 (spec 57230 §2)."""
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError(f"{label}: issuer key is not RSA")
    if not isinstance(cert.signature_hash_algorithm, hashes.SHA384):
        raise AttestationError(f"{label}: signature hash is "
                               f"{getattr(cert.signature_hash_algorithm, 'name', None)}, "
                               "expected sha384")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes,
                   padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT_LENGTH),
                   hashes.SHA384())
    except InvalidSignature:
        raise AttestationError(f"{label}: signature does not verify") from None
    if cert.issuer != issuer.subject:
        raise AttestationError(f"{label}: issuer {_cn(cert.issuer)!r} is not "
                               f"{_cn(issuer.subject)!r}")


def ark_fingerprint(ark: x509.Certificate) -> str:
    spki = ark.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def leaf_kind(cert: x509.Certificate) -> str | None:
    """'VCEK' or 'VLEK' from the certificate's common name (SEV-VCEK / SEV-VLEK), else None."""
    return {"SEV-VCEK": "VCEK", "SEV-VLEK": "VLEK"}.get(_cn(cert.subject))


def verify_chain(chain: Chain, vcek: x509.Certificate) -> str:
    """ARK is AMD's (pinned), self-signed, ARK signs ASK (ASVK), which signs the VCEK (VLEK);
    one-line summary."""
    p = chain.product
    mid = chain.intermediate
    if _cn(chain.ark.subject) != f"ARK-{p}":
        raise AttestationError(f"ARK is {_cn(chain.ark.subject)!r}, expected 'ARK-{p}'")
    if ark_fingerprint(chain.ark) != AMD_ARK_SPKI_SHA256[p]:
        raise AttestationError(f"ARK-{p} is not AMD's root key (SPKI sha256 "
                               f"{ark_fingerprint(chain.ark)}, AMD's is {AMD_ARK_SPKI_SHA256[p]})")
    want_mid = f"SEV-{p}" if chain.kind == "VCEK" else f"SEV-VLEK-{p}"
    if _cn(chain.ask.subject) != want_mid:
        raise AttestationError(f"the {mid} is {_cn(chain.ask.subject)!r}, expected {want_mid!r}")
    _verify_pss(chain.ark, chain.ark, f"ARK-{p} (self-signed)")
    _verify_pss(chain.ark, chain.ask, f"{mid} {_cn(chain.ask.subject)!r} by ARK-{p}")
    _verify_pss(chain.ask, vcek, f"{chain.kind} by {mid} {_cn(chain.ask.subject)!r}")
    return f"ARK-{p} -> {_cn(chain.ask.subject)} -> {_cn(vcek.subject)} (RSA-PSS SHA-384)"


# ------------------------------------------------------------ validity


def validity_problems(named: list[tuple[str, x509.Certificate]], at) -> list[str]:
    """For each (label, certificate) not valid at `at` (an aware datetime): why."""
    out = []
    for label, cert in named:
        before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
        if at < before:
            out.append(f"{label} not valid before {before.isoformat()}")
        elif at > after:
            out.append(f"{label} expired {after.isoformat()}")
    return out


# ------------------------------------------------------------ CRL


def load_crl(data: bytes, source: str) -> x509.CertificateRevocationList:
    """A CRL, PEM or DER (AMD's KDS serves DER)."""
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise AttestationError(f"{source}: not a valid X.509 CRL ({exc})") from None


def load_crl_file(path: str | Path) -> x509.CertificateRevocationList:
    return load_crl(read_cert_bytes(path, "CRL"), str(path))


def verify_crl(crl: x509.CertificateRevocationList, ark: x509.Certificate) -> None:
    """The CRL is issued and signed by this ARK (RSASSA-PSS SHA-384, salt 48, like the certs)."""
    if crl.issuer != ark.subject:
        raise AttestationError(f"the CRL is issued by {_cn(crl.issuer)!r}, not "
                               f"{_cn(ark.subject)!r}")
    key = ark.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError("ARK key is not RSA")
    try:
        key.verify(crl.signature, crl.tbs_certlist_bytes,
                   padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT_LENGTH),
                   hashes.SHA384())
    except InvalidSignature:
        raise AttestationError(f"the CRL's signature does not verify with "
                               f"{_cn(ark.subject)}") from None


def is_revoked(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    return crl.get_revoked_certificate_by_serial_number(serial_number(cert)) is not None


# ------------------------------------------------------------ VCEK extensions


def _der_value(raw: bytes, expect_tag: int | None = None) -> tuple[int, bytes]:
    """Tag and content of one DER TLV (short or long length form)."""
    if len(raw) < 2:
        raise ValueError("truncated DER")
    tag, length = raw[0], raw[1]
    start = 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(raw[2:2 + n], "big")
        start = 2 + n
    if expect_tag is not None and tag != expect_tag:
        raise ValueError(f"DER tag {tag:#x}, expected {expect_tag:#x}")
    return tag, raw[start:start + length]


@dataclass(frozen=True)
class VcekInfo:
    product_name: str | None
    hwid: bytes | None
    tcb: dict[str, int]


def vcek_info(cert: x509.Certificate) -> VcekInfo:
    """The AMD extensions of a VCEK (spec 57230 Table 8)."""
    values: dict[str, bytes] = {}
    for ext in cert.extensions:
        if isinstance(ext.value, x509.UnrecognizedExtension):
            values[ext.oid.dotted_string] = ext.value.value
    tcb: dict[str, int] = {}
    for name, oid in OID_SPL.items():
        if oid in values:
            try:
                _, content = _der_value(values[oid], 0x02)  # INTEGER
            except ValueError as exc:
                raise AttestationError(f"VCEK extension {name} ({oid}) is malformed: {exc}") \
                    from None
            tcb[name] = int.from_bytes(content, "big", signed=False)
    product_name: str | None = None
    if OID_PRODUCT_NAME in values:
        try:
            _, content = _der_value(values[OID_PRODUCT_NAME])  # IA5String
            product_name = content.decode("ascii", "replace")
        except ValueError:
            product_name = None
    hwid = values.get(OID_HWID)
    if hwid is not None and len(hwid) not in (8, 64):  # some encoders wrap it in an OCTET STRING
        try:
            _, hwid = _der_value(hwid, 0x04)
        except ValueError:
            pass
    return VcekInfo(product_name=product_name, hwid=hwid, tcb=tcb)


def vcek_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError(f"VCEK {_cn(cert.subject)!r} does not hold an ECDSA P-384 key")
    return key
