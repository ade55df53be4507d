"""HyperBEAM OS build graph.

Each task declares its inputs (file_dep, and through config_changed the config
keys its stage reads, declared once in hbos/tasks/table.py) and its targets; the
work lives in the hbos package.

    doit list                  every stage, one line each
    doit measure               build what is needed and compute the measurement
    doit <task> profile=local  select a profile from config.yaml
    doit <task> config=my.yaml overlay your own settings
"""

from doit import get_var

# Graph time imports only what file_dep, targets and uptodate need; the stage
# modules (and sev-snp-measure, cryptography, jinja2, requests) are imported
# when an action runs: action("hbos.module:function", ...) (hbos/tasks/adapter.py).
from hbos.launch import libvirt
from hbos.paths import Paths
from hbos.stages import content, firmware, hb_node, kernel, rootfs, vmconfig
from hbos.tasks import table as stages
from hbos.tasks.adapter import action, guard_task_creators, late
from hbos.tasks.params import DOWNLOAD_RELEASE, SETUP_HOST, START, VERIFY_REPORT
from hbos.tasks.support import SizeAwareChecker, load_config, strs
from hbos.util import templates, tools

CFG = load_config(get_var)  # creates build_dir, or exits with one line
P = Paths.from_config(CFG)

DOIT_CONFIG = {
    "dep_file": str(P.dep_file),
    "backend": "sqlite3",
    "check_file_uptodate": SizeAwareChecker,
    "default_tasks": ["measure"],
    "verbosity": 2,
}


