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

from hbos import firmware, kernel, measure, snp_release, vmconfig
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
    from hbos import hosttools
    hosttools.check(CFG, install=install)


def task_init():
    """Create the build directories, check host tools, fetch the SNP release."""
    return {
        "actions": [act(_init_dirs), act(_check_tools, install=get_var("install", "") == "yes")],
        "task_dep": ["snp_release"],
        "uptodate": [False],
        "verbosity": 2,
    }


def task_snp_release():
    """Download, verify (sha256) and unpack the SNP release (host+guest kernel, QEMU, OVMF)."""
    return {
        "actions": [act(snp_release.fetch_release, CFG, P)],
        "targets": strs([P.snp_release_manifest]),
        "uptodate": [config_changed(CFG.slice("snp_release"))],
        "clean": True,
    }


def task_kernel_deb():
    """Fetch the guest kernel .deb from Debian (kernel.source: package; follows metapackages)."""
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


def _ovmf_deps():
    """file_dep for the firmware: the file itself, or what locates it."""
    if firmware.built_here(CFG):
        return strs([P.built_ovmf])
    if CFG.firmware.ovmf or CFG.firmware.source == "path":
        return strs([firmware.resolve(CFG, P)])
    return strs([P.snp_release_manifest])


def _write_vm_config():
    vmconfig.write(CFG, P, ovmf=firmware.resolve(CFG, P))


def task_vm_config():
    """Write the VM definition build/guest/vm-config.toml (kernel, initrd, OVMF, cmdline, VM)."""
    return {
        "actions": [act(_write_vm_config)],
        "file_dep": strs([P.vmlinuz, vmconfig.initrd_path(CFG, P)]) + _ovmf_deps(),
        "targets": strs([P.vm_config]),
        "uptodate": [config_changed(CFG.slice("vm", "cmdline", "debug", "firmware", "initramfs"))],
        "clean": True,
    }


def _measure():
    record = measure.measure_vm_config(P.vm_config, P.measurement,
                                       source_date_epoch=CFG.source_date_epoch)
    expected = record["expected_hash"] or f"none ({record['expected_hash_reason']})"
    print(f"measure: expected launch digest {expected}")


def task_measure():
    """Compute the expected SEV-SNP launch measurement -> build/measurement.json."""
    return {
        "actions": [act(_measure)],
        "file_dep": strs([P.vm_config, P.vmlinuz, vmconfig.initrd_path(CFG, P)]) + _ovmf_deps(),
        "targets": strs([P.measurement]),
        "uptodate": [config_changed(CFG.slice("source_date_epoch"))],
        "clean": True,
    }
