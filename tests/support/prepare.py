"""Fetch the integration-test prerequisites into the test cache.

Run by .ci/run before the tests (python -m tests.support.prepare): the real default
guest kernel .deb (Debian trixie's linux-image-amd64, resolved from the
metapackage through the private apt) by the same code the kernel_deb stage
uses, into the cache's kernel-trixie/ build dir.
"""

from __future__ import annotations

import sys

from hbos import config as hconfig
from hbos.errors import HbosError
from hbos.paths import Paths
from hbos.stages import kernel
from tests.conftest import cached_kernel_deb, kernel_cache_build_dir


def main() -> int:
    if cached_kernel_deb().is_file():
        print(f"prepare: {cached_kernel_deb()} already cached")
        return 0
    build = kernel_cache_build_dir()
    build.mkdir(parents=True, exist_ok=True)
    overlay = build / "prepare.yaml"
    # the default kernel settings (config.yaml), only the build dir moved
    # (no artifact cache: the test cache is its own store)
    overlay.write_text(f"build_dir: {build}\ncache_dir: ''\n")
    try:
        cfg = hconfig.load(overlay=overlay)
        paths = Paths.from_config(cfg)
        kernel.fetch_package(cfg, paths)
    except HbosError as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 1
    if paths.kernel_deb != cached_kernel_deb():
        print(f"prepare: the kernel went to {paths.kernel_deb}, not {cached_kernel_deb()}",
              file=sys.stderr)
        return 1
    print(f"prepare: {cached_kernel_deb()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
