"""HyperBEAM OS build graph.

Reads as the pipeline: each stage task states only what differs (file_dep,
targets, extra arguments); `stage_task` adds the action, the up-to-date check
on exactly the config keys the stage reads (declared once in
hbos/tasks/table.py) and clean. The work lives in the hbos package
(docs/architecture.md is the map).

    doit list                  every stage, one line each
    doit measure               build what is needed and compute the measurement
    doit <task> profile=local  select a profile from config.yaml
    doit <task> config=my.yaml overlay your own settings
"""

from doit import get_var

# Graph time imports only the light modules that file_dep, targets and uptodate
# need; the rest (and sev-snp-measure's digest code, cryptography, jinja2,
# requests) is imported when an action runs: action("hbos.module:function", ...)
# (hbos/tasks/adapter.py).
from hbos.launch import libvirt
from hbos.paths import Paths
from hbos.stages import ao_cu, content, firmware, hb_node, hyperbeam, kernel, rootfs, vmconfig
from hbos.tasks import table
from hbos.tasks.adapter import action, guard_task_creators, late, load_config, stage_task, strs
from hbos.tasks.checker import SizeAwareChecker
from hbos.tasks.params import DOWNLOAD_RELEASE, SETUP_HOST, START, VERIFY_REPORT
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
    """Create the build directories, check host tools, fetch the SNP bundle if one is configured."""
    return {
        "actions": [action("hbos.tasks.adapter:make_dirs", P.build, P.downloads, P.logs, P.guest_dir),
                    action("hbos.stages.hosttools:check", CFG, install=get_var("install", "") == "yes")],
        "task_dep": ["snp_release"],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_snp_release():
    """Optional: download, verify (sha256) and unpack AMD's SNP bundle (forked kernels, QEMU, OVMF)."""
    return stage_task(table.SNP_BUNDLE, CFG, P, targets=[P.snp_bundle_manifest])


def task_kernel_deb():
    """Fetch the guest kernel .deb from Debian kernel.suite via a private apt in build/apt (follows metapackages)."""
    if CFG.kernel.source != "package":
        return {"actions": None, "doc": "(kernel.source is not 'package': nothing to fetch)"}
    return stage_task(table.KERNEL_DEB, CFG, P, targets=[P.kernel_deb])


def _kernel_deps():
    if CFG.kernel.source == "snp_release":
        return [P.snp_bundle_manifest]
    if CFG.kernel.source == "package":
        return [P.kernel_deb]
    return [kernel.deb_path(CFG, P)]


def task_kernel():
    """Unpack the guest kernel .deb: build/kernel/vmlinuz and its modules (depmod'ed)."""
    return stage_task(table.KERNEL, CFG, P, file_dep=_kernel_deps(),
                      targets=[P.vmlinuz, P.kernel_manifest])


def task_hb_node():
    """A stand-in for HyperBEAM: tools/hb_node as a relx release `hb` (Debian erlang + rebar3; content.source erlang)."""
    return stage_task(table.HB_NODE, CFG, P, file_dep=hb_node.source_files(),
                      targets=[P.hb_node_manifest], uptodate=[hb_node.tooling_unchanged(P)])


def task_hyperbeam():
    """HyperBEAM's release from the pinned sources, built offline in a trixie build root -> build/hyperbeam/."""
    if CFG.content.source != "hyperbeam":
        return {"actions": None, "doc": "HyperBEAM's release from the pinned sources "
                "(inactive: content.source is not 'hyperbeam')"}
    return stage_task(table.HYPERBEAM, CFG, P,
                      file_dep=[CFG.path(CFG.hyperbeam.pins), *hyperbeam.file_deps()],
                      targets=[P.hyperbeam_tar, P.hyperbeam_manifest])


def task_cu():
    """The AO compute unit from its pinned source and package-lock.json (npm ci in the build root) -> build/cu/."""
    if CFG.content.source != "hyperbeam" or not CFG.content.cu:
        return {"actions": None, "doc": "The AO compute unit from its pinned source "
                "(inactive: content.source is not 'hyperbeam' or content.cu is false)"}
    return stage_task(table.CU, CFG, P, file_dep=[CFG.path(CFG.hyperbeam.cu_pins), *ao_cu.file_deps()],
                      targets=[P.cu_tar, P.cu_manifest])


def task_content():
    """Guest content: HyperBEAM + AO CU from pinned sources or via Docker, a prebuilt dir/tarball, a stand-in node."""
    # docker: the uptodate callable re-resolves the git refs (git ls-remote) so a
    # moved branch rebuilds; dir: a stat fingerprint of content.path. The manifest
    # is rewritten only when the content changed (verity depends on it).
    return stage_task(table.CONTENT, CFG, P, file_dep=[*content.file_deps(CFG), *_ovmf_deps()],
                      targets=[P.content_manifest], uptodate=content.uptodate_checks(CFG, P))


# ------------------------------------------- guest image (hbos/stages/initramfs.py, rootfs.py, verity.py)


def _host_tool_deps(*programs):
    """The host binaries copied into an image: a new version rebuilds it."""
    return [p for p in (tools.find(prog) for prog in programs) if p]


def task_initramfs():
    """Build the reproducible initramfs (busybox, veritysetup, boot modules, /init) -> build/initramfs.cpio.gz."""
    if CFG.initramfs.path:
        return {"actions": None, "doc": "(initramfs.path is set: the prebuilt initrd is used)"}
    return stage_task(table.INITRAMFS, CFG, P,
                      file_dep=[P.kernel_manifest, templates.path("init.sh.j2"),
                                *_host_tool_deps("busybox", "veritysetup")],
                      targets=[P.initramfs, P.initramfs_manifest])


def task_base_rootfs():
    """Build the base Debian root with mmdebstrap (SOURCE_DATE_EPOCH) -> build/base/rootfs.tar."""
    return stage_task(table.BASE_ROOTFS, CFG, P, targets=[P.base_rootfs, P.base_rootfs_manifest])


def task_base_image():
    """Base root + kernel modules as a bootable ext4 qcow2 for debugging -> build/guest/base.qcow2."""
    return stage_task(table.BASE_IMAGE, CFG, P,
                      file_dep=[P.base_rootfs, P.base_rootfs_manifest, P.kernel_manifest,
                                templates.path(rootfs.SERIAL_LOGIN_TEMPLATE)],
                      targets=[P.base_image])


def task_verity():
    """Guest root (base + modules + content) as erofs/ext4 + dm-verity hash tree and root hash."""
    return stage_task(table.VERITY, CFG, P,
                      file_dep=[P.base_rootfs_manifest, P.kernel_manifest, P.content_manifest,
                                *sorted(templates.path("guest").glob("*.j2"))],
                      targets=[P.verity_image, P.hash_tree, P.roothash, P.verity_manifest])


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
    return stage_task(table.FIRMWARE, CFG, P, targets=[P.built_ovmf])


def _ovmf_deps():
    """file_dep for the firmware: the file itself, or what locates it."""
    if firmware.built_here(CFG):
        return [P.built_ovmf]
    if CFG.firmware.ovmf or CFG.firmware.source == "path":
        return [firmware.resolve(CFG, P)]
    return [P.snp_bundle_manifest]


def task_vm_config():
    """Write the VM definition build/guest/vm-config.toml (kernel, initrd, OVMF, cmdline, VM)."""
    return stage_task(table.VM_CONFIG, CFG, P,
                      kwargs={"ovmf": late("hbos.stages.firmware:resolve", CFG, P), "roothash_file": P.roothash},
                      file_dep=[P.vmlinuz, vmconfig.initrd_path(CFG, P), P.roothash, *_ovmf_deps()],
                      targets=[P.vm_config])


def _identity_deps():
    """The public keys when identity is enabled (their digests go into measurement.json)."""
    if not CFG.identity.enabled:
        return []
    from hbos.measure import identity  # cryptography: only for a build with a launch identity
    files = identity.key_files(CFG)
    return [files.public(identity.ID), files.public(identity.AUTHOR)]


def task_measure():
    """Compute the expected SEV-SNP launch measurement -> build/measurement.json (+ reference values, snp_trusted)."""
    return stage_task(table.MEASURE, CFG, P,
                      file_dep=[P.vm_config, P.vmlinuz, vmconfig.initrd_path(CFG, P),
                                P.content_manifest, templates.path("config.flat.j2"),
                                *_ovmf_deps(), *_identity_deps()],
                      targets=[P.measurement, P.reference_values, P.snp_trusted, P.host_data])


# ---------------------- launch identity (hbos/measure/identity.py, idblock.py), libvirt (hbos/launch/libvirt.py)


def task_keys():
    """Create the ID and author keys (ECDSA P-384, 0600) in identity.keys_dir; never overwrites."""
    return {
        "actions": [action("hbos.measure.identity:make_keys", CFG)],
        "uptodate": [False],
        "verbosity": 2,
        # no targets and no clean: doit must never delete a key
    }


def _id_block_targets():
    return [P.id_block, P.id_auth, P.id_block_json]


def task_id_block():
    """Sign the SEV-SNP ID block for the expected measurement (ID key, author key) -> build/identity/."""
    if not CFG.identity.enabled:
        return {"actions": None, "doc": "Sign the SEV-SNP ID block (inactive: identity.enabled "
                "is false)"}
    return stage_task(table.ID_BLOCK, CFG, P, file_dep=[P.measurement, *_identity_deps()],
                      targets=_id_block_targets())


def task_libvirt_xml():
    """libvirt domains of the same VM: build/guest/domain.xml (SEV-SNP) + domain-emulated.xml."""
    return stage_task(table.LIBVIRT_XML, CFG, P,
                      file_dep=[P.vm_config, templates.path(libvirt.TEMPLATE), *libvirt.file_deps(CFG, P)],
                      targets=[P.domain_xml, P.domain_emulated_xml])


# ------------------------------------------------------------------ launch (hbos/launch/start.py)


def task_start():
    """Build what is missing, boot the guest (SNP, or emulated: NOT CONFIDENTIAL), wait healthy."""
    return {
        "actions": [action("hbos.launch.start:start_from_build", CFG, P, lock=(P.lock("vm"), "start"),
                           options="hbos.launch.start:options_from_params")],
        "params": START,
        # doit builds whatever produces these first; start itself always runs
        "file_dep": strs([P.verity_image, P.hash_tree, P.vm_config, P.measurement,
                          *(_id_block_targets() if CFG.identity.enabled else [])]),
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


# ------------------------------------------- releases (hbos/release/), report verification (hbos/cli/verify_report.py)


def task_package_release():
    """Package image, hash tree, kernel, initrd, firmware, vm-config, measurement (+ signature, provenance) -> release.tar.gz."""
    return stage_task(table.PACKAGE_RELEASE, CFG, P,
                      file_dep=[P.verity_image, P.hash_tree, P.vmlinuz, vmconfig.initrd_path(CFG, P),
                                P.vm_config, P.measurement, *_ovmf_deps(),
                                *(_id_block_targets() if CFG.identity.enabled else [])],
                      targets=[P.release_manifest, P.release_tarball, P.release_tarball_sha256])


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
        "actions": [action("hbos.release.start:start_release", CFG, P,
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
    """Install the SNP host stack: Debian trixie's kernel + QEMU, or an SNP bundle's (plan; --yes if no tty)."""
    return {
        "actions": [action("hbos.host.setup:setup_from_config", CFG, P)],
        "params": SETUP_HOST,
        "task_dep": ["snp_release"],
        "uptodate": [False],
        "verbosity": 2,
    }


guard_task_creators(globals())  # an HbosError while building the graph: one line, exit 2
