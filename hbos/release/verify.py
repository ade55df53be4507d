"""Verifying a release: refuse a directory unless it is the release its manifest says.

`verify_release` trusts nothing in the directory:

- the file set must equal the manifest's, every file must match its size and
  sha256 (`full=False` skips hashing the disk images, which dm-verity checks at
  run time);
- the VM definition may only name files of the release;
- the launch digest is recomputed from the kernel, initrd, firmware and VM
  definition and must equal the manifest's expected digest, measurement.json's
  (whose inputs and VM settings must also be the release's), and the pin when
  given; reference-values.json must be what measurement.json implies;
- a signature, when present, must verify (hbos.release.provenance); an ID block
  must be one the launcher would accept, signed by the same author key; the
  recorded HOST_DATA must be the sha256 of the recorded node configuration.

That makes a release self-consistent and tamper-evident; it is *authentic* only
when the tarball sha256 or the launch digest is pinned by someone the operator
trusts (`--sha256`, `release.sha256`, `release.launch_digest`), or its signer is
a trusted key (`provenance.check_trusted`).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from hbos.attest import reference
from hbos.errors import AttestationError, HbosError, ReleaseError
from hbos.measure import idblock, nodeconfig
from hbos.measure.digest import Firmware, LaunchInputs, inputs_from_files, launch_digest, parse_inputs
from hbos.release import layout, provenance
from hbos.stages import vmconfig
from hbos.util import limits
from hbos.util.fsutil import sha256_file

# ------------------------------------------------------------------ files and launch digest


def check_files(root: Path, manifest: layout.Manifest, *, full: bool = True) -> None:
    """The directory holds exactly the manifest's files, each matching it.

    full=False checks every size but skips hashing the disk images (layout.LARGE).
    """
    present: dict[str, os.stat_result] = {}
    for entry in os.scandir(root):
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise ReleaseError(f"release {root}: '{entry.name}' is not a regular file",
                               hint="a release holds only regular files; refusing it")
        present[entry.name] = st
    expected = {f.name for f in manifest.files} | {layout.MANIFEST}
    missing = sorted(expected - set(present))
    if missing:
        raise ReleaseError(f"release {root}: missing file(s): {', '.join(missing)}")
    extra = sorted(set(present) - expected - {layout.SIGNATURE})
    if extra:
        raise ReleaseError(f"release {root}: unexpected file(s) not in the manifest: "
                           f"{', '.join(extra)}")
    for f in manifest.files:
        size = present[f.name].st_size
        if size != f.size:
            raise ReleaseError(f"{f.name}: size {size} differs from the manifest's {f.size}",
                               hint="the file was altered or truncated; refusing this release")
        if not full and f.name in layout.LARGE:
            continue
        got = sha256_file(root / f.name)
        if got != f.sha256:
            raise ReleaseError(f"{f.name}: sha256 mismatch:\n  manifest {f.sha256}\n"
                               f"  file     {got}",
                               hint="the file was altered after packaging; refusing this release")


def release_vm_config(root: Path) -> dict[str, Any]:
    """The release's VM definition; its files must be the release's own."""
    path = root / layout.VM_CONFIG
    vm = vmconfig.parse(path, ReleaseError)   # bounded, typed, ranges checked
    for key, name in layout.VM_FILES.items():
        if vm.get(key) != name:
            raise ReleaseError(f"{path}: {key} must be {name!r} (a file of the release), "
                               f"got {vm.get(key)!r}",
                               hint="a release may only launch the files it ships")
    for key in ("kernel_cmdline", "vcpu_count", "vcpu_type", "guest_features"):
        if key not in vm:
            raise ReleaseError(f"{path}: '{key}' is missing")
    return vm


def launch_inputs(root: Path, vm: dict[str, Any]) -> LaunchInputs:
    return inputs_from_files(root / layout.KERNEL, root / layout.INITRD, vm["kernel_cmdline"],
                             vcpus=vm["vcpu_count"], vcpu_type=vm["vcpu_type"],
                             guest_features=vm["guest_features"],
                             vmm_type=vm.get("vmm_type", "QEMU"))


def check_measurement(root: Path, vm: dict[str, Any], inputs: LaunchInputs,
                      firmware: Firmware, expected: str) -> None:
    """measurement.json must describe these files and this VM, and promise `expected`."""
    path = root / layout.MEASUREMENT
    try:
        data = limits.load_json(path, limits.INPUTS_BYTES, "measurement", ReleaseError)
        if not isinstance(data, dict):
            raise ReleaseError(f"{path}: expected a JSON object")
        m_inputs, m_fw = parse_inputs(data, str(path))
    except HbosError as exc:
        raise ReleaseError(str(exc)) from None
    fields = {"kernel sha256": (m_inputs.kernel_sha256, inputs.kernel_sha256),
              "initrd sha256": (m_inputs.initrd_sha256, inputs.initrd_sha256),
              "cmdline sha256": (m_inputs.cmdline_sha256, inputs.cmdline_sha256),
              "vcpus": (m_inputs.vcpus, inputs.vcpus),
              "vcpu_type": (m_inputs.vcpu_type, inputs.vcpu_type),
              "guest_features": (m_inputs.guest_features, inputs.guest_features),
              "vmm_type": (m_inputs.vmm_type, inputs.vmm_type),
              "firmware launch hash": (m_fw, firmware.launch_hash),
              "expected_hash": ((data.get("expected_hash") or "").lower(), expected)}
    # Not in the digest but in the attestation report (policy, ids, TCB): the
    # VM definition must launch what measurement.json records.
    recorded_vm = data.get("vm")
    if not isinstance(recorded_vm, dict):
        recorded_vm = {}
    for key, value in recorded_vm.items():
        fields[f"vm.{key}"] = (value, vm.get(key))
    fields["debug"] = (bool(data.get("debug", False)), bool(vm.get("debug", False)))
    for label, (recorded, actual) in fields.items():
        if recorded != actual:
            raise ReleaseError(f"{layout.MEASUREMENT}: {label} {recorded} does not match the "
                               f"release ({actual})", hint="measurement.json was altered or is stale")


def check_reference_values(root: Path) -> None:
    """reference-values.json must say what measurement.json (already checked) implies."""
    try:
        shipped = reference.validate(json.loads(layout.read_small(root / layout.REFERENCE_VALUES)),
                                     layout.REFERENCE_VALUES)
        recorded = json.loads(layout.read_small(root / layout.MEASUREMENT))
        implied = reference.validate(reference.from_measurement(recorded, layout.MEASUREMENT),
                                     layout.MEASUREMENT)
    except (AttestationError, ValueError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"release {root}: {getattr(exc, 'message', exc)}") from None
    differ = sorted(k for k in set(shipped) | set(implied) if shipped.get(k) != implied.get(k))
    if differ:
        raise ReleaseError(f"{layout.REFERENCE_VALUES}: {', '.join(differ)} differ from what "
                           f"{layout.MEASUREMENT} implies",
                           hint="reference-values.json was altered; refusing this release")


def check_digest(root: Path, manifest: layout.Manifest, pinned: str = "") -> str:
    """Recompute the launch digest from the release's files; it must equal the
    manifest's expected digest, measurement.json's, and the pin when given."""
    vm = release_vm_config(root)
    try:
        inputs = launch_inputs(root, vm)
        firmware = Firmware(root / layout.FIRMWARE)
        digest = launch_digest(firmware, inputs)
    except HbosError as exc:
        raise ReleaseError(f"release {root}: cannot recompute the launch digest: "
                           f"{exc.message}") from None
    if digest != manifest.launch_digest:
        raise ReleaseError(
            "launch digest mismatch: the release's kernel, initrd, firmware and vm-config give\n"
            f"  {digest}\n  but the manifest expects\n  {manifest.launch_digest}",
            hint="an input was altered (and the manifest edited to hide it); refusing this release")
    check_measurement(root, vm, inputs, firmware, digest)
    check_reference_values(root)
    if pinned and digest != pinned.lower():
        raise ReleaseError(f"launch digest {digest} is not the pinned release.launch_digest "
                           f"{pinned.lower()}",
                           hint="this is a different release than the one you pinned")
    return digest


# ------------------------------------------------------------------ identity


def check_identity(root: Path, manifest: layout.Manifest) -> provenance.Signer | None:
    """The signature (if any), ID block (if any) and HOST_DATA agree with the release;
    returns the signer, None when unsigned."""
    signer = provenance.verify_signature(root)
    names = {f.name for f in manifest.files}
    try:
        record = json.loads(layout.read_small(root / layout.MEASUREMENT))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{layout.MEASUREMENT}: not valid JSON ({exc})") from None
    doc = record.get("node_configuration")
    if record.get("host_data") is not None and (
            not isinstance(doc, dict) or nodeconfig.host_data(doc) != record["host_data"]):
        raise ReleaseError(f"{layout.MEASUREMENT}: host_data is not the sha256 of its "
                           "node_configuration", hint="measurement.json was altered")
    if {layout.ID_BLOCK, layout.ID_AUTH} & names:
        if not {layout.ID_BLOCK, layout.ID_AUTH} <= names:
            raise ReleaseError("a release holds an ID block and its ID auth, or neither")
        try:
            vm = release_vm_config(root)
            info = idblock.check_for_launch(
                layout.read_small(root / layout.ID_BLOCK).decode(errors="replace").strip(),
                layout.read_small(root / layout.ID_AUTH).decode(errors="replace").strip(),
                record,
                int(str(vm.get("guest_policy", record.get("vm", {}).get("guest_policy"))), 0))
        except HbosError as exc:
            raise ReleaseError(f"{layout.ID_BLOCK}: {exc.message}") from None
        if signer is not None and signer.key_digest != info.author_key_digest:
            raise ReleaseError(f"the release is signed by {signer.key_digest} but its ID "
                               f"block's author key is {info.author_key_digest}")
    return signer


# ------------------------------------------------------------------ all of it


def verify_release(root: Path, *, pinned_digest: str = "", full: bool = True) -> layout.Manifest:
    """Refuse a release directory unless every check above passes."""
    manifest = layout.read_manifest(root)
    check_files(root, manifest, full=full)
    check_digest(root, manifest, pinned_digest)
    check_identity(root, manifest)
    return manifest
