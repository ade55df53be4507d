"""tools/hb_node as a real relx release (Debian erlang + rebar3), on the host:
built twice to identical trees, then run by its extended start script exactly
as hyperbeam.service runs it (working directory, environment, state link),
answering GET/POST /~meta@1.0/info with HyperBEAM's operator semantics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos import content, fsutil, hb_release, launch, node_http
from hbos.paths import Paths
from tests.conftest import missing_prerequisite

pytestmark = [pytest.mark.integration]

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _build(root: Path):
    overlay = root / "overlay.yaml"
    root.mkdir(parents=True, exist_ok=True)
    overlay.write_text(f"build_dir: {root / 'build'}\n")
    cfg = hconfig.load(overlay=overlay, profile="local")
    paths = Paths.from_config(cfg)
    hb_release.build(cfg, paths)
    return cfg, paths


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    missing = hb_release.missing_tools()
    if missing:
        missing_prerequisite(hb_release.unavailable_text(missing))
    return _build(tmp_path_factory.mktemp("hb-release"))


def test_release_has_erts_and_the_extended_start_script(release):
    cfg, paths = release
    manifest = json.loads(paths.hb_release_manifest.read_text())
    assert manifest["available"] is True
    files = {e["path"] for e in manifest["files"]}
    assert any(p.startswith("erts-") and p.endswith("/bin/beam.smp") for p in files)
    assert {"bin/hb", "releases/0.1.0/vm.args", "releases/0.1.0/start.boot"} <= files
    script = (paths.hb_release_tree / "bin" / "hb").read_text()
    assert 'cd "$ROOTDIR"' in script       # why the unit links the state (item 1)
    for p in [paths.hb_release_tree, *paths.hb_release_tree.rglob("*")]:
        assert p.lstat().st_mtime == cfg.source_date_epoch, p


def test_two_builds_give_the_same_tree(release, tmp_path):
    _, paths = release
    _, again = _build(tmp_path / "again")
    assert again.hb_release_manifest.read_text() == paths.hb_release_manifest.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _epmd_pids() -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"epmd"):
                out.add(int(d.name))
    return out


def _request(port: int, method: str = "GET", body: dict | None = None,
             path: str = launch.HEALTH_PATH) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with NO_PROXY.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_release_runs_like_the_unit_and_follows_hyperbeam_operator_semantics(release,
                                                                               tmp_path):
    cfg, paths = release
    # the guest layout: the release with its config.flat and state link, state elsewhere
    port = _free_port()
    cfg = hconfig.load(overlay=_overlay(tmp_path, f"ports: {{hyperbeam: {port}}}\n"),
                       profile="local")
    opt = tmp_path / "opt" / "hyperbeam"
    content.copy_tree(paths.hb_release_tree, opt)
    (opt / "config.flat").write_text(content.render_config_flat(cfg))
    state = tmp_path / "var" / "lib" / "hyperbeam"
    (state / "cache-mainnet").mkdir(parents=True)
    os.symlink(state / "cache-mainnet", opt / "cache-mainnet")
    before = fsutil.tree_manifest(opt)
    env = {**os.environ, "HOME": str(state), "ERL_CRASH_DUMP": str(state / "erl_crash.dump"),
           "HB_CONFIG": str(opt / "config.flat"), "HB_KEY": str(state / "hyperbeam-key.json"),
           "HB_PORT": str(port), "RELX_OUT_FILE_PATH": str(tmp_path / "run")}
    (tmp_path / "run").mkdir()
    epmd_before = _epmd_pids()
    log = open(tmp_path / "hb.log", "wb")
    proc = subprocess.Popen([str(opt / "bin" / "hb"), "foreground"], cwd=state, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            ok, _ = launch.probe_health(port)
            if ok:
                break
            assert proc.poll() is None, (tmp_path / "hb.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "hb.log").read_text()
            time.sleep(0.5)
        code, info = _request(port)
        assert code == 200
        assert info["port"] == port and info["operator"] == "unclaimed"
        assert info["cwd"] == str(opt)            # relx cd'ed into the release root
        assert info["store"] == str(opt / "cache-mainnet")
        assert info["store_link"] == str(state / "cache-mainnet")
        assert info["store_files"] == ["boots"]
        assert info["sev_guest"] in ("enoent", "eacces", "opened")
        # the default post-start (unclaimed: an unsigned POST is applied) ...
        record = {k: f"v-{k}" for k in node_http.TRUSTED_KEYS} | {"expected_hash": "x"}
        body = node_http.post_start_body(record, cfg.post_start.settings,
                                         node_http.self_url(cfg))
        reply = launch.send_post_start(port, body)
        assert reply["history-length"] == 1
        code, info = _request(port)
        assert info["initialized"] == "permanent" and info["operator"] == "trustless"
        assert info["snp_trusted"] == [node_http.snp_trusted(record)]
        # ... after which the node message is permanent: changes are refused (4xx)
        code, answer = _request(port, "POST", {"operator": "unclaimed"})
        assert code == 400 and "permanent" in answer["body"]
        code, _ = _request(port, "GET", path=launch.HEALTH_PATH + "/operator")
        assert code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
        for pid in _epmd_pids() - epmd_before:   # the epmd this node started (-sname hb)
            os.kill(pid, signal.SIGTERM)
    # the store, the key and nothing else: written under the state path only
    stored = sorted(p.name for p in (state / "cache-mainnet").iterdir())
    assert stored == ["boots", "node-message-1.json"]
    assert (state / "hyperbeam-key.json").stat().st_mode & 0o777 == 0o600
    assert fsutil.tree_manifest(opt) == before


def _overlay(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "overlay.yaml"
    p.write_text(f"build_dir: {tmp_path / 'build'}\n{text}")
    return p


def test_release_content_installs_under_the_production_unit(release, tmp_path):
    _, built = release
    cfg = hconfig.load(overlay=_overlay(tmp_path, ""), profile="local")
    paths = Paths.from_config(cfg)
    shutil.copytree(built.hb_release_dir, paths.hb_release_dir, symlinks=True)
    content.build(cfg, paths)
    manifest = json.loads(paths.content_manifest.read_text())
    assert manifest["source"] == "erlang" and manifest["services"] == ["hyperbeam"]
    files = {e["path"]: e for e in manifest["files"]}
    assert any(p.startswith("opt/hyperbeam/erts-") and p.endswith("/bin/beam.smp")
               for p in files)
    assert files["opt/hyperbeam/cache-mainnet"]["target"] == "/var/lib/hyperbeam/cache-mainnet"
    unit = (paths.content_tree / "etc/systemd/system/hyperbeam.service").read_text()
    assert unit == content.render_hyperbeam_unit(cfg)
    assert manifest["hb_release"]["otp_release"]
