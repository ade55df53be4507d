"""The measure stage: measurement.json and the files that follow from it.

measurement.json (the launch inputs and expected launch digest of the VM that
vm-config.toml describes, identity digests, node configuration),
host_data.b64 for a launch that takes HOST_DATA as a file (the libvirt domain;
`doit start` recomputes it from measurement.json), reference-values.json for
verifiers and snp_trusted.json for HyperBEAM peers. write_measurement also
measures a release's own vm-config (hbos.release.pack).

measurement.json also says whether the image's HyperBEAM has its SNP NIF
(`snp_nif`: dev_snp_nif, which reads attestation reports from /dev/sev-guest),
as the content manifest says (its top-level `snp_nif`; a manifest without it,
or no manifest, is false): hbos.launch.start refuses an SEV-SNP start without it
unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from hbos import __version__
from hbos.attest import peer, reference
from hbos.errors import MeasurementError
from hbos.measure import digest, identity, nodeconfig
from hbos.stages import vmconfig
from hbos.util import limits
from hbos.util.fsutil import sha256_file, write_json

# the content manifest lists every file of the content (a HyperBEAM release: thousands)
CONTENT_MANIFEST_BYTES = 64 * limits.MIB


def write(cfg, paths) -> None:
    record = write_measurement(paths.vm_config, paths.measurement,
                               source_date_epoch=cfg.source_date_epoch,
                               extra=lambda rec: identity.measurement_fields(cfg, rec),
                               content_manifest=paths.content_manifest)
    expected = record["expected_hash"] or f"none ({record['expected_hash_reason']})"
    nodeconfig.write_b64(paths.host_data, record["host_data"])
    reference.write(paths.reference_values, record, str(paths.measurement))
    peer.write_trusted(paths.snp_trusted, record)
    nif = ("yes" if record["snp_nif"] else
           "NO: the node cannot produce attestation reports; an SEV-SNP start is refused "
           "without --allow-no-snp-nif")
    print(f"measure: expected launch digest {expected}\n"
          f"  HOST_DATA (node configuration) {record['host_data']}\n"
          f"  HyperBEAM SNP NIF (dev_snp_nif): {nif}")


def snp_nif(content_manifest: Path | None) -> bool:
    """Does the content carry HyperBEAM's SNP NIF? The manifest's top-level
    `snp_nif` when it is true; false without the key or the manifest."""
    if content_manifest is None or not content_manifest.exists():
        return False
    data = limits.load_json(content_manifest, CONTENT_MANIFEST_BYTES, "content manifest",
                            MeasurementError)
    return isinstance(data, dict) and data.get("snp_nif") is True


# ------------------------------------------------------- measurement.json


def write_measurement(vm_config: Path, out: Path, *, source_date_epoch: int | None = None,
                      extra: Callable[[dict], dict] | None = None,
                      content_manifest: Path | None = None) -> dict[str, Any]:
    """Compute the expected digest for a vm-config.toml and write measurement.json.

    When the firmware file does not exist, expected_hash is null and
    `expected_hash_reason` says why; nothing is invented. `extra(record)`
    returns fields to add (the launch identity: hbos.measure.identity.measurement_fields;
    a release carries the build's `snp_nif` that way). `snp_nif` comes from
    `content_manifest` (none: false).
    """
    vm = vmconfig.load(vm_config)
    kernel, initrd, ovmf = Path(vm["kernel_file"]), Path(vm["initrd_file"]), Path(vm["ovmf_file"])
    inputs = digest.inputs_from_files(kernel, initrd, vm["kernel_cmdline"], vcpus=vm["vcpu_count"],
                                      vcpu_type=vm["vcpu_type"], guest_features=vm["guest_features"],
                                      vmm_type=vm.get("vmm_type", "QEMU"))
    record: dict[str, Any]
    if ovmf.is_file():
        firmware = digest.Firmware(ovmf)
        record = digest.inputs_record(inputs, firmware, digest.launch_digest(firmware, inputs))
        record["files"] = {"firmware": {"path": str(ovmf), "sha256": sha256_file(ovmf)}}
    else:
        record = digest.inputs_record(inputs, None, None)
        record["expected_hash_reason"] = (
            f"firmware {ovmf} is not available, so the launch digest cannot be computed "
            "(an invented value would be worse than none)")
        record["files"] = {"firmware": {"path": str(ovmf), "sha256": None}}
    record["files"].update({
        "kernel": {"path": str(kernel), "sha256": inputs.kernel_sha256},
        "initrd": {"path": str(initrd), "sha256": inputs.initrd_sha256},
    })
    record.update({
        "vcpu_type_name": inputs.vcpu_type,
        "vmm_type_name": inputs.vmm_type,
        "cmdline": vm["kernel_cmdline"],
        "vm": {k: vm[k] for k in ("host_cpu_family", "vcpu_count", "vcpu_type", "guest_features",
                                  "platform_info", "guest_policy", "family_id", "image_id",
                                  "memory_mib", "min_commited_tcb") if k in vm},
        "debug": bool(vm.get("debug", False)),
        "snp_nif": snp_nif(content_manifest),
        "tool_version": __version__,
    })
    if source_date_epoch is not None:
        record["source_date_epoch"] = source_date_epoch
    if extra is not None:
        record.update(extra(record))
    write_json(out, record)
    return record
