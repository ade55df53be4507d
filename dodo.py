"""HyperBEAM OS build graph.

Each task declares its inputs (file_dep, and the exact config slice it reads
through config_changed) and its targets; the work lives in the hbos package.

    doit list                  every stage, one line each
    doit measure               build what is needed and compute the measurement
    doit <task> profile=local  select a profile from config.yaml
    doit <task> config=my.yaml overlay your own settings
"""

from doit import get_var
from doit.tools import config_changed

from hbos import (
    attest_cli,
    content,
    edk2,
    firmware,
    hb_release,
    host,
    host_setup,
    hostdata,
    hosttools,
    hyperbeam,
    idblock,
    identity,
    initramfs,
    kernel,
    launch,
    libvirt,
    lock,
    measure,
    reference,
    release,
    release_fetch,
    release_pack,
    rootfs,
    snp_release,
    templates,
    tools,
    verity,
    vmconfig,
)
from hbos.doit_support import SizeAwareChecker, act, load_config, strs
from hbos.paths import Paths

CFG = load_config(get_var)
P = Paths.from_config(CFG)
P.build.mkdir(parents=True, exist_ok=True)

DOIT_CONFIG = {
    "dep_file": str(P.dep_file),
    "backend": "sqlite3",
    "check_file_uptodate": SizeAwareChecker,
    "default_tasks": ["measure"],
    "verbosity": 2,
}


def _init_dirs():
    for d in (P.build, P.downloads, P.logs, P.guest_dir):
        d.mkdir(parents=True, exist_ok=True)


def _check_tools(install=False):
    hosttools.check(CFG, install=install)


