"""Expected SEV-SNP launch measurement, and measurement.json's launch inputs.

Computed through hbos.measure.sevsnp (sev-snp-measure) either from files (a
build) or from precomputed component hashes (a verifier holding only
measurement.json / inputs.json and the firmware). The firmware part (the OVMF
pages, SNP ABI spec "SNP_LAUNCH_UPDATE" of PAGE_TYPE_NORMAL) is computed once
and used as the GCTX seed, which is what makes searching many launch
parameters fast (see hbos.measure.explain).

The direct-boot hash table (kernel, initrd, cmdline sha256, in that GUIDed
layout QEMU writes) is measured into the SNP_KERNEL_HASHES page; the VMSA of
each vCPU then depends on vcpu_type (its CPUID signature) and guest_features
(SEV_FEATURES).

measurement.json's fields are read and checked here (parse_inputs,
load_inputs); the measure stage (hbos.stages.measure) writes the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from hbos.errors import MeasurementError
from hbos.measure import sevsnp
from hbos.util import limits
from hbos.util.fsutil import sha256_file

# The Rust `sev` crate's integer enums, as the original tool's digest_calc
# wrote them into inputs.json. CpuType follows QEMU's builtin_x86_defs order.
RUST_CPU_TYPES = ["EPYC", "EPYC-v1", "EPYC-v2", "EPYC-IBPB", "EPYC-v3", "EPYC-v4",
                  "EPYC-Rome", "EPYC-Rome-v1", "EPYC-Rome-v2", "EPYC-Rome-v3",
                  "EPYC-Milan", "EPYC-Milan-v1", "EPYC-Milan-v2",
                  "EPYC-Genoa", "EPYC-Genoa-v1"]
RUST_VMM_TYPES = {1: "QEMU", 2: "ec2"}

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def cmdline_sha256(cmdline: str) -> str:
    """sha256 of the cmdline as QEMU hashes it: the text plus a NUL byte."""
    return hashlib.sha256(cmdline.encode() + b"\0").hexdigest()


@dataclass(frozen=True)
class LaunchInputs:
    """Everything besides the firmware that the launch digest depends on."""
    kernel_sha256: str
    initrd_sha256: str
    cmdline_sha256: str
    vcpus: int
    vcpu_type: str
    guest_features: int
    vmm_type: str = "QEMU"

    def replace(self, **changes: Any) -> "LaunchInputs":
        return dataclasses.replace(self, **changes)

    def kernel_hashes(self) -> sevsnp.KernelHashes:
        """The direct-boot hash table's contents (kernel, initrd, cmdline)."""
        return sevsnp.KernelHashes(bytes.fromhex(self.kernel_sha256),
                                   bytes.fromhex(self.initrd_sha256),
                                   bytes.fromhex(self.cmdline_sha256))


class Firmware:
    """An OVMF image's SEV metadata and its launch hash (computed once)."""

    def __init__(self, path: str | os.PathLike, launch_hash: str | None = None) -> None:
        self.path = Path(path)
        # bounded: a directory, a device or a huge file is refused before the library reads it
        limits.read_bytes(self.path, limits.OVMF_BYTES, "firmware", MeasurementError)
        try:
            self.image = sevsnp.read_ovmf(self.path)
        except FileNotFoundError:
            raise MeasurementError(f"firmware {self.path} does not exist") from None
        except Exception as exc:  # the library raises bare errors on bad files
            raise MeasurementError(
                f"firmware {self.path} is not an OVMF image with SEV metadata ({exc})") from None
        if not self.image.layout.sections:
            raise MeasurementError(
                f"firmware {self.path} is not an OVMF image with SEV metadata "
                "(no SEV metadata sections in its footer)")
        if not self.image.layout.has_section("SNP_KERNEL_HASHES"):
            raise MeasurementError(
                f"firmware {self.path} has no SNP_KERNEL_HASHES metadata section, so it cannot "
                "boot a measured kernel",
                hint="use an OVMF built from OvmfPkg/AmdSev/AmdSevX64.dsc, not OvmfPkgX64.dsc")
        self._given_hash = launch_hash

    @cached_property
    def launch_hash(self) -> str:
        """The GCTX digest after measuring the firmware pages (hex, 48 bytes)."""
        if self._given_hash:
            return self._given_hash
        return sevsnp.firmware_digest(self.image).hex()


