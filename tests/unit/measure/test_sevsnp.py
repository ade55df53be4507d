"""hbos.measure.sevsnp: the one importer of sev-snp-measure, against the library's own entry
point (the golden vectors are in test_digest.py)."""

from __future__ import annotations

import pytest
from sevsnpmeasure import guest
from sevsnpmeasure.sev_hashes import SevHashes
from sevsnpmeasure.sev_mode import SevMode
from sevsnpmeasure.vmm_types import VMMType

from hbos.errors import MeasurementError
from hbos.measure import sevsnp
from tests.support import imports


def test_only_sevsnp_imports_the_library():
    """hbos.config's vCPU-name check is the one other reader (a layer below, plain data)."""
    importers = {i.importer for i in imports.imports() if i.imported.partition(".")[0] == "sevsnpmeasure"}
    assert importers == {"hbos.measure.sevsnp", "hbos.config"}


def test_read_ovmf_layout(amdsev_ovmf, vectors):
    image = sevsnp.read_ovmf(amdsev_ovmf)
    assert image.layout.name == str(amdsev_ovmf)
    assert image.gpa + len(image.data) == 1 << 32
    assert image.layout.has_section("SNP_KERNEL_HASHES") and image.layout.reset_eip
    assert all(kind in sevsnp.SECTION_KINDS for kind, _, _ in image.layout.sections)
    x64 = sevsnp.read_ovmf(vectors / "measurement" / "ovmf_OvmfX64_suffix.bin").layout
    assert not x64.has_section("SNP_KERNEL_HASHES")


@pytest.mark.parametrize("vcpus,vcpu_type,features", [(1, "EPYC-v4", 0x1), (3, "EPYC-Milan", 0x21),
                                                      (8, "EPYC-Genoa", 0x1)])
def test_launch_digest_equals_the_library_entry_point(amdsev_ovmf, tmp_path, vcpus, vcpu_type,
                                                      features):
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    theirs = guest.calc_launch_digest(SevMode.SEV_SNP, vcpus, sevsnp.CPU_SIGNATURES[vcpu_type],
                                      str(amdsev_ovmf), str(kernel), str(initrd), "console=ttyS0",
                                      features, vmm_type=VMMType.QEMU)
    image = sevsnp.read_ovmf(amdsev_ovmf)
    library_hashes = SevHashes(str(kernel), str(initrd), "console=ttyS0")
    hashes = sevsnp.KernelHashes(library_hashes.kernel_hash, library_hashes.initrd_hash,
                                 library_hashes.cmdline_hash)
    ours = sevsnp.launch_digest(sevsnp.firmware_digest(image), image.layout, hashes, vcpus=vcpus,
                                cpu_signature=sevsnp.CPU_SIGNATURES[vcpu_type],
                                guest_features=features, vmm_type="QEMU")
    assert ours == theirs


def test_library_errors_become_measurement_errors(amdsev_ovmf):
    layout = sevsnp.read_ovmf(amdsev_ovmf).layout
    hashes = sevsnp.KernelHashes(bytes(32), bytes(32), bytes(32))
    with pytest.raises(MeasurementError, match="unsupported VMM type 'kvm'"):
        sevsnp.metadata_digest(bytes(48), layout, hashes, "kvm")
    no_table = sevsnp.OvmfLayout("no table", layout.sections, layout.reset_eip, None)
    with pytest.raises(MeasurementError, match="no table has no SEV hashes table"):
        sevsnp.metadata_digest(bytes(48), no_table, hashes, "QEMU")
    no_eip = sevsnp.OvmfLayout("no eip", layout.sections, None, layout.hashes_table_gpa)
    assert sevsnp.vmsa_pages(no_eip, 0x800f12, 1, "QEMU")[1] is None
    with pytest.raises(MeasurementError, match="starts one vCPU, not 2"):
        sevsnp.launch_digest(bytes(48), no_eip, hashes, vcpus=2, cpu_signature=0x800f12,
                             guest_features=1, vmm_type="QEMU")
