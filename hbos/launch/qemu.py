"""The QEMU command line, as pure functions of what is launched and where.

`command_line(spec)` turns a LaunchSpec (the VM definition, the artifacts, the
mode, the run files and the host facts) into argv. Nothing here touches the
host; hbos.launch.plan gathers the facts and hbos.launch.start runs the result.

Two modes:

- **snp**: a SEV-SNP guest. RAM is a `memory-backend-memfd`, the
  `sev-snp-guest` object carries the policy, the C-bit position and
  `kernel-hashes=on` (QEMU then puts the sha256 of kernel, initrd and cmdline
  into the firmware's SNP_KERNEL_HASHES page, which is what the launch
  measurement covers; see hbos.measure.digest). Two QEMU flavours exist:
  * the AMD fork an SNP bundle ships (AMDESE/AMDSEV, version < 9.1):
    `-machine memory-encryption=sev0` (the legacy alias of
    confidential-guest-support), `certs-path=`, `auth-key-enabled=`;
  * upstream QEMU >= 9.1 (docs/system/i386/amd-memory-encryption.rst):
    `-machine confidential-guest-support=sev0`, `author-key-enabled=`,
    no certs-path (certificates go through the host kernel instead).
- **emulated**: no SEV objects, QEMU's default firmware (AmdSev OVMF refuses to
  direct-boot without SEV), the same kernel, initrd, cmdline, disks and
  network. NOT confidential, and not what the measurement describes.

Devices are virtio with `disable-legacy=on,iommu_platform=true` in both modes:
an SEV guest kernel refuses virtio devices without VIRTIO_F_ACCESS_PLATFORM,
and keeping the emulated guest on identical devices keeps it honest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hbos.errors import LaunchError

Mode = Literal["snp", "emulated"]
Flavour = Literal["amd-fork", "upstream"]
Accel = Literal["kvm", "tcg"]

# Upstream QEMU gained SEV-SNP in 9.1.0.
UPSTREAM_SNP_VERSION = (9, 1)

VIRTIO_SEV = "disable-legacy=on,iommu_platform=true"


# ----------------------------------------------------------------- inputs


@dataclass(frozen=True)
class VmDefinition:
    """What is launched: the fields of vm-config.toml the command line uses."""
    kernel: Path
    initrd: Path
    ovmf: Path
    cmdline: str
    vcpus: int
    vcpu_type: str
    memory_mib: int
    guest_policy: int
    guest_features: int

    @classmethod
    def from_vm_config(cls, vm: dict) -> "VmDefinition":
        """From hbos.stages.vmconfig.load()'s dict."""
        missing = [k for k in ("kernel_file", "initrd_file", "ovmf_file", "kernel_cmdline",
                               "vcpu_count", "vcpu_type", "memory_mib", "guest_policy",
                               "guest_features") if k not in vm]
        if missing:
            raise LaunchError(f"VM definition lacks {', '.join(missing)}",
                              hint="regenerate it: doit vm_config")
        return cls(kernel=Path(vm["kernel_file"]), initrd=Path(vm["initrd_file"]),
                   ovmf=Path(vm["ovmf_file"]), cmdline=str(vm["kernel_cmdline"]),
                   vcpus=int(vm["vcpu_count"]), vcpu_type=str(vm["vcpu_type"]),
                   memory_mib=int(vm["memory_mib"]), guest_policy=int(vm["guest_policy"]),
                   guest_features=int(vm["guest_features"]))


@dataclass(frozen=True)
class Disks:
    """The verity root image and its hash tree (read-only, /dev/vda and /dev/vdb
    in that order: the initramfs reads verity_disk=/dev/vda
    verity_hashtree=/dev/vdb), and an optional writable data disk (/dev/vdc)."""
    image: Path
    hash_tree: Path
    data: Path | None = None


@dataclass(frozen=True)
class Forward:
    """A host TCP port forwarded into the guest (user networking)."""
    host_port: int
    guest_port: int
    host_address: str = "127.0.0.1"


