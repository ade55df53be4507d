"""Releases: the layout of a release directory, its manifest, its verification,
and starting one.

A release is one build's launchable files plus the evidence to check them,
all at the top level of one directory (and of its tarball):

    guest.img  hash_tree.bin  vmlinuz  initrd.img  OVMF.fd
    vm-config.toml    the build's VM definition, file names relative to the release
    measurement.json  the launch inputs and expected digest (hbos.measure.digest)
    manifest.json     name, size, sha256 of every other file, the expected launch
                      digest, tool version, SOURCE_DATE_EPOCH and the guest ports

Verification (`verify_release`) trusts nothing in the directory: the file set
must equal the manifest's, every file must match its size and sha256, the
VM definition may only name files of the release, and the launch digest is
recomputed from the kernel, initrd, firmware and VM definition and must equal
the manifest's expected digest and measurement.json's. That makes a release
self-consistent and tamper-evident; it is *authentic* only when the tarball
sha256 or the launch digest is pinned by someone the operator trusts
(`--sha256`, `release.sha256`, `release.launch_digest`).

Packing lives in hbos.release.pack, fetching and installing in
hbos.release.fetch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hbos.errors import HbosError, ReleaseError
from hbos.measure.digest import Firmware, LaunchInputs, inputs_from_files, launch_digest, parse_inputs
from hbos.stages import vmconfig
from hbos.util import limits
from hbos.util.fsutil import sha256_file

FORMAT = "hbos-release/1"

IMAGE = "guest.img"
HASH_TREE = "hash_tree.bin"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
FIRMWARE = "OVMF.fd"
VM_CONFIG = "vm-config.toml"
MEASUREMENT = "measurement.json"
MANIFEST = "manifest.json"
REFERENCE_VALUES = "reference-values.json"  # what a verifier trusts (hbos.attest.reference)

# Every file a release holds besides the manifest, sorted (the tarball order).
PAYLOAD = tuple(sorted((IMAGE, HASH_TREE, KERNEL, INITRD, FIRMWARE, VM_CONFIG, MEASUREMENT,
                        REFERENCE_VALUES)))

# A signed release (identity.enabled, hbos.release.provenance) also holds these, listed
# in the manifest, and the author key's signature over the manifest beside it.
ID_BLOCK = "id_block.b64"
ID_AUTH = "id_auth.b64"
PROVENANCE = "provenance.json"
OPTIONAL = tuple(sorted((ID_BLOCK, ID_AUTH, PROVENANCE)))
SIGNATURE = "manifest.json.sig"

# The VM definition's file keys and the release file each must name.
VM_FILES = {"kernel_file": KERNEL, "initrd_file": INITRD, "ovmf_file": FIRMWARE}

# Too big to re-hash on every start; dm-verity checks them block by block at
# run time against the root hash on the (measured) kernel cmdline.
LARGE = (IMAGE, HASH_TREE)

SMALL_LIMIT = 1 << 20  # manifest.json, vm-config.toml, measurement.json

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX96 = re.compile(r"^[0-9a-f]{96}$")


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str
    tool_version: str
    source_date_epoch: int
    launch_digest: str
    files: tuple[FileEntry, ...]
    # The guest ports baked into the image (content services listen on them);
    # start_release forwards these, whatever the host's config says.
    ports: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "ports": dict(self.ports),
            "tool_version": self.tool_version,
            "source_date_epoch": self.source_date_epoch,
            "expected_launch_digest": self.launch_digest,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256}
                      for f in sorted(self.files, key=lambda f: f.name)],
        }

    @classmethod
    def parse(cls, data: Any, source: str = MANIFEST) -> "Manifest":
        if not isinstance(data, dict):
            raise ReleaseError(f"{source}: expected a JSON object")
        if data.get("format") != FORMAT:
            raise ReleaseError(f"{source}: format is {data.get('format')!r}, expected {FORMAT!r}",
                               hint="this release was made by an incompatible tool version")
        for key, typ in (("name", str), ("tool_version", str), ("source_date_epoch", int),
                         ("expected_launch_digest", str), ("files", list)):
            if not isinstance(data.get(key), typ) or isinstance(data.get(key), bool):
                raise ReleaseError(f"{source}: '{key}' is missing or not a {typ.__name__}")
        digest = data["expected_launch_digest"].lower()
        if not _HEX96.match(digest):
            raise ReleaseError(f"{source}: expected_launch_digest is not 96 hex digits")
        files = []
        for i, f in enumerate(data["files"]):
            if not (isinstance(f, dict) and isinstance(f.get("name"), str)
                    and isinstance(f.get("size"), int) and not isinstance(f.get("size"), bool)
                    and isinstance(f.get("sha256"), str) and _HEX64.match(f["sha256"].lower())):
                raise ReleaseError(f"{source}: files[{i}] needs a name, an integer size and "
                                   "a sha256 (64 hex digits)")
            files.append(FileEntry(f["name"], f["size"], f["sha256"].lower()))
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise ReleaseError(f"{source}: a file is listed more than once")
        if not set(PAYLOAD) <= set(names) <= set(PAYLOAD) | set(OPTIONAL):
            missing = sorted(set(PAYLOAD) - set(names))
            extra = sorted(set(names) - set(PAYLOAD) - set(OPTIONAL))
            raise ReleaseError(f"{source}: the file list is not a release's "
                               f"(missing: {', '.join(missing) or '-'}; "
                               f"unexpected: {', '.join(extra) or '-'})")
        ports = data.get("ports", {})
        if not (isinstance(ports, dict) and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535
                for v in ports.values())):
            raise ReleaseError(f"{source}: 'ports' must map names to TCP ports")
        return cls(name=data["name"], tool_version=data["tool_version"],
                   source_date_epoch=data["source_date_epoch"], launch_digest=digest,
                   files=tuple(sorted(files, key=lambda f: f.name)),
                   ports=tuple(sorted(ports.items())))


def read_small(path: Path, limit: int = SMALL_LIMIT) -> bytes:
    """A release's text file, refused above `limit` (never read a bomb into memory)."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ReleaseError(f"{path}: larger than {limit} bytes; not a release's {path.name}")
    return data


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise ReleaseError(f"release {root} has no {MANIFEST}")
    data = limits.load_json(path, limits.MANIFEST_BYTES, "release manifest", ReleaseError)
    return Manifest.parse(data, str(path))


