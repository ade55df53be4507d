"""The hyperbeam stage for real: HyperBEAM's release (commit 3635c5e6) built
offline from the pinned archives in a Debian trixie build root, then run.

(a) `doit hyperbeam profile=local` in a build dir of its own, built cold (the
    five phases run, the build root is made): the manifest (commit, every
    source verified, the overlay, snp_nif false with its reason), hb.tar's
    content, doit's up-to-date check, and a second clean build dir restored
    from the artifact cache instead of rebuilt.
(b) The release that build made, run in its build root the way the guest's
    hyperbeam.service runs it: unpacked at /opt/hyperbeam, the content stage's
    own config.flat, vm.args, state links and unit (hbos.stages.content.
    install_services), the unit's ExecStart, WorkingDirectory and Environment=
    lines. HyperBEAM's answers (the post-start POST taken once, then refused
    as permanent), SIGTERM ignored, and the unit's exact ExecStop halting it.

The archives: ROOT/../shared/hyperbeam-sources (sources.mirror of the local
profile; CI has them at the same place). Missing archives, mmdebstrap or root:
skipped here, a failure under CI=true.

The cold build (~3-4 min on 2 cores) goes into this session's artifact cache
(conftest gives every session a fresh one) when that holds no hyperbeam entry
yet, so the payload boot later in the session restores it instead of building
again; otherwise into a private cache of this module, so the build here is
always cold and its build root always exists.

Every process started in the build root is SIGKILLed in the teardown, found by
its root directory (/proc/PID/root): the node outlives SIGTERM, and epmd
daemonises out of the process group.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.launch import node_http
from hbos.measure import nodeconfig
from hbos.paths import Paths
from hbos.stages import content, hb_overlay, hb_sources, hyperbeam
from hbos.util import archive, chroot, fsutil
from tests.conftest import ROOT, doit, missing_prerequisite, write_overlay
from tests.integration.test_start import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]

SOURCES = ROOT.parent / "shared" / "hyperbeam-sources"
COMMIT = "3635c5e6254e001cdfd716117c177017e97cc04b"
PHASES = ("[1/5] build root", "[2/5] sources", "[3/5] HyperBEAM", "[4/5] rebar3 release",
          "[5/5] packing")


def require_build_prerequisites() -> None:
    """What building the hyperbeam stage needs here (the archives, root, mmdebstrap)."""
    if not SOURCES.is_dir():
        missing_prerequisite(f"the pinned HyperBEAM source archives are not at {SOURCES} "
                             "(sources.mirror of the local profile)")
    if os.geteuid() != 0:
        missing_prerequisite("the hyperbeam stage's build root needs root (mmdebstrap, chroot)")
    for tool in ("mmdebstrap", "unshare", "chroot"):
        if not shutil.which(tool):
            missing_prerequisite(f"{tool} is not installed (the hyperbeam stage's build root)")


def _cache_for_a_cold_build(private: Path) -> Path:
    """The session's artifact cache if it holds no hyperbeam entry (so later tests
    restore what is built here), else `private` (empty: the build is cold)."""
    session = Path(os.environ["XDG_CACHE_HOME"]) / "hbos"
    if any((session / "hyperbeam").glob("*/entry.json")):
        return private
    return session


@dataclass
class Built:
    dir: Path
    overlay: Path
    cfg: hconfig.Config
    paths: Paths
    cache: Path
    first: subprocess.CompletedProcess
    seconds: float
    second: subprocess.CompletedProcess

    def doit(self, *args: str, overlay: Path | None = None, **kw) -> subprocess.CompletedProcess:
        return doit([*args, "profile=local", f"config={overlay or self.overlay}"], **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    require_build_prerequisites()
    root = tmp_path_factory.mktemp("hyperbeam-stage")
    cache = _cache_for_a_cold_build(root / "cache")
    overlay = write_overlay(root / "overlay.yaml",
                            f"build_dir: {root / 'build'}\ncache_dir: {cache}\n")
    cfg = hconfig.load(profile="local", overlay=overlay)
    paths = Paths.from_config(cfg)
    t0 = time.monotonic()
    first = doit(["hyperbeam", "profile=local", f"config={overlay}"], timeout=3600)
    seconds = time.monotonic() - t0
    second = doit(["hyperbeam", "profile=local", f"config={overlay}"])
    return Built(root, overlay, cfg, paths, cache, first, seconds, second)


# ----------------------------------------------------------------- (a) the stage


def test_a_cold_build_runs_every_phase_and_keeps_its_build_root(built):
    out = built.first.stdout + built.first.stderr
    at = [out.find(f"hyperbeam: {p}") for p in PHASES]
    assert all(i >= 0 for i in at) and at == sorted(at), out[-3000:]
    assert "restored from cache" not in out
    assert "stored in cache" in out                     # a clean build dir restores it
    assert chroot.reusable(built.paths.build_root, chroot.wanted(
        built.cfg.hyperbeam.suite, built.cfg.hyperbeam.mirror, hyperbeam.PACKAGES))
    # keep_tree false: the sources and the build tree are gone, the root stays
    assert not (built.paths.build_root / hyperbeam.SRC.lstrip("/")).exists()


def test_the_manifest_names_the_pinned_commit_and_every_verified_source(built):
    m = hyperbeam.read_manifest(built.paths)
    assert m["commit"] == COMMIT and m["repo"] == "permaweb/HyperBEAM"
    assert m["snp_nif"] is False and "dev_snp_nif" in m["snp_nif_reason"]
    pins = hb_sources.load(built.cfg.path(built.cfg.hyperbeam.pins))
    assert [s["name"] for s in m["sources"]] == [p.name for p in pins]
    for s, pin in zip(m["sources"], pins, strict=True):
        assert s["verified_by"] in ("sha256", "tree"), s
        assert (s["commit"], s["sha256"], s["tree"]) == (pin.commit, pin.sha256, pin.tree)
    assert m["overlay"] == [e.name for e in hb_overlay.EDITS]
    assert "exclude-snp-nif" in m["overlay"]
    assert m["tar_sha256"] == fsutil.sha256_file(built.paths.hyperbeam_tar)
    assert m["erts"] and all(re.fullmatch(r"erts-[0-9.]+", e) for e in m["erts"])
    assert m["build_root"]["suite"] == "trixie"
    assert m["build_root"]["versions"]["erlang-nox"].startswith("1:27.")   # OTP 27


def test_the_tar_holds_the_release_without_the_snp_nif(built):
    with tarfile.open(built.paths.hyperbeam_tar) as tar:
        members = tar.getmembers()
    names = {m.name.rstrip("/") for m in members}
    assert {"lib/hb-0.0.1/ebin/hb_http_server.beam", "bin/hb"} <= names
    assert any(re.fullmatch(r"erts-[^/]+/bin/beam\.smp", n) for n in names)
    assert not [n for n in names if "dev_snp_nif" in n and n.endswith((".beam", ".so"))]
    # deterministic: owners 0, one mtime
    assert {(m.uid, m.gid) for m in members} == {(0, 0)}
    assert {m.mtime for m in members} == {built.cfg.source_date_epoch}


def test_a_second_run_is_up_to_date(built):
    assert re.search(r"^-- hyperbeam$", built.second.stdout, re.M), built.second.stdout
    assert "[1/5]" not in built.second.stdout + built.second.stderr


def test_a_clean_build_dir_restores_the_release_from_the_cache(built, tmp_path):
    overlay = write_overlay(tmp_path / "overlay.yaml",
                            f"build_dir: {tmp_path / 'build'}\ncache_dir: {built.cache}\n")
    t0 = time.monotonic()
    proc = built.doit("hyperbeam", overlay=overlay)
    took = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert "hyperbeam: restored from cache" in out and "[1/5]" not in out, out[-2000:]
    paths = Paths.from_config(hconfig.load(profile="local", overlay=overlay))
    assert fsutil.sha256_file(paths.hyperbeam_tar) == \
        fsutil.sha256_file(built.paths.hyperbeam_tar)
    assert paths.hyperbeam_manifest.read_bytes() == built.paths.hyperbeam_manifest.read_bytes()
    assert not paths.build_root.exists()
    assert took < 120, f"a restore took {took:.0f} s"


# ----------------------------------------------------------------- (b) the release, run


def unit_settings(unit: str) -> tuple[dict[str, str], dict[str, str]]:
    """(Environment= assignments, the other [Service] settings) of a rendered unit."""
    env: dict[str, str] = {}
    other: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if key == "Environment":
            for assignment in shlex.split(value):
                name, _, val = assignment.partition("=")
                env[name] = val
        else:
            other[key] = value
    return env, other


def processes_in(root: Path) -> list[int]:
    """The pids of every process whose root directory is `root` (ours: started in it)."""
    want = str(root.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root") == want:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_all_in(root: Path) -> None:
    for _ in range(50):
        pids = processes_in(root)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def get(port: int, path: str, timeout: float = 30) -> node_http.Outcome:
    return node_http.call(port, path, headers={}, timeout=timeout)


@dataclass
class Node:
    root: Path
    cfg: hconfig.Config
    port: int
    env: dict[str, str]
    unit: dict[str, str]
    proc: subprocess.Popen
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def beam(self) -> int:
        pids = [p for p in processes_in(self.root) if comm(p) == "beam.smp"]
        assert len(pids) == 1, (pids, self.log_tail())
        return pids[0]


def install_release(root: Path, cfg, tar: Path) -> str:
    """The release at <root>/opt/hyperbeam with the content stage's own files; the
    rendered unit's text (as content installs it at etc/systemd/system)."""
    hosts = root / "etc" / "hosts"
    if not hosts.exists():          # erl_call (bin/hb eval) segfaults without one; the guest has one
        hosts.write_text("127.0.0.1 localhost\n")
    opt = root / content.HYPERBEAM_DIR
    fsutil.remove(opt)
    archive.extract(tar, opt)
    assert content.install_services(cfg, root) == ["hyperbeam"]
    for name in cfg.content.hyperbeam_state:                    # StateDirectory=
        (root / content.HYPERBEAM_STATE.lstrip("/") / name).mkdir(parents=True, exist_ok=True)
    (root / "run" / "hyperbeam").mkdir(parents=True, exist_ok=True)   # RuntimeDirectory=
    return (root / content.UNIT_DIR / "hyperbeam.service").read_text()


