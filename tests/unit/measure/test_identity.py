"""Launch identity: keys, ID block / ID auth (against virtee/sev's vectors), HOST_DATA,
and the launcher's use of them (the exact QEMU option it builds)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from hbos import config as hconfig
from hbos.errors import IdentityError, LaunchError
from hbos.launch import plan, qemu, start
from hbos.measure import idblock, identity, launch_files, nodeconfig
from hbos.paths import Paths
from hbos.stages import measure, vmconfig

VEC = Path(__file__).resolve().parents[2] / "vectors" / "idblock"


def _vec_key(name: str):
    return serialization.load_pem_private_key((VEC / name).read_bytes(), None)


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((VEC / "expected.json").read_text())


# ----------------------------------------------------------------- AMD formats, vectors


def test_id_block_bytes_match_the_sev_crate(expected):
    block = idblock.IdBlock(launch_digest=bytes.fromhex(expected["launch_digest"]),
                            family_id=bytes.fromhex(expected["family_id"]),
                            image_id=bytes.fromhex(expected["image_id"]),
                            guest_svn=expected["guest_svn"], policy=int(expected["policy"], 16))
    raw = block.to_bytes()
    assert len(raw) == idblock.ID_BLOCK_SIZE
    assert base64.b64encode(raw).decode() == expected["id_block_b64"]
    assert idblock.IdBlock.from_bytes(raw) == block


def test_key_digests_match_the_sev_crate(expected):
    assert identity.key_digest(_vec_key("test_id_key.pem").public_key()) == \
        base64.b64decode(expected["id_key_digest_b64"]).hex()
    assert identity.key_digest(_vec_key("test_auth_key.pem").public_key()) == \
        base64.b64decode(expected["author_key_digest_b64"]).hex()


def test_id_auth_layout_matches_the_sev_crate(expected):
    """Their signatures + our AMD public keys assemble to their 4096-byte structure,
    and our verifier accepts their signatures (same signed bytes, same r/s order)."""
    id_key, author = _vec_key("test_id_key.pem"), _vec_key("test_auth_key.pem")
    theirs = (VEC / "test_auth_block.bin").read_bytes()
    ours = idblock.assemble_id_auth((VEC / "test_id_sig.bin").read_bytes(),
                                    identity.amd_public_key(id_key.public_key()),
                                    (VEC / "test_auth_sig.bin").read_bytes(),
                                    identity.amd_public_key(author.public_key()))
    assert ours == theirs
    info = idblock.verify(base64.b64decode(expected["id_block_b64"]), theirs)
    assert info.id_key_digest == base64.b64decode(expected["id_key_digest_b64"]).hex()
    assert info.author_key_digest == base64.b64decode(expected["author_key_digest_b64"]).hex()


def test_our_signatures_verify_and_are_deterministic(expected):
    id_key, author = _vec_key("test_id_key.pem"), _vec_key("test_auth_key.pem")
    block = base64.b64decode(expected["id_block_b64"])
    auth = idblock.sign(block, id_key, author)
    assert len(auth) == idblock.ID_AUTH_SIZE
    assert auth == idblock.sign(block, id_key, author)
    # the public keys and the algorithm words are the crate's bytes exactly
    theirs = (VEC / "test_auth_block.bin").read_bytes()
    for lo, hi in ((0, 0x40), (0x240, 0x644), (0x880, 0xC84)):
        assert auth[lo:hi] == theirs[lo:hi]
    idblock.verify(block, auth)


@pytest.mark.parametrize("offset", [0x40, 0x40 + 72, 0x250, 0x680, 0x890])
def test_a_flipped_bit_in_id_auth_is_refused(expected, offset):
    block = base64.b64decode(expected["id_block_b64"])
    auth = bytearray((VEC / "test_auth_block.bin").read_bytes())
    auth[offset] ^= 1
    with pytest.raises(IdentityError):
        idblock.verify(block, bytes(auth))


def test_another_id_block_is_refused(expected):
    block = bytearray(base64.b64decode(expected["id_block_b64"]))
    block[0x54] = 1  # guest SVN 1
    with pytest.raises(IdentityError, match="ID key's signature"):
        idblock.verify(bytes(block), (VEC / "test_auth_block.bin").read_bytes())


def test_amd_signature_is_little_endian_r_then_s():
    key = _vec_key("test_id_key.pem")
    sig = identity.amd_signature(key, b"data")
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    r, s = decode_dss_signature(identity.sign_der(key, b"data"))
    assert sig[:72] == r.to_bytes(72, "little") and sig[72:144] == s.to_bytes(72, "little")
    assert sig[144:] == bytes(512 - 144)


# ----------------------------------------------------------------- keys


def test_create_keys_writes_four_files_private_ones_0600(tmp_path):
    files = identity.KeyFiles(tmp_path / "keys")
    created = identity.create_keys(files)
    assert sorted(created) == sorted(files.all())
    for role in (identity.ID, identity.AUTHOR):
        assert stat.S_IMODE(files.private(role).stat().st_mode) == 0o600
        key = identity.load_private(files.private(role))
        assert key.curve.name == "secp384r1"
        assert identity.public_pem(identity.load_public(files.public(role))) == \
            identity.public_pem(key.public_key())
    # openssl agrees it is a P-384 key
    out = subprocess.run(["openssl", "pkey", "-in", str(files.private(identity.ID)), "-noout",
                          "-text"], capture_output=True, text=True, check=True).stdout
    assert "P-384" in out or "secp384r1" in out


def test_create_keys_never_overwrites(tmp_path):
    files = identity.KeyFiles(tmp_path / "keys")
    identity.create_keys(files)
    before = {p: p.read_bytes() for p in files.all()}
    files.public(identity.AUTHOR).unlink()
    assert identity.create_keys(files) == [files.public(identity.AUTHOR)]
    assert {p: p.read_bytes() for p in files.all()} == before


def test_a_public_key_of_another_key_is_refused(tmp_path):
    a, b = identity.KeyFiles(tmp_path / "a"), identity.KeyFiles(tmp_path / "b")
    identity.create_keys(a)
    identity.create_keys(b)
    os.replace(b.public(identity.ID), a.public(identity.ID))
    with pytest.raises(IdentityError, match="not the public key"):
        identity.create_keys(a)


def test_a_private_key_readable_by_others_is_refused(tmp_path):
    files = identity.KeyFiles(tmp_path / "keys")
    identity.create_keys(files)
    files.private(identity.ID).chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        identity.load_private(files.private(identity.ID))


def test_a_p256_key_is_refused(tmp_path):
    pem = tmp_path / "p256.pem"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
                    str(pem)], check=True, capture_output=True)
    pem.chmod(0o600)
    with pytest.raises(IdentityError, match="P-384"):
        identity.load_private(pem)


def test_keys_dir_defaults_to_the_users_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    cfg = hconfig.load()
    assert identity.key_files(cfg).directory == tmp_path / "xdg" / "hbos" / "keys"
    over = tmp_path / "o.yaml"
    over.write_text("identity: {keys_dir: mykeys}\n")
    cfg = hconfig.load(overlay=over)
    assert identity.key_files(cfg).directory == cfg.path("mykeys")


# ----------------------------------------------------------------- a measured build


@pytest.fixture
def build(tmp_path, amdsev_ovmf):
    """A measured VM with identity enabled: (cfg, paths, vm_config)."""
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel" * 100)
    initrd.write_bytes(b"initrd" * 100)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\n"
                       f"identity: {{enabled: true, keys_dir: {tmp_path / 'keys'}, guest_svn: 7}}\n"
                       "vm: {family_id: 0102030405060708090a0b0c0d0e0f10}\n")
    cfg = hconfig.load(overlay=overlay)
    paths = Paths.from_config(cfg)
    identity.make_keys(cfg)
    vm_config = tmp_path / "vm-config.toml"
    vm_config.write_text(vmconfig.render(cfg, kernel=kernel, initrd=initrd, ovmf=amdsev_ovmf,
                                         cmdline="console=ttyS0"))
    measure.write_measurement(vm_config, paths.measurement,
                              extra=lambda rec: identity.measurement_fields(cfg, rec))
    return cfg, paths, vm_config


def test_measurement_records_digests_and_host_data(build):
    cfg, paths, _ = build
    rec = json.loads(paths.measurement.read_text())
    files = identity.key_files(cfg)
    assert rec["id_key_digest"] == identity.key_digest(identity.load_public(files.public("id")))
    assert rec["author_key_digest"] == identity.key_digest(
        identity.load_public(files.public("author")))
    assert len(rec["id_key_digest"]) == 96 and len(rec["author_key_digest"]) == 96
    assert rec["guest_svn"] == 7
    assert len(rec["host_data"]) == 64
    assert rec["host_data"] == nodeconfig.host_data(rec["node_configuration"])


def test_identity_disabled_records_null_digests(tmp_path):
    cfg = hconfig.load()
    fields = identity.measurement_fields(cfg, {})
    assert fields["id_key_digest"] is None and fields["author_key_digest"] is None
    assert len(fields["host_data"]) == 64


def test_id_block_stage_writes_a_block_for_the_measurement(build):
    cfg, paths, _ = build
    idblock.write_id_block(cfg, paths)
    rec = json.loads(paths.measurement.read_text())
    raw = idblock.read_b64(paths.id_block, idblock.ID_BLOCK_SIZE, "ID block")
    auth = idblock.read_b64(paths.id_auth, idblock.ID_AUTH_SIZE, "ID auth")
    block = idblock.IdBlock.from_bytes(raw)
    assert block.launch_digest.hex() == rec["expected_hash"]
    assert block.policy == rec["vm"]["guest_policy"] == cfg.vm.guest_policy
    assert block.family_id.hex() == "0102030405060708090a0b0c0d0e0f10"
    assert block.guest_svn == 7 and block.version == 1
    info = idblock.verify(raw, auth)
    assert (info.id_key_digest, info.author_key_digest) == \
        (rec["id_key_digest"], rec["author_key_digest"])
    # deterministic: running the stage again gives the same bytes
    before = paths.id_auth.read_bytes()
    idblock.write_id_block(cfg, paths)
    assert paths.id_auth.read_bytes() == before


def test_id_block_stage_refuses_keys_other_than_the_measured(build, tmp_path):
    cfg, paths, _ = build
    rec = json.loads(paths.measurement.read_text())
    rec["author_key_digest"] = "00" * 48
    paths.measurement.write_text(json.dumps(rec))
    with pytest.raises(IdentityError, match="doit measure"):
        idblock.write_id_block(cfg, paths)


def test_launcher_passes_id_block_auth_and_host_data_to_qemu(build):
    cfg, paths, vm_config = build
    idblock.write_id_block(cfg, paths)
    rec = json.loads(paths.measurement.read_text())
    vm = qemu.VmDefinition.from_vm_config(vmconfig.load(vm_config))
    body = nodeconfig.post_start_for(cfg, rec)
    gen = start.checked_identity(rec, vm, body, paths.identity_dir, "snp")
    cfg = hconfig.load(overlay=Path(cfg.files[-1]))
    snp = plan.snp_options(dataclass_replace_launch(cfg, cbitpos=51), gen)
    obj = qemu.sev_snp_object(vm, snp, "upstream")
    assert f"id-block={paths.id_block.read_text().strip()}" in obj
    assert f"id-auth={paths.id_auth.read_text().strip()}" in obj
    assert "author-key-enabled=on" in obj
    assert f"host-data={base64.b64encode(bytes.fromhex(rec['host_data'])).decode()}" in obj
    parts = obj.split(",")  # base64 has no comma: every option stays one key=value
    assert parts[0] == "sev-snp-guest" and all("=" in p for p in parts[1:])
    fork = qemu.sev_snp_object(vm, snp, "amd-fork")
    assert "auth-key-enabled=on" in fork and "author-key-enabled" not in fork


def dataclass_replace_launch(cfg, **changes):
    return dataclasses.replace(cfg, launch=dataclasses.replace(cfg.launch, **changes))


def test_launcher_refuses_an_id_block_for_another_measurement(build):
    cfg, paths, vm_config = build
    idblock.write_id_block(cfg, paths)
    rec = json.loads(paths.measurement.read_text())
    vm = qemu.VmDefinition.from_vm_config(vmconfig.load(vm_config))
    other = dict(rec, expected_hash="ab" * 48)
    body = nodeconfig.post_start_for(cfg, rec)
    with pytest.raises(IdentityError, match="LD"):
        start.checked_identity(other, vm, nodeconfig.post_start_for(cfg, other), paths.identity_dir,
                               "snp")
    with pytest.raises(IdentityError, match="policy"):
        start.checked_identity(rec, dataclasses.replace(vm, guest_policy=0xB0000), body,
                               paths.identity_dir, "snp")


# ----------------------------------------------------------------- HOST_DATA


def test_host_data_follows_the_post_start_body_and_nothing_else(build):
    cfg, paths, _vm_config = build
    rec = json.loads(paths.measurement.read_text())
    base = nodeconfig.node_configuration(cfg, rec)
    urls = start.StartOptions(self_url="http://me:1", peer_url="http://peer:2").post_start
    peer = nodeconfig.node_configuration(cfg, rec, urls)
    quiet = nodeconfig.node_configuration(cfg, rec, nodeconfig.PostStartOptions(no_auto=True))
    # post-start is on by default (issue 13): the default body is what start sends
    assert base["post_start"] == nodeconfig.post_start_for(cfg, rec, start.StartOptions().post_start)
    assert base["post_start"]["snp_trusted"] and quiet["post_start"] is None
    assert peer["post_start"] == nodeconfig.post_start_for(cfg, rec, urls)
    assert peer["post_start"]["self"] == "http://me:1" and peer["post_start"]["peer"] == "http://peer:2"
    assert len({nodeconfig.host_data(d) for d in (base, peer, quiet)}) == 3
    # the same configuration gives the same HOST_DATA; it is sha256 of the canonical JSON
    assert nodeconfig.host_data(nodeconfig.node_configuration(cfg, rec)) == nodeconfig.host_data(base)
    assert nodeconfig.host_data(base) == hashlib.sha256(
        json.dumps(base, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_host_data_follows_config_flat(tmp_path):
    a = hconfig.load()
    over = tmp_path / "o.yaml"
    over.write_text("content: {hyperbeam_config: ['mode: debug']}\n")
    b = hconfig.load(overlay=over)
    assert nodeconfig.render_config_flat(a) != nodeconfig.render_config_flat(b)
    assert nodeconfig.node_configuration(a, {}) != nodeconfig.node_configuration(b, {})
    assert nodeconfig.node_configuration(a, {}) == nodeconfig.node_configuration(hconfig.load(), {})


def test_launch_refuses_snp_with_a_configuration_other_than_the_measured(build):
    cfg, paths, vm_config = build
    rec = json.loads(paths.measurement.read_text())
    vm = qemu.VmDefinition.from_vm_config(vmconfig.load(vm_config))
    other = nodeconfig.post_start_for(cfg, rec, start.StartOptions(self_url="http://me:1").post_start)
    with pytest.raises(LaunchError, match="HOST_DATA"):
        start.checked_identity(rec, vm, other, None, "snp")
    # emulated: a note, no HOST_DATA passed, no refusal
    assert "host_data" in start.checked_identity(rec, vm, other, None, "emulated")
    measured = nodeconfig.post_start_for(cfg, rec, start.StartOptions().post_start)
    assert start.checked_identity(rec, vm, measured, None, "snp")["host_data"] == \
        nodeconfig.to_b64(rec["host_data"])


# ----------------------------------------------------------------- the graph


def test_graph_identity_tasks(tmp_path):
    from tests.support.graph import load_dodo
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    off = load_dodo(tmp_path / "off", profile="local")
    assert off["tasks"]["id_block"]["actions"] is None
    assert "targets" not in off["tasks"]["keys"] and not off["tasks"]["keys"].get("clean")
    keys = tmp_path / "keys"
    on = load_dodo(tmp_path / "on", f"identity: {{enabled: true, keys_dir: {keys}}}\n",
                   profile="local")
    p = on["module"].P
    t = on["tasks"]["id_block"]
    assert str(p.measurement) in t["file_dep"] and str(keys / "author.pub.pem") in t["file_dep"]
    assert str(keys / "id.pem") not in t["file_dep"]  # private keys stay out of doit's state
    assert str(p.id_block) in t["targets"] and str(p.id_auth) in t["targets"]
    assert str(keys / "id.pub.pem") in on["tasks"]["measure"]["file_dep"]
    assert str(p.id_block) in on["tasks"]["start"]["file_dep"]


def test_launch_files_prefer_explicit_launch_files(build, tmp_path):
    cfg, paths, _ = build
    files = launch_files.resolve(cfg, paths)
    assert files == {"id_block": paths.id_block, "id_auth": paths.id_auth,
                     "host_data": paths.host_data}
    mine = tmp_path / "mine.b64"
    cfg2 = dataclasses.replace(cfg, launch=dataclasses.replace(cfg.launch, host_data=str(mine)),
                               identity=dataclasses.replace(cfg.identity, enabled=False))
    assert launch_files.resolve(cfg2, paths) == {"host_data": mine}


def test_graph_measure_reruns_exactly_when_the_node_configuration_changes(tmp_path, amdsev_ovmf):
    """Over the real graph (dodo.py's measure task): its config_changed and its action."""
    from tests.support.graph import load_dodo
    from tests.support.release_fixtures import make_build
    _cfg, paths = make_build(tmp_path / "b", amdsev_ovmf)
    fw = tmp_path / "b" / "fw" / "OVMF.fd"

    def graph(name, extra=""):
        d = tmp_path / name
        d.mkdir()
        g = load_dodo(d, f"firmware: {{ovmf: {fw}}}\n{extra}")
        g["module"].P = paths  # the synthetic build's artifacts
        g["tasks"]["measure"] = g["module"].task_measure()  # its action binds P when made
        return g

    def measured(g):
        (action,) = g["tasks"]["measure"]["actions"][0]
        assert action() is None
        return json.loads(paths.measurement.read_text())

    def fingerprint(g):
        (checker,) = g["tasks"]["measure"]["uptodate"]
        return checker.config

    base = graph("base")
    unrelated = graph("unrelated", "launch: {health_timeout: 5}\nrelease: {retries: 9}\n")
    node = graph("node", "content: {hyperbeam_config: ['mode: prod']}\n")
    post = graph("post", "post_start: {settings: ['operator: trustless', 'x: 1']}\n")
    assert fingerprint(unrelated) == fingerprint(base)
    assert fingerprint(node) != fingerprint(base)
    assert fingerprint(post) != fingerprint(base)

    def slices(g):  # every task's config_changed value
        return {name: [u.config for u in t.get("uptodate", []) if hasattr(u, "config")]
                for name, t in g["tasks"].items()}
    changed = {n for n, v in slices(post).items() if v != slices(base)[n]}
    assert changed == {"measure"}  # the post-start body reruns measure and nothing else
    p = measured(post)
    b0 = measured(base)
    assert p["host_data"] != b0["host_data"] and p["expected_hash"] == b0["expected_hash"]
    a, b = measured(base), measured(node)
    assert a["host_data"] != b["host_data"]
    assert nodeconfig.to_b64(b["host_data"]) == paths.host_data.read_text().strip()
    assert {k: v for k, v in a.items() if k not in ("host_data", "node_configuration")} == \
        {k: v for k, v in b.items() if k not in ("host_data", "node_configuration")}
    assert a["node_configuration"]["post_start"] == b["node_configuration"]["post_start"]


def test_doit_keys_creates_once_and_logs_no_secret(tmp_path):
    from tests.conftest import doit
    keys = tmp_path / "k"
    over = tmp_path / "o.yaml"
    over.write_text(f"build_dir: {tmp_path / 'build'}\n"
                    f"identity: {{enabled: true, keys_dir: {keys}}}\n")
    first = doit(["keys", "profile=local", f"config={over}"])
    files = identity.KeyFiles(keys)
    assert all(p.is_file() for p in files.all())
    assert stat.S_IMODE(files.private("id").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    before = {p: p.read_bytes() for p in files.all()}
    second = doit(["keys", "profile=local", f"config={over}"])
    assert "kept (exists)" in second.stdout + second.stderr
    assert {p: p.read_bytes() for p in files.all()} == before
    out = first.stdout + first.stderr + second.stdout + second.stderr
    assert "PRIVATE" not in out
    logs = tmp_path / "build"
    assert not any(b"PRIVATE KEY" in p.read_bytes() for p in logs.rglob("*") if p.is_file())
