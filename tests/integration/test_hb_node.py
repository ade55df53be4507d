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
from hbos.launch import node_http
from hbos.measure import nodeconfig
from hbos.paths import Paths
from hbos.stages import content, hb_node
from hbos.util import tree as htree
from tests.conftest import fake_firmware, missing_prerequisite

pytestmark = [pytest.mark.integration]

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _build(root: Path):
    overlay = root / "overlay.yaml"
    root.mkdir(parents=True, exist_ok=True)
    overlay.write_text(f"build_dir: {root / 'build'}\n")
    cfg = hconfig.load(overlay=overlay, profile="local")
    paths = Paths.from_config(cfg)
    hb_node.build(cfg, paths)
    return cfg, paths


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    missing = hb_node.missing_tools()
    if missing:
        missing_prerequisite(hb_node.unavailable_text(missing))
    return _build(tmp_path_factory.mktemp("hb-node"))


def test_release_has_erts_and_the_extended_start_script(release):
    cfg, paths = release
    manifest = json.loads(paths.hb_node_manifest.read_text())
    assert manifest["available"] is True
    files = {e["path"] for e in manifest["files"]}
    assert any(p.startswith("erts-") and p.endswith("/bin/beam.smp") for p in files)
    assert {"bin/hb", "releases/0.1.0/vm.args", "releases/0.1.0/start.boot"} <= files
    script = (paths.hb_node_tree / "bin" / "hb").read_text()
    assert 'cd "$ROOTDIR"' in script       # why the unit links the state (item 1)
    # the node name carries its host, so the start script does not boot a second
    # BEAM to learn it (relx_get_nodename runs only for a name without '@')
    vm_args = (paths.hb_node_tree / "releases" / "0.1.0" / "vm.args").read_text().split("\n")
    assert "-sname hb@localhost" in vm_args and "-setcookie hb" in vm_args
    assert "*@*) ;;" in script and "$(relx_get_nodename)" in script
    for p in [paths.hb_node_tree, *paths.hb_node_tree.rglob("*")]:
        assert p.lstat().st_mtime == cfg.source_date_epoch, p


