"""The default guest kernel (Debian trixie's linux-image-amd64) as the stages use it.

Real .deb (kernel_deb fixture: fetched by the private-apt code path into the
test cache), real depmod/modprobe, real initramfs builds.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from hbos.paths import Paths
from hbos.stages import initramfs, kernel
from hbos.util.fsutil import sha256_file

pytestmark = [pytest.mark.integration]


def test_default_kernel_is_trixie_6_12_with_sev_guest(kernel_build):
    cfg, paths = kernel_build
    info = kernel.info(paths)
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", info["version"]).groups())
    assert (major, minor) >= (6, 11), info["version"]
    assert info["package"] == f"linux-image-{info['version']}"
    assert info["package_version"]
    moddir = paths.kernel_modules / "lib" / "modules" / info["version"]
    # trixie: usr/lib/modules, xz-compressed; lib/modules is the link depmod wants
    assert (paths.kernel_modules / "lib" / "modules").is_symlink()
    assert list(moddir.rglob("sev-guest.ko.xz")) and list(moddir.rglob("tsm.ko.xz"))
    assert "sev_guest" in (moddir / "modules.alias").read_text()


def test_initramfs_decompresses_modules_reproducibly(kernel_build, tmp_path):
    """Two initramfs builds from the same kernel: bit-identical, plain .ko inside."""
    cfg, kpaths = kernel_build
    digests, manifests = [], []
    for name in ("a", "b"):
        paths = Paths(tmp_path / name)
        paths.build.mkdir()
        # share the unpacked kernel: the initramfs stage reads kernel.json + the tree
        (paths.kernel_dir).symlink_to(kpaths.kernel_dir)
        initramfs.build(cfg, paths)
        digests.append(sha256_file(paths.initramfs))
        manifests.append(json.loads(paths.initramfs_manifest.read_text()))
    assert digests[0] == digests[1]
    m = manifests[0]
    assert m == manifests[1]
    assert m["modules"] and all(p.endswith(".ko") for p in m["modules"])
    src = m["module_sources"]
    assert set(src) == set(m["modules"])
    assert all(v["decompressed"] == "xz" and v["from"].endswith(".ko.xz") for v in src.values())
    assert any(p.endswith("/dm-verity.ko") for p in m["modules"])
    assert any(p.endswith("/sev-guest.ko") for p in m["modules"])
    # what is packed is an ELF module, not an xz stream
    listing = subprocess.run(["sh", "-c", f"zcat {tmp_path / 'a' / 'initramfs.cpio.gz'} | "
                              "cpio -t --quiet"], capture_output=True, text=True, check=True).stdout
    assert not [ln for ln in listing.splitlines() if ln.endswith(".ko.xz")]
    tree = tmp_path / "a" / "initramfs"
    for rel, v in src.items():
        data = (tree / rel).read_bytes()
        assert data[:4] == b"\x7fELF", rel
        assert sha256_file(tree / rel) == v["sha256"]
