"""The content stage for real: sample, dir and tarball through doit; the sample
node answering on the host (also under python3-minimal's stdlib alone); the
manifest changing exactly when content changes; a moved git branch rebuilding
(real git repo, docker replaced by the recording stub); a real Docker build
where an engine answers; the CU wallet script under the host's node."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import BuildError, UnsafeArchive
from hbos.paths import Paths
from hbos.stages import content
from hbos.util import fsutil, tree as htree
from tests.conftest import ROOT, missing_prerequisite
from tests.support import docker_stub

pytestmark = [pytest.mark.integration]


def doit(args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"doit {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def ran(proc) -> bool:
    return bool(re.search(r"^\.  content$", proc.stdout + proc.stderr, re.M))


def skipped(proc) -> bool:
    return bool(re.search(r"^-- content$", proc.stdout + proc.stderr, re.M))


class Project:
    def __init__(self, tmp: Path, profile: str | None = None):
        self.tmp = tmp
        self.over = tmp / "over.yaml"
        self.build = tmp / "build"
        self.profile = profile

    def write(self, text: str = "") -> None:
        # the content stage copies the firmware (HyperBEAM's reference OVMF): a
        # stand-in file, so `doit content` does not build edk2 first
        ovmf = self.tmp / "stand-in-OVMF.fd"
        ovmf.write_bytes(b"not an OVMF: a test's stand-in\n")
        self.over.write_text(f"build_dir: {self.build}\nfirmware: {{ovmf: {ovmf}}}\n{text}")

    def args(self):
        return [f"config={self.over}"] + ([f"profile={self.profile}"] if self.profile else [])

    def doit(self, *extra, env=None, check=True):
        return doit([*extra, "content", *self.args()], env=env, check=check)

    @property
    def paths(self) -> Paths:
        return Paths(self.build)

    def cfg(self):
        return hconfig.load(overlay=self.over, profile=self.profile)


# ----------------------------------------------------------------- sample


# the local profile's content is the Erlang release; these tests are about the sample
SAMPLE = "content: {source: sample}\n"


def test_sample_through_doit_and_manifest_changes_exactly_with_content(tmp_path):
    p = Project(tmp_path, profile="local")
    p.write(SAMPLE)
    assert ran(p.doit())
    manifest = p.paths.content_manifest
    first = manifest.read_bytes()
    mtime = manifest.stat().st_mtime_ns
    assert skipped(p.doit())                       # nothing changed: nothing runs

    p.write(SAMPLE + "vm: {memory_mib: 2048}\n")             # a setting content does not read
    assert skipped(p.doit())

    forced = p.doit("--always-execute")            # rebuilt, same content
    assert ran(forced) and "manifest unchanged" in forced.stdout
    assert manifest.read_bytes() == first and manifest.stat().st_mtime_ns == mtime

    p.write("content: {source: sample, hyperbeam_ref: some-branch}\n")  # read by docker only
    proc = p.doit()
    assert ran(proc) and manifest.read_bytes() == first

    p.write(SAMPLE + "ports: {hyperbeam: 10001}\n")          # the unit's port: content changed
    proc = p.doit()
    assert ran(proc) and "manifest updated" in proc.stdout
    changed = fsutil.read_json(manifest)
    assert changed != json.loads(first)
    assert changed["files"] == htree.manifest(p.paths.content_tree)
    unit = (p.paths.content_tree / "etc/systemd/system/sample-node.service").read_text()
    assert "--port 10001" in unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, resp.read()
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sample node did not answer: {proc.stdout.read()!r}") from None
            time.sleep(0.1)


def _exec_start(unit: Path) -> list[str]:
    line = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line[len("ExecStart="):])


def _run_unit_command(tree: Path, port: int, python: list[str]):
    """The unit's own ExecStart, with the script taken from the tree and the port swapped."""
    argv = _exec_start(tree / "etc/systemd/system/sample-node.service")
    assert argv[0] == "/usr/bin/python3" and argv[argv.index("--host") + 1] == "0.0.0.0"
    argv[1] = str(tree / argv[1].lstrip("/"))
    argv[argv.index("--port") + 1] = str(port)
    return subprocess.Popen(python + argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _exercise(port: int, proc, build: str) -> None:
    base = f"http://127.0.0.1:{port}/~meta@1.0/info"
    status, body = _wait_http(base, proc)
    info = json.loads(body)
    assert status == 200 and info["build"] == build and info["config"] == {}
    post = urllib.request.Request(base, method="POST", data=json.dumps(
        {"snp_trusted": [{"vcpus": 1, "firmware": "ab" * 32}], "node": "é"}).encode(),
        headers={"codec-device": "json@1.0", "Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=5) as resp:
        assert resp.status == 200 and json.loads(resp.read())["ok"] is True
    _, body = _wait_http(base, proc)
    assert json.loads(body)["config"] == {"snp_trusted": [{"vcpus": 1, "firmware": "ab" * 32}],
                                          "node": "é"}
    _, address = _wait_http(base + "/address", proc)
    assert address.decode() == info["address"]
    bad = urllib.request.Request(base, method="POST", data=b"not json")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(bad, timeout=5)
    assert exc.value.code == 400


@pytest.fixture(scope="module")
def sample_tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    (tmp / "over.yaml").write_text(f"build_dir: {tmp / 'build'}\n{SAMPLE}")
    cfg = hconfig.load(overlay=tmp / "over.yaml", profile="local")
    paths = Paths.from_config(cfg)
    content.build(cfg, paths)
    return paths.content_tree


def test_sample_node_answers_on_the_host(sample_tree):
    port = _free_port()
    proc = _run_unit_command(sample_tree, port, ["/usr/bin/python3"])
    try:
        _exercise(port, proc, content.sample_build())
    finally:
        proc.kill()
        proc.wait()


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_sample_node_speaks_enough_http(sample_tree):
    port = _free_port()
    proc = _run_unit_command(sample_tree, port, ["/usr/bin/python3"])
    try:
        _wait_http(f"http://127.0.0.1:{port}/~meta@1.0/info", proc)
        body = json.dumps({"big": "x" * 200_000}).encode()
        answer = _raw(port, b"POST /~meta@1.0/info HTTP/1.1\r\nHost: x\r\n"
                      b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
        assert json.loads(answer.split(b"\r\n\r\n", 2)[2])["config"]["big"] == "x" * 200_000
        chunked = _raw(port, b"POST /~meta@1.0/info HTTP/1.1\r\nHost: x\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        assert chunked.startswith(b"HTTP/1.1 411 ")
        head = _raw(port, b"HEAD /~meta@1.0/info HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
        assert _raw(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        too_big = _raw(port, b"POST /~meta@1.0/info HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
        assert too_big.startswith(b"HTTP/1.1 413 ")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_sample_node_accepts_the_launchers_post_start_configuration(sample_tree):
    from hbos.launch import node_http
    from hbos.measure import nodeconfig
    port = _free_port()
    proc = _run_unit_command(sample_tree, port, ["/usr/bin/python3"])
    try:
        _wait_http(f"http://127.0.0.1:{port}/~meta@1.0/info", proc)
        record = {"kernel": "aa" * 48, "initrd": "bb" * 48, "append": "cc" * 48,
                  "firmware": "dd" * 48, "vcpus": 1, "vcpu_type": "EPYC-v4",
                  "vmm_type": "QEMU", "guest_features": 1, "expected_hash": "ee" * 48}
        body = nodeconfig.post_start_body(record, (), f"http://127.0.0.1:{port}")
        answer = json.loads(node_http.send_post_start(port, body).body)
        assert answer["ok"] is True and answer["config"] == body
        _, info = _wait_http(f"http://127.0.0.1:{port}/~meta@1.0/info", proc)
        assert json.loads(info)["config"]["snp_trusted"] == body["snp_trusted"]
    finally:
        proc.kill()
        proc.wait()


def _minimal_stdlib(dest: Path) -> Path:
    """A copy of exactly the .py files libpython3.11-minimal ships (Debian's list)."""
    proc = subprocess.run(["dpkg", "-L", "libpython3.11-minimal"], capture_output=True, text=True)
    if proc.returncode != 0:
        missing_prerequisite("libpython3.11-minimal is not installed (dpkg -L failed)")
    prefix = "/usr/lib/python3.11/"
    for line in proc.stdout.splitlines():
        if line.startswith(prefix) and line.endswith(".py") and os.path.isfile(line):
            target = dest / line[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(line, target)
    return dest


def test_sample_node_runs_on_python3_minimal_stdlib(sample_tree, tmp_path):
    if not os.path.exists("/usr/bin/python3.11"):
        missing_prerequisite("/usr/bin/python3.11 not present")
    lib = _minimal_stdlib(tmp_path / "lib")
    assert not (lib / "http" / "server.py").exists() and not (lib / "json").exists()
    port = _free_port()
    # -I -S: no site, no user paths; the stdlib is only the minimal package's files
    boot = (f"import sys; sys.path[:] = [{str(lib)!r}]; sys.argv = sys.argv[1:]; "
            f"import runpy; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = _run_unit_command(sample_tree, port, ["/usr/bin/python3.11", "-I", "-S", "-c", boot])
    try:
        _exercise(port, proc, content.sample_build())
        assert proc.poll() is None
    finally:
        proc.kill()
        out = proc.communicate()[0].decode(errors="replace")
    assert "ModuleNotFoundError" not in out


# ----------------------------------------------------------------- dir and tarball


def make_prebuilt(root: Path) -> Path:
    """A small prebuilt tree in the docker output layout."""
    hb = root / "opt/hyperbeam/bin/hb"
    hb.parent.mkdir(parents=True)
    hb.write_text("#!/bin/sh\nexec true\n")
    hb.chmod(0o755)
    (root / "opt/hyperbeam/releases").mkdir()
    (root / "opt/hyperbeam/releases/start_erl.data").write_text("15.0 0.0.1\n")
    (root / "opt/cu/src").mkdir(parents=True)
    (root / "opt/cu/package.json").write_text('{"name": "@permaweb/ao-cu"}\n')
    (root / "opt/cu/src/app.js").write_text("// cu\n")
    node = root / "opt/node/bin/node"
    node.parent.mkdir(parents=True)
    node.write_text("#!/bin/sh\n")
    node.chmod(0o755)
    os.symlink("hb", root / "opt/hyperbeam/bin/hb-link")
    return root


def _assert_services(tree: Path) -> None:
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    assert sorted(os.listdir(wants)) == ["cu.service", "hbos-data.service", "hyperbeam.service"]
    for unit in ("hyperbeam.service", "cu.service"):
        assert os.readlink(wants / unit) == f"../{unit}"
        assert (tree / "etc/systemd/system" / unit).is_file()
    assert (tree / "opt/hyperbeam/config.flat").read_text().startswith("port: 10000\n")
    assert "PORT=6363" in (tree / "opt/cu/cu.env").read_text()
    assert (tree / "opt/hbos/cu-wallet.js").is_file()
    assert os.readlink(tree / "opt/hyperbeam/bin/hb-link") == "hb"
    assert not any("wallet.json" == p.name for p in tree.rglob("*"))


def test_dir_source_copies_renders_and_notices_source_changes(tmp_path):
    src = make_prebuilt(tmp_path / "prebuilt")
    p = Project(tmp_path)
    p.write(f"content: {{source: dir, path: {src}}}\n")
    assert ran(p.doit())
    _assert_services(p.paths.content_tree)
    assert skipped(p.doit())
    first = p.paths.content_manifest.read_bytes()
    (src / "opt/cu/src/app.js").write_text("// cu, new\n")   # no config change at all
    proc = p.doit()
    assert ran(proc) and "manifest updated" in proc.stdout
    assert p.paths.content_manifest.read_bytes() != first
    assert (p.paths.content_tree / "opt/cu/src/app.js").read_text() == "// cu, new\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can own files as another user")
def test_owners_are_normalized_to_root(tmp_path):
    src = make_prebuilt(tmp_path / "prebuilt")
    os.lchown(src / "opt/cu/src/app.js", 1234, 5678)
    os.lchown(src / "opt/hyperbeam/bin/hb-link", 1234, 5678)
    p = Project(tmp_path)
    p.write(f"content: {{source: dir, path: {src}}}\n")
    content.build(p.cfg(), p.paths)
    for path in [p.paths.content_tree, *p.paths.content_tree.rglob("*")]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), path


def test_dir_source_refuses_a_fifo(tmp_path):
    src = make_prebuilt(tmp_path / "prebuilt")
    os.mkfifo(src / "opt/cu/pipe")
    p = Project(tmp_path)
    p.write(f"content: {{source: dir, path: {src}}}\n")
    with pytest.raises(BuildError, match=r"opt/cu/pipe is a device node, fifo or socket"):
        content.build(p.cfg(), p.paths)
    assert not p.paths.content_tree.exists()


def _tar(path: Path, root: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname=".")
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_tarball_source_extracts_safely(tmp_path):
    src = make_prebuilt(tmp_path / "prebuilt")
    tarball = _tar(tmp_path / "content.tar.gz", src)
    p = Project(tmp_path)
    p.write(f"content: {{source: tarball, path: {tarball}}}\n")
    assert ran(p.doit())
    _assert_services(p.paths.content_tree)
    manifest = fsutil.read_json(p.paths.content_manifest)
    assert manifest["source"] == "tarball"
    assert skipped(p.doit())


def test_tarball_with_unsafe_member_is_refused_with_its_path(tmp_path):
    src = make_prebuilt(tmp_path / "prebuilt")
    evil = tarfile.TarInfo("opt/../../etc/cron.d/evil")
    evil.size = 4
    tarball = _tar(tmp_path / "evil.tar.gz", src, [(evil, b"evil")])
    p = Project(tmp_path)
    p.write(f"content: {{source: tarball, path: {tarball}}}\n")
    with pytest.raises(UnsafeArchive, match=re.escape("opt/../../etc/cron.d/evil")):
        content.build(p.cfg(), p.paths)
    proc = p.doit(check=False)
    assert proc.returncode != 0
    assert "opt/../../etc/cron.d/evil" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not p.paths.content_tree.exists()


# ----------------------------------------------------------------- docker (stub) + git refs


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def test_moved_branch_rebuilds_and_is_recorded(tmp_path):
    if shutil.which("git") is None:
        missing_prerequisite("git is not installed")
    repo = tmp_path / "HyperBEAM"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "edge")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "one")
    first = _git(repo, "rev-parse", "HEAD")
    _git(repo, "tag", "-a", "v1", "-m", "release 1")

    log = tmp_path / "docker.jsonl"
    docker_stub.install(tmp_path / "bin", log)
    env = docker_stub.env_with(tmp_path / "bin")
    p = Project(tmp_path)
    p.write(f"content: {{source: docker, hyperbeam_repo: {repo}, hyperbeam_ref: edge, cu: false}}\n")

    assert ran(p.doit(env=env))
    refs = fsutil.read_json(p.paths.content_manifest)["refs"]
    assert refs == {"hyperbeam": {"repo": str(repo), "ref": "edge", "commit": first}}
    assert [c[1] for c in docker_stub.calls(log)] == ["info", "buildx", "build", "create", "cp",
                                                      "rm"]
    assert f"HB_COMMIT={first}" in docker_stub.calls(log)[2]

    assert skipped(p.doit(env=env))                   # branch did not move
    assert len(docker_stub.calls(log)) == 6

    _git(repo, "commit", "-q", "--allow-empty", "-m", "two")   # the branch moves
    second = _git(repo, "rev-parse", "HEAD")
    proc = p.doit(env=env)
    assert ran(proc) and "manifest updated" in proc.stdout
    assert fsutil.read_json(p.paths.content_manifest)["refs"]["hyperbeam"]["commit"] == second
    assert f"HB_COMMIT={second}" in docker_stub.calls(log)[8]

    p.write(f"content: {{source: docker, hyperbeam_repo: {repo}, hyperbeam_ref: v1, cu: false}}\n")
    assert ran(p.doit(env=env))                       # annotated tag -> its commit
    assert fsutil.read_json(p.paths.content_manifest)["refs"]["hyperbeam"]["commit"] == first

    p.write(f"content: {{source: docker, hyperbeam_repo: {repo}, hyperbeam_ref: nope, cu: false}}\n")
    proc = p.doit(env=env, check=False)
    assert proc.returncode != 0
    assert f"'nope' is not a branch or tag of {repo}" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_no_engine_through_doit_is_one_line(tmp_path):
    docker_stub.install(tmp_path / "bin", tmp_path / "docker.jsonl")
    env = docker_stub.env_with(tmp_path / "bin", DOCKER_STUB_INFO="fail")
    p = Project(tmp_path)
    p.write(f"content: {{source: docker, hyperbeam_ref: {'1' * 40}, ao_ref: {'2' * 40}}}\n")
    proc = p.doit(env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    line = next(ln for ln in out.splitlines() if "no Docker engine" in ln)
    assert "'dir'" in line and "'tarball'" in line and "'sample'" in line


# ----------------------------------------------------------------- real docker, where it exists


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.docker
def test_real_docker_builds_a_tiny_image(tmp_path):
    if not _docker_works():
        pytest.skip("no Docker engine (docker info fails)")
    ctx = tmp_path / "ctx"
    (ctx / "hb/bin").mkdir(parents=True)
    (ctx / "hb/bin/hb").write_text("#!/bin/sh\necho tiny\n")
    (ctx / "hb/bin/hb").chmod(0o755)
    commit = "4" * 40
    (ctx / "hyperbeam.ref").write_text(commit + "\n")
    (ctx / "tiny.Dockerfile").write_text(
        "FROM scratch AS content-hb\n"
        "ARG HB_COMMIT\n"
        "COPY hb /hbos/tree/opt/hyperbeam\n"
        "COPY hyperbeam.ref /hbos/refs/hyperbeam\n")
    p = Project(tmp_path)
    p.write(f"content: {{source: docker, dockerfile: {ctx / 'tiny.Dockerfile'}, cu: false, "
            f"image_tag: 'hbos-content-test:{os.getpid()}', hyperbeam_ref: {commit}}}\n")
    try:
        content.build(p.cfg(), p.paths)
        tree = p.paths.content_tree
        assert (tree / "opt/hyperbeam/bin/hb").read_text() == "#!/bin/sh\necho tiny\n"
        assert (tree / "etc/systemd/system/hyperbeam.service").is_file()
        assert fsutil.read_json(p.paths.content_manifest)["refs"]["hyperbeam"]["commit"] == commit
        left = subprocess.run(["docker", "ps", "-a", "--filter", "name=hbos-content-",
                               "--format", "{{.Names}}"], capture_output=True, text=True).stdout
        assert f"hbos-content-{os.getpid()}" not in left
    finally:
        subprocess.run(["docker", "rmi", "-f", f"hbos-content-test:{os.getpid()}"],
                       capture_output=True)


# ----------------------------------------------------------------- the guest's wallet script


def test_cu_wallet_is_generated_once_with_private_mode(tmp_path):
    node = shutil.which("node")
    if node is None:
        missing_prerequisite("node is not installed (apt-get install nodejs)")
    wallet = tmp_path / "state" / "wallet.json"
    script = ROOT / "resources" / "cu-wallet.js"
    subprocess.run([node, str(script), str(wallet)], check=True, timeout=300)
    jwk = json.loads(wallet.read_text())
    assert jwk["kty"] == "RSA" and jwk["e"] == "AQAB"
    assert {"n", "d", "p", "q", "dp", "dq", "qi"} <= set(jwk)
    assert wallet.stat().st_mode & 0o777 == 0o600
    before = wallet.read_bytes()
    subprocess.run([node, str(script), str(wallet)], check=True, timeout=60)
    assert wallet.read_bytes() == before