def task_init():
    """Create the build directories, check host tools, fetch the AMDSEV snp-release bundle if one is configured."""
    return {
        "actions": [action("hbos.tasks.adapter:make_dirs", P.build, P.downloads, P.logs, P.guest_dir),
                    action("hbos.stages.hosttools:check", CFG, install=get_var("install", "") == "yes")],
        "task_dep": ["snp_release"],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_snp_release():
    """Optional: download, verify (sha256) and unpack AMD's AMDSEV snp-release bundle (forked kernels, QEMU, OVMF)."""
    return {
        "actions": [stages.SNP_RELEASE.action(CFG, P)],
        "targets": strs([P.snp_release_manifest]),
        "uptodate": [stages.SNP_RELEASE.config_changed(CFG)],
        "clean": True,
    }


def task_kernel_deb():
    """Fetch the guest kernel .deb from Debian kernel.suite via a private apt in build/apt (follows metapackages)."""
    if CFG.kernel.source != "package":
        return {"actions": None, "doc": "(kernel.source is not 'package': nothing to fetch)"}
    return {
        "actions": [stages.KERNEL_DEB.action(CFG, P)],
        "targets": strs([P.kernel_deb]),
        "uptodate": [stages.KERNEL_DEB.config_changed(CFG)],
        "clean": True,
    }


def _kernel_deps():
    if CFG.kernel.source == "snp_release":
        return strs([P.snp_release_manifest])
    if CFG.kernel.source == "package":
        return strs([P.kernel_deb])
    return strs([kernel.deb_path(CFG, P)])


def task_kernel():
    """Unpack the guest kernel .deb: build/kernel/vmlinuz and its modules (depmod'ed)."""
    return {
        "actions": [stages.KERNEL.action(CFG, P)],
        "file_dep": _kernel_deps(),
        "targets": strs([P.vmlinuz, P.kernel_manifest]),
        "uptodate": [stages.KERNEL.config_changed(CFG)],
        "clean": True,
    }


def task_hb_node():
    """Local payload: tools/hb_node as a relx release `hb` (Debian erlang + rebar3; content.source erlang)."""
    return {
        "actions": [stages.HB_NODE.action(CFG, P)],
        "file_dep": strs(hb_node.source_files()),
        "targets": strs([P.hb_node_manifest]),
        "uptodate": [stages.HB_NODE.config_changed(CFG), hb_node.tooling_unchanged(P)],
        "clean": True,
    }


def task_content():
    """Guest content (HyperBEAM + AO CU via Docker, a prebuilt dir/tarball, the local Erlang release, or the sample node)."""
    # docker: the uptodate callable re-resolves the git refs (git ls-remote) so a
    # moved branch rebuilds; dir: a stat fingerprint of content.path. The manifest
    # is rewritten only when the content changed (verity depends on it).
    return {
        "actions": [stages.CONTENT.action(CFG, P)],
        "file_dep": strs(content.file_deps(CFG)),
        "targets": strs([P.content_manifest]),
        "uptodate": [stages.CONTENT.config_changed(CFG)] + content.uptodate_checks(CFG, P),
        "clean": True,
    }


# ------------------------------------------- guest image (hbos/stages/initramfs.py, rootfs.py, verity.py)


def _host_tool_deps(*programs):
    """The host binaries copied into an image: a new version rebuilds it."""
    return strs([p for p in (tools.find(prog) for prog in programs) if p])


def task_initramfs():
    """Build the reproducible initramfs (busybox, veritysetup, boot modules, /init) -> build/initramfs.cpio.gz."""
    if CFG.initramfs.path:
        return {"actions": None, "doc": "(initramfs.path is set: the prebuilt initrd is used)"}
    return {
        "actions": [stages.INITRAMFS.action(CFG, P)],
        "file_dep": strs([P.kernel_manifest, templates.path("init.sh.j2")])
                    + _host_tool_deps("busybox", "veritysetup"),
        "targets": strs([P.initramfs, P.initramfs_manifest]),
        "uptodate": [stages.INITRAMFS.config_changed(CFG)],
        "clean": True,
    }


def task_base_rootfs():
    """Build the base Debian root with mmdebstrap (SOURCE_DATE_EPOCH) -> build/base/rootfs.tar."""
    return {
        "actions": [stages.BASE_ROOTFS.action(CFG, P)],
        "targets": strs([P.base_rootfs, P.base_rootfs_manifest]),
        "uptodate": [rootfs.up_to_date(CFG, P)],
        "clean": True,
    }


def task_base_image():
    """Base root + kernel modules as a bootable ext4 qcow2 for debugging -> build/guest/base.qcow2."""
    return {
        "actions": [stages.BASE_IMAGE.action(CFG, P)],
        "file_dep": strs([P.base_rootfs, P.base_rootfs_manifest, P.kernel_manifest,
                          templates.path(rootfs.SERIAL_LOGIN_TEMPLATE)]),
        "targets": strs([P.base_image]),
        "uptodate": [stages.BASE_IMAGE.config_changed(CFG)],
        "clean": True,
    }


def task_verity():
    """Guest root (base + modules + content) as erofs/ext4 + dm-verity hash tree and root hash."""
    return {
        "actions": [stages.VERITY.action(CFG, P)],
        "file_dep": strs([P.base_rootfs_manifest, P.kernel_manifest, P.content_manifest,
                          *sorted(templates.path("guest").glob("*.j2"))]),
        "targets": strs([P.verity_image, P.hash_tree, P.roothash, P.verity_manifest]),
        "uptodate": [stages.VERITY.config_changed(CFG)],
        "clean": True,
    }


def task_build_base_image():
    """Group: kernel, initramfs and the debug disk base.qcow2 (asks for no username or password)."""
    return {"actions": None, "task_dep": ["kernel", "initramfs", "base_image"]}


def task_build_guest_image():
    """Group: everything up to the measurement (kernel, initramfs, rootfs, content, verity, vm_config, measure)."""
    return {"actions": None,
            "task_dep": ["kernel", "initramfs", "base_rootfs", "content", "verity", "vm_config",
                         "measure"]}


def task_firmware():
    """Build the SEV-SNP OVMF (AmdSevX64) from Debian's edk2 source -> build/firmware/OVMF.fd."""
    if not firmware.built_here(CFG):
        return {"actions": None, "doc": "Build the SEV-SNP OVMF from Debian's edk2 source "
                "(inactive: firmware.source is not 'build' or firmware.ovmf is set)"}
    return {
        "actions": [stages.FIRMWARE.action(CFG, P)],
        "targets": strs([P.built_ovmf]),
        "uptodate": [stages.FIRMWARE.config_changed(CFG)],
        "clean": True,
    }


def _ovmf_deps():
    """file_dep for the firmware: the file itself, or what locates it."""
    if firmware.built_here(CFG):
        return strs([P.built_ovmf])
    if CFG.firmware.ovmf or CFG.firmware.source == "path":
        return strs([firmware.resolve(CFG, P)])
    return strs([P.snp_release_manifest])


def task_vm_config():
    """Write the VM definition build/guest/vm-config.toml (kernel, initrd, OVMF, cmdline, VM)."""
    return {
        "actions": [stages.VM_CONFIG.action(CFG, P, ovmf=late("hbos.stages.firmware:resolve", CFG, P),
                                             roothash_file=P.roothash)],
        "file_dep": strs([P.vmlinuz, vmconfig.initrd_path(CFG, P), P.roothash]) + _ovmf_deps(),
        "targets": strs([P.vm_config]),
        "uptodate": [stages.VM_CONFIG.config_changed(CFG)],
        "clean": True,
    }


def _identity_deps():
    """The public keys when identity is enabled (their digests go into measurement.json)."""
    if not CFG.identity.enabled:
        return []
    from hbos.measure import identity  # cryptography: only for a build with a launch identity
    files = identity.key_files(CFG)
    return strs([files.public(identity.ID), files.public(identity.AUTHOR)])


def task_measure():
    """Compute the expected SEV-SNP launch measurement -> build/measurement.json (+ reference values, snp_trusted)."""
    return {
        "actions": [stages.MEASURE.action(CFG, P)],
        "file_dep": strs([P.vm_config, P.vmlinuz, vmconfig.initrd_path(CFG, P),
                          templates.path("config.flat.j2")]) + _ovmf_deps()
                    + _identity_deps(),
        "targets": strs([P.measurement, P.reference_values, P.snp_trusted, P.host_data]),
        "uptodate": [stages.MEASURE.config_changed(CFG)],
        "clean": True,
    }


# ------------------------------------------------- launch identity (hbos/measure/identity.py, idblock.py)


def task_keys():
    """Create the ID and author keys (ECDSA P-384, 0600) in identity.keys_dir; never overwrites."""
    return {
        "actions": [action("hbos.measure.identity:make_keys", CFG)],
        "uptodate": [False],
        "verbosity": 2,
        # no targets and no clean: doit must never delete a key
    }


def _id_block_targets():
    return strs([P.id_block, P.id_auth, P.id_block_json])


def task_id_block():
    """Sign the SEV-SNP ID block for the expected measurement (ID key, author key) -> build/identity/."""
    if not CFG.identity.enabled:
        return {"actions": None, "doc": "Sign the SEV-SNP ID block (inactive: identity.enabled "
                "is false)"}
    return {
        "actions": [stages.ID_BLOCK.action(CFG, P)],
        "file_dep": strs([P.measurement]) + _identity_deps(),
        "targets": _id_block_targets(),
        "uptodate": [stages.ID_BLOCK.config_changed(CFG)],
        "clean": True,
    }


def task_libvirt_xml():
    """libvirt domains of the same VM: build/guest/domain.xml (SEV-SNP) + domain-emulated.xml."""
    return {
        "actions": [stages.LIBVIRT_XML.action(CFG, P)],
        "file_dep": strs([P.vm_config, templates.path(libvirt.TEMPLATE),
                          *libvirt.file_deps(CFG, P)]),
        "targets": strs([P.domain_xml, P.domain_emulated_xml]),
        "uptodate": [stages.LIBVIRT_XML.config_changed(CFG)],
        "clean": True,
    }


# ------------------------------------------------------------------ launch (hbos/launch/start.py)


def task_start():
    """Build what is missing, boot the guest (SNP, or emulated: NOT CONFIDENTIAL), wait healthy."""
    return {
        "actions": [action("hbos.launch.start:start_from_build", CFG, P, lock=(P.lock("vm"), "start"),
                           options="hbos.launch.start:options_from_params")],
        "params": START,
        # doit builds whatever produces these first; start itself always runs
        "file_dep": strs([P.verity_image, P.hash_tree, P.vm_config, P.measurement])
                    + (_id_block_targets() if CFG.identity.enabled else []),
        "uptodate": [False],
        "verbosity": 2,
    }


def task_stop():
    """Stop the running guest (QMP power-down/quit, then signals), clean its pidfile."""
    return {"actions": [action("hbos.launch.start:stop_vm", P, lock=(P.lock("vm"), "stop"))],
            "uptodate": [False], "verbosity": 2}


def task_status():
    """Is the guest running? pid, mode (SNP/emulated), accel, QMP state, health endpoint."""
    return {"actions": [action("hbos.launch.start:print_status", P)],
            "uptodate": [False], "verbosity": 2}


# ------------------------------------------------------------------ releases


def task_package_release():
    """Package image, hash tree, kernel, initrd, firmware, vm-config, measurement (+ signature, provenance) -> release.tar.gz."""
    return {
        "actions": [stages.PACKAGE_RELEASE.action(CFG, P)],
        "file_dep": strs([P.verity_image, P.hash_tree, P.vmlinuz, vmconfig.initrd_path(CFG, P),
                          P.vm_config, P.measurement]) + _ovmf_deps()
                    + (_id_block_targets() if CFG.identity.enabled else []),
        "targets": strs([P.release_manifest, P.release_tarball, P.release_tarball_sha256]),
        "uptodate": [stages.PACKAGE_RELEASE.config_changed(CFG)],
        "clean": True,
    }


def task_download_release():
    """Download --url [--sha256], verify every file and the launch digest, install as current."""
    return {
        "actions": [action("hbos.release.fetch:download_release", CFG, P,
                           lock=(P.lock("releases"), "download_release"))],
        "params": DOWNLOAD_RELEASE,
        "uptodate": [False],
        "verbosity": 2,
    }


def task_start_release():
    """Start the installed release (build/releases/current) through the launcher, same checks."""
    return {
        "actions": [action("hbos.release.layout:start_release", CFG, P,
                           lock=(P.lock("vm"), "start_release"),
                           options="hbos.launch.start:options_from_params")],
        "params": START,  # the same options as start
        "uptodate": [False],
        "verbosity": 2,
    }


def task_verify_report():
    """Verify an SNP attestation report against this build: doit verify_report --report FILE."""
    return {
        "actions": [action("hbos.cli.verify_report:verify_report", CFG, P)],
        "params": VERIFY_REPORT,
        "uptodate": [False],
        "verbosity": 2,
    }


# --- SNP host (hbos/host/check.py, hbos/host/setup.py) ---------------------------


def task_check_host():
    """Check this host can run SEV-SNP guests: CPU, BIOS, kernel, KVM, /dev/sev, firmware, QEMU."""
    return {"actions": [action("hbos.host.check:check_host", CFG, P)],
            "uptodate": [False], "verbosity": 2}


def task_setup_host():
    """Install the SNP host stack: Debian trixie's kernel + QEMU, or an AMDSEV snp-release bundle's (plan; --yes if no tty)."""
    return {
        "actions": [action("hbos.host.setup:setup_from_config", CFG, P)],
        "params": SETUP_HOST,
        "task_dep": ["snp_release"],
        "uptodate": [False],
        "verbosity": 2,
    }


guard_task_creators(globals())  # an HbosError while building the graph: one line, exit 2