def test_two_builds_give_the_same_tree(release, tmp_path):
    _, paths = release
    _, again = _build(tmp_path / "again")
    assert again.hb_node_manifest.read_text() == paths.hb_node_manifest.read_text()


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
             path: str = node_http.HEALTH_PATH) -> tuple[int, dict]:
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
    htree.copy(paths.hb_node_tree, opt)
    (opt / "config.flat").write_text(nodeconfig.render_config_flat(cfg))
    state = tmp_path / "var" / "lib" / "hyperbeam"
    (state / "cache-mainnet").mkdir(parents=True)
    os.symlink(state / "cache-mainnet", opt / "cache-mainnet")
    before = htree.manifest(opt)
    # exactly the unit's environment, its guest paths mapped into tmp_path
    where = {"/var/lib/hyperbeam": str(state), "/opt/hyperbeam": str(opt),
             "/run/hyperbeam": str(tmp_path / "run")}
    env = {**os.environ, **unit_environment(content.render_hyperbeam_unit(cfg), where)}
    assert {"HOME", "ERL_CRASH_DUMP", "HB_CONFIG", "HB_KEY", "HB_PORT", "ERL_EPMD_ADDRESS",
            "ERL_AFLAGS", "RELX_OUT_FILE_PATH"} <= set(env)
    (tmp_path / "run").mkdir()
    epmd_before = _epmd_pids()
    log = open(tmp_path / "hb.log", "wb")
    proc = subprocess.Popen([str(opt / "bin" / "hb"), "foreground"], cwd=state, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            ok, _ = node_http.probe_health(port)
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
        record = {k: f"v-{k}" for k in nodeconfig.TRUSTED_KEYS} | {"expected_hash": "x"}
        body = nodeconfig.post_start_body(record, cfg.post_start.settings,
                                          nodeconfig.self_url(cfg))
        posted = node_http.send_post_start(port, body)
        assert posted.ok and json.loads(posted.body)["history-length"] == 1
        code, info = _request(port)
        assert info["initialized"] == "permanent" and info["operator"] == "trustless"
        assert info["snp_trusted"] == [nodeconfig.snp_trusted(record)]
        # ... after which the node message is permanent: changes are refused (4xx)
        code, answer = _request(port, "POST", {"operator": "unclaimed"})
        assert code == 400 and "permanent" in answer["body"]
        code, _ = _request(port, "GET", path=node_http.HEALTH_PATH + "/operator")
        assert code == 200
        # Erlang distribution and epmd on loopback only; HTTP on every interface
        for addr, owner in _listeners({proc.pid, *_descendants(proc.pid)},
                                      _epmd_pids() - epmd_before):
            assert addr in ("127.0.0.1", "::1") or owner == f"http:{port}", (addr, owner)
        # a follow-up call this node does not serve is a warning, not an error
        said = node_http.follow_up(port, "/~greenzone@1.0/init", {})
        assert not said.ok and said.status == 404
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
        for pid in _epmd_pids() - epmd_before:   # the epmd this node started (-sname hb@localhost)
            os.kill(pid, signal.SIGTERM)
    # the store, the key and nothing else: written under the state path only
    stored = sorted(p.name for p in (state / "cache-mainnet").iterdir())
    assert stored == ["boots", "node-message-1.json"]
    assert (state / "hyperbeam-key.json").stat().st_mode & 0o777 == 0o600
    assert htree.manifest(opt) == before


def unit_environment(unit: str, where: dict[str, str]) -> dict[str, str]:
    """Environment= lines of a rendered unit (systemd quoting), guest paths replaced."""
    env = {}
    for line in unit.splitlines():
        if not line.startswith("Environment="):
            continue
        value = line[len("Environment="):]
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        key, _, val = value.partition("=")
        for guest, host in where.items():
            val = val.replace(guest, host)
        env[key] = val.replace("%%", "%")
    return env


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out |= {int(d.name), *_descendants(int(d.name))}
    return out


def _listeners(node_pids: set[int], epmd_pids: set[int]) -> list[tuple[str, str]]:
    """(address, owner) of every TCP listener of these processes (ss -ltnp)."""
    import re
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if not pids & (node_pids | epmd_pids):
            continue
        local = line.split()[3]
        addr, _, lport = local.rpartition(":")
        addr = addr.strip("[]")
        owner = "epmd" if pids & epmd_pids else ("http:" + lport)
        found.append((addr, owner))
    assert any(o == "epmd" for _, o in found), out
    return found


def _overlay(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "overlay.yaml"
    p.write_text(f"build_dir: {tmp_path / 'build'}\n{text}")
    return p


def test_release_content_installs_under_the_production_unit(release, tmp_path):
    _, built = release
    # the stand-in: content.source erlang (the local profile builds the real HyperBEAM)
    cfg = hconfig.load(overlay=_overlay(tmp_path, "content: {source: erlang}\n"), profile="local")
    paths = Paths.from_config(cfg)
    fake_firmware(paths)                 # content copies it as HyperBEAM's reference OVMF
    shutil.copytree(built.hb_node_dir, paths.hb_node_dir, symlinks=True)
    content.build(cfg, paths)
    manifest = json.loads(paths.content_manifest.read_text())
    assert manifest["source"] == "erlang" and manifest["services"] == ["hyperbeam"]
    files = {e["path"]: e for e in manifest["files"]}
    assert any(p.startswith("opt/hyperbeam/erts-") and p.endswith("/bin/beam.smp")
               for p in files)
    assert files["opt/hyperbeam/cache-mainnet"]["target"] == "/var/lib/hyperbeam/cache-mainnet"
    unit = (paths.content_tree / "etc/systemd/system/hyperbeam.service").read_text()
    assert unit == content.render_hyperbeam_unit(cfg)
    assert manifest["hb_node"]["otp_release"]


def _package_of(lib: str) -> str:
    """The Debian package shipping `lib` (usrmerge: try /lib and /usr/lib spellings)."""
    candidates = [lib, lib.removeprefix("/usr"), "/usr" + lib if not lib.startswith("/usr")
                  else lib]
    for path in candidates:
        proc = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True,
                              check=False)
        if proc.returncode == 0:
            return proc.stdout.split(":", 1)[0]
    raise AssertionError(f"no package ships {lib}")


def test_every_library_erts_links_is_in_the_guest_root(release):
    """ldd of the release's ERTS and crypto NIF -> Debian packages -> rootfs.packages
    (libc6 and libgcc-s1 are Essential, in every minbase root)."""
    import shutil as sh
    if not sh.which("ldd") or not sh.which("dpkg"):
        missing_prerequisite("ldd and dpkg are needed to map libraries to packages")
    _, paths = release
    tree = paths.hb_node_tree
    binaries = [*tree.glob("erts-*/bin/beam.smp"), *tree.glob("lib/crypto-*/priv/lib/crypto.so")]
    assert len(binaries) == 2, binaries
    libs = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                             check=True).stdout
        libs |= {line.split("=>")[1].split()[0] for line in out.splitlines()
                 if "=>" in line and "/" in line.split("=>")[1]}
    packages = {_package_of(lib) for lib in libs}
    assert {"libtinfo6", "zlib1g", "libssl3"} <= packages
    for cfg in (hconfig.load(), hconfig.load(profile="local")):
        # trixie renamed some (libssl3 -> libssl3t64, the 64-bit time_t transition)
        guest = {p.removesuffix("t64") for p in cfg.rootfs.packages}
        assert packages - {"libc6", "libgcc-s1"} <= guest, packages