@dataclass(frozen=True)
class RunFiles:
    """Where QEMU keeps its runtime state (all under Paths.run_dir)."""
    directory: Path

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def qmp(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def console(self) -> Path:
        """The guest's serial console."""
        return self.directory / "console.log"

    @property
    def qemu_log(self) -> Path:
        """QEMU's own stdout and stderr."""
        return self.directory / "qemu.log"

    @property
    def state(self) -> Path:
        """What was launched (mode, accel, argv, ports): written by hbos.launch.start."""
        return self.directory / "launch.json"


@dataclass(frozen=True)
class SnpOptions:
    """SEV-SNP launch parameters beyond the policy (SNP ABI SNP_LAUNCH_FINISH)."""
    cbitpos: int
    reduced_phys_bits: int = 1
    id_block: str = ""      # base64 of the 96-byte ID block
    id_auth: str = ""       # base64 of the 4096-byte ID authentication structure
    host_data: str = ""     # base64 of 32 bytes
    certs_path: str = ""    # AMD fork only: certificate blob for the guest


@dataclass(frozen=True)
class HostFacts:
    qemu: Path
    version: tuple[int, int, int]
    cpu_models: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LaunchSpec:
    vm: VmDefinition
    disks: Disks
    run: RunFiles
    host: HostFacts
    mode: Mode
    accel: Accel
    forwards: tuple[Forward, ...] = ()
    snp: SnpOptions | None = None
    machine: str = "q35"
    extra_args: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------- host facts (parsing)


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, micro) from `qemu-system-x86_64 --version`."""
    m = re.search(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise LaunchError(f"cannot read the QEMU version from: {text.strip()[:200]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def parse_cpu_models(text: str) -> frozenset[str]:
    """CPU model names from `qemu-system-x86_64 -cpu help` ("x86 NAME  (description)")."""
    models = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "x86":
            models.add(parts[1])
    return frozenset(models)


def flavour(version: tuple[int, int, int]) -> Flavour:
    """Which SEV-SNP syntax a QEMU of this version speaks."""
    return "upstream" if version[:2] >= UPSTREAM_SNP_VERSION else "amd-fork"


def cbitpos_from_cpuid(leaf_8000001f: bytes) -> int | None:
    """The C-bit position from CPUID Fn8000_001F (AMD APM vol. 3, E.4.17).

    `leaf_8000001f` is the 16 bytes EAX, EBX, ECX, EDX (little endian) as
    /dev/cpu/N/cpuid returns them. EAX bit 1 says SEV is supported;
    EBX[5:0] is the C-bit position. None when SEV is not advertised.
    """
    if len(leaf_8000001f) != 16:
        return None
    eax = int.from_bytes(leaf_8000001f[0:4], "little")
    ebx = int.from_bytes(leaf_8000001f[4:8], "little")
    if not eax & 0x2:
        return None
    return ebx & 0x3F


# ----------------------------------------------------------------- pieces


def cpu_model(mode: Mode, vcpu_type: str, available: frozenset[str]) -> tuple[str, str | None]:
    """The -cpu model, and a note when it differs from the measured vcpu_type.

    SNP: exactly the measured model (its CPUID signature is in the VMSA, so in
    the measurement). Emulated: the measured model if this QEMU knows it, else
    the newest earlier version of the same family (EPYC-v4 -> EPYC-v3 ...).
    """
    if not available or vcpu_type in available:
        return vcpu_type, None
    if mode == "snp":
        raise LaunchError(f"this QEMU has no CPU model {vcpu_type!r}, the measured vcpu_type",
                          hint="use the SNP bundle's QEMU (launch.qemu) or QEMU >= 8.1")
    family, _, version = vcpu_type.partition("-v")
    if version.isdigit():
        for v in range(int(version) - 1, 0, -1):
            if f"{family}-v{v}" in available:
                return f"{family}-v{v}", (f"this QEMU has no {vcpu_type}; emulating with "
                                          f"{family}-v{v}")
    if family in available:
        return family, f"this QEMU has no {vcpu_type}; emulating with {family}"
    return "max", f"this QEMU has no {vcpu_type}; emulating with 'max'"


def machine_arg(spec: LaunchSpec, fl: Flavour) -> str:
    opts = [spec.machine, "vmport=off"]
    if spec.mode == "snp":
        key = "confidential-guest-support" if fl == "upstream" else "memory-encryption"
        opts += [f"{key}=sev0", "memory-backend=ram1"]
    return ",".join(opts)


def memory_backend(memory_mib: int, fl: Flavour) -> str:
    """Guest RAM for SNP: memfd (upstream doc syntax; the AMD fork as the original tool)."""
    base = f"memory-backend-memfd,id=ram1,size={memory_mib}M"
    return base if fl == "upstream" else base + ",share=true,prealloc=false"


def sev_snp_object(vm: VmDefinition, snp: SnpOptions, fl: Flavour) -> str:
    """The sev-snp-guest object (QEMU qapi/qom.json SevSnpGuestProperties)."""
    opts = ["sev-snp-guest", "id=sev0", f"policy=0x{vm.guest_policy:x}",
            f"cbitpos={snp.cbitpos}", f"reduced-phys-bits={snp.reduced_phys_bits}",
            "kernel-hashes=on"]
    if bool(snp.id_block) != bool(snp.id_auth):
        raise LaunchError("an ID block and its ID authentication structure go together: "
                          "set both or neither")
    if snp.id_block:
        key = "author-key-enabled" if fl == "upstream" else "auth-key-enabled"
        opts += [f"id-block={snp.id_block}", f"id-auth={snp.id_auth}", f"{key}=on"]
    if snp.host_data:
        opts.append(f"host-data={snp.host_data}")
    if snp.certs_path:
        if fl == "upstream":
            raise LaunchError("upstream QEMU has no certs-path for SEV-SNP guests",
                              hint="install the certificates through the host kernel "
                                   "(snphost), or use the SNP bundle's QEMU")
        opts.append(f"certs-path={snp.certs_path}")
    for value in opts:
        if "," in value.partition("=")[2]:
            raise LaunchError(f"QEMU option value may not contain a comma: {value!r}")
    return ",".join(opts)


def _opt_path(p: Path) -> str:
    s = str(p)
    if "," in s:
        # QEMU's option syntax would need ",," escaping; refuse rather than guess.
        raise LaunchError(f"path {s!r} contains a comma, which QEMU options cannot hold")
    return s


def disk_format(path: Path) -> str:
    return "qcow2" if path.suffix == ".qcow2" else "raw"


def drive_args(disks: Disks) -> list[str]:
    args: list[str] = []
    items = [(disks.image, True), (disks.hash_tree, True)]
    if disks.data is not None:
        items.append((disks.data, False))
    for i, (path, readonly) in enumerate(items):
        drive = f"file={_opt_path(path)},if=none,id=disk{i},format={disk_format(path)}"
        if readonly:
            drive += ",readonly=on"
        args += ["-drive", drive,
                 "-device", f"virtio-blk-pci,drive=disk{i},{VIRTIO_SEV}"]
    return args


def netdev_args(forwards: tuple[Forward, ...]) -> list[str]:
    netdev = "user,id=net0" + "".join(
        f",hostfwd=tcp:{f.host_address}:{f.host_port}-:{f.guest_port}" for f in forwards)
    return ["-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=net0,{VIRTIO_SEV},romfile="]


def firmware_note(spec: LaunchSpec) -> str:
    """Which firmware the guest boots, in words."""
    if spec.mode == "snp":
        return f"{spec.vm.ovmf} (measured)"
    return (f"QEMU's default firmware (SeaBIOS), not {spec.vm.ovmf}: AmdSev OVMF "
            "refuses to direct-boot without SEV")


# ----------------------------------------------------------------- the command line


def command_line(spec: LaunchSpec) -> list[str]:
    """argv for qemu-system-x86_64 launching `spec` (pure)."""
    vm = spec.vm
    if spec.mode == "snp":
        if spec.accel != "kvm":
            raise LaunchError("an SEV-SNP guest needs KVM (accel tcg cannot run it)")
        if spec.snp is None:
            raise LaunchError("SNP mode needs the SNP options (C-bit position ...)")
    fl = flavour(spec.host.version)
    model, _note = cpu_model(spec.mode, vm.vcpu_type, spec.host.cpu_models)
    argv = [str(spec.host.qemu),
            "-name", "hbos-guest",
            "-machine", machine_arg(spec, fl),
            "-accel", spec.accel,
            "-cpu", model,
            "-smp", str(vm.vcpus),
            "-m", f"{vm.memory_mib}M"]
    if spec.mode == "snp":
        assert spec.snp is not None
        argv += ["-object", memory_backend(vm.memory_mib, fl),
                 "-object", sev_snp_object(vm, spec.snp, fl),
                 "-bios", _opt_path(vm.ovmf)]
    argv += ["-kernel", str(vm.kernel),
             "-initrd", _opt_path(vm.initrd),
             "-append", vm.cmdline,
             "-no-reboot",
             "-nodefaults",
             "-display", "none"]
    argv += drive_args(spec.disks)
    argv += netdev_args(spec.forwards)
    argv += ["-qmp", f"unix:{_opt_path(spec.run.qmp)},server=on,wait=off",
             "-serial", f"file:{spec.run.console}",
             "-pidfile", str(spec.run.pidfile)]
    argv += list(spec.extra_args)
    return argv


def kvm_probe_command(qemu: Path, cpu: str, kernel: Path, serial: Path) -> list[str]:
    """A throwaway KVM guest: the kernel alone, printing early to serial.

    If KVM works, "Linux version" appears within a second or two; where it is
    broken (e.g. "failed to set MSR 0x10a", or a vCPU that never leaves the
    boot stub) QEMU dies or nothing appears, and auto falls back to TCG.
    """
    return [str(qemu), "-machine", "q35,vmport=off", "-accel", "kvm", "-cpu", cpu,
            "-m", "256M", "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-append", "console=ttyS0 earlyprintk=serial panic=-1",
            "-serial", f"file:{serial}"]
