"""`python -m hbos` / `hbos`: the commands that work without doit.

Each subcommand is one module of this folder (COMMANDS names it: measure,
check_host, verify_report, hyperbeam_check, verify_release) exposing
`add_arguments(parser)` and `main(args) -> int`; it calls the package modules
that do the work and returns its verdict, 0 or 1. Only this file turns an
HbosError into a one-line error and exit status 2 (130 when interrupted).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hbos import __version__
from hbos.errors import HbosError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "measure": ("hbos.cli.measure", "recompute the expected launch digest from measurement.json "
                                    "or inputs.json and an OVMF file"),
    "check-host": ("hbos.cli.check_host", "check whether this host can run SEV-SNP guests (table of "
                                          "pass/fail/unknown with fixes; exit 1 when it cannot)"),
    "verify-report": ("hbos.cli.verify_report", "verify an SEV-SNP attestation report (signature, AMD "
                                         "chain, chip, TCB, policy, measurement; exit 1 on "
                                         "failure)"),
    "hyperbeam-check": ("hbos.cli.hyperbeam_check", "would a HyperBEAM peer accept this node? "
                                                  "recompute our snp_trusted entry's digest as "
                                                  "HyperBEAM does, name the first difference "
                                                  "(exit 1 when a peer would refuse)"),
    "verify-release": ("hbos.cli.verify_release", "verify a release tarball or directory offline: "
                                           "files against its manifest, the recomputed launch "
                                           "digest (exit 1 when refused)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hbos", description="HyperBEAM OS: SEV-SNP guest tools")
    parser.add_argument("--version", action="version", version=f"hbos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except HbosError as exc:
        print(f"hbos {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
