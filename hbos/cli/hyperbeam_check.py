"""`hbos hyperbeam-check`: would a HyperBEAM peer accept this node?

Recomputes the launch digest as a peer does from our `snp_trusted` entry
(hbos.attest.peer), names the first difference from our expected digest, and
with --report runs the peer's checks that work offline. Prints the verdict;
exit 0 when a peer accepts, 1 when it refuses.
"""

from __future__ import annotations

import argparse
import json

from hbos.attest import peer, report, verify
from hbos.errors import AttestationError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", required=True, metavar="FILE",
                   help="the build's or release's measurement.json")
    p.add_argument("--report", metavar="FILE", help="an attestation report of the node")
    p.add_argument("--ovmf", metavar="FILE", help="our OVMF (default: the one measurement.json "
                                                  "names), to name a layout difference")
    p.add_argument("--product", metavar="NAME", help="Milan, Genoa or Turin (default: from the "
                                                     "report)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")


def main(args: argparse.Namespace) -> int:
    for key in ("inputs", "report", "ovmf", "product"):
        value = getattr(args, key)
        if value is not None and not value.strip():
            raise AttestationError(f"--{key} is empty", hint="give a value or leave it out")
    record = verify.load_measurement_json(args.inputs)
    rep = report.load(args.report) if args.report else None
    c = peer.check(record, ovmf=args.ovmf, report=rep, product=args.product, source=args.inputs)
    print(json.dumps(c.as_dict(), indent=2) if args.json else peer.format_check(c))
    return 0 if c.accepted else 1
