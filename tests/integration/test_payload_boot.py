"""One TCG boot of the local image with the real HyperBEAM release (commit
3635c5e6, built offline by the hyperbeam stage) under the production
hyperbeam.service (issues 13 and 22): `doit start profile=local` builds the
image (cached base root, the default trixie kernel, the AmdSev OVMF vector as
the measured firmware, HyperBEAM from the pinned archives in
ROOT/../shared/hyperbeam-sources) and starts it; then the node, the default
post-start, the forwards, verity and `doit stop` are checked. A blank raw
data disk is attached (`--data-disk`): hbos-data.service formats it and the
node's state (its key, its store) lands on it, read back afterwards with
debugfs.

The hyperbeam stage is restored from this session's artifact cache when
tests/integration/test_hyperbeam_stage.py built it earlier in the session,
else built here (~3-4 min more); the build root and, with content.cu (the
local profile's default), the AO compute unit are built here. Every QEMU
started here is killed by pidfile in the teardown."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.launch import node_http, qemu, start as launch_start
from hbos.paths import Paths
from hbos.util import fsutil
from tests.conftest import (
    doit,
    kill_qemu,
    link_base_rootfs,
    missing_prerequisite,
    write_overlay,
)
from tests.integration.test_hyperbeam_stage import require_build_prerequisites
from tests.integration.test_start import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# under TCG the real node renders GET /~meta@1.0/info (25 KB) in ~9 s
TCG_TIMEOUT = 120


@pytest.fixture(scope="module")
def booted(base_rootfs_cache, kernel_deb, amdsev_ovmf, tmp_path_factory):
    require_build_prerequisites()
    if not shutil.which("qemu-system-x86_64"):
        missing_prerequisite("qemu-system-x86_64 is not installed (qemu-system-x86)")
    root = tmp_path_factory.mktemp("payload-boot")
    port, cu_port = free_port(), free_port()
    overlay = write_overlay(root / "overlay.yaml", (
        f"build_dir: {root / 'build'}\n"
        f"kernel: {{source: deb, deb: {kernel_deb}}}\n"
        f"firmware: {{ovmf: {amdsev_ovmf}}}\n"
        f"ports: {{hyperbeam: {port}}}\n"
        # the CU's port too, only to ask it GET / from here (production forwards none)
        f"launch: {{accel: tcg, health_timeout: 1500, forwards: ['{cu_port}:6363']}}\n"))
    cfg = hconfig.load(profile="local", overlay=overlay)
    paths = Paths.from_config(cfg)
    link_base_rootfs(base_rootfs_cache, paths)
    args = ["profile=local", f"config={overlay}"]
    data = root / "data.raw"
    with open(data, "wb") as fh:
        fh.truncate(64 << 20)                      # blank and sparse
    try:
        doit(["measure", *args], timeout=3600)
        image_sha = fsutil.sha256_file(paths.verity_image)
        started = doit(["start", *args, "--data-disk", str(data)], check=False, timeout=3600)
        yield {"cfg": cfg, "paths": paths, "port": port, "cu_port": cu_port, "args": args,
               "start": started,
               "image_sha": image_sha, "data": data, "ovmf": amdsev_ovmf}
    finally:
        kill_qemu(paths.run_dir)


def test_local_image_runs_hyperbeam_under_the_production_unit(booted):
    paths, port, start = booted["paths"], booted["port"], booted["start"]
    out = start.stdout + start.stderr
    assert start.returncode == 0, out[-4000:]
    assert "post-start configuration accepted" in out

    manifest = json.loads(paths.content_manifest.read_text())
    # the local profile builds the AO compute unit too (content.cu)
    services = ["cu", "hyperbeam"] if booted["cfg"].content.cu else ["hyperbeam"]
    assert manifest["source"] == "hyperbeam" and manifest["services"] == services
    assert manifest["hyperbeam"]["commit"] == "3635c5e6254e001cdfd716117c177017e97cc04b"
    assert manifest["snp_nif"] is False
    files = {e["path"]: e for e in manifest["files"]}
    # HyperBEAM's own modules, its ERTS, and the firmware as its reference OVMF
    assert any(re.fullmatch(r"opt/hyperbeam/lib/hb-[^/]+/ebin/hb_http_server\.beam", p)
               for p in files)
    assert any(re.fullmatch(r"opt/hyperbeam/erts-[^/]+/bin/beam\.smp", p) for p in files)
    ovmf_sha = fsutil.sha256_file(booted["ovmf"])
    assert files["opt/hyperbeam/test/OVMF-1.55.fd"]["sha256"] == ovmf_sha
    assert manifest["reference_ovmf"] == {"path": "opt/hyperbeam/test/OVMF-1.55.fd",
                                          "sha256": ovmf_sha}
    # the SNP NIF is left out (its Erlang source stays in the release's src/)
    assert not [p for p in files if "dev_snp_nif" in p and p.endswith((".beam", ".so"))]

    console = launch_start.ANSI.sub("", paths.run_dir.joinpath("console.log").read_text(
        errors="replace"))
    for service in services:
        assert re.search(rf"Started {service}\.service", console), console[-3000:]
    assert re.search(r"Finished hbos-data\.service", console), console[-3000:]

    ok, why = node_http.probe_health(port, timeout=TCG_TIMEOUT)
    assert ok, why
    # the default post-start (operator: trustless, initialized: permanent) took
    operator = node_http.call(port, "/~meta@1.0/info/operator", headers={},
                              timeout=TCG_TIMEOUT)
    assert operator.status == 200 and operator.body.strip() == b"trustless", \
        operator.describe()
    listening = node_http.call(port, "/~meta@1.0/info/port", headers={}, timeout=TCG_TIMEOUT)
    assert listening.body.strip() == str(port).encode(), listening.describe()
    # ... after which an unsigned change is refused
    refused = node_http.send_post_start(port, {"operator": "unclaimed"}, timeout=TCG_TIMEOUT)
    assert refused.status is not None and 400 <= refused.status < 500, refused.describe()
    assert b"permanent" in refused.body, refused.describe()


def test_the_compute_unit_answers_in_the_guest(booted):
    """The AO CU (its npm dependencies from package-lock.json, trixie's node) is up:
    GET / answers its JSON (wallet address, generated in the guest)."""
    if not booted["cfg"].content.cu:
        # the local profile sets content.cu (true); only a profile without the CU skips
        pytest.skip("content.cu is false in this profile")
    deadline = time.monotonic() + 600
    while True:
        got = node_http.call(booted["cu_port"], "/", headers={}, timeout=TCG_TIMEOUT)
        if got.ok or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert got.ok, got.describe()
    answer = json.loads(got.body)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", answer["address"]), answer


def test_forwards_are_on_loopback_only(booted):
    state = json.loads(qemu.RunFiles(booted["paths"].run_dir).state.read_text())
    netdev = state["argv"][state["argv"].index("-netdev") + 1]
    port = booted["port"]
    assert re.findall(r"hostfwd=[^,]+", netdev) == [
        f"hostfwd=tcp:127.0.0.1:{port}-:{port}",
        f"hostfwd=tcp:127.0.0.1:{booted['cu_port']}-:6363"]


def test_stop_leaves_no_qemu_and_verity_intact(booted, tmp_path):
    paths = booted["paths"]
    files = qemu.RunFiles(paths.run_dir)
    pid = launch_start.running_pid(files)
    assert pid is not None
    doit(["stop", *booted["args"]])
    assert launch_start.running_pid(files) is None
    assert not Path(f"/proc/{pid}").exists() or not launch_start.is_our_qemu(pid, files.pidfile)
    # nothing was written to the read-only root: same image, same verity root hash
    assert fsutil.sha256_file(paths.verity_image) == booted["image_sha"]
    subprocess.run(["veritysetup", "verify", str(paths.verity_image), str(paths.hash_tree),
                    paths.roothash.read_text().strip()], check=True, capture_output=True)
    # the state went to the data disk (formatted in the guest): store and key
    if not shutil.which("debugfs"):
        missing_prerequisite("debugfs is not installed (e2fsprogs)")

    # Read the disk as the guest's next mount would: with ext4's journal replayed.
    # debugfs does not replay it, and the guest does not act on the ACPI power-down
    # (no logind without D-Bus), so `stop` ends with QMP quit and the node's last
    # writes may sit committed in the journal only (seen once in CI: an empty
    # directory before the replay, both files after it).
    disk = tmp_path / "data-replayed.raw"
    subprocess.run(["cp", "--sparse=always", str(booted["data"]), str(disk)], check=True)
    fsck = subprocess.run(["e2fsck", "-fy", "-E", "journal_only", str(disk)], capture_output=True, text=True)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr   # 1: the journal was replayed

    def ls(path: str) -> list[str]:
        out = subprocess.run(["debugfs", "-R", f"ls -p {path}", str(disk)],
                             capture_output=True, text=True, check=True).stdout
        return [f.split("/")[5] for f in out.splitlines() if f.count("/") >= 6]
    assert {"hyperbeam-key.json", "cache-mainnet"} <= set(ls("/hyperbeam"))
    assert set(ls("/hyperbeam/cache-mainnet")) - {".", ".."}, "the store wrote nothing"