@pytest.fixture(scope="module")
def node(built, tmp_path_factory):
    """The built release running in its build root as hyperbeam.service runs it."""
    root = built.paths.build_root
    port = free_port()
    work = tmp_path_factory.mktemp("hyperbeam-node")
    cfg = hconfig.load(profile="local", overlay=write_overlay(
        work / "overlay.yaml", f"build_dir: {built.paths.build}\nports: {{hyperbeam: {port}}}\n"))
    unit = install_release(root, cfg, built.paths.hyperbeam_tar)
    assert unit == content.render_hyperbeam_unit(cfg)
    env, settings = unit_settings(unit)
    # epmd of its own (the host may run one, and another test a node named hb@localhost)
    env["ERL_EPMD_PORT"] = str(free_port())
    log = work / "node.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            chroot.run_in_argv(root, shlex.split(settings["ExecStart"]), env=env, network=True,
                               cwd=settings["WorkingDirectory"]),
            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True)
    n = Node(root, cfg, port, env, settings, proc, log)
    try:
        deadline = time.monotonic() + 180
        while not node_http.probe_health(port, timeout=10)[0]:
            assert proc.poll() is None, f"the node exited ({proc.returncode}):\n{n.log_tail()}"
            assert time.monotonic() < deadline, f"no health in 180 s:\n{n.log_tail()}"
            time.sleep(0.5)
        yield n
    finally:
        kill_all_in(root)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _record() -> dict:
    return {"kernel": "aa" * 32, "initrd": "bb" * 32, "append": "cc" * 32,
            "firmware": "dd" * 48, "vcpus": 1, "vcpu_type": 5, "vmm_type": 1,
            "guest_features": 1, "expected_hash": "ee" * 48}


