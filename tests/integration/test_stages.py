"""Foundation stages through doit with real tools: kernel errors, snp_release reruns."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile

import pytest

from tests.conftest import doit

pytestmark = [pytest.mark.integration]


def test_deb_without_a_kernel_is_a_clear_error(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: not-a-kernel\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        "Description: test\n")
    (pkg / "usr/share/doc").mkdir(parents=True)
    (pkg / "usr/share/doc/readme").write_text("hi\n")
    deb = tmp_path / "not-a-kernel.deb"
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(deb)], check=True, capture_output=True)
    over = tmp_path / "over.yaml"
    over.write_text(f"build_dir: {tmp_path / 'build'}\nkernel: {{source: deb, deb: {deb}}}\n")
    proc = doit(["kernel", f"config={over}"], check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"{deb} contains no kernel (no boot/vmlinuz-*)" in out
    assert "Traceback" not in out
    assert not (tmp_path / "build" / "kernel" / "vmlinuz").exists()


def test_kernel_unpacks_real_deb_with_modules_dep(kernel_build):
    _, paths = kernel_build
    import json
    info = json.loads(paths.kernel_manifest.read_text())
    # the default kernel: Debian trixie's, e.g. 6.12.117+deb13-amd64
    assert re.match(r"\d+\.\d+\.\d+\+deb\d+-amd64$", info["version"]), info["version"]
    moddir = paths.kernel_modules / "lib" / "modules" / info["version"]
    assert (moddir / "modules.dep").stat().st_size > 0
    assert paths.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"  # bzImage header magic


def test_snp_release_rerun_needs_no_network(tmp_path):
    from pytest_httpserver import HTTPServer
    # Our own server: stopping the session-wide `httpserver` would break later tests.
    httpserver = HTTPServer(host="127.0.0.1", port=0)
    httpserver.start()
    try:
        _rerun_without_network(httpserver, tmp_path)
    finally:
        if httpserver.is_running():
            httpserver.stop()


def _rerun_without_network(httpserver, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"ovmf"
        info = tarfile.TarInfo("snp-release/usr/local/share/qemu/OVMF.fd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    httpserver.expect_request("/r.tar.gz").respond_with_data(body)
    over = tmp_path / "over.yaml"
    over.write_text(f"build_dir: {tmp_path / 'build'}\nsnp_release:\n"
                    f"  url: {httpserver.url_for('/r.tar.gz')}\n"
                    f"  sha256: {hashlib.sha256(body).hexdigest()}\n")
    first = doit(["snp_release", f"config={over}"])
    assert ".  snp_release" in first.stdout
    httpserver.stop()
    second = doit(["snp_release", f"config={over}"])
    assert "-- snp_release" in second.stdout
