"""The SNP bundle (hbos/stages/snp_bundle.py, task snp_release): download + verify +
safe unpack, against a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import ConfigError, HashMismatch, UnsafeArchive
from hbos.paths import Paths
from hbos.stages import snp_bundle
from hbos.util.fsutil import read_json


def release_tarball(extra: list[tuple[str, bytes]] = (), top: str = "snp-release-2024-01-01") -> bytes:
    buf = io.BytesIO()
    files = [(f"{top}/linux/guest/linux-image-6.9.0-snp-guest_1_amd64.deb", b"deb"),
             (f"{top}/linux/guest/linux-image-6.9.0-snp-guest-dbg_1_amd64.deb", b"dbg"),
             (f"{top}/usr/local/share/qemu/OVMF.fd", b"ovmf"),
             (f"{top}/usr/local/bin/qemu-system-x86_64", b"qemu"),
             (f"{top}/install.sh", b"#!/bin/sh\n"), *extra]
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def setup(tmp_path: Path, url: str = "", sha: str = "", path: str = ""):
    over = tmp_path / "over.yaml"
    over.write_text(f"build_dir: {tmp_path / 'build'}\n"
                    f"snp_release: {{url: '{url}', sha256: '{sha}', path: '{path}'}}\n")
    cfg = hconfig.load(overlay=over)
    return cfg, Paths.from_config(cfg)


def test_download_verify_unpack_and_locate(httpserver, tmp_path):
    data = release_tarball()
    httpserver.expect_request("/rel.tar.gz").respond_with_data(data)
    cfg, paths = setup(tmp_path, httpserver.url_for("/rel.tar.gz"), hashlib.sha256(data).hexdigest())
    snp_bundle.fetch_bundle(cfg, paths)
    manifest = read_json(paths.snp_bundle_manifest)
    assert manifest["configured"] and manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert snp_bundle.guest_kernel_deb(paths).name == "linux-image-6.9.0-snp-guest_1_amd64.deb"
    assert snp_bundle.ovmf(paths).read_bytes() == b"ovmf"
    assert snp_bundle.qemu(paths).name == "qemu-system-x86_64"


def test_sha256_mismatch_keeps_nothing(httpserver, tmp_path):
    data = release_tarball()
    httpserver.expect_request("/rel.tar.gz").respond_with_data(data)
    cfg, paths = setup(tmp_path, httpserver.url_for("/rel.tar.gz"), "1" * 64)
    with pytest.raises(HashMismatch) as exc:
        snp_bundle.fetch_bundle(cfg, paths)
    assert hashlib.sha256(data).hexdigest() in str(exc.value) and "1" * 64 in str(exc.value)
    assert not paths.snp_bundle_manifest.exists()
    assert not paths.snp_bundle_dir.exists()
    assert not any(paths.downloads.iterdir())


def test_malicious_release_is_refused(httpserver, tmp_path):
    data = release_tarball(extra=[("../../escape.txt", b"x")])
    httpserver.expect_request("/rel.tar.gz").respond_with_data(data)
    cfg, paths = setup(tmp_path, httpserver.url_for("/rel.tar.gz"), hashlib.sha256(data).hexdigest())
    with pytest.raises(UnsafeArchive, match="outside the destination"):
        snp_bundle.fetch_bundle(cfg, paths)
    assert not (tmp_path / "escape.txt").exists() and not paths.snp_bundle_dir.exists()


def test_url_without_sha256_is_a_config_error(tmp_path):
    cfg, paths = setup(tmp_path, "http://127.0.0.1:9/rel.tar.gz", "")
    with pytest.raises(ConfigError, match="sha256 is empty"):
        snp_bundle.fetch_bundle(cfg, paths)


def test_local_directory_release(tmp_path):
    tree = tmp_path / "snp-release"
    (tree / "usr/local/share/qemu").mkdir(parents=True)
    (tree / "usr/local/share/qemu/OVMF.fd").write_bytes(b"o")
    cfg, paths = setup(tmp_path, path=str(tree))
    snp_bundle.fetch_bundle(cfg, paths)
    assert snp_bundle.ovmf(paths) == tree / "usr/local/share/qemu/OVMF.fd"


def test_nothing_configured_is_recorded_and_users_get_a_hint(tmp_path):
    cfg, paths = setup(tmp_path)
    snp_bundle.fetch_bundle(cfg, paths)
    assert read_json(paths.snp_bundle_manifest) == {"configured": False}
    with pytest.raises(ConfigError, match="none is configured"):
        snp_bundle.ovmf(paths)