def launch_digest(firmware: Firmware, inputs: LaunchInputs) -> str:
    """The expected MEASUREMENT field of an attestation report (hex, 48 bytes)."""
    if inputs.vcpu_type not in sevsnp.CPU_SIGNATURES:
        raise MeasurementError(f"unknown vCPU type {inputs.vcpu_type!r}")
    limits.check_range(limits.VCPUS, inputs.vcpus, "vcpus", "launch inputs", MeasurementError)
    limits.check_range(limits.GUEST_FEATURES, inputs.guest_features, "guest_features",
                       "launch inputs", MeasurementError)
    return sevsnp.launch_digest(
        bytes.fromhex(firmware.launch_hash), firmware.image.layout, inputs.kernel_hashes(),
        vcpus=inputs.vcpus, cpu_signature=sevsnp.CPU_SIGNATURES[inputs.vcpu_type],
        guest_features=inputs.guest_features, vmm_type=inputs.vmm_type).hex()


def inputs_from_files(kernel: Path, initrd: Path | None, cmdline: str, *, vcpus: int,
                      vcpu_type: str, guest_features: int, vmm_type: str = "QEMU") -> LaunchInputs:
    for label, p in (("kernel", kernel), ("initrd", initrd)):
        if p is not None and not Path(p).is_file():
            raise MeasurementError(f"{label} {p} does not exist")
    return LaunchInputs(kernel_sha256=sha256_file(kernel),
                        initrd_sha256=sha256_file(initrd) if initrd else EMPTY_SHA256,
                        cmdline_sha256=cmdline_sha256(cmdline), vcpus=vcpus,
                        vcpu_type=vcpu_type, guest_features=guest_features, vmm_type=vmm_type)


# ------------------------------------------------------- measurement.json


def inputs_record(inputs: LaunchInputs, firmware: Firmware | None,
                  expected: str | None) -> dict[str, Any]:
    """The original tool's inputs.json fields (Rust enum integers included); `firmware`
    None: no firmware file, so no firmware hash and no expected digest."""
    return {
        "kernel": inputs.kernel_sha256,
        "initrd": inputs.initrd_sha256,
        "append": inputs.cmdline_sha256,
        "firmware": firmware.launch_hash if firmware is not None else None,
        "vcpus": inputs.vcpus,
        "vcpu_type": RUST_CPU_TYPES.index(inputs.vcpu_type)
        if inputs.vcpu_type in RUST_CPU_TYPES else inputs.vcpu_type,
        "vmm_type": {v: k for k, v in RUST_VMM_TYPES.items()}[inputs.vmm_type],
        "guest_features": inputs.guest_features,
        "expected_hash": expected,
    }


def _hex(value: Any, key: str, size: int, source: str) -> str:
    if not isinstance(value, str):
        raise MeasurementError(f"{source}: '{key}' must be a hex string, got {value!r}")
    text = value.lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise MeasurementError(f"{source}: '{key}' is not hex: {value!r}") from None
    if len(raw) != size:
        raise MeasurementError(f"{source}: '{key}' must be {size} bytes, got {len(raw)}")
    return text