def file_entry(path: Path, name: str | None = None) -> FileEntry:
    return FileEntry(name or path.name, path.stat().st_size, sha256_file(path))


# ------------------------------------------------------------------ checks


def check_files(root: Path, manifest: Manifest, *, full: bool = True) -> None:
    """The directory holds exactly the manifest's files, each matching it.

    full=False checks every size but skips hashing the LARGE files.
    """
    present: dict[str, os.stat_result] = {}
    for entry in os.scandir(root):
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise ReleaseError(f"release {root}: '{entry.name}' is not a regular file",
                               hint="a release holds only regular files; refusing it")
        present[entry.name] = st
    expected = {f.name for f in manifest.files} | {MANIFEST}
    missing = sorted(expected - set(present))
    if missing:
        raise ReleaseError(f"release {root}: missing file(s): {', '.join(missing)}")
    extra = sorted(set(present) - expected - {SIGNATURE})
    if extra:
        raise ReleaseError(f"release {root}: unexpected file(s) not in the manifest: "
                           f"{', '.join(extra)}")
    for f in manifest.files:
        size = present[f.name].st_size
        if size != f.size:
            raise ReleaseError(f"{f.name}: size {size} differs from the manifest's {f.size}",
                               hint="the file was altered or truncated; refusing this release")
        if not full and f.name in LARGE:
            continue
        got = sha256_file(root / f.name)
        if got != f.sha256:
            raise ReleaseError(f"{f.name}: sha256 mismatch:\n  manifest {f.sha256}\n"
                               f"  file     {got}",
                               hint="the file was altered after packaging; refusing this release")


def release_vm_config(root: Path) -> dict[str, Any]:
    """The release's VM definition; its files must be the release's own."""
    path = root / VM_CONFIG
    vm = vmconfig.parse(path, ReleaseError)   # bounded, typed, ranges checked
    for key, name in VM_FILES.items():
        if vm.get(key) != name:
            raise ReleaseError(f"{path}: {key} must be {name!r} (a file of the release), "
                               f"got {vm.get(key)!r}",
                               hint="a release may only launch the files it ships")
    for key in ("kernel_cmdline", "vcpu_count", "vcpu_type", "guest_features"):
        if key not in vm:
            raise ReleaseError(f"{path}: '{key}' is missing")
    return vm


def launch_inputs(root: Path, vm: dict[str, Any]) -> LaunchInputs:
    return inputs_from_files(root / KERNEL, root / INITRD, vm["kernel_cmdline"],
                             vcpus=vm["vcpu_count"], vcpu_type=vm["vcpu_type"],
                             guest_features=vm["guest_features"],
                             vmm_type=vm.get("vmm_type", "QEMU"))


