"""Content stage: docker command lines (recording stub on PATH), rendering,
config validation, ref picking, manifest writing and the sample node's own
JSON/HTTP logic. No Docker engine, no network."""

from __future__ import annotations

import ast
import json
import os
import random
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import BuildError, ConfigError
from hbos.measure import nodeconfig
from hbos.paths import Paths
from hbos.stages import content, docker
from hbos.util import fsutil, tree as htree
from tests.conftest import fake_firmware
from tests.support import docker_stub

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "tools" / "sample_node"
HB = "1" * 40
AO = "a" * 40


def load(tmp_path: Path, text: str = "", profile: str | None = None):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\n{text}")
    cfg = hconfig.load(overlay=overlay, profile=profile)
    paths = Paths.from_config(cfg)
    fake_firmware(paths)
    return cfg, paths


def sample_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("sample_node", SAMPLE / "sample_node.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------- command lines


def test_build_argv_is_exact(tmp_path):
    cfg, _ = load(tmp_path, f"content: {{hyperbeam_ref: {HB}, ao_ref: {AO}}}\n")
    refs = content.wanted_refs(cfg)
    args = content.docker_build_args(cfg, refs)
    dockerfile = ROOT / "resources" / "content.Dockerfile"
    argv = docker.build_argv(dockerfile, dockerfile.parent, "hbos-content:latest",
                             content.docker_target(cfg), args)
    assert argv == [
        "docker", "build", "--file", str(dockerfile), "--tag", "hbos-content:latest",
        "--target", "content", "--progress=plain",
        "--build-arg", "AO_COMMIT=" + AO,
        "--build-arg", "AO_REPO=https://github.com/permaweb/ao.git",
        "--build-arg", "CU_UNIT_MODE=hbu",
        "--build-arg", "GUEST_SUITE=" + cfg.rootfs.suite,
        "--build-arg", "HB_COMMIT=" + HB,
        "--build-arg", "HB_PROFILE=default",
        "--build-arg", "HB_REPO=https://github.com/permaweb/HyperBEAM.git",
        "--build-arg", "NODE_VERSION=22",
        "--build-arg", "OTP_VERSION=27",
        str(dockerfile.parent)]


def test_build_args_without_cu_target_hyperbeam_only(tmp_path):
    cfg, _ = load(tmp_path, f"content: {{hyperbeam_ref: {HB}, cu: false, "
                            f"hyperbeam_profile: default}}\n")
    args = content.docker_build_args(cfg, content.wanted_refs(cfg))
    assert sorted(args) == ["GUEST_SUITE", "HB_COMMIT", "HB_PROFILE", "HB_REPO", "NODE_VERSION",
                            "OTP_VERSION"]
    assert args["HB_PROFILE"] == "default"
    assert content.docker_target(cfg) == "content-hb"


def test_export_command_lines_are_exact(tmp_path):
    assert docker.create_argv("t:1", "n") == ["docker", "create", "--name", "n", "t:1",
                                              "/hbos-content"]
    assert docker.cp_argv("n", tmp_path) == ["docker", "cp", "n:/hbos/.", str(tmp_path)]
    assert docker.rm_argv("n") == ["docker", "rm", "--force", "n"]
    assert docker.info_argv() == ["docker", "info", "--format", "{{.ServerVersion}}"]


def test_dockerfile_declares_every_build_arg_and_target(tmp_path):
    text = (ROOT / "resources" / "content.Dockerfile").read_text()
    cfg, _ = load(tmp_path, f"content: {{hyperbeam_ref: {HB}, ao_ref: {AO}}}\n")
    for key in content.docker_build_args(cfg, content.wanted_refs(cfg)):
        assert f"ARG {key}" in text, key
    assert " AS content-hb" in text and " AS content\n" in text
    assert "<HB_BRANCH>" not in text  # nothing for anyone to substitute in place


# ----------------------------------------------------------------- stub docker runs


@pytest.fixture
def stub(tmp_path, monkeypatch):
    log = tmp_path / "docker-calls.jsonl"
    docker_stub.install(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("DOCKER_STUB_INFO", raising=False)
    monkeypatch.delenv("DOCKER_STUB_BUILD", raising=False)
    monkeypatch.delenv("DOCKER_STUB_CP", raising=False)
    monkeypatch.delenv("DOCKER_STUB_BUILDX", raising=False)
    return log


def _snapshot(path: Path):
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns


def test_docker_source_runs_exact_commands_and_never_edits_the_dockerfile(tmp_path, stub):
    cfg, paths = load(tmp_path, f"content: {{source: docker, hyperbeam_ref: {HB}, "
                                f"ao_ref: {AO}}}\n")
    dockerfile = cfg.path(cfg.content.dockerfile)
    before = _snapshot(dockerfile)
    content.build(cfg, paths)
    assert _snapshot(dockerfile) == before
    calls = docker_stub.calls(stub)
    name = docker.container_name()
    args = content.docker_build_args(cfg, content.wanted_refs(cfg))
    assert calls == [
        docker.info_argv(),
        docker.buildx_argv(),
        docker.build_argv(dockerfile, paths.content_dir / "docker-context",
                          "hbos-content:latest", "content", args),
        docker.create_argv("hbos-content:latest", name),
        docker.cp_argv(name, paths.content_dir / f".docker-out-{os.getpid()}"),
        docker.rm_argv(name),
    ]
    manifest = fsutil.read_json(paths.content_manifest)
    assert manifest["source"] == "docker"
    assert manifest["refs"]["hyperbeam"] == {
        "repo": "https://github.com/permaweb/HyperBEAM.git", "ref": HB, "commit": HB}
    assert manifest["refs"]["ao"]["commit"] == AO
    assert manifest["services"] == ["cu", "hyperbeam"]
    listed = {e["path"]: e for e in manifest["files"]}
    for path in ("opt/hyperbeam/bin/hb", "opt/hyperbeam/config.flat", "opt/cu/cu.env",
                 "opt/hbos/cu-wallet.js", "etc/systemd/system/hyperbeam.service",
                 "etc/systemd/system/cu.service"):
        assert listed[path]["type"] == "file", path
    assert listed["etc/systemd/system/multi-user.target.wants/cu.service"]["target"] == \
        "../cu.service"
    assert not (paths.content_dir / f".docker-out-{os.getpid()}").exists()
    # the context: the Dockerfile's directory, the rendered config.flat, the CU mode check
    ctx = paths.content_dir / "docker-context"
    assert sorted(p.name for p in ctx.iterdir()) == sorted(
        {p.name for p in dockerfile.parent.iterdir()} | {"config.flat", "cu-mode-check.sh"})
    assert (ctx / "config.flat").read_text() == nodeconfig.render_config_flat(cfg)
    assert listed["opt/hyperbeam/cache-mainnet"]["target"] == "/var/lib/hyperbeam/cache-mainnet"
    assert listed["etc/systemd/system/multi-user.target.wants/hbos-data.service"]["target"] \
        == "../hbos-data.service"
    assert listed["opt/hbos/hbos-data.sh"]["type"] == "file"
    # HyperBEAM's reference OVMF is the firmware this VM boots, whichever path built it
    firmware_sha = fsutil.sha256_file(paths.built_ovmf)
    assert listed[content.REFERENCE_OVMF]["sha256"] == firmware_sha
    assert manifest["reference_ovmf"] == {"path": content.REFERENCE_OVMF, "sha256": firmware_sha}
    assert manifest["snp_nif"] is False


def test_failed_build_shows_the_failing_step_tail_and_keeps_the_old_tree(tmp_path, stub,
                                                                          monkeypatch):
    cfg, paths = load(tmp_path, f"content: {{source: docker, hyperbeam_ref: {HB}, "
                                f"ao_ref: {AO}}}\n")
    content.build(cfg, paths)
    old_manifest = paths.content_manifest.read_bytes()
    dockerfile = cfg.path(cfg.content.dockerfile)
    before = _snapshot(dockerfile)
    stub.unlink()
    monkeypatch.setenv("DOCKER_STUB_BUILD", "fail")
    with pytest.raises(BuildError) as exc:
        content.build(cfg, paths)
    msg = str(exc.value)
    assert "docker build failed" in msg
    assert "hyperbeam 7/8" in msg
    assert "src/hb_opts.erl:42: syntax error before: '}'" in msg
    assert "npm warn" not in msg  # another step's output is not the failing step's
    assert _snapshot(dockerfile) == before
    assert [c[1] for c in docker_stub.calls(stub)] == ["info", "buildx", "build"]
    assert paths.content_manifest.read_bytes() == old_manifest
    assert (paths.content_tree / "opt/hyperbeam/bin/hb").exists()
    assert str(paths.log("content")) in msg


def test_without_buildx_the_legacy_builder_is_used(tmp_path, stub, monkeypatch):
    cfg, paths = load(tmp_path, f"content: {{source: docker, hyperbeam_ref: {HB}, cu: false}}\n")
    monkeypatch.setenv("DOCKER_STUB_BUILDX", "missing")
    content.build(cfg, paths)
    build = docker_stub.calls(stub)[2]
    assert build[:2] == ["docker", "build"] and "--progress=plain" not in build
    assert "--force-rm" in build
    assert build == docker.build_argv(cfg.path(cfg.content.dockerfile),
                                      paths.content_dir / "docker-context",
                                      "hbos-content:latest", "content-hb",
                                      content.docker_build_args(cfg, content.wanted_refs(cfg)),
                                      buildkit=False)
    stub.unlink()
    monkeypatch.setenv("DOCKER_STUB_BUILD", "fail")
    with pytest.raises(BuildError) as exc:
        content.build(cfg, paths)
    msg = str(exc.value)
    assert "step 14/30 : RUN cd /build/HyperBEAM" in msg
    assert "src/hb_opts.erl:42: syntax error before: '}'" in msg
    assert "Sending build context" not in msg


def test_failed_copy_still_removes_the_container(tmp_path, stub, monkeypatch):
    cfg, paths = load(tmp_path, f"content: {{source: docker, hyperbeam_ref: {HB}, cu: false}}\n")
    monkeypatch.setenv("DOCKER_STUB_CP", "fail")
    with pytest.raises(Exception) as exc:
        content.build(cfg, paths)
    assert "Could not find the file /hbos" in str(exc.value)
    calls = docker_stub.calls(stub)
    assert [c[1] for c in calls] == ["info", "buildx", "build", "create", "cp", "rm"]
    assert calls[-1] == docker.rm_argv(docker.container_name())
    assert not paths.content_tree.exists()
    assert not paths.content_manifest.exists()
    assert not list(paths.content_dir.glob(".docker-out-*"))


def test_no_engine_is_one_line_naming_the_alternatives(tmp_path, stub, monkeypatch):
    cfg, paths = load(tmp_path, f"content: {{source: docker, hyperbeam_ref: {HB}}}\n")
    monkeypatch.setenv("DOCKER_STUB_INFO", "fail")
    with pytest.raises(BuildError) as exc:
        content.build(cfg, paths)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "no Docker engine" in msg
    for alt in ("'dir'", "'tarball'", "'sample'"):
        assert alt in msg
    assert [c[1] for c in docker_stub.calls(stub)] == ["info"]


def test_no_docker_client_names_the_alternatives(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BuildError) as exc:
        docker.require_engine()
    assert "not installed" in str(exc.value) and "'sample'" in str(exc.value)


def test_image_checking_out_another_commit_is_refused(tmp_path, stub, monkeypatch):
    cfg, paths = load(tmp_path, f"content: {{source: docker, hyperbeam_ref: {HB}, cu: false}}\n")
    real = content.docker_build_args

    def other_commit(cfg, refs):  # the image checks out something else than resolved
        return {**real(cfg, refs), "HB_COMMIT": "3" * 40}
    monkeypatch.setattr(content, "docker_build_args", other_commit)
    with pytest.raises(BuildError, match="checked out 3{40}, expected 1{40}"):
        content.build(cfg, paths)
    assert not paths.content_manifest.exists()


# ----------------------------------------------------------------- failing step parsing


def test_failing_step_picks_the_step_that_failed():
    out = docker.failing_step(docker_stub.FAILED_BUILD_OUTPUT)
    lines = out.splitlines()
    assert lines[0] == ('step [hyperbeam 7/8] RUN cd /build/HyperBEAM  && '
                        'rebar3 as "$HB_PROFILE" release')
    assert "4.100 src/hb_opts.erl:42: syntax error before: '}'" in out
    assert "Verifying dependencies" in out
    assert "inflight" not in out
    assert lines[-1].startswith("ERROR: failed to solve")


def test_failing_step_falls_back_to_the_output_tail():
    plain = "\n".join(f"output line {i}" for i in range(1, 60)) + "\nerror: no such file"
    out = docker.failing_step(plain, lines=5)
    assert out.splitlines()[-1] == "error: no such file"
    assert len(out.splitlines()) == 5


# ----------------------------------------------------------------- refs


LS_REMOTE = f"""\
{"b" * 40}\tHEAD
{"c" * 40}\trefs/heads/main
{"d" * 40}\trefs/tags/v1
{"e" * 40}\trefs/tags/v1^{{}}
{"f" * 40}\trefs/heads/feature/main
"""


@pytest.mark.parametrize("ref, want", [
    ("main", "c" * 40), ("v1", "e" * 40), ("HEAD", "b" * 40),
    ("feature/main", "f" * 40), ("refs/tags/v1", "d" * 40), ("nope", None)])
def test_pick_ref(ref, want):
    assert content.pick_ref(LS_REMOTE, ref) == want


def test_commit_ids_need_no_lookup():
    assert content.resolve_ref("/nonexistent/repo", "ABCDEF" + "0" * 34) == "abcdef" + "0" * 34
    assert content.ls_remote_argv("R", "main") == ["git", "ls-remote", "R", "main", "main^{}"]


# ----------------------------------------------------------------- rendering and config


def test_units_follow_config(tmp_path):
    cfg, _ = load(tmp_path, "ports: {hyperbeam: 8734, cu: 6400}\n"
                            "content: {restart: always, restart_sec: 9, service_user: hb,\n"
                            "  hyperbeam_env: ['HB_PRINT=dev_meta', 'MSG=50% \"quoted\"'],\n"
                            "  hyperbeam_config: ['mode: prod']}\n")
    unit = content.render_hyperbeam_unit(cfg)
    assert "ExecStart=/opt/hyperbeam/bin/hb foreground\n" in unit
    assert "Restart=always\n" in unit and "RestartSec=9\n" in unit
    assert "DynamicUser=yes\nUser=hb\n" in unit
    assert "Environment=HB_PORT=8734\n" in unit
    assert 'Environment="HB_PRINT=dev_meta"\n' in unit
    assert 'Environment="MSG=50%% \\"quoted\\""\n' in unit
    assert "WantedBy=multi-user.target" in unit
    assert nodeconfig.render_config_flat(cfg) == "port: 8734\noperator: unclaimed\nmode: prod\n"
    cu = content.render_cu_unit(cfg)
    assert "ExecStartPre=/opt/node/bin/node /opt/hbos/cu-wallet.js /var/lib/cu/wallet.json" in cu
    env = content.render_cu_env(cfg)
    assert "PORT=6400\n" in env and "HB_URL=http://127.0.0.1:8734\n" in env
    assert "WALLET_FILE=/var/lib/cu/wallet.json\n" in env
    assert not any(line.startswith("WALLET=") for line in env.splitlines())


def test_sample_unit_runs_python3_on_all_interfaces(tmp_path):
    cfg, _ = load(tmp_path, "ports: {hyperbeam: 80}\ncontent: {service_user: root}\n",
                  profile="local")
    unit = content.render_sample_unit(cfg, "hbos-sample-x")
    assert ("ExecStart=/usr/bin/python3 /opt/hbos-sample/sample_node.py --host 0.0.0.0 "
            "--port 80 --build hbos-sample-x\n") in unit
    assert "User=root\n" in unit and "DynamicUser" not in unit
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit
    assert content.sample_build().startswith("hbos-sample-")


@pytest.mark.parametrize("text, key", [
    ("content: {cu_env: ['WALLET={\"kty\":\"RSA\"}']}\n", "content.cu_env"),
    ("content: {hyperbeam_env: ['API_TOKEN=x']}\n", "content.hyperbeam_env"),
    ("content: {hyperbeam_config: ['priv_key_jwk: x']}\n", "content.hyperbeam_config"),
    ("content: {hyperbeam_config: ['no colon']}\n", "content.hyperbeam_config"),
    ("content: {hyperbeam_config: ['operator: x']}\n", "content.hyperbeam_config"),
    ("content: {hyperbeam_config: ['port: 1']}\n", "content.hyperbeam_config"),
    ("content: {hyperbeam_operator: 'a b'}\n", "content.hyperbeam_operator"),
    ("content: {hyperbeam_state: ['../etc']}\n", "content.hyperbeam_state"),
    ("content: {docker_build_args: ['NPM_TOKEN=x']}\n", "content.docker_build_args"),
    ("launch: {forwards: ['80']}\n", "launch.forwards"),
    ("launch: {forwards: ['1.2.3.4:80:99999']}\n", "launch.forwards"),
    ("post_start: {settings: ['volume_key_secret: x']}\n", "post_start.settings"),
    ("post_start: {self_url: 'localhost'}\n", "post_start.self_url"),
    ("content: {cu_env: ['no-equals']}\n", "content.cu_env"),
    ("content: {restart: sometimes}\n", "content.restart"),
    ("content: {image_tag: 'Bad Tag'}\n", "content.image_tag"),
    ("content: {hyperbeam_ref: '--upload-pack=x'}\n", "content.hyperbeam_ref"),
    ("content: {service_user: 'Root User'}\n", "content.service_user"),
    ("content: {ao_repo: '--upload-pack=touch /tmp/x'}\n", "content.ao_repo"),
    ("content: {hyperbeam_repo: ''}\n", "content.hyperbeam_repo"),
])
def test_config_refuses_secrets_and_bad_values(tmp_path, text, key):
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    assert key in str(exc.value)


def test_config_yaml_documents_every_content_key():
    import dataclasses
    text = (ROOT / "config.yaml").read_text()
    block = text.split("\ncontent:\n", 1)[1].split("\n\n", 1)[0]
    for f in dataclasses.fields(hconfig.ContentConfig):
        assert f"\n  {f.name}:" in "\n" + block, f.name


def test_local_profile_builds_the_real_hyperbeam_from_the_shared_mirror():
    local = hconfig.load(profile="local")
    assert local.content.source == "hyperbeam"
    assert local.path(local.sources.mirror) == ROOT.parent / "shared" / "hyperbeam-sources"


# ----------------------------------------------------------------- manifest and trees


def test_manifest_is_rewritten_only_when_it_differs(tmp_path):
    target = tmp_path / "m.json"
    assert content.write_if_changed(target, {"a": 1})
    os.utime(target, (1, 1))
    assert not content.write_if_changed(target, {"a": 1})
    assert target.stat().st_mtime == 1
    assert content.write_if_changed(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}


def test_tree_fingerprint_notices_a_change(tmp_path):
    (tmp_path / "a").write_text("x")
    first = htree.fingerprint(tmp_path)
    assert htree.fingerprint(tmp_path) == first
    (tmp_path / "a").write_text("xy")
    assert htree.fingerprint(tmp_path) != first


def test_sample_tree_and_mtimes(tmp_path):
    cfg, paths = load(tmp_path, "content: {source: sample}\n", profile="local")
    content.build(cfg, paths)
    tree = paths.content_tree
    link = tree / "etc/systemd/system/multi-user.target.wants/sample-node.service"
    assert os.readlink(link) == "../sample-node.service"
    assert (tree / "opt/hbos-sample/sample_node.py").read_bytes() == \
        (SAMPLE / "sample_node.py").read_bytes()
    assert os.stat(tree / "opt/hbos-sample/sample_node.py").st_mode & 0o777 == 0o755
    for p in [tree, *tree.rglob("*")]:
        assert p.lstat().st_mtime == cfg.source_date_epoch, p
    manifest = fsutil.read_json(paths.content_manifest)
    assert manifest["source"] == "sample" and manifest["refs"] == {}
    assert manifest["services"] == ["sample-node"]
    assert manifest["sample_build"] == content.sample_build()
    assert manifest["files"] == htree.manifest(tree)
    assert "reference_ovmf" not in manifest and manifest["snp_nif"] is False
    assert not (tree / content.REFERENCE_OVMF).exists()


# ----------------------------------------------------------------- the hyperbeam source


@pytest.mark.parametrize("text, want", [
    ("-sname hb\n-setcookie hb\n", "-sname hb@localhost\n-setcookie hb\n"),
    ("## the node\n+K true\n-sname  hb \n-setcookie c", "## the node\n+K true\n"
                                                       "-sname hb@localhost\n-setcookie c"),
    ("-sname hb@localhost\n-setcookie hb\n", None),      # already hostnamed
    ("-sname hb@node.example\n", None),
    ("-name hb@127.0.0.1\n-setcookie hb\n", None),       # no -sname: nothing to change
    ("", None),
])
def test_hostnamed_vm_args(text, want):
    assert content.hostnamed_vm_args(text) == want


HB_MANIFEST = {"commit": "3635c5e6254e001cdfd716117c177017e97cc04b",
               "repo": "permaweb/HyperBEAM", "overlay": ["plugins-offline", "exclude-snp-nif"],
               "build_root": {"suite": "trixie", "mirror": "http://deb.debian.org/debian"},
               "snp_nif": False, "files": []}
NIF = "lib/hb-0.0.1/priv/crates/dev_snp_nif/libdev_snp_nif.so"


def fake_hyperbeam(tmp_path: Path, paths: Paths, nif: bool = False) -> None:
    """What the hyperbeam stage leaves: build/hyperbeam/hb.tar and manifest.json."""
    from hbos.stages import hyperbeam
    rel = tmp_path / "rel"
    files = {"bin/hb": b"#!/bin/sh\n", "releases/0.0.1/vm.args": b"-sname hb\n-setcookie hb\n",
             "lib/hb-0.0.1/ebin/hb.beam": b"FOR1"}
    if nif:
        files[NIF] = b"\x7fELF nif"
    for name, data in files.items():
        (rel / name).parent.mkdir(parents=True, exist_ok=True)
        (rel / name).write_bytes(data)
    os.chmod(rel / "bin" / "hb", 0o755)
    paths.hyperbeam_dir.mkdir(parents=True, exist_ok=True)
    hyperbeam.pack(rel, paths.hyperbeam_tar, 1700000000)
    fsutil.write_json(paths.hyperbeam_manifest, HB_MANIFEST)


def test_hyperbeam_source_installs_the_release_reference_ovmf_and_vm_args(tmp_path):
    cfg, paths = load(tmp_path, "content: {source: hyperbeam, cu: false}\n")
    fake_hyperbeam(tmp_path, paths)
    assert {paths.hyperbeam_tar, paths.hyperbeam_manifest} <= set(content.file_deps(cfg))
    content.build(cfg, paths)
    hb = paths.content_tree / "opt" / "hyperbeam"
    assert (hb / "bin" / "hb").read_bytes() == b"#!/bin/sh\n"
    ovmf = paths.content_tree / content.REFERENCE_OVMF
    assert ovmf.read_bytes() == paths.built_ovmf.read_bytes()
    assert ovmf.stat().st_mode & 0o777 == 0o644
    assert (hb / "vm.args").read_text() == "-sname hb@localhost\n-setcookie hb\n"
    assert (hb / "releases" / "0.0.1" / "vm.args").read_text() == "-sname hb\n-setcookie hb\n"
    assert (hb / "config.flat").read_text() == nodeconfig.render_config_flat(cfg)
    manifest = fsutil.read_json(paths.content_manifest)
    assert manifest["source"] == "hyperbeam" and "hyperbeam" in manifest["services"]
    assert manifest["hyperbeam"] == {k: HB_MANIFEST[k]
                                     for k in ("commit", "repo", "overlay", "build_root")}
    assert manifest["snp_nif"] is False
    assert manifest["reference_ovmf"] == {"path": "opt/hyperbeam/test/OVMF-1.55.fd",
                                          "sha256": fsutil.sha256_file(paths.built_ovmf)}
    assert manifest["files"] == htree.manifest(paths.content_tree)


def test_hyperbeam_source_with_the_snp_nif_and_a_given_firmware(tmp_path):
    other = tmp_path / "other-OVMF.fd"
    other.write_bytes(b"another firmware\n")
    cfg, paths = load(tmp_path, f"content: {{source: hyperbeam, cu: false}}\n"
                                f"firmware: {{ovmf: {other}}}\n")
    fake_hyperbeam(tmp_path, paths, nif=True)
    content.build(cfg, paths)
    assert (paths.content_tree / "opt" / "hyperbeam" / NIF).is_file()
    manifest = fsutil.read_json(paths.content_manifest)
    assert manifest["snp_nif"] is True
    assert manifest["reference_ovmf"]["sha256"] == fsutil.sha256_file(other)
    assert (paths.content_tree / content.REFERENCE_OVMF).read_bytes() == other.read_bytes()


# ----------------------------------------------------------------- sample node internals


def _values(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randrange(-10**12, 10**12)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind in (3, 4):
        return "".join(chr(rng.choice([rng.randrange(0x20, 0x7f), rng.randrange(0, 0x20),
                                       rng.randrange(0xa0, 0x2fff), 0x1f600, 0x22, 0x5c]))
                       for _ in range(rng.randrange(12)))
    if kind in (5, 6):
        return {str(_values(rng, 3)): _values(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_values(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_sample_json_round_trips_against_the_stdlib():
    node = sample_module()
    rng = random.Random(1234)
    for _ in range(500):
        value = _values(rng)
        text = node.dumps(value)
        assert json.loads(text) == value
        assert node.loads(text) == value
        assert node.loads(json.dumps(value, indent=2, ensure_ascii=True)) == value


@pytest.mark.parametrize("bad", ["", "{", "[1,]", "{'a': 1}", "01", "1.", "tru", "\"\\x\"",
                                 "{\"a\" 1}", "[1] 2", "\"a\nb\"", "-", "1e"])
def test_sample_json_refuses_invalid_text(bad):
    node = sample_module()
    with pytest.raises(node.JSONError):
        node.loads(bad)
    with pytest.raises(ValueError):
        json.loads(bad)


def test_sample_routes():
    node = sample_module()
    state = node.Node("b1", 10000)
    status, ctype, body = node.route(state, "GET", "/~meta@1.0/info", {}, b"")
    info = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert info["build"] == "b1" and info["port"] == 10000 and info["config"] == {}
    status, _, body = node.route(state, "POST", "/~meta@1.0/info",
                                 {"codec-device": "json@1.0"}, b'{"snp_trusted": [{"vcpus": 1}]}')
    assert status == 200 and json.loads(body)["config"] == {"snp_trusted": [{"vcpus": 1}]}
    node.route(state, "POST", "/~meta@1.0/info", {}, b'{"operator": "me"}')
    info = json.loads(node.route(state, "GET", "/~meta@1.0/info", {}, b"")[2])
    assert info["config"] == {"snp_trusted": [{"vcpus": 1}], "operator": "me"}
    assert node.route(state, "GET", "/~meta@1.0/info/address", {}, b"")[2] == state.address
    assert node.route(state, "GET", "/~meta@1.0/info/operator", {}, b"")[2] == "me"
    assert node.route(state, "GET", "/~meta@1.0/info/nothing", {}, b"")[0] == 404
    assert node.route(state, "POST", "/~meta@1.0/info", {}, b"[1]")[0] == 400
    assert node.route(state, "POST", "/~meta@1.0/info", {}, b"{x")[0] == 400
    assert node.route(state, "POST", "/~meta@1.0/info", {"codec-device": "flat@1.0"},
                      b"{}")[0] == 415
    assert node.route(state, "DELETE", "/~meta@1.0/info", {}, b"")[0] == 405
    assert node.route(state, "GET", "/other", {}, b"")[0] == 404


# Modules in Debian bookworm's libpython3.11-minimal (what python3-minimal gives
# the guest): no http.server, socketserver, json, secrets, email is there.
MINIMAL_MODULES = {
    "__future__", "argparse", "base64", "os", "re", "signal", "socket", "sys", "threading",
    "time", "selectors", "struct", "binascii", "errno", "_thread", "collections", "enum",
    "functools", "types", "typing", "io", "codecs", "stat", "posixpath", "warnings",
}


def test_sample_imports_only_python3_minimal_modules():
    tree = ast.parse((SAMPLE / "sample_node.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported and imported <= MINIMAL_MODULES, imported - MINIMAL_MODULES