def _int(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool):
        raise MeasurementError(f"{source}: '{key}' must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise MeasurementError(f"{source}: '{key}' must be an integer, got {value!r}")


def parse_inputs(data: dict[str, Any], source: str = "inputs") -> tuple[LaunchInputs, str | None]:
    """LaunchInputs and the firmware hash from measurement.json or inputs.json.

    Accepts vcpu_type / vmm_type as names or as the Rust sev crate's integers.
    """
    missing = [k for k in ("kernel", "initrd", "append", "vcpus", "vcpu_type",
                           "guest_features") if k not in data]
    if missing:
        raise MeasurementError(f"{source}: missing field(s): {', '.join(missing)}")
    vcpu_type = data["vcpu_type"]
    if isinstance(vcpu_type, int) and not isinstance(vcpu_type, bool):
        if not 0 <= vcpu_type < len(RUST_CPU_TYPES):
            raise MeasurementError(f"{source}: unknown vcpu_type enum value {vcpu_type}")
        vcpu_type = RUST_CPU_TYPES[vcpu_type]
    elif not isinstance(vcpu_type, str) or vcpu_type not in sevsnp.CPU_SIGNATURES:
        raise MeasurementError(f"{source}: unknown vcpu_type {vcpu_type!r}")
    vmm = data.get("vmm_type", "QEMU")
    if isinstance(vmm, int) and not isinstance(vmm, bool):
        if vmm not in RUST_VMM_TYPES:
            raise MeasurementError(f"{source}: unsupported vmm_type enum value {vmm}")
        vmm = RUST_VMM_TYPES[vmm]
    elif not isinstance(vmm, str) or vmm not in RUST_VMM_TYPES.values():
        raise MeasurementError(f"{source}: unsupported vmm_type {vmm!r}")
    fw = data.get("firmware")
    inputs = LaunchInputs(
        kernel_sha256=_hex(data["kernel"], "kernel", 32, source),
        initrd_sha256=_hex(data["initrd"], "initrd", 32, source),
        cmdline_sha256=_hex(data["append"], "append", 32, source),
        vcpus=limits.check_range(limits.VCPUS, _int(data["vcpus"], "vcpus", source),
                                 "vcpus", source, MeasurementError),
        vcpu_type=vcpu_type,
        guest_features=limits.check_range(
            limits.GUEST_FEATURES, _int(data["guest_features"], "guest_features", source),
            "guest_features", source, MeasurementError),
        vmm_type=str(vmm))
    check_record_vm(data, source)
    check_record_fields(data, source)
    return inputs, (_hex(fw, "firmware", 48, source) if fw else None)


# measurement.json's "vm" record: key -> (type, range or None). Not in the
# digest, but launched and reported, so a wrong type is refused here.
RECORD_VM: dict[str, tuple[type, limits.Range | None]] = {
    "host_cpu_family": (str, None), "vcpu_count": (int, limits.VCPUS),
    "vcpu_type": (str, None), "guest_features": (int, limits.GUEST_FEATURES),
    "platform_info": (int, limits.U64), "guest_policy": (int, limits.U64),
    "family_id": (str, None), "image_id": (str, None),
    "memory_mib": (int, limits.MEMORY_MIB), "min_commited_tcb": (dict, None),
}


def check_record_vm(data: dict[str, Any], source: str) -> None:
    """measurement.json's optional "vm" mapping: known keys with the right types."""
    if "vm" not in data:
        return
    vm = data["vm"]
    if not isinstance(vm, dict):
        raise MeasurementError(f"{source}: 'vm' must be a mapping, got {vm!r:.60}")
    for key, value in vm.items():
        if key not in RECORD_VM:
            continue
        typ, rng = RECORD_VM[key]
        if rng is not None:   # integers may be written as "0x..." strings (inputs.json)
            limits.check_range(rng, _int(value, f"vm.{key}", source), f"vm.{key}", source,
                               MeasurementError)
        elif not isinstance(value, typ):
            raise MeasurementError(f"{source}: vm.{key}: expected {typ.__name__}, "
                                   f"got {value!r:.60}")


def check_record_fields(data: dict[str, Any], source: str) -> None:
    """measurement.json's other optional fields that launchers and verifiers read."""
    for key, types, name in (("expected_hash", (str, type(None)), "a hex string or null"),
                             ("cmdline", (str,), "a string"), ("debug", (bool,), "true or false"),
                             ("files", (dict,), "a mapping")):
        if key in data and not isinstance(data[key], types):
            raise MeasurementError(f"{source}: '{key}' must be {name}, got {data[key]!r:.60}")
    for name, entry in data.get("files", {}).items():
        if not (isinstance(entry, dict) and isinstance(entry.get("path", ""), str)
                and isinstance(entry.get("sha256"), (str, type(None)))):
            raise MeasurementError(f"{source}: files.{name} must be a mapping with a 'path' "
                                   f"and a 'sha256' (a hex string or null)")


def load_inputs(path: str | os.PathLike) -> tuple[LaunchInputs, str | None, dict[str, Any]]:
    data = limits.load_json(path, limits.INPUTS_BYTES, "inputs file", MeasurementError)
    if not isinstance(data, dict):
        raise MeasurementError(f"{path}: expected a JSON object")
    inputs, fw = parse_inputs(data, str(path))
    return inputs, fw, data