def check_release_record(root: Path, vm: dict[str, Any], inputs: LaunchInputs,
                      firmware: Firmware, expected: str) -> None:
    """measurement.json must describe these files and this VM, and promise `expected`."""
    path = root / MEASUREMENT
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
            raise ReleaseError(f"{MEASUREMENT}: {label} {recorded} does not match the release "
                               f"({actual})", hint="measurement.json was altered or is stale")


def check_reference_values(root: Path) -> None:
    """reference-values.json must say what measurement.json (already checked) implies."""
    from hbos.attest import reference
    from hbos.errors import AttestationError
    try:
        shipped = reference.validate(json.loads(read_small(root / REFERENCE_VALUES)),
                                     REFERENCE_VALUES)
        implied = reference.validate(reference.from_measurement(
            json.loads(read_small(root / MEASUREMENT)), MEASUREMENT), MEASUREMENT)
    except (AttestationError, ValueError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"release {root}: {getattr(exc, 'message', exc)}") from None
    differ = sorted(k for k in set(shipped) | set(implied) if shipped.get(k) != implied.get(k))
    if differ:
        raise ReleaseError(f"{REFERENCE_VALUES}: {', '.join(differ)} differ from what "
                           f"{MEASUREMENT} implies",
                           hint="reference-values.json was altered; refusing this release")


def check_digest(root: Path, manifest: Manifest, pinned: str = "") -> str:
    """Recompute the launch digest from the release's files; it must equal the
    manifest's expected digest, measurement.json's, and the pin when given."""
    vm = release_vm_config(root)
    try:
        inputs = launch_inputs(root, vm)
        firmware = Firmware(root / FIRMWARE)
        digest = launch_digest(firmware, inputs)
    except HbosError as exc:
        raise ReleaseError(f"release {root}: cannot recompute the launch digest: "
                           f"{exc.message}") from None
    if digest != manifest.launch_digest:
        raise ReleaseError(
            "launch digest mismatch: the release's kernel, initrd, firmware and vm-config give\n"
            f"  {digest}\n  but the manifest expects\n  {manifest.launch_digest}",
            hint="an input was altered (and the manifest edited to hide it); refusing this release")
    check_release_record(root, vm, inputs, firmware, digest)
    check_reference_values(root)
    if pinned and digest != pinned.lower():
        raise ReleaseError(f"launch digest {digest} is not the pinned release.launch_digest "
                           f"{pinned.lower()}",
                           hint="this is a different release than the one you pinned")
    return digest


def verify_release(root: Path, *, pinned_digest: str = "", full: bool = True) -> Manifest:
    """Refuse a release directory unless every check above passes."""
    from hbos.release import provenance
    manifest = read_manifest(root)
    check_files(root, manifest, full=full)
    check_digest(root, manifest, pinned_digest)
    provenance.check_release(root, manifest)  # signature, ID block, HOST_DATA if present
    return manifest


# ------------------------------------------------------------------ start


def with_release_ports(cfg, manifest: Manifest):
    """cfg with the guest ports the release was built with."""
    known = {f.name for f in dataclasses.fields(cfg.ports)}
    ports = {k: v for k, v in manifest.ports if k in known}
    changed = {k: v for k, v in ports.items() if getattr(cfg.ports, k) != v}
    if not changed:
        return cfg
    print("start_release: using the release's ports "
          + ", ".join(f"{k} {v}" for k, v in sorted(changed.items())))
    return dataclasses.replace(cfg, ports=dataclasses.replace(cfg.ports, **changed))


def installed(paths) -> Path:
    """The verified release start_release launches (resolved once)."""
    current = paths.current_release
    if not current.exists():
        raise ReleaseError(f"no release installed at {current}",
                           hint="run: doit download_release --url URL --sha256 HEX")
    return current.resolve()


def start_release(cfg, paths, options) -> Any:
    """Start the installed release through the launcher.

    The files are re-checked cheaply first (every size, every hash except the
    disk images', and the launch digest); the launcher then runs the same
    consistency checks as `start`.
    """
    from hbos.launch import start as launch

    root = installed(paths)
    manifest = verify_release(root, pinned_digest=cfg.release.launch_digest, full=False)
    if cfg.release.trusted_keys:
        from hbos.release import provenance
        provenance.check_trusted(root, provenance.trusted_keys(cfg))
    print(f"start_release: {manifest.name} from {root}, expected launch digest "
          f"{manifest.launch_digest}")
    cfg = with_release_ports(cfg, manifest)
    return launch.start_vm(cfg, paths, vm_config=root / VM_CONFIG,
                           measurement=root / MEASUREMENT, image=root / IMAGE,
                           hash_tree=root / HASH_TREE, options=options,
                           identity_dir=root if (root / ID_BLOCK).exists() else None)
