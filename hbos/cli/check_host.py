"""`hbos check-host`: can this host run SEV-SNP guests? The check table, or JSON.

The same checks as `doit check_host` (hbos.host.check.checks_for_config: this
config's QEMU and vm.guest_features), printed as the table with a `fix:` line
under every failure, or with --json as {"ready": bool, "checks": [...]}. Exit
status 0 when nothing failed, 1 when the host cannot run SNP guests; a config
error is an HbosError, which hbos.cli reports (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys

from hbos import config
from hbos.host import check
from hbos.paths import Paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="/", metavar="DIR",
                   help="read /proc, /sys and /dev under DIR instead of / (a fake host tree)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--config", metavar="FILE", help="config overlay (as doit config=FILE)")
    p.add_argument("--profile", metavar="NAME", help="config profile (as doit profile=NAME)")


def main(args: argparse.Namespace) -> int:
    cfg = config.load(overlay=args.config, profile=args.profile)
    checks = check.checks_for_config(cfg, Paths.from_config(cfg), args.root)
    if args.json:
        json.dump(check.as_json(checks), sys.stdout, indent=2)
        print()
    else:
        print(check.table(checks))
    return 0 if check.ready(checks) else 1
