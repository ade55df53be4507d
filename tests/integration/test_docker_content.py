"""The Docker content path against a real engine (Debian's docker.io):
`dockerd --iptables=false --bridge=none` is started here when none answers
(.ci/run starts one), the base image is `docker import` of the guest's base
root tarball, the Dockerfile is tests/docker/content-test.Dockerfile selected
through content.dockerfile + content.docker_build_args, and the refs come from
local file:// git repositories. No registry, no network.

Checked for real: the build arguments reach the build, config.flat is in the
context, create/cp/rm (rm also when cp fails: no container is left), the refs
check, the CU mode check inside a container, and a failing step's output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import BuildError
from hbos.measure import nodeconfig
from hbos.paths import Paths
from hbos.stages import content
from hbos.util import fsutil
from tests.conftest import ROOT, fake_firmware, missing_prerequisite, rootfs_cache_key

pytestmark = [pytest.mark.integration]

DOCKERFILE = ROOT / "tests" / "docker" / "content-test.Dockerfile"
TAG = "hbos-content-test:latest"


def _docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=timeout)


def _engine_answers() -> bool:
    try:
        return _docker("info", "--format", "{{.ServerVersion}}", check=False,
                       timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory):
    """A Docker engine: the running one, else dockerd started here (and stopped after)."""
    import shutil
    if not shutil.which("docker") or not shutil.which("dockerd"):
        missing_prerequisite("docker.io is not installed (docker, dockerd)")
    if _engine_answers():
        yield None
        return
    if os.geteuid() != 0:
        missing_prerequisite("no Docker engine answers and dockerd needs root to start")
    log_path = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(["dockerd", "--iptables=false", "--bridge=none"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not _engine_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                missing_prerequisite(f"dockerd cannot start here: "
                                     f"{log_path.read_text(errors='replace')[-800:]}")
            time.sleep(1)
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.fixture(scope="module")
def base_image(docker_engine, base_rootfs_cache):
    """The guest's base root as a local image (docker import), once per rootfs config;
    the images the test Dockerfile made (label hbos-test=content) are removed after."""
    cfg = hconfig.load(profile="local")
    tag = f"hbos-test-base:{rootfs_cache_key(cfg)}"
    if _docker("image", "inspect", tag, check=False).returncode != 0:
        _docker("import", str(base_rootfs_cache.base_rootfs), tag)
    yield tag
    made = _docker("images", "-a", "-q", "--filter", "label=hbos-test=content",
                   check=False).stdout.split()
    _docker("rmi", "-f", TAG, *sorted(set(made)), check=False)


def _git_repo(path: Path, branch: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    path.mkdir(parents=True)
    for argv in (["git", "init", "-q", "-b", branch], ["git", "commit", "-q",
                                                       "--allow-empty", "-m", "one"]):
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    return {"hb": (f"file://{root / 'hb'}", _git_repo(root / "hb", "edge")),
            "ao": (f"file://{root / 'ao'}", _git_repo(root / "ao", "cu-branch"))}


def _load(tmp_path: Path, base_image: str, repos, extra: str = "", args: tuple = (),
          cu: bool = True):
    build_args = json.dumps([f"BASE_IMAGE={base_image}", *args])   # JSON is YAML
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        f"build_dir: {tmp_path / 'build'}\n"
        f"content:\n  source: docker\n  dockerfile: {DOCKERFILE}\n  image_tag: {TAG}\n"
        f"  hyperbeam_repo: {repos['hb'][0]}\n  hyperbeam_ref: edge\n"
        f"  ao_repo: {repos['ao'][0]}\n  ao_ref: cu-branch\n  cu: {str(cu).lower()}\n"
        f"  docker_build_args: {build_args}\n{extra}")
    cfg = hconfig.load(overlay=overlay)
    paths = Paths.from_config(cfg)
    fake_firmware(paths)
    return cfg, paths


def _containers() -> list[str]:
    """This test run's content containers (hbos.stages.docker names them by pid: another
    run's, e.g. one killed mid-build, are not ours to judge)."""
    ours = f"hbos-content-{os.getpid()}"
    return [n for n in _docker("ps", "-a", "--filter", f"name={ours}", "--format",
                               "{{.Names}}").stdout.split() if n == ours]


