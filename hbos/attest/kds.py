"""AMD Key Distribution Service (KDS): fetch and cache ARK/ASK and VCEK certificates.

URLs from AMD's "VCEK Certificate and KDS Interface Specification" (57230),
section "KDS Interface":
  {kds}/vcek/v1/{product}/cert_chain            ASK then ARK, PEM
  {kds}/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..   VCEK, DER
  {kds}/vlek/v1/{product}/cert_chain            ASVK then ARK, PEM
  {kds}/vcek/v1/{product}/crl, {kds}/vlek/v1/{product}/crl   CRL signed by the ARK, DER
A VLEK itself is not on the KDS: the host (cloud provider) hands it out with the
report (the extended report's certificate table), so a VLEK needs --vcek FILE.
The hwID is the report's CHIP_ID in hex (Turin: its first 8 bytes, plus
fmcSPL). Files are cached (per product, VCEK per chip and TCB), so a second
verification is offline; the KDS rate-limits (HTTP 429), which
hbos.util.fetch.download retries.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from hbos.attest import certs
from hbos.attest.report import Tcb
from hbos.errors import AttestationError, DownloadError, HashMismatch
from hbos.util.fetch import download

DEFAULT_KDS = "https://kdsintf.amd.com"


def _kind_path(kind: str) -> str:
    return "vlek" if kind == "VLEK" else "vcek"


def cert_chain_url(kds: str, product: str, kind: str = "VCEK") -> str:
    return f"{kds.rstrip('/')}/{_kind_path(kind)}/v1/{certs.product_name(product)}/cert_chain"


def crl_url(kds: str, product: str, kind: str = "VCEK") -> str:
    return f"{kds.rstrip('/')}/{_kind_path(kind)}/v1/{certs.product_name(product)}/crl"


def hwid_hex(product: str, chip_id: bytes) -> str:
    """The hwID path component: Turin's KDS takes the first 8 bytes of CHIP_ID."""
    return (chip_id[:8] if certs.product_name(product) == "Turin" else chip_id).hex()


def vcek_url(kds: str, product: str, chip_id: bytes, tcb: Tcb) -> str:
    product = certs.product_name(product)
    query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if product == "Turin":
        query = f"fmcSPL={tcb.fmc or 0}&" + query
    return f"{kds.rstrip('/')}/vcek/v1/{product}/{hwid_hex(product, chip_id)}?{query}"


def vcek_cache_path(cache: Path, product: str, chip_id: bytes, tcb: Tcb) -> Path:
    product = certs.product_name(product)
    fmc = f"fmc{tcb.fmc}_" if tcb.fmc is not None else ""
    name = (f"vcek_{hwid_hex(product, chip_id)[:32]}_{fmc}bl{tcb.bootloader}_tee{tcb.tee}"
            f"_snp{tcb.snp}_ucode{tcb.microcode}.der")
    return cache / product.lower() / name


def chain_cache_path(cache: Path, product: str, kind: str = "VCEK") -> Path:
    name = "cert_chain.pem" if kind == "VCEK" else "vlek_cert_chain.pem"
    return cache / certs.product_name(product).lower() / name


def crl_cache_path(cache: Path, product: str, kind: str = "VCEK") -> Path:
    return cache / certs.product_name(product).lower() / f"{_kind_path(kind)}_crl.der"


def _get(url: str, dest: Path, what: str) -> None:
    try:
        download(url, dest, progress=False, backoff=0.5)
    except (DownloadError, HashMismatch) as exc:
        raise AttestationError(f"cannot fetch the {what} from AMD KDS: {exc.message}",
                               hint="pass --vcek FILE / --certs-dir DIR to verify offline, or "
                                    "set attest.kds_url") from None


def fetch_chain(kds: str, product: str, cache: Path, kind: str = "VCEK") -> certs.Chain:
    """ARK+ASK (ARK+ASVK for a VLEK) for `product`, from the cache or the KDS."""
    dest = chain_cache_path(cache, product, kind)
    url = cert_chain_url(kds, product, kind)
    if not dest.is_file():
        _get(url, dest, f"{certs.product_name(product)} {_kind_path(kind)} cert_chain")
    try:
        return certs.chain_from_certs(
            certs.load_pem_chain(certs.read_cert_bytes(dest), url), product, url, kind)
    except AttestationError:
        dest.unlink(missing_ok=True)  # never keep a bad answer in the cache
        raise


def fetch_vcek(kds: str, product: str, chip_id: bytes, tcb: Tcb, cache: Path):
    """The VCEK for a chip at a TCB, from the cache or the KDS."""
    dest = vcek_cache_path(cache, product, chip_id, tcb)
    url = vcek_url(kds, product, chip_id, tcb)
    if not dest.is_file():
        _get(url, dest, "VCEK")
    try:
        return certs.load_cert(certs.read_cert_bytes(dest), url)
    except AttestationError:
        dest.unlink(missing_ok=True)
        raise


def _current(crl, now: datetime.datetime) -> bool:
    nxt = crl.next_update_utc
    return nxt is not None and now < nxt


def fetch_crl(kds: str, product: str, kind: str, cache: Path, ark,
              now: datetime.datetime | None = None):
    """AMD's CRL for `product` (VCEK or VLEK chain), its signature checked against `ark`.

    Cached until its nextUpdate; then fetched again. Raises AttestationError when no
    current, valid CRL can be had (the caller reports the revocation status as unknown).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    dest = crl_cache_path(cache, product, kind)
    url = crl_url(kds, product, kind)
    if dest.is_file():
        try:
            crl = certs.load_crl(certs.read_cert_bytes(dest, "CRL"), str(dest))
            certs.verify_crl(crl, ark)
            if _current(crl, now):
                return crl
        except AttestationError:
            pass
        dest.unlink(missing_ok=True)
    _get(url, dest, f"{certs.product_name(product)} {_kind_path(kind)} CRL")
    try:
        crl = certs.load_crl(certs.read_cert_bytes(dest, "CRL"), url)
        certs.verify_crl(crl, ark)
    except AttestationError:
        dest.unlink(missing_ok=True)
        raise
    return crl
