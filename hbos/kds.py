"""AMD Key Distribution Service (KDS): fetch and cache ARK/ASK and VCEK certificates.

URLs from AMD's "VCEK Certificate and KDS Interface Specification" (57230),
section "KDS Interface":
  {kds}/vcek/v1/{product}/cert_chain            ASK then ARK, PEM
  {kds}/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..   VCEK, DER
The hwID is the report's CHIP_ID in hex (Turin: its first 8 bytes, plus
fmcSPL). Files are cached (per product, VCEK per chip and TCB), so a second
verification is offline; the KDS rate-limits (HTTP 429), which fetch.download
retries.
"""

from __future__ import annotations

from pathlib import Path

from hbos import certs
from hbos.errors import AttestationError, DownloadError, HashMismatch
from hbos.fetch import download
from hbos.report import Tcb

DEFAULT_KDS = "https://kdsintf.amd.com"


def cert_chain_url(kds: str, product: str) -> str:
    return f"{kds.rstrip('/')}/vcek/v1/{certs.product_name(product)}/cert_chain"


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


def chain_cache_path(cache: Path, product: str) -> Path:
    return cache / certs.product_name(product).lower() / "cert_chain.pem"


def _get(url: str, dest: Path, what: str) -> None:
    try:
        download(url, dest, progress=False, backoff=0.5)
    except (DownloadError, HashMismatch) as exc:
        raise AttestationError(f"cannot fetch the {what} from AMD KDS: {exc.message}",
                               hint="pass --vcek FILE / --certs-dir DIR to verify offline, or "
                                    "set attest.kds_url") from None


def fetch_chain(kds: str, product: str, cache: Path) -> certs.Chain:
    """ARK+ASK for `product`, from the cache or the KDS."""
    dest = chain_cache_path(cache, product)
    url = cert_chain_url(kds, product)
    if not dest.is_file():
        _get(url, dest, f"{certs.product_name(product)} cert_chain")
    try:
        return certs.chain_from_certs(certs.load_pem_chain(dest.read_bytes(), url), product, url)
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
        return certs.load_cert(dest.read_bytes(), url)
    except AttestationError:
        dest.unlink(missing_ok=True)
        raise