def test_the_release_takes_the_post_start_once_then_refuses_changes(node):
    answer = get(node.port, node_http.HEALTH_PATH)
    assert answer.status == 200 and b"<html" in answer.body.lower()[:4000]
    assert get(node.port, "/~meta@1.0/info/port").body.strip() == str(node.port).encode()
    assert get(node.port, "/~meta@1.0/info/operator").body.strip() == b"unclaimed"

    body = nodeconfig.post_start_for(node.cfg, _record())
    assert body is not None and body["initialized"] == "permanent"
    out = node_http.send_post_start(node.port, body)
    assert out.ok and out.status == 200, out.describe()
    assert b"Node message updated" in out.body, out.describe()
    assert get(node.port, "/~meta@1.0/info/operator").body.strip() == b"trustless"

    again = node_http.send_post_start(node.port, {"operator": "unclaimed"})
    assert again.state == "refused" and again.status == 400, again.describe()
    assert b"permanent" in again.body, again.describe()
    assert get(node.port, "/~meta@1.0/info/operator").body.strip() == b"trustless"

    # its key where HB_KEY says, its store through the link into the state directory
    state = node.root / content.HYPERBEAM_STATE.lstrip("/")
    assert (state / "hyperbeam-key.json").is_file()
    assert os.readlink(node.root / content.HYPERBEAM_DIR / "cache-mainnet") == \
        f"{content.HYPERBEAM_STATE}/cache-mainnet"
    assert any((state / "cache-mainnet").iterdir())


def test_sigterm_is_ignored_and_the_units_exec_stop_halts_the_node(node):
    beam = node.beam()
    os.kill(beam, signal.SIGTERM)
    time.sleep(3)
    assert alive(beam), node.log_tail()
    assert node_http.probe_health(node.port)[0], node.log_tail()

    stop = shlex.split(node.unit["ExecStop"])
    assert stop[:2] == ["/opt/hyperbeam/bin/hb", "eval"]
    t0 = time.monotonic()
    ran = subprocess.run(chroot.run_in_argv(node.root, stop, env=node.env, network=True,
                                            cwd=node.unit["WorkingDirectory"]),
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.strip() == "ok", ran.stdout + ran.stderr
    try:
        node.proc.wait(timeout=max(0.1, 10 - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the node still runs 10 s after ExecStop:\n{node.log_tail()}")
    took = time.monotonic() - t0
    assert not alive(beam)
    assert node.proc.returncode == 0, node.log_tail()
    assert not node_http.probe_health(node.port, timeout=5)[0]
    assert took < 10
