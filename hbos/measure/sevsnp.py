"""sev-snp-measure behind plain values: the one hbos module that imports its digest code.

The launch digest (SNP ABI spec "SNP_LAUNCH_UPDATE") is the GCTX: a chain of
SHA-384 steps, one per page, each over a 112-byte PAGE_INFO (the digest so far,
the page's digest, its type and GPA). The pages are the firmware's
(PAGE_TYPE_NORMAL), then those its SEV metadata sections declare (zero, secrets,
CPUID, and SNP_KERNEL_HASHES holding the direct-boot hash table QEMU writes),
then one VMSA page per vCPU. sev-snp-measure (pinned in pyproject.toml) builds
each of them; the functions here take and return bytes, ints and the two
dataclasses below, so hbos.measure.digest, hbos.measure.explain and
hbos.attest.peer never handle its classes (GCTX, OVMF, VMSA, SevHashes, SevMode,
VMMType, SectionType).

An OVMF enters as an OvmfLayout: what the digest reads of it besides its pages
(the metadata sections, the SEV-ES reset EIP, the hashes table GPA). One read
from a file (read_ovmf) and one written down (HyperBEAM's reference OVMF,
hbos.attest.peer) measure alike.

Importing sev-snp-measure costs ctypes, uuid and platform, so nothing dodo.py
imports at graph time imports this module. hbos.config, a layer below, is the
one other reader of the library: it checks vm.vcpu_type against
sevsnpmeasure.vcpu_types (plain data) inside its validator.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sevsnpmeasure.gctx import GCTX
from sevsnpmeasure.guest import snp_update_metadata_pages
from sevsnpmeasure.ovmf import OVMF, OvmfSevMetadataSectionDesc, SectionType
from sevsnpmeasure.sev_hashes import SevHashes
from sevsnpmeasure.sev_mode import SevMode
from sevsnpmeasure.vcpu_types import CPU_SIGS
from sevsnpmeasure.vmm_types import VMMType
from sevsnpmeasure.vmsa import VMSA

from hbos.errors import MeasurementError

# vCPU type name (QEMU's builtin_x86_defs) -> its CPUID signature, which the VMSA carries in RDX.
CPU_SIGNATURES: Mapping[str, int] = MappingProxyType(dict(CPU_SIGS))

# The SEV metadata section kinds an OvmfLayout names (edk2 OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm).
SECTION_KINDS = tuple(kind.name for kind in SectionType)

# PAGE_INFO (SNP ABI spec 8.17.2, "PAGE_INFO Structure", Table 67 in rev 1.51):
# DIGEST_CUR(48) CONTENTS(48) LENGTH u16=0x70 PAGE_TYPE u8 IMI_PAGE u8
# VMPL3/2/1_PERMS u8 x3, reserved u8, GPA u64. VMSA pages use GPA (u64)-1
# page-aligned with bits above 51 cleared.
PAGE_TYPE_VMSA = 0x02
_VMSA_PAGE_INFO_TAIL = ((0x70).to_bytes(2, "little") + bytes([PAGE_TYPE_VMSA, 0, 0, 0, 0, 0])
                        + GCTX.VMSA_GPA.to_bytes(8, "little"))


# ------------------------------------------------------------------ the OVMF


@dataclass(frozen=True)
class OvmfLayout:
    """What the launch digest reads of an OVMF besides its pages: the SEV metadata sections
    ((kind, gpa, size), kind one of SECTION_KINDS, in the firmware's order), the SEV-ES reset
    EIP (None: the firmware has no SEV-ES reset block) and the SEV hashes table GPA (None:
    it has none)."""
    name: str
    sections: tuple[tuple[str, int, int], ...]
    reset_eip: int | None
    hashes_table_gpa: int | None

    def has_section(self, kind: str) -> bool:
        return any(k == kind for k, _, _ in self.sections)


@dataclass(frozen=True)
class OvmfImage:
    """An OVMF file as the launch digest reads it: its layout and its pages, which QEMU maps
    so that the image ends at 4 GiB (`gpa` is where it starts)."""
    layout: OvmfLayout
    gpa: int
    data: bytes = field(repr=False)


def read_ovmf(path: str | os.PathLike, name: str | None = None) -> OvmfImage:
    """Parse an OVMF file's footer table and SEV metadata. Raises what the library raises on a
    file it cannot parse (OSError, RuntimeError, ValueError); a file without SEV metadata
    gives a layout with no sections."""
    ovmf = OVMF(os.fspath(path))
    layout = OvmfLayout(
        name=name or os.fspath(path),
        sections=tuple((d.section_type().name, d.gpa, d.size) for d in ovmf.metadata_items()),
        reset_eip=_footer_entry(ovmf.sev_es_reset_eip),
        hashes_table_gpa=_footer_entry(ovmf.sev_hashes_table_gpa))
    return OvmfImage(layout, ovmf.gpa(), ovmf.data())


def firmware_digest(image: OvmfImage) -> bytes:
    """The GCTX after the firmware's own pages, from the zero seed: the OVMF launch hash that
    measurement.json's `firmware` and a `snp_trusted` entry carry (48 bytes)."""
    gctx = GCTX()
    gctx.update_normal_pages(image.gpa, image.data)
    return gctx.ld()


# ------------------------------------------------------------- the digest


@dataclass(frozen=True)
class KernelHashes:
    """The direct-boot hash table's three SHA-256 digests (32 bytes each). The cmdline's is
    of the text and its NUL byte, as QEMU hashes it."""
    kernel: bytes
    initrd: bytes
    cmdline: bytes


def metadata_digest(seed: bytes, layout: OvmfLayout, hashes: KernelHashes, vmm_type: str) -> bytes:
    """The GCTX after `layout`'s metadata pages, from `seed` (the firmware digest): zero pages,
    the secrets and CPUID pages, and the SNP_KERNEL_HASHES page holding `hashes` at the hashes
    table GPA. `vmm_type` is QEMU, ec2 or gce."""
    vmm = _vmm(vmm_type)
    gctx = GCTX(seed=seed)
    try:
        snp_update_metadata_pages(gctx, _LibraryOvmf(layout), _sev_hashes(hashes), vmm)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise MeasurementError(f"{layout.name}: {str(exc) or type(exc).__name__}") from None
    return gctx.ld()


def vmsa_pages(layout: OvmfLayout, cpu_signature: int, guest_features: int,
               vmm_type: str) -> tuple[bytes, bytes | None]:
    """The 4096-byte VMSA page of the boot vCPU and the one every other vCPU shares (None when
    the firmware has no SEV-ES reset EIP: it cannot start more than one vCPU)."""
    vmsa = VMSA(SevMode.SEV_SNP, layout.reset_eip or 0, cpu_signature, guest_features,
                _vmm(vmm_type))
    ap = bytes(vmsa.ap_save_area) if layout.reset_eip else None
    return bytes(vmsa.bsp_save_area), ap


def extend_vmsa(ld: bytes, page_digest: bytes) -> bytes:
    """The GCTX after one more VMSA page whose SHA-384 is `page_digest`: GCTX.update_vmsa_page
    without hashing the page again (hbos.measure.explain extends one digest by many vCPUs)."""
    return hashlib.sha384(ld + page_digest + _VMSA_PAGE_INFO_TAIL).digest()


def launch_digest(seed: bytes, layout: OvmfLayout, hashes: KernelHashes, *, vcpus: int,
                  cpu_signature: int, guest_features: int, vmm_type: str) -> bytes:
    """The MEASUREMENT of a guest (48 bytes): `seed` (the firmware digest), then `layout`'s
    metadata pages with `hashes`, then one VMSA page per vCPU."""
    ld = metadata_digest(seed, layout, hashes, vmm_type)
    bsp, ap = vmsa_pages(layout, cpu_signature, guest_features, vmm_type)
    if vcpus > 1 and ap is None:
        raise MeasurementError(f"{layout.name} has no SEV-ES reset block, so it starts one vCPU, "
                               f"not {vcpus}")
    gctx = GCTX(seed=ld)
    for i in range(vcpus):
        gctx.update_vmsa_page(bsp if i == 0 or ap is None else ap)
    return gctx.ld()


# ----------------------------------------------------------- the library


def _vmm(name: str) -> VMMType:
    try:
        return VMMType[name]
    except KeyError:
        raise MeasurementError(f"unsupported VMM type {name!r}") from None


def _footer_entry(read: Callable[[], int]) -> int | None:
    """An OVMF footer table entry's value; None when the firmware has no such entry."""
    try:
        return read()
    except RuntimeError:  # the library's "Can't find ... entry in OVMF table"
        return None


def _sev_hashes(hashes: KernelHashes) -> SevHashes:
    """The library's hash table, from digests (its constructor reads the files)."""
    table = SevHashes.__new__(SevHashes)
    table.kernel_hash, table.initrd_hash, table.cmdline_hash = \
        hashes.kernel, hashes.initrd, hashes.cmdline
    return table


class _LibraryOvmf:
    """An OvmfLayout as snp_update_metadata_pages reads an OVMF (three of its methods)."""

    def __init__(self, layout: OvmfLayout) -> None:
        self.layout = layout

    def metadata_items(self) -> list[OvmfSevMetadataSectionDesc]:
        return [OvmfSevMetadataSectionDesc(gpa, size, SectionType[kind].value)
                for kind, gpa, size in self.layout.sections]

    def has_metadata_section(self, kind: SectionType) -> bool:
        return self.layout.has_section(kind.name)

    def sev_hashes_table_gpa(self) -> int:
        if self.layout.hashes_table_gpa is None:
            raise MeasurementError(f"{self.layout.name} has no SEV hashes table")
        return self.layout.hashes_table_gpa