def task_init():
    """Create the build directories, check host tools, fetch the SNP release if one is configured."""
    return {
        "actions": [act(_init_dirs), act(_check_tools, install=get_var("install", "") == "yes")],
        "task_dep": ["snp_release"],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_snp_release():
    """Optional: download, verify (sha256) and unpack an SNP release (AMD forks: kernels, QEMU, OVMF)."""
    return {
        "actions": [act(snp_release.fetch_release, CFG, P)],
        "targets": strs([P.snp_release_manifest]),
        "uptodate": [config_changed(CFG.slice("snp_release"))],
        "clean": True,
    }


def task_kernel_deb():
    """Fetch the guest kernel .deb from Debian kernel.suite via a private apt in build/apt (follows metapackages)."""
    if CFG.kernel.source != "package":
        return {"actions": None, "doc": "(kernel.source is not 'package': nothing to fetch)"}
    return {
        "actions": [act(kernel.fetch_package, CFG, P)],
        "targets": strs([P.kernel_deb]),
        "uptodate": [config_changed(CFG.slice("kernel"))],
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
        "actions": [act(kernel.unpack, CFG, P)],
        "file_dep": _kernel_deps(),
        "targets": strs([P.vmlinuz, P.kernel_manifest]),
        "uptodate": [config_changed(CFG.slice("kernel"))],
        "clean": True,
    }


def task_hb_release():
    """Local payload: tools/hb_node as a relx release `hb` (Debian erlang + rebar3; content.source erlang)."""
    return {
        "actions": [act(hb_release.build, CFG, P)],
        "file_dep": strs(hb_release.source_files()),
        "targets": strs([P.hb_release_manifest]),
        "uptodate": [config_changed(CFG.slice("source_date_epoch")),
                     hb_release.tooling_unchanged(P)],
        "clean": True,
    }


def task_content():
    """Guest content (HyperBEAM + AO CU via Docker, a prebuilt dir/tarball, the local Erlang release, or the sample node)."""
    # docker: the uptodate callable re-resolves the git refs (git ls-remote) so a
    # moved branch rebuilds; dir: a stat fingerprint of content.path. The manifest
    # is rewritten only when the content changed (verity depends on it).
    return {
        "actions": [act(content.build, CFG, P)],
        "file_dep": strs(content.file_deps(CFG)),
        "targets": strs([P.content_manifest]),
        "uptodate": [config_changed(content.config_slice(CFG))] + content.uptodate_checks(CFG, P),
        "clean": True,
    }


# ------------------------------------------- guest image (hbos/initramfs.py, rootfs.py, verity.py)


def _host_tool_deps(*programs):
    """The host binaries copied into an image: a new version rebuilds it."""
    return strs([p for p in (tools.find(prog) for prog in programs) if p])


def task_initramfs():
    """Build the reproducible initramfs (busybox, veritysetup, boot modules, /init) -> build/initramfs.cpio.gz."""
    if CFG.initramfs.path:
        return {"actions": None, "doc": "(initramfs.path is set: the prebuilt initrd is used)"}
    return {
        "actions": [act(initramfs.build, CFG, P)],
        "file_dep": strs([P.kernel_manifest, templates.path("init.sh.j2")])
                    + _host_tool_deps("busybox", "veritysetup"),
        "targets": strs([P.initramfs, P.initramfs_manifest]),
        "uptodate": [config_changed(CFG.slice("initramfs", "image", "source_date_epoch"))],
        "clean": True,
    }


def task_base_rootfs():
    """Build the base Debian root with mmdebstrap (SOURCE_DATE_EPOCH) -> build/base/rootfs.tar."""
    return {
        "actions": [act(rootfs.build, CFG, P)],
        "targets": strs([P.base_rootfs, P.base_rootfs_manifest]),
        "uptodate": [rootfs.up_to_date(CFG, P)],
        "clean": True,
    }


def task_base_image():
    """Base root + kernel modules as a bootable ext4 qcow2 for debugging -> build/guest/base.qcow2."""
    return {
        "actions": [act(rootfs.build_image, CFG, P)],
        "file_dep": strs([P.base_rootfs, P.base_rootfs_manifest, P.kernel_manifest,
                          templates.path(rootfs.SERIAL_LOGIN_TEMPLATE)]),
        "targets": strs([P.base_image]),
        "uptodate": [config_changed(CFG.slice("source_date_epoch"))],
        "clean": True,
    }


def task_verity():
    """Guest root (base + modules + content) as erofs/ext4 + dm-verity hash tree and root hash."""
    return {
        "actions": [act(verity.build, CFG, P)],
        "file_dep": strs([P.base_rootfs_manifest, P.kernel_manifest, P.content_manifest,
                          *sorted(templates.path("guest").glob("*.j2"))]),
        "targets": strs([P.verity_image, P.hash_tree, P.roothash, P.verity_manifest]),
        "uptodate": [config_changed(CFG.slice("image", "debug", "source_date_epoch"))],
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
        "actions": [act(edk2.build_ovmf, CFG, P)],
        "targets": strs([P.built_ovmf]),
        "uptodate": [config_changed(CFG.slice("firmware", "source_date_epoch"))],
        "clean": True,
    }


def _ovmf_deps():
    """file_dep for the firmware: the file itself, or what locates it."""
    if firmware.built_here(CFG):
        return strs([P.built_ovmf])
    if CFG.firmware.ovmf or CFG.firmware.source == "path":
        return strs([firmware.resolve(CFG, P)])
    return strs([P.snp_release_manifest])


def _write_vm_config():
    vmconfig.write(CFG, P, ovmf=firmware.resolve(CFG, P), roothash_file=P.roothash)


def task_vm_config():
    """Write the VM definition build/guest/vm-config.toml (kernel, initrd, OVMF, cmdline, VM)."""
    return {
        "actions": [act(_write_vm_config)],
        "file_dep": strs([P.vmlinuz, vmconfig.initrd_path(CFG, P), P.roothash]) + _ovmf_deps(),
        "targets": strs([P.vm_config]),
        "uptodate": [config_changed(CFG.slice("vm", "cmdline", "debug", "firmware", "initramfs"))],
        "clean": True,
    }


def _measure():
    record = measure.measure_vm_config(P.vm_config, P.measurement,
                                       source_date_epoch=CFG.source_date_epoch,
                                       extra=lambda rec: identity.measurement_fields(CFG, rec))
    expected = record["expected_hash"] or f"none ({record['expected_hash_reason']})"
    hostdata.write_b64(P.host_data, record["host_data"])
    reference.write(P.reference_values, record, str(P.measurement))
    hyperbeam.write_trusted(P.snp_trusted, record)
    print(f"measure: expected launch digest {expected}\n"
          f"  HOST_DATA (node configuration) {record['host_data']}")


def _identity_deps():
    """The public keys when identity is enabled (their digests go into measurement.json)."""
    if not CFG.identity.enabled:
        return []
    files = identity.key_files(CFG)
    return strs([files.public(identity.ID), files.public(identity.AUTHOR)])


def task_measure():
    """Compute the expected SEV-SNP launch measurement -> build/measurement.json (+ reference values, snp_trusted)."""
    return {
        "actions": [act(_measure)],
        "file_dep": strs([P.vm_config, P.vmlinuz, vmconfig.initrd_path(CFG, P)]) + _ovmf_deps()
                    + _identity_deps(),
        "targets": strs([P.measurement, P.reference_values, P.snp_trusted, P.host_data]),
        "uptodate": [config_changed({**CFG.slice("source_date_epoch", "identity"),
                                     "node_configuration": hostdata.fingerprint(CFG)})],
        "clean": True,
    }


# ------------------------------------------------- launch identity (hbos/identity.py, idblock.py)


def task_keys():
    """Create the ID and author keys (ECDSA P-384, 0600) in identity.keys_dir; never overwrites."""
    return {
        "actions": [act(identity.make_keys, CFG)],
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
        "actions": [act(idblock.write_id_block, CFG, P)],
        "file_dep": strs([P.measurement]) + _identity_deps(),
        "targets": _id_block_targets(),
        "uptodate": [config_changed(CFG.slice("identity"))],
        "clean": True,
    }


def task_libvirt_xml():
    """libvirt domains of the same VM: build/guest/domain.xml (SEV-SNP) + domain-emulated.xml."""
    return {
        "actions": [act(libvirt.write, CFG, P)],
        "file_dep": strs([P.vm_config, templates.path(libvirt.TEMPLATE),
                          *libvirt.file_deps(CFG, P)]),
        "targets": strs([P.domain_xml, P.domain_emulated_xml]),
        "uptodate": [config_changed(libvirt.config_slice(CFG))],
        "clean": True,
    }


# ------------------------------------------------------------------ launch (hbos/launch.py)


def _start(data_disk, self_url, peer_url, no_auto, dry_run=False, mode="", qemu=""):
    opts = launch.options_from_params(data_disk, self_url, peer_url, no_auto,
                                      dry_run, mode, qemu)
    (action,) = act(lock.guarded(P.lock("vm"), "start", launch.start_from_build), CFG, P, opts)
    return action()


def task_start():
    """Build what is missing, boot the guest (SNP, or emulated: NOT CONFIDENTIAL), wait healthy."""
    return {
        "actions": [_start],
        "params": launch.DOIT_PARAMS,
        # doit builds whatever produces these first; start itself always runs
        "file_dep": strs([P.verity_image, P.hash_tree, P.vm_config, P.measurement])
                    + (_id_block_targets() if CFG.identity.enabled else []),
        "uptodate": [False],
        "verbosity": 2,
    }


def _stop():
    with lock.hold(P.lock("vm"), "stop"):
        launch.stop_vm(P)


def task_stop():
    """Stop the running guest (QMP power-down/quit, then signals), clean its pidfile."""
    return {"actions": [act(_stop)], "uptodate": [False], "verbosity": 2}


def _status():
    launch.print_status(P)


def task_status():
    """Is the guest running? pid, mode (SNP/emulated), accel, QMP state, health endpoint."""
    return {"actions": [act(_status)], "uptodate": [False], "verbosity": 2}


# ------------------------------------------------------------------ releases


def task_package_release():
    """Package image, hash tree, kernel, initrd, firmware, vm-config, measurement (+ signature, provenance) -> release.tar.gz."""
    return {
        "actions": [act(release_pack.package_release, CFG, P)],
        "file_dep": strs([P.verity_image, P.hash_tree, P.vmlinuz, vmconfig.initrd_path(CFG, P),
                          P.vm_config, P.measurement]) + _ovmf_deps()
                    + (_id_block_targets() if CFG.identity.enabled else []),
        "targets": strs([P.release_manifest, P.release_tarball, P.release_tarball_sha256]),
        "uptodate": [config_changed({"name": CFG.release.name,
                                     "compresslevel": CFG.release.compresslevel,
                                     **CFG.slice("source_date_epoch", "identity")})],
        "clean": True,
    }


_RELEASE_PARAMS = [
    {"name": "url", "long": "url", "type": str, "default": "",
     "help": "release tarball URL, file:// URL or path (default: release.url)"},
    {"name": "sha256", "long": "sha256", "type": str, "default": "",
     "help": "expected tarball sha256 (default: release.sha256)"},
    {"name": "trusted_key", "long": "trusted-key", "type": str, "default": "",
     "help": "author public key (PEM): refuse a release not signed by it "
             "(default: release.trusted_keys)"},
]


def _download_release(url, sha256, trusted_key):
    (action,) = act(lock.guarded(P.lock("releases"), "download_release",
                                 release_fetch.download_release), CFG, P, url, sha256, trusted_key)
    return action()


def task_download_release():
    """Download --url [--sha256], verify every file and the launch digest, install as current."""
    return {
        "actions": [_download_release],
        "params": _RELEASE_PARAMS,
        "uptodate": [False],
        "verbosity": 2,
    }


def _start_release(data_disk, self_url, peer_url, no_auto, dry_run=False, mode="", qemu=""):
    opts = launch.options_from_params(data_disk, self_url, peer_url, no_auto,
                                      dry_run, mode, qemu)
    (action,) = act(lock.guarded(P.lock("vm"), "start_release", release.start_release),
                    CFG, P, opts)
    return action()


def task_start_release():
    """Start the installed release (build/releases/current) through the launcher, same checks."""
    return {
        "actions": [_start_release],
        "params": launch.DOIT_PARAMS,  # the same options as start
        "uptodate": [False],
        "verbosity": 2,
    }


def task_verify_report():
    """Verify an SNP attestation report against this build: doit verify_report --report FILE."""
    return {
        "actions": [(attest_cli.doit_action(CFG, P),)],
        "params": attest_cli.DOIT_PARAMS,
        "uptodate": [False],
        "verbosity": 2,
    }


# --- SNP host (hbos/host.py, hbos/host_setup.py) ---------------------------


def task_check_host():
    """Check this host can run SEV-SNP guests: CPU, BIOS, kernel, KVM, /dev/sev, firmware, QEMU."""
    return {"actions": [act(host.check_host, CFG, P)], "uptodate": [False], "verbosity": 2}


def task_setup_host():
    """Install the SNP host stack: Debian trixie's kernel + QEMU, or an SNP release's (plan; --yes if no tty)."""
    return {
        "actions": [(host_setup.task_action(CFG, P),)],
        "params": [{"name": "yes", "long": "yes", "type": bool, "default": False,
                    "help": "install without asking (required when stdin is not a terminal)"}],
        "task_dep": ["snp_release"],
        "uptodate": [False],
        "verbosity": 2,
    }
