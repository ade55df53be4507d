"""The launch identity over the real graph (issue 15 acceptance).

`doit keys`, then `doit build_guest_image id_block package_release` with
identity on (local profile, cached base root, the AmdSev OVMF vector): both
key digests in measurement.json, the ID block for its digest, and a signed
release with provenance; `doit download_release --trusted-key` installs it,
and refuses another author's key or a tarball without manifest.json.sig,
leaving the installed release current.
"""

from __future__ import annotations

import json
import tarfile

import pytest

from hbos.measure import idblock, identity
from tests.conftest import (
    GuestBuild,
    link_base_rootfs,
    write_overlay,
    write_test_content,
)

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def signed_guest(base_rootfs_cache, kernel_deb, amdsev_ovmf, tmp_path_factory) -> GuestBuild:
    root = tmp_path_factory.mktemp("identity-graph")
    content = write_test_content(root / "content-src")
    overlay = write_overlay(root / "overlay.yaml", (
        f"build_dir: {root / 'build'}\n"
        f"kernel: {{source: deb, deb: {kernel_deb}}}\n"
        f"firmware: {{ovmf: {amdsev_ovmf}}}\n"
        f"content: {{source: dir, path: {content}}}\n"
        f"identity: {{enabled: true, keys_dir: {root / 'keys'}, guest_svn: 2}}\n"))
    guest = GuestBuild(root, overlay)
    link_base_rootfs(base_rootfs_cache, guest.paths)
    guest.doit("keys")
    guest.doit("build_guest_image", "id_block", "package_release")
    return guest


def _download(guest: GuestBuild, url: str, key, check: bool = True):
    return guest.doit("download_release", "--url", url, "--trusted-key", str(key), check=check)


def test_measurement_names_both_keys_and_the_id_block_promises_it(signed_guest):
    g = signed_guest
    files = identity.key_files(g.cfg)
    rec = g.measurement
    assert rec["id_key_digest"] == identity.key_digest(identity.load_public(files.public("id")))
    assert rec["author_key_digest"] == identity.key_digest(
        identity.load_public(files.public("author")))
    assert len(rec["host_data"]) == 64 and rec["guest_svn"] == 2
    raw = idblock.read_b64(g.paths.id_block, idblock.ID_BLOCK_SIZE, "ID block")
    block = idblock.IdBlock.from_bytes(raw)
    assert block.launch_digest.hex() == rec["expected_hash"]
    assert block.policy == rec["vm"]["guest_policy"] and block.guest_svn == 2
    info = idblock.verify(raw, idblock.read_b64(g.paths.id_auth, idblock.ID_AUTH_SIZE, "ID auth"))
    assert info.author_key_digest == rec["author_key_digest"]


def test_signed_release_installs_with_the_trusted_key_and_refuses_others(signed_guest,
                                                                         tmp_path):
    g = signed_guest
    tarball = g.paths.release_tarball
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"manifest.json.sig", "provenance.json", "id_block.b64", "id_auth.b64"} <= names
    author = identity.key_files(g.cfg).public("author")
    ok = _download(g, f"file://{tarball}", author)
    assert "signed by trusted author key" in ok.stdout + ok.stderr
    current = g.paths.current_release.resolve()

    other = identity.KeyFiles(tmp_path / "other")
    identity.create_keys(other)
    bad = _download(g, f"file://{tarball}", other.public("author"), check=False)
    assert bad.returncode != 0 and "not a trusted key" in bad.stdout + bad.stderr

    unsigned = tmp_path / "unsigned.tar"  # uncompressed: cheap to write, extracted alike
    with tarfile.open(tarball) as src, tarfile.open(unsigned, "w") as dst:
        for m in src.getmembers():
            if m.name != "manifest.json.sig":
                dst.addfile(m, src.extractfile(m))
    bad = _download(g, str(unsigned), author, check=False)
    assert bad.returncode != 0 and "unsigned" in bad.stdout + bad.stderr
    assert g.paths.current_release.resolve() == current
    assert json.loads((current / "measurement.json").read_text())["author_key_digest"] == \
        g.measurement["author_key_digest"]
