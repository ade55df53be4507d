"""`doit libvirt_xml`: the same VM as a libvirt domain, for libvirt-managed hosts.

build/guest/domain.xml is the SEV-SNP domain: the kernel, initrd and cmdline of
vm-config.toml, the verity image and hash tree as read-only virtio disks (vda,
vdb: the order the initramfs expects), vCPUs, memory, the measured CPU model,
the measured OVMF as a stateless ROM loader, memfd guest memory, and
`<launchSecurity type='sev-snp' kernelHashes='yes'>` with the policy, the C-bit
position (launch.cbitpos; omitted when 0, then libvirt takes it from the host's
domain capabilities), reducedPhysBits, the ID block and ID auth (with authorKey='yes') and HOST_DATA:
the launch.id_block / launch.id_auth / launch.host_data files when set, else
the build's own (build/identity/: HOST_DATA from `doit measure`, the ID block
and ID auth from `doit id_block` when identity.enabled), as `doit start` does.
Devices use iommu='on' (an SEV guest refuses virtio
without VIRTIO_F_ACCESS_PLATFORM), as the QEMU launcher does.

build/guest/domain-emulated.xml is the same VM without launchSecurity and with
the hypervisor's default firmware (AmdSev OVMF refuses to direct-boot without
SEV): NOT CONFIDENTIAL, as an emulated `doit start`. It uses domain type
'kvm'; change it to 'qemu' where KVM is unavailable.

libvirt's schema for these elements: docs/formatdomain.rst "Launch Security"
(libvirt >= 10.5 for sev-snp); the test suite validates both files with
trixie's `virt-xml-validate`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from hbos.config import Config
from hbos.errors import BuildError
from hbos.launch import qemu
from hbos.measure import launch_files
from hbos.paths import Paths
from hbos.stages import vmconfig
from hbos.util import templates
from hbos.util.fsutil import write_text

TEMPLATE = "libvirt-domain.xml.j2"
DOMAIN_NAME = "hbos-guest"


@dataclass(frozen=True)
class Disk:
    path: Path
    dev: str
    format: str
    readonly: bool


def disks(image: Path, hash_tree: Path) -> list[Disk]:
    return [Disk(image, "vda", qemu.disk_format(image), True),
            Disk(hash_tree, "vdb", qemu.disk_format(hash_tree), True)]


def _read_b64(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise BuildError(f"{what} {path}: {exc.strerror}") from None


def launch_security(cfg: Config, paths: Paths) -> qemu.SnpOptions:
    """The launchSecurity parameters (no CPUID read: 0 leaves cbitpos to libvirt)."""
    la = cfg.launch
    if bool(la.id_block) != bool(la.id_auth):
        raise BuildError("launch.id_block and launch.id_auth go together: set both or neither")
    read = {key: _read_b64(path, f"launch.{key}" if getattr(la, key) else key)
            for key, path in launch_files.resolve(cfg, paths).items()}
    return qemu.SnpOptions(cbitpos=la.cbitpos, reduced_phys_bits=la.reduced_phys_bits, **read)


def render(vm: qemu.VmDefinition, *, image: Path, hash_tree: Path, console: Path,
           machine: str, snp: qemu.SnpOptions | None, vm_config: Path) -> str:
    note = ("SEV-SNP guest: boot it only on an SNP host." if snp else
            "Emulated variant: NOT CONFIDENTIAL (no SEV-SNP, default firmware).")
    return templates.render(TEMPLATE, domain_name=DOMAIN_NAME, domain_type="kvm", vm=vm,
                            machine=machine, snp=snp, disks=disks(image, hash_tree),
                            console=console, vm_config=vm_config, variant_note=note)


def write(cfg: Config, paths: Paths) -> None:
    """The libvirt_xml stage: domain.xml (SNP) and domain-emulated.xml."""
    vm = qemu.VmDefinition.from_vm_config(vmconfig.load(paths.vm_config))
    def domain(snp: qemu.SnpOptions | None) -> str:
        return render(vm, image=paths.verity_image, hash_tree=paths.hash_tree,
                      console=paths.guest_dir / "libvirt-console.log",
                      machine=cfg.launch.machine, snp=snp, vm_config=paths.vm_config)
    write_text(paths.domain_xml, domain(launch_security(cfg, paths)))
    write_text(paths.domain_emulated_xml, domain(None))
    print(f"libvirt_xml: {paths.domain_xml} (SEV-SNP), {paths.domain_emulated_xml} "
          f"(emulated, NOT CONFIDENTIAL)", file=sys.stderr)


def file_deps(cfg: Config, paths: Paths) -> list[Path]:
    """The ID block / ID auth / HOST_DATA files (their content goes in)."""
    return list(launch_files.resolve(cfg, paths).values())
