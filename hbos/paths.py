"""Where every artifact of the build lives, and where the project's own files are.

Everything the build writes is under `build_dir`, and every artifact a task
names (a target, a file_dep, a manifest) has its path here. Below these paths a
module joins only its own parts: scratch, staging and download names, a
stage's inner tree, run-time files (QEMU's: hbos.launch.qemu.RunFiles) and the
files of a release (hbos.release.layout).

The project's files (config.yaml, templates/, resources/, tools/) live beside
dodo.py: $HBOS_PROJECT when set; else, in a checkout, the package's parent
directory; else (hbos installed from a wheel) the current directory (doit runs
in the directory of dodo.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ENV = "HBOS_PROJECT"


def _project_root() -> Path:
    given = os.environ.get(PROJECT_ENV)
    if given:
        return Path(given).resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "dodo.py").is_file():
        return checkout
    return Path.cwd()


PROJECT_ROOT = _project_root()
TEMPLATES = PROJECT_ROOT / "templates"
RESOURCES = PROJECT_ROOT / "resources"
TOOLS = PROJECT_ROOT / "tools"
DEFAULT_CONFIG = PROJECT_ROOT / "config.yaml"


@dataclass(frozen=True)
class Paths:
    build: Path
    initramfs_compression: str = "gzip"   # names the initramfs file (.gz | .zst)

    @classmethod
    def from_config(cls, cfg) -> "Paths":
        return cls(cfg.path(cfg.build_dir), initramfs_compression=cfg.initramfs.compression)

    # doit's own state
    @property
    def dep_file(self) -> Path:
        return self.build / ".doit.db"

    def lock(self, name: str) -> Path:
        """The lock file one kind of run holds (hbos.util.lock): vm, releases."""
        return self.build / "locks" / f"{name}.lock"

    @property
    def logs(self) -> Path:
        return self.build / "logs"

    def log(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    @property
    def downloads(self) -> Path:
        return self.build / "downloads"

    # snp_release (AMD's SNP bundle; the directory keeps the task's name)
    @property
    def snp_bundle_dir(self) -> Path:
        return self.build / "snp-release"

    @property
    def snp_bundle_manifest(self) -> Path:
        return self.build / "snp-release.json"

    # kernel
    @property
    def kernel_dir(self) -> Path:
        return self.build / "kernel"

    @property
    def kernel_deb(self) -> Path:
        """The guest kernel package that `kernel` unpacks (package source)."""
        return self.downloads / "guest-kernel.deb"

    def apt_dir(self, suite: str) -> Path:
        """A private apt (sources.list, lists, cache) for one Debian suite."""
        return self.build / "apt" / suite

    @property
    def vmlinuz(self) -> Path:
        return self.kernel_dir / "vmlinuz"

    @property
    def kernel_manifest(self) -> Path:
        return self.kernel_dir / "kernel.json"

    @property
    def kernel_modules(self) -> Path:
        """Root of the unpacked tree holding lib/modules/VERSION."""
        return self.kernel_dir / "root"

    # firmware
    @property
    def firmware_dir(self) -> Path:
        return self.build / "firmware"

    @property
    def built_ovmf(self) -> Path:
        return self.firmware_dir / "OVMF.fd"

    @property
    def firmware_work(self) -> Path:
        """The unpacked, patched edk2 tree the firmware is built in."""
        return self.firmware_dir / "edk2"

    @property
    def firmware_manifest(self) -> Path:
        return self.firmware_dir / "firmware.json"

    # initramfs
    @property
    def initramfs(self) -> Path:
        ext = "zst" if self.initramfs_compression == "zstd" else "gz"
        return self.build / f"initramfs.cpio.{ext}"

    @property
    def initramfs_manifest(self) -> Path:
        return self.build / "initramfs.json"

    @property
    def initramfs_dir(self) -> Path:
        return self.build / "initramfs"

    # base root filesystem and image
    @property
    def base_dir(self) -> Path:
        return self.build / "base"

    @property
    def base_rootfs(self) -> Path:
        return self.base_dir / "rootfs.tar"

    def base_tree(self, key: str) -> Path:
        """rootfs.tar extracted once (key: its sha256 prefix), cloned by image stages."""
        return self.base_dir / f"tree-{key}"

    @property
    def base_rootfs_manifest(self) -> Path:
        """sha256 and config of rootfs.tar, written with it (cheap verity salt input)."""
        return self.base_dir / "rootfs.json"

    @property
    def guest_dir(self) -> Path:
        return self.build / "guest"

    @property
    def base_image(self) -> Path:
        return self.guest_dir / "base.qcow2"

    # content
    @property
    def content_dir(self) -> Path:
        return self.build / "content"

    @property
    def content_tree(self) -> Path:
        """The content as a root-relative tree laid over the base root."""
        return self.content_dir / "tree"

    @property
    def content_manifest(self) -> Path:
        return self.content_dir / "manifest.json"

    @property
    def content_state(self) -> Path:
        """What the content was built from (dir fingerprint); not a downstream input."""
        return self.content_dir / "source-state.json"

    # hyperbeam: HyperBEAM's release built from the pinned sources (content.source: hyperbeam)
    @property
    def hyperbeam_dir(self) -> Path:
        return self.build / "hyperbeam"

    @property
    def build_root(self) -> Path:
        """The Debian build root (mmdebstrap) HyperBEAM and the CU are built in; its
        record beside it (build-root.json)."""
        return self.build / "build-root"

    @property
    def hyperbeam_tar(self) -> Path:
        """The release tree `hb` as a deterministic tar (what the cache keeps)."""
        return self.hyperbeam_dir / "hb.tar"

    @property
    def hyperbeam_manifest(self) -> Path:
        return self.hyperbeam_dir / "manifest.json"

    # cu: the AO compute unit from its pinned source + package-lock.json (content.source: hyperbeam)
    @property
    def cu_dir(self) -> Path:
        return self.build / "cu"

    @property
    def cu_tar(self) -> Path:
        """servers/cu with its node_modules, as a deterministic tar (what the cache keeps)."""
        return self.cu_dir / "cu.tar"

    @property
    def cu_manifest(self) -> Path:
        return self.cu_dir / "manifest.json"

    # hb_node: tools/hb_node built into a relx release (content.source: erlang)
    @property
    def hb_node_dir(self) -> Path:
        return self.build / "hb-node"

    @property
    def hb_node_tree(self) -> Path:
        """The relx release `hb` (installed as opt/hyperbeam)."""
        return self.hb_node_dir / "hb"

    @property
    def hb_node_manifest(self) -> Path:
        return self.hb_node_dir / "manifest.json"

    # verity root
    @property
    def verity_dir(self) -> Path:
        return self.build / "verity"

    @property
    def verity_image(self) -> Path:
        return self.verity_dir / "guest.img"

    @property
    def hash_tree(self) -> Path:
        return self.verity_dir / "hash_tree.bin"

    @property
    def roothash(self) -> Path:
        return self.verity_dir / "roothash.txt"

    @property
    def verity_manifest(self) -> Path:
        """Inputs, salt, UUID and hashes of the verity image."""
        return self.verity_dir / "verity.json"

    # VM definition and measurement
    @property
    def vm_config(self) -> Path:
        return self.guest_dir / "vm-config.toml"

    @property
    def domain_xml(self) -> Path:
        """libvirt domain of the SEV-SNP guest (doit libvirt_xml)."""
        return self.guest_dir / "domain.xml"

    @property
    def domain_emulated_xml(self) -> Path:
        """libvirt domain of the emulated (NOT CONFIDENTIAL) variant."""
        return self.guest_dir / "domain-emulated.xml"

    @property
    def measurement(self) -> Path:
        return self.build / "measurement.json"

    @property
    def reference_values(self) -> Path:
        return self.build / "reference-values.json"
    # launch identity (hbos/measure/idblock.py, hbos/measure/nodeconfig.py); the keys live outside build/
    @property
    def identity_dir(self) -> Path:
        return self.build / "identity"

    @property
    def id_block(self) -> Path:
        """base64 of the 96-byte ID block (QEMU id-block=)."""
        return self.identity_dir / "id_block.b64"

    @property
    def id_auth(self) -> Path:
        """base64 of the 4096-byte ID authentication information (QEMU id-auth=)."""
        return self.identity_dir / "id_auth.b64"

    @property
    def id_block_json(self) -> Path:
        """The ID block's fields and key digests, for people."""
        return self.identity_dir / "id_block.json"

    @property
    def host_data(self) -> Path:
        """base64 of the 32-byte HOST_DATA (QEMU host-data=)."""
        return self.identity_dir / "host_data.b64"

    @property
    def snp_trusted(self) -> Path:
        return self.build / "snp_trusted.json"

    # launcher state
    @property
    def run_dir(self) -> Path:
        return self.build / "run"

    # releases
    @property
    def release_dir(self) -> Path:
        return self.build / "release"

    @property
    def release_tarball(self) -> Path:
        return self.build / "release.tar.gz"

    @property
    def release_manifest(self) -> Path:
        return self.release_dir / "manifest.json"

    @property
    def release_tarball_sha256(self) -> Path:
        """`sha256sum -c` line for the tarball, to publish beside it."""
        return self.build / "release.tar.gz.sha256"

    @property
    def release_download(self) -> Path:
        """Where download_release keeps the fetched tarball."""
        return self.downloads / "release.tar.gz"

    @property
    def releases(self) -> Path:
        """Installed (downloaded and verified) releases, one directory each."""
        return self.build / "releases"

    @property
    def current_release(self) -> Path:
        """Symlink to the verified release that start_release launches."""
        return self.releases / "current"

    # attestation certificate cache
    @property
    def cert_cache(self) -> Path:
        return self.build / "certs"
