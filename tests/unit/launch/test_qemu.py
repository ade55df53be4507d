"""Golden QEMU command lines, argument by argument (hbos.launch.qemu is pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hbos.errors import LaunchError
from hbos.launch import qemu

VM = qemu.VmDefinition(kernel=Path("/b/kernel/vmlinuz"), initrd=Path("/b/initramfs.cpio.gz"),
                       ovmf=Path("/b/firmware/OVMF.fd"),
                       cmdline="console=ttyS0 boot=verity verity_disk=/dev/vda "
                               "verity_hashtree=/dev/vdb verity_roothash=ab12",
                       vcpus=2, vcpu_type="EPYC-v4", memory_mib=4096, guest_policy=0x30000,
                       guest_features=0x1)
DISKS = qemu.Disks(image=Path("/b/verity/guest.img"), hash_tree=Path("/b/verity/hash_tree.bin"))
RUN = qemu.RunFiles(Path("/b/run"))
FWD = (qemu.Forward(10000, 10000, "0.0.0.0"),)
MODELS = frozenset({"EPYC", "EPYC-v1", "EPYC-v2", "EPYC-v3", "EPYC-v4", "qemu64", "max"})
AMD_FORK = qemu.HostFacts(Path("/snp/usr/local/bin/qemu-system-x86_64"), (8, 0, 0), MODELS)
UPSTREAM = qemu.HostFacts(Path("/usr/bin/qemu-system-x86_64"), (9, 1, 0), MODELS)
SNP = qemu.SnpOptions(cbitpos=51, reduced_phys_bits=1)

COMMON_TAIL = [
    "-kernel", "/b/kernel/vmlinuz",
    "-initrd", "/b/initramfs.cpio.gz",
    "-append", VM.cmdline,
    "-no-reboot", "-nodefaults", "-display", "none",
    "-drive", "file=/b/verity/guest.img,if=none,id=disk0,format=raw,readonly=on",
    "-device", "virtio-blk-pci,drive=disk0,disable-legacy=on,iommu_platform=true",
    "-drive", "file=/b/verity/hash_tree.bin,if=none,id=disk1,format=raw,readonly=on",
    "-device", "virtio-blk-pci,drive=disk1,disable-legacy=on,iommu_platform=true",
    "-netdev", "user,id=net0,hostfwd=tcp:0.0.0.0:10000-:10000",
    "-device", "virtio-net-pci,netdev=net0,disable-legacy=on,iommu_platform=true,romfile=",
    "-qmp", "unix:/b/run/qmp.sock,server=on,wait=off",
    "-serial", "file:/b/run/console.log",
    "-pidfile", "/b/run/qemu.pid",
]


def spec(**kw) -> qemu.LaunchSpec:
    base = dict(vm=VM, disks=DISKS, run=RUN, host=AMD_FORK, mode="snp", accel="kvm",
                forwards=FWD, snp=SNP)
    base.update(kw)
    return qemu.LaunchSpec(**base)


def test_snp_amd_fork_golden():
    assert qemu.command_line(spec()) == [
        "/snp/usr/local/bin/qemu-system-x86_64",
        "-name", "hbos-guest",
        "-machine", "q35,vmport=off,memory-encryption=sev0,memory-backend=ram1",
        "-accel", "kvm",
        "-cpu", "EPYC-v4",
        "-smp", "2",
        "-m", "4096M",
        "-object", "memory-backend-memfd,id=ram1,size=4096M,share=true,prealloc=false",
        "-object", "sev-snp-guest,id=sev0,policy=0x30000,cbitpos=51,reduced-phys-bits=1,"
                   "kernel-hashes=on",
        "-bios", "/b/firmware/OVMF.fd",
        *COMMON_TAIL,
    ]


def test_snp_upstream_golden():
    assert qemu.command_line(spec(host=UPSTREAM)) == [
        "/usr/bin/qemu-system-x86_64",
        "-name", "hbos-guest",
        "-machine", "q35,vmport=off,confidential-guest-support=sev0,memory-backend=ram1",
        "-accel", "kvm",
        "-cpu", "EPYC-v4",
        "-smp", "2",
        "-m", "4096M",
        "-object", "memory-backend-memfd,id=ram1,size=4096M",
        "-object", "sev-snp-guest,id=sev0,policy=0x30000,cbitpos=51,reduced-phys-bits=1,"
                   "kernel-hashes=on",
        "-bios", "/b/firmware/OVMF.fd",
        *COMMON_TAIL,
    ]


def test_emulated_golden():
    assert qemu.command_line(spec(host=UPSTREAM, mode="emulated", accel="tcg", snp=None)) == [
        "/usr/bin/qemu-system-x86_64",
        "-name", "hbos-guest",
        "-machine", "q35,vmport=off",
        "-accel", "tcg",
        "-cpu", "EPYC-v4",
        "-smp", "2",
        "-m", "4096M",
        *COMMON_TAIL,
    ]


def test_emulated_has_no_sev_and_no_ovmf():
    argv = qemu.command_line(spec(mode="emulated", accel="kvm", snp=None))
    joined = " ".join(argv)
    assert "sev" not in joined and "memory-backend" not in joined
    assert "-bios" not in argv and str(VM.ovmf) not in joined
    assert "QEMU's default firmware" in qemu.firmware_note(spec(mode="emulated", snp=None))


def test_version_selects_flavour():
    assert qemu.flavour((9, 1, 0)) == "upstream"
    assert qemu.flavour((10, 0, 2)) == "upstream"
    assert qemu.flavour((9, 0, 2)) == "amd-fork"
    assert qemu.flavour((8, 2, 50)) == "amd-fork"
    assert qemu.parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)\n"
                              "Copyright ...") == (7, 2, 22)
    assert qemu.parse_version("QEMU emulator version 9.1.0\n") == (9, 1, 0)
    with pytest.raises(LaunchError):
        qemu.parse_version("something else")


def test_snp_optional_objects_amd_fork():
    opts = qemu.SnpOptions(cbitpos=47, reduced_phys_bits=5, id_block="SUQ=", id_auth="QVU=",
                           host_data="SEQ=", certs_path="/b/certs.blob")
    obj = qemu.sev_snp_object(VM, opts, "amd-fork").split(",")
    assert obj == ["sev-snp-guest", "id=sev0", "policy=0x30000", "cbitpos=47",
                   "reduced-phys-bits=5", "kernel-hashes=on", "id-block=SUQ=", "id-auth=QVU=",
                   "auth-key-enabled=on", "host-data=SEQ=", "certs-path=/b/certs.blob"]


def test_snp_optional_objects_upstream():
    opts = qemu.SnpOptions(cbitpos=51, id_block="SUQ=", id_auth="QVU=", host_data="SEQ=")
    obj = qemu.sev_snp_object(VM, opts, "upstream").split(",")
    assert obj[-4:] == ["id-block=SUQ=", "id-auth=QVU=", "author-key-enabled=on",
                        "host-data=SEQ="]
    with pytest.raises(LaunchError, match="certs-path"):
        qemu.sev_snp_object(VM, qemu.SnpOptions(cbitpos=51, certs_path="/c"), "upstream")


def test_id_block_needs_id_auth():
    with pytest.raises(LaunchError, match="both or neither"):
        qemu.sev_snp_object(VM, qemu.SnpOptions(cbitpos=51, id_block="SUQ="), "amd-fork")


def test_snp_refuses_tcg_and_missing_options():
    with pytest.raises(LaunchError, match="needs KVM"):
        qemu.command_line(spec(accel="tcg"))
    with pytest.raises(LaunchError, match="SNP options"):
        qemu.command_line(spec(snp=None))


def test_data_disk_after_root_disks_and_writable():
    disks = qemu.Disks(DISKS.image, DISKS.hash_tree, Path("/data/node.qcow2"))
    args = qemu.drive_args(disks)
    drives = [args[i + 1] for i, a in enumerate(args) if a == "-drive"]
    assert [d.split(",")[0] for d in drives] == ["file=/b/verity/guest.img",
                                                "file=/b/verity/hash_tree.bin",
                                                "file=/data/node.qcow2"]
    assert drives[2] == "file=/data/node.qcow2,if=none,id=disk2,format=qcow2"
    assert "readonly" not in drives[2]


def test_ssh_forward_and_addresses():
    args = qemu.netdev_args((qemu.Forward(10000, 10000, "127.0.0.1"),
                             qemu.Forward(2222, 22, "127.0.0.1")))
    assert args[1] == ("user,id=net0,hostfwd=tcp:127.0.0.1:10000-:10000,"
                       "hostfwd=tcp:127.0.0.1:2222-:22")


def test_extra_args_and_machine_type():
    argv = qemu.command_line(spec(machine="pc-q35-8.0", extra_args=("-s",)))
    assert argv[argv.index("-machine") + 1].startswith("pc-q35-8.0,vmport=off,")
    assert argv[-1] == "-s"


def test_comma_in_path_refused():
    bad = qemu.Disks(Path("/b/a,b.img"), DISKS.hash_tree)
    with pytest.raises(LaunchError, match="comma"):
        qemu.command_line(spec(disks=bad))


def test_cpu_model_choice():
    old = frozenset({"EPYC", "EPYC-v1", "EPYC-v2", "EPYC-v3", "EPYC-Milan-v1", "qemu64"})
    assert qemu.cpu_model("snp", "EPYC-v4", MODELS) == ("EPYC-v4", None)
    model, note = qemu.cpu_model("emulated", "EPYC-v4", old)
    assert model == "EPYC-v3" and "EPYC-v4" in note
    assert qemu.cpu_model("emulated", "EPYC-Milan-v2", old)[0] == "EPYC-Milan-v1"
    assert qemu.cpu_model("emulated", "EPYC-Genoa", old)[0] == "max"
    with pytest.raises(LaunchError, match="EPYC-v4"):
        qemu.cpu_model("snp", "EPYC-v4", old)


def test_parse_cpu_models():
    text = ("Available CPUs:\nx86 EPYC                  (alias configured by machine type)\n"
            "x86 EPYC-v3               AMD EPYC Processor\n\nRecognized CPUID flags:\n  3dnow\n")
    assert qemu.parse_cpu_models(text) == {"EPYC", "EPYC-v3"}


def test_cbitpos_from_cpuid():
    # EPYC Milan: EAX 0x1b (SME, SEV, ...), EBX 0x173: C-bit 51 in EBX[5:0]
    leaf = (0x1B).to_bytes(4, "little") + (0x173).to_bytes(4, "little") + bytes(8)
    assert qemu.cbitpos_from_cpuid(leaf) == 51
    assert qemu.cbitpos_from_cpuid((0x2).to_bytes(4, "little") + (51).to_bytes(4, "little")
                                   + bytes(8)) == 51
    assert qemu.cbitpos_from_cpuid(bytes(16)) is None          # no SEV (this machine)
    assert qemu.cbitpos_from_cpuid(b"short") is None


def test_kvm_probe_command():
    argv = qemu.kvm_probe_command(Path("/q"), "EPYC-v3", Path("/k"), Path("/r/p.log"))
    assert argv[:5] == ["/q", "-machine", "q35,vmport=off", "-accel", "kvm"]
    assert argv[argv.index("-serial") + 1] == "file:/r/p.log"
    assert "earlyprintk=serial" in argv[argv.index("-append") + 1]


def test_vm_definition_from_vm_config():
    vm = qemu.VmDefinition.from_vm_config({
        "kernel_file": "/k", "initrd_file": "/i", "ovmf_file": "/o", "kernel_cmdline": "c",
        "vcpu_count": 4, "vcpu_type": "EPYC-v4", "memory_mib": 2048, "guest_policy": 0x30000,
        "guest_features": 0x21})
    assert (vm.vcpus, vm.guest_features, vm.kernel) == (4, 0x21, Path("/k"))
    with pytest.raises(LaunchError, match="vcpu_count"):
        qemu.VmDefinition.from_vm_config({"kernel_file": "/k"})
