"""Fetch the integration-test prerequisites into the test cache.

Run by .ci/run before the tests (python -m tests.prepare): the real Debian
cloud kernel .deb, resolved from the linux-image-cloud-amd64 metapackage by
the same code the kernel_deb stage uses.
"""

from __future__ import annotations

import sys

from hbos import config as hconfig, kernel
from hbos.errors import HbosError
from hbos.paths import Paths
from tests.conftest import cache_dir, cached_kernel_deb


def main() -> int:
    if cached_kernel_deb().is_file():
        print(f"prepare: {cached_kernel_deb()} already cached")
        return 0
    overlay = cache_dir() / "prepare.yaml"
    overlay.write_text(f"build_dir: {cache_dir()}\n"
                       "kernel: {source: package, package: linux-image-cloud-amd64}\n")
    try:
        cfg = hconfig.load(overlay=overlay)
        kernel.fetch_package(cfg, Paths.from_config(cfg))
    except HbosError as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 1
    print(f"prepare: {cached_kernel_deb()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
