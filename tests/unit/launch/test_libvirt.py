"""`doit libvirt_xml`: the domain XML's content, exactly where it matters.

Schema validation with trixie's virt-xml-validate is in
tests/integration/test_libvirt_validate.py.
"""

from __future__ import annotations

import base64
import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import BuildError
from hbos.launch import libvirt, qemu
from hbos.paths import Paths
from hbos.stages import vmconfig

VM = qemu.VmDefinition(kernel=Path("/b/kernel/vmlinuz"), initrd=Path("/b/initramfs.cpio.gz"),
                       ovmf=Path("/b/firmware/OVMF.fd"),
                       cmdline="console=ttyS0 boot=verity verity_roothash=ab & <x>",
                       vcpus=2, vcpu_type="EPYC-v4", memory_mib=4096, guest_policy=0x30000,
                       guest_features=1)
ID_BLOCK = base64.b64encode(b"\1" * 96).decode()
ID_AUTH = base64.b64encode(b"\2" * 4096).decode()
HOST_DATA = base64.b64encode(b"\3" * 32).decode()


def render(snp):
    return libvirt.render(VM, image=Path("/b/verity/guest.img"),
                          hash_tree=Path("/b/verity/hash_tree.bin"),
                          console=Path("/b/guest/libvirt-console.log"), machine="q35",
                          snp=snp, vm_config=Path("/b/guest/vm-config.toml"))


def test_snp_domain_carries_the_measured_vm():
    dom = ET.fromstring(render(qemu.SnpOptions(cbitpos=51)))
    assert dom.get("type") == "kvm"
    assert dom.findtext("os/kernel") == "/b/kernel/vmlinuz"
    assert dom.findtext("os/initrd") == "/b/initramfs.cpio.gz"
    assert dom.findtext("os/cmdline") == VM.cmdline          # escaped, and read back whole
    loader = dom.find("os/loader")
    assert loader.text == "/b/firmware/OVMF.fd" and loader.get("type") == "rom"
    assert dom.findtext("vcpu") == "2" and dom.findtext("memory") == "4096"
    assert dom.findtext("cpu/model") == "EPYC-v4"
    assert dom.find("memoryBacking/source").get("type") == "memfd"
    disks = dom.findall("devices/disk")
    assert [(d.find("source").get("file"), d.find("target").get("dev"),
             d.find("readonly") is not None, d.find("driver").get("iommu")) for d in disks] == [
        ("/b/verity/guest.img", "vda", True, "on"), ("/b/verity/hash_tree.bin", "vdb", True, "on")]
    ls = dom.find("launchSecurity")
    assert ls.get("type") == "sev-snp" and ls.get("kernelHashes") == "yes"
    assert ls.get("authorKey") is None
    assert ls.findtext("policy") == "0x00030000" and ls.findtext("cbitpos") == "51"
    assert ls.findtext("reducedPhysBits") == "1"
    assert ls.find("idBlock") is None and ls.find("hostData") is None


def test_id_block_auth_and_host_data_when_set():
    snp = qemu.SnpOptions(cbitpos=0, id_block=ID_BLOCK, id_auth=ID_AUTH, host_data=HOST_DATA)
    ls = ET.fromstring(render(snp)).find("launchSecurity")
    assert ls.get("authorKey") == "yes"
    assert (ls.findtext("idBlock"), ls.findtext("idAuth"), ls.findtext("hostData")) == \
        (ID_BLOCK, ID_AUTH, HOST_DATA)
    assert ls.find("cbitpos") is None        # 0: libvirt takes it from the host


def test_emulated_variant_has_no_launch_security_nor_loader():
    dom = ET.fromstring(render(None))
    assert dom.find("launchSecurity") is None and dom.find("os/loader") is None
    assert dom.find("memoryBacking") is None
    assert "NOT CONFIDENTIAL" in render(None)
    assert dom.findtext("os/kernel") == "/b/kernel/vmlinuz"


def test_write_reads_launch_files_and_vm_config(tmp_path, amdsev_ovmf):
    for name, value in (("id_block.b64", ID_BLOCK), ("id_auth.b64", ID_AUTH),
                        ("host_data.b64", HOST_DATA)):
        (tmp_path / name).write_text(value + "\n")
    overlay = tmp_path / "o.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\nlaunch: {{cbitpos: 51, "
                       f"id_block: {tmp_path / 'id_block.b64'}, id_auth: {tmp_path / 'id_auth.b64'}, "
                       f"host_data: {tmp_path / 'host_data.b64'}}}\n")
    cfg = hconfig.load(overlay=overlay)
    paths = Paths.from_config(cfg)
    paths.guest_dir.mkdir(parents=True)
    paths.vm_config.write_text(vmconfig.render(cfg, kernel=paths.vmlinuz, initrd=paths.initramfs,
                                               ovmf=amdsev_ovmf, cmdline="console=ttyS0"))
    libvirt.write(cfg, paths)
    ls = ET.parse(paths.domain_xml).getroot().find("launchSecurity")
    assert ls.findtext("hostData") == HOST_DATA and ls.findtext("idAuth") == ID_AUTH
    assert ET.parse(paths.domain_emulated_xml).getroot().find("launchSecurity") is None
    assert libvirt.file_deps(cfg, paths) == [tmp_path / "id_block.b64", tmp_path / "id_auth.b64",
                                             tmp_path / "host_data.b64"]


def test_without_launch_files_the_builds_own_identity_goes_in(tmp_path, amdsev_ovmf):
    """As `doit start`: HOST_DATA from measure, the ID block from id_block (identity on)."""
    overlay = tmp_path / "o.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\nidentity: {{enabled: true}}\n")
    cfg = hconfig.load(overlay=overlay)
    paths = Paths.from_config(cfg)
    paths.guest_dir.mkdir(parents=True)
    paths.identity_dir.mkdir(parents=True)
    for path, value in ((paths.id_block, ID_BLOCK), (paths.id_auth, ID_AUTH),
                        (paths.host_data, HOST_DATA)):
        path.write_text(value + "\n")
    paths.vm_config.write_text(vmconfig.render(cfg, kernel=paths.vmlinuz, initrd=paths.initramfs,
                                               ovmf=amdsev_ovmf, cmdline="console=ttyS0"))
    libvirt.write(cfg, paths)
    ls = ET.parse(paths.domain_xml).getroot().find("launchSecurity")
    assert (ls.findtext("idBlock"), ls.findtext("idAuth"), ls.findtext("hostData")) == \
        (ID_BLOCK, ID_AUTH, HOST_DATA)
    assert libvirt.file_deps(cfg, paths) == [paths.id_block, paths.id_auth, paths.host_data]
    off = hconfig.load(overlay=tmp_path / "o.yaml")
    off = dataclasses.replace(off, identity=dataclasses.replace(off.identity, enabled=False))
    assert libvirt.file_deps(off, paths) == [paths.host_data]


def test_id_block_without_auth_is_refused(tmp_path):
    (tmp_path / "b").write_text(ID_BLOCK)
    overlay = tmp_path / "o.yaml"
    overlay.write_text(f"build_dir: {tmp_path}\nlaunch: {{id_block: {tmp_path / 'b'}}}\n")
    with pytest.raises(BuildError, match="both or neither"):
        cfg = hconfig.load(overlay=overlay)
        libvirt.launch_security(cfg, Paths.from_config(cfg))
