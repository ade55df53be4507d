"""Signed releases: manifest.json.sig, provenance.json, the ID block in a release,
and download_release / verify-release with trusted keys (file:// URLs; the
same code path as HTTP after the fetch)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from hbos.cli import verify_release
from hbos.errors import ReleaseError
from hbos.measure import idblock, identity
from hbos.release import fetch, layout, pack, provenance, start, verify
from hbos.stages.measure import write_measurement
from hbos.util.fsutil import sha256_file
from tests.support.release_fixtures import make_build


def _signed_build(root: Path, ovmf: Path, keys: Path, seed: int = 1):
    cfg, paths = make_build(root, ovmf, seed=seed, extra_yaml=(
        f"identity: {{enabled: true, keys_dir: {keys}, guest_svn: 3}}\n"))
    identity.make_keys(cfg)
    write_measurement(paths.vm_config, paths.measurement, source_date_epoch=cfg.source_date_epoch,
                      extra=lambda rec: identity.measurement_fields(cfg, rec))
    idblock.write_id_block(cfg, paths)
    pack.package_release(cfg, paths)
    return cfg, paths


@pytest.fixture
def signed(tmp_path, amdsev_ovmf):
    return _signed_build(tmp_path / "b", amdsev_ovmf, tmp_path / "keys")


@pytest.fixture
def other_key(tmp_path) -> Path:
    files = identity.KeyFiles(tmp_path / "other-keys")
    identity.create_keys(files)
    return files.public(identity.AUTHOR)


def _members(tarball: Path) -> dict[str, bytes]:
    with tarfile.open(tarball) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _retar(tarball: Path, out: Path, *, drop=(), replace=None) -> Path:
    members = _members(tarball)
    members.update(replace or {})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in sorted(members.items()):
            if name in drop:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.write_bytes(buf.getvalue())
    return out


# ----------------------------------------------------------------- packaging


def test_signed_release_holds_signature_provenance_and_id_block(signed):
    _cfg, paths = signed
    names = set(_members(paths.release_tarball))
    assert names == {*layout.PAYLOAD, layout.MANIFEST, layout.SIGNATURE, layout.PROVENANCE,
                     layout.ID_BLOCK, layout.ID_AUTH}
    manifest = json.loads((paths.release_dir / layout.MANIFEST).read_text())
    listed = {f["name"] for f in manifest["files"]}
    assert {layout.PROVENANCE, layout.ID_BLOCK, layout.ID_AUTH} <= listed
    assert layout.SIGNATURE not in listed
    rec = json.loads((paths.release_dir / layout.MEASUREMENT).read_text())
    built = json.loads(paths.measurement.read_text())
    for key in ("host_data", "id_key_digest", "author_key_digest", "guest_svn"):
        assert rec[key] == built[key]
    assert len(rec["author_key_digest"]) == 96 and rec["guest_svn"] == 3
    ref = json.loads((paths.release_dir / layout.REFERENCE_VALUES).read_text())
    for key in ("host_data", "id_key_digest", "author_key_digest"):
        assert ref[key] == built[key]  # what a verifier pins (hbos.attest.reference)


def test_openssl_verifies_the_manifest_signature(signed, tmp_path):
    cfg, paths = signed
    doc = json.loads((paths.release_dir / layout.SIGNATURE).read_text())
    der = tmp_path / "sig.der"
    der.write_bytes(base64.b64decode(doc["signature"]))
    pub = identity.key_files(cfg).public(identity.AUTHOR)
    ok = subprocess.run(["openssl", "dgst", "-sha384", "-verify", str(pub), "-signature",
                         str(der), str(paths.release_dir / layout.MANIFEST)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    assert doc["key_digest"] == json.loads(paths.measurement.read_text())["author_key_digest"]


def test_provenance_is_an_in_toto_statement_over_the_release_files(signed):
    _cfg, paths = signed
    st = json.loads((paths.release_dir / layout.PROVENANCE).read_text())
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
    assert set(subjects) == {*layout.PAYLOAD, layout.ID_BLOCK, layout.ID_AUTH}
    for name, digest in subjects.items():
        assert sha256_file(paths.release_dir / name) == digest
    deps = {d["name"]: d for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]}
    tool = deps["hbos"]
    commit = subprocess.run(["git", "-C", str(Path(layout.__file__).parents[1]), "rev-parse",
                             "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert tool["digest"]["gitCommit"] == commit
    assert "id.pem" not in json.dumps(st) and "PRIVATE" not in json.dumps(st)


def test_packaging_is_reproducible_with_a_signature(signed):
    cfg, paths = signed
    first = sha256_file(paths.release_tarball)
    pack.package_release(cfg, paths)
    assert sha256_file(paths.release_tarball) == first


def test_no_private_key_in_the_release(signed):
    cfg, paths = signed
    files = identity.key_files(cfg)
    secrets = [files.private(r).read_bytes() for r in (identity.ID, identity.AUTHOR)]
    blob = b"".join(_members(paths.release_tarball).values())
    assert b"PRIVATE KEY" not in blob
    for s in secrets:
        body = b"".join(s.splitlines()[1:-1])
        assert body not in blob


# ----------------------------------------------------------------- download / verify


def test_download_with_the_trusted_key_installs(signed, capsys):
    cfg, paths = signed
    pub = identity.key_files(cfg).public(identity.AUTHOR)
    root = fetch.download_release(cfg, paths, f"file://{paths.release_tarball}",
                                          trusted_key=str(pub), progress=False)
    assert (root / layout.SIGNATURE).exists()
    assert paths.current_release.resolve() == root
    assert "signed by trusted author key" in capsys.readouterr().err


@pytest.fixture
def installed(signed):
    cfg, paths = signed
    pub = identity.key_files(cfg).public(identity.AUTHOR)
    root = fetch.download_release(cfg, paths, str(paths.release_tarball),
                                          trusted_key=str(pub), progress=False)
    return cfg, paths, pub, root


def _refused(cfg, paths, url, key, match):
    before = paths.current_release.resolve()
    files = sorted(p.name for p in before.iterdir())
    with pytest.raises(ReleaseError, match=match):
        fetch.download_release(cfg, paths, str(url), trusted_key=str(key),
                                       progress=False)
    assert paths.current_release.resolve() == before
    assert sorted(p.name for p in before.iterdir()) == files
    assert sorted(p.name for p in paths.releases.iterdir()) == sorted(["current", before.name])


def test_another_authors_release_is_refused(installed, other_key):
    cfg, paths, _pub, _root = installed
    _refused(cfg, paths, paths.release_tarball, other_key, "not a trusted key")


def test_an_unsigned_release_is_refused(installed, tmp_path):
    cfg, paths, pub, _root = installed
    bad = _retar(paths.release_tarball, tmp_path / "unsigned.tar.gz", drop=(layout.SIGNATURE,))
    _refused(cfg, paths, bad, pub, "unsigned")


def test_a_signature_that_does_not_match_is_refused(installed, tmp_path):
    cfg, paths, pub, _root = installed
    doc = json.loads((paths.release_dir / layout.SIGNATURE).read_text())
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[-1] ^= 1
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    bad = _retar(paths.release_tarball, tmp_path / "badsig.tar.gz",
                 replace={layout.SIGNATURE: json.dumps(doc).encode()})
    _refused(cfg, paths, bad, pub, "does not match manifest.json")


def test_a_re_signed_manifest_by_another_key_is_refused(installed, tmp_path):
    """An attacker re-signs the genuine manifest with their own key."""
    cfg, paths, pub, _root = installed
    files = identity.KeyFiles(tmp_path / "evil")
    identity.create_keys(files)
    key = identity.load_private(files.private(identity.AUTHOR))
    doc = provenance.signature_document(key, (paths.release_dir / layout.MANIFEST).read_bytes())
    bad = _retar(paths.release_tarball, tmp_path / "evil.tar.gz",
                 replace={layout.SIGNATURE: json.dumps(doc).encode()})
    # no trusted key: still refused, since the ID block's author is not the signer
    with pytest.raises(ReleaseError, match="ID block's author key"):
        verify_release.verify_path(bad)
    _refused(cfg, paths, bad, pub, "not a trusted key|ID block's author key")


def test_config_trusted_keys_apply_without_the_flag(installed, tmp_path, other_key):
    import dataclasses
    cfg, paths, _pub, root = installed
    strict = dataclasses.replace(cfg, release=dataclasses.replace(
        cfg.release, trusted_keys=(str(other_key),)))
    with pytest.raises(ReleaseError, match="not a trusted key"):
        fetch.download_release(strict, paths, str(paths.release_tarball), progress=False)
    assert paths.current_release.resolve() == root


def test_without_a_trusted_key_unsigned_releases_install_as_before(tmp_path, amdsev_ovmf,
                                                                   capsys):
    cfg, paths = make_build(tmp_path / "plain", amdsev_ovmf)
    pack.package_release(cfg, paths)
    assert not (paths.release_dir / layout.SIGNATURE).exists()
    assert not (paths.release_dir / layout.PROVENANCE).exists()
    root = fetch.download_release(cfg, paths, str(paths.release_tarball), progress=False)
    assert paths.current_release.resolve() == root
    assert "consistency, not authenticity" in capsys.readouterr().err


def test_verify_release_prints_signer_and_provenance(signed, capsys, other_key):
    cfg, paths = signed
    from hbos import cli
    pub = identity.key_files(cfg).public(identity.AUTHOR)
    assert cli.main(["verify-release", str(paths.release_tarball), "--trusted-key",
                     str(pub)]) == 0
    out = capsys.readouterr().out
    digest = json.loads(paths.measurement.read_text())["author_key_digest"]
    assert f"signed by author key {digest}" in out
    assert "provenance (https://slsa.dev/provenance/v1)" in out and "hbos: gitCommit" in out
    assert cli.main(["verify-release", str(paths.release_tarball), "--trusted-key",
                     str(other_key)]) == 1
    assert "REFUSED" in capsys.readouterr().out


def test_a_tampered_id_block_in_a_release_is_refused(signed, tmp_path):
    _cfg, paths = signed
    raw = bytearray(base64.b64decode((paths.release_dir / layout.ID_BLOCK).read_text()))
    raw[0] ^= 1
    d = tmp_path / "r"
    import shutil
    shutil.copytree(paths.release_dir, d)
    (d / layout.ID_BLOCK).write_text(base64.b64encode(bytes(raw)).decode() + "\n")
    with pytest.raises(ReleaseError):
        verify.verify_release(d)


def test_start_release_rechecks_the_trusted_keys(installed, other_key, monkeypatch):
    import dataclasses
    cfg, paths, pub, root = installed
    started = []
    monkeypatch.setattr("hbos.launch.start.start_vm", lambda *a, **k: started.append(k))
    strict = dataclasses.replace(cfg, release=dataclasses.replace(
        cfg.release, trusted_keys=(str(other_key),)))
    with pytest.raises(ReleaseError, match="not a trusted key"):
        start.start_release(strict, paths, object())
    assert not started
    ok = dataclasses.replace(cfg, release=dataclasses.replace(cfg.release, trusted_keys=(str(pub),)))
    start.start_release(ok, paths, object())
    assert started and started[0]["identity_dir"] == root