def test_real_build_takes_the_tree_with_build_args_refs_and_config_flat(tmp_path, base_image,
                                                                       repos):
    cfg, paths = _load(tmp_path, base_image, repos)
    content.build(cfg, paths)
    manifest = fsutil.read_json(paths.content_manifest)
    assert manifest["refs"]["hyperbeam"] == {"repo": repos["hb"][0], "ref": "edge",
                                             "commit": repos["hb"][1]}
    assert manifest["refs"]["ao"]["commit"] == repos["ao"][1]
    assert manifest["services"] == ["cu", "hyperbeam"]
    tree = paths.content_tree
    # config.flat was in the source tree before the release step
    assert (tree / "opt/hyperbeam/config.flat.built").read_text() == \
        nodeconfig.render_config_flat(cfg)
    args = (tree / "opt/hyperbeam/build-args").read_text()
    assert f"HB_REPO={repos['hb'][0]}\n" in args and "HB_PROFILE=default\n" in args
    assert f"GUEST_SUITE={cfg.rootfs.suite}\n" in args
    assert os.readlink(tree / "opt/hyperbeam/cache-mainnet") == \
        "/var/lib/hyperbeam/cache-mainnet"
    assert "--experimental-wasm-memory64" in (tree / "etc/systemd/system/cu.service").read_text()
    # the firmware the VM boots, where HyperBEAM's SNP code opens its reference OVMF
    assert (tree / "opt/hyperbeam/test/OVMF-1.55.fd").read_bytes() == \
        paths.built_ovmf.read_bytes()
    assert manifest["reference_ovmf"] == {"path": "opt/hyperbeam/test/OVMF-1.55.fd",
                                          "sha256": fsutil.sha256_file(paths.built_ovmf)}
    assert _containers() == []


def test_a_cu_without_the_configured_mode_fails_the_build_early(tmp_path, base_image, repos):
    cfg, paths = _load(tmp_path, base_image, repos, args=("CU_MODES=\"'cu', 'ru'\"",))
    with pytest.raises(BuildError) as exc:
        content.build(cfg, paths)
    msg = str(exc.value)
    assert "docker build failed" in msg
    assert "UNIT_MODE=hbu is not accepted" in msg and "cu,ru" in msg
    assert not paths.content_manifest.exists()


def test_an_image_with_another_commit_is_refused(tmp_path, base_image, repos):
    cfg, paths = _load(tmp_path, base_image, repos, args=("WRONG_COMMIT=" + "b" * 40,),
                       cu=False)
    with pytest.raises(BuildError) as exc:
        content.build(cfg, paths)
    assert f"hyperbeam: the image checked out {'b' * 40}, expected {repos['hb'][1]}" in \
        str(exc.value)
    assert _containers() == []


def _all_containers() -> set[str]:
    return set(_docker("ps", "-a", "-q").stdout.split())


def test_a_failing_step_shows_its_own_output(tmp_path, base_image, repos):
    cfg, paths = _load(tmp_path, base_image, repos, args=("FAIL_AT=hyperbeam",), cu=False)
    before = _all_containers()
    with pytest.raises(BuildError) as exc:
        content.build(cfg, paths)
    msg = str(exc.value)
    assert "docker build failed" in msg and str(paths.log("content")) in msg
    assert "src/hb_opts.erl:42: syntax error before: '}'" in msg
    assert _all_containers() == before     # the failed step's container is gone too


def test_a_failed_copy_still_removes_the_container(tmp_path, base_image, repos):
    cfg, paths = _load(tmp_path, base_image, repos, args=("HB_OUT=out-empty",), cu=False)
    with pytest.raises(BuildError) as exc:
        content.build(cfg, paths)
    assert "taking /hbos out of the image" in str(exc.value)
    assert _containers() == []
    assert not any(p.name.startswith(".docker-out-") for p in paths.content_dir.iterdir())
