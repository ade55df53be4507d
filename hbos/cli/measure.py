"""`hbos measure`: the launch digest from component hashes, for verifiers.

A HyperBEAM node that checks a peer holds only the peer's measurement inputs
(kernel/initrd/cmdline hashes, vCPUs, CPU type, guest features, firmware
launch hash) and the firmware file; this recomputes the digest from those and
prints it (or a JSON object with --json).
"""

from __future__ import annotations

import argparse
import json
import sys

from hbos.errors import MeasurementError
from hbos.measure.digest import Firmware, launch_digest, load_inputs
from hbos.util import limits


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", required=True, metavar="FILE",
                   help="measurement.json (ours) or inputs.json (the original tool's)")
    p.add_argument("--ovmf", required=True, metavar="FILE",
                   help="the OVMF firmware (its SEV metadata; its pages too when the inputs "
                        "carry no firmware hash)")
    p.add_argument("--vcpus", type=int, metavar="N", help="override the vCPU count")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def main(args: argparse.Namespace) -> int:
    for key in ("inputs", "ovmf"):
        if not getattr(args, key).strip():
            raise MeasurementError(f"--{key} is empty", hint="give a file")
    inputs, fw_hash, data = load_inputs(args.inputs)
    if args.vcpus is not None:
        limits.check_range(limits.VCPUS, args.vcpus, "--vcpus", "measure", MeasurementError)
        inputs = inputs.replace(vcpus=args.vcpus)
    firmware = Firmware(args.ovmf, launch_hash=fw_hash)
    digest = launch_digest(firmware, inputs)
    recorded = data.get("expected_hash")
    result = {"expected_hash": digest, "vcpus": inputs.vcpus, "vcpu_type": inputs.vcpu_type,
              "guest_features": inputs.guest_features, "firmware": firmware.launch_hash,
              "matches_inputs": (recorded == digest) if recorded else None}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(digest)
        if recorded and recorded != digest and args.vcpus is None:
            print(f"note: differs from the expected_hash in {args.inputs} ({recorded})",
                  file=sys.stderr)
    return 0
