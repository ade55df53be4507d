"""Release layout, manifest, verification, tarball normalization, install swap.

Fast: no host tools, no network. The firmware is the real AmdSev OVMF suffix
from the vectors, so every digest here is a real launch digest.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import tarfile
import types
from pathlib import Path

import pytest

from hbos.errors import ReleaseError, UnsafeArchive
from hbos.release import fetch, layout, pack, start, verify
from hbos.util import archive
from hbos.util.fsutil import sha256_file
from tests.support.release_fixtures import flip_byte, make_build


@pytest.fixture
def build(tmp_path, amdsev_ovmf):
    return make_build(tmp_path / "b", amdsev_ovmf)


@pytest.fixture
def packaged(build):
    cfg, paths = build
    pack.package_release(cfg, paths)
    return cfg, paths


# ------------------------------------------------------------- packaging


def test_release_dir_holds_exactly_the_layout(packaged):
    _, paths = packaged
    assert sorted(p.name for p in paths.release_dir.iterdir()) == \
        sorted([*layout.PAYLOAD, layout.MANIFEST])
    manifest = layout.read_manifest(paths.release_dir)
    for f in manifest.files:
        assert sha256_file(paths.release_dir / f.name) == f.sha256
        assert (paths.release_dir / f.name).stat().st_size == f.size


def test_manifest_digest_is_the_builds_measurement(packaged):
    cfg, paths = packaged
    data = json.loads(paths.release_manifest.read_text())
    built = json.loads(paths.measurement.read_text())
    assert data["expected_launch_digest"] == built["expected_hash"]
    assert data["source_date_epoch"] == cfg.source_date_epoch
    from hbos import __version__
    assert data["tool_version"] == __version__
    rel_m = json.loads((paths.release_dir / layout.MEASUREMENT).read_text())
    assert rel_m["expected_hash"] == built["expected_hash"]
    assert {k: v["path"] for k, v in rel_m["files"].items()} == \
        {"kernel": "vmlinuz", "initrd": "initrd.img", "firmware": "OVMF.fd"}


def test_packaged_files_are_the_build_artifacts(packaged):
    cfg, paths = packaged
    from hbos.stages import vmconfig
    for name, src in ((layout.IMAGE, paths.verity_image), (layout.HASH_TREE, paths.hash_tree),
                      (layout.KERNEL, paths.vmlinuz),
                      (layout.INITRD, vmconfig.initrd_path(cfg, paths))):
        assert sha256_file(paths.release_dir / name) == sha256_file(src)


def test_missing_artifact_is_an_error_naming_it(build):
    cfg, paths = build
    paths.hash_tree.unlink()
    with pytest.raises(ReleaseError, match=r"missing artifact\(s\): hash_tree.bin"):
        pack.package_release(cfg, paths)
    assert not paths.release_tarball.exists()


def test_stale_measurement_is_refused(build):
    cfg, paths = build
    data = json.loads(paths.measurement.read_text())
    data["expected_hash"] = "00" * 48
    paths.measurement.write_text(json.dumps(data))
    with pytest.raises(ReleaseError, match="stale"):
        pack.package_release(cfg, paths)


def test_rewrite_vm_config_changes_only_the_file_keys(build):
    _, paths = build
    text = paths.vm_config.read_text()
    out = pack.rewrite_vm_config(text)
    changed = [(a, b) for a, b in zip(text.splitlines(), out.splitlines(), strict=True) if a != b]
    assert sorted(b for _, b in changed) == ['initrd_file = "initrd.img"',
                                            'kernel_file = "vmlinuz"', 'ovmf_file = "OVMF.fd"']
    assert len(text.splitlines()) == len(out.splitlines())


def test_rewrite_vm_config_needs_every_file_key():
    with pytest.raises(ReleaseError, match="expected one line each"):
        pack.rewrite_vm_config('kernel_file = "/k"\ninitrd_file = "/i"\n')


# ------------------------------------------------------------- tarball


def test_tarball_headers_are_normalized(packaged):
    cfg, paths = packaged
    raw = paths.release_tarball.read_bytes()
    # RFC 1952: ID1 ID2 CM FLG MTIME(4): no FNAME flag, no time stamp
    assert raw[:3] == b"\x1f\x8b\x08" and raw[3] == 0 and raw[4:8] == b"\0\0\0\0"
    with tarfile.open(paths.release_tarball) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted([*layout.PAYLOAD, layout.MANIFEST])
    for m in members:
        assert (m.type, m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime) == \
            (tarfile.REGTYPE, 0o644, 0, 0, "", "", cfg.source_date_epoch)
    assert paths.release_tarball_sha256.read_text() == \
        f"{sha256_file(paths.release_tarball)}  release.tar.gz\n"


def test_tarball_ignores_file_mtimes_and_owners(packaged):
    cfg, paths = packaged
    first = sha256_file(paths.release_tarball)
    for p in paths.release_dir.iterdir():
        os.utime(p, (1_900_000_000, 1_900_000_000))
        os.chown(p, 1234, 1234) if os.geteuid() == 0 else None
    names = [*layout.PAYLOAD, layout.MANIFEST]
    again = pack.write_tarball(paths.release_dir, names, paths.build / "again.tar.gz",
                                       mtime=cfg.source_date_epoch)
    assert again == first


def test_tarball_streams_with_a_small_buffer(tmp_path):
    # a file larger than the copy buffer goes through in pieces, same bytes out
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * pack.TAR_CHUNK + 17))
    out = tmp_path / "t.tar.gz"
    pack.write_tarball(tmp_path, ["big"], out, mtime=0)
    with tarfile.open(out) as tar:
        assert hashlib.sha256(tar.extractfile("big").read()).hexdigest() == sha256_file(big)
    with gzip.open(out) as gz:
        assert len(gz.read()) % 512 == 0


# ------------------------------------------------------------- verification


def test_verify_accepts_the_packaged_release(packaged):
    _, paths = packaged
    m = verify.verify_release(paths.release_dir)
    assert m.launch_digest == json.loads(paths.measurement.read_text())["expected_hash"]


@pytest.mark.parametrize("name", sorted([*layout.PAYLOAD]))
def test_verify_names_an_altered_file(packaged, name):
    _, paths = packaged
    flip_byte(paths.release_dir / name)
    with pytest.raises(ReleaseError) as exc:
        verify.verify_release(paths.release_dir)
    assert str(exc.value).startswith(f"{name}: sha256 mismatch")


def test_verify_refuses_extra_missing_and_non_regular_files(packaged):
    _, paths = packaged
    d = paths.release_dir
    (d / "extra").write_text("x")
    with pytest.raises(ReleaseError, match="unexpected file.*extra"):
        verify.verify_release(d)
    (d / "extra").unlink()
    os.symlink("vmlinuz", d / "alias")
    with pytest.raises(ReleaseError, match="'alias' is not a regular file"):
        verify.verify_release(d)
    (d / "alias").unlink()
    (d / layout.INITRD).unlink()
    with pytest.raises(ReleaseError, match=r"missing file\(s\): initrd.img"):
        verify.verify_release(d)


def _edit_manifest(d: Path, fn) -> None:
    data = json.loads((d / layout.MANIFEST).read_text())
    fn(data)
    (d / layout.MANIFEST).write_text(json.dumps(data))


def _rehash(d: Path, data: dict, name: str) -> None:
    for f in data["files"]:
        if f["name"] == name:
            f["sha256"] = sha256_file(d / name)
            f["size"] = (d / name).stat().st_size


@pytest.mark.parametrize("name", [layout.KERNEL, layout.INITRD, layout.FIRMWARE])
def test_manifest_hiding_a_tampered_input_still_fails_on_the_digest(packaged, name):
    _, paths = packaged
    d = paths.release_dir
    offset = 0 if name == layout.FIRMWARE else None  # keep the OVMF footer parseable
    flip_byte(d / name, offset)
    _edit_manifest(d, lambda data: _rehash(d, data, name))
    with pytest.raises(ReleaseError, match="launch digest mismatch"):
        verify.verify_release(d)


def _replace_in_release(d, name, text):
    """Rewrite a release file (a new inode: the package may hard-link) and
    re-hash it in the manifest, as a tamperer covering their tracks would."""
    (d / name).unlink()
    (d / name).write_text(text)
    _edit_manifest(d, lambda data: _rehash(d, data, name))


def test_tampered_cmdline_with_matching_manifest_fails_on_the_digest(packaged):
    _, paths = packaged
    d = paths.release_dir
    vm = d / layout.VM_CONFIG
    text = vm.read_text().replace("loglevel=7", "loglevel=7 init=/bin/sh")
    _replace_in_release(d, layout.VM_CONFIG, text)
    with pytest.raises(ReleaseError, match="launch digest mismatch"):
        verify.verify_release(d)


def test_manifest_and_measurement_must_agree(packaged):
    _, paths = packaged
    d = paths.release_dir
    m = json.loads((d / layout.MEASUREMENT).read_text())
    m["expected_hash"] = "11" * 48
    _replace_in_release(d, layout.MEASUREMENT, json.dumps(m))
    with pytest.raises(ReleaseError, match="measurement.json: expected_hash"):
        verify.verify_release(d)


def test_policy_outside_the_digest_must_match_the_measurement(packaged):
    # guest_policy is not in the launch digest; changing it must still be caught
    _, paths = packaged
    d = paths.release_dir
    vm = d / layout.VM_CONFIG
    text = vm.read_text().replace("guest_policy = 0x30000", "guest_policy = 0xb0000")
    assert text != vm.read_text()
    _replace_in_release(d, layout.VM_CONFIG, text)
    with pytest.raises(ReleaseError, match="vm.guest_policy 196608 does not match"):
        verify.verify_release(d)


def test_vm_config_may_only_name_release_files(packaged):
    _, paths = packaged
    d = paths.release_dir
    vm = d / layout.VM_CONFIG
    text = vm.read_text().replace('kernel_file = "vmlinuz"', 'kernel_file = "/boot/vmlinuz"')
    _replace_in_release(d, layout.VM_CONFIG, text)
    with pytest.raises(ReleaseError, match="kernel_file must be 'vmlinuz'"):
        verify.verify_release(d)


def test_pinned_launch_digest(packaged):
    _, paths = packaged
    digest = layout.read_manifest(paths.release_dir).launch_digest
    verify.verify_release(paths.release_dir, pinned_digest=digest.upper())
    with pytest.raises(ReleaseError, match="not the pinned release.launch_digest"):
        verify.verify_release(paths.release_dir, pinned_digest="ab" * 48)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other/9"), "format is 'other/9'"),
    (lambda d: d.pop("expected_launch_digest"), "'expected_launch_digest' is missing"),
    (lambda d: d.update(expected_launch_digest="abc"), "not 96 hex digits"),
    (lambda d: d["files"].pop(), r"missing: vmlinuz"),
    (lambda d: d["files"].append(dict(d["files"][0])), "more than once"),
    (lambda d: d["files"][0].update(size="1"), r"files\[0\] needs"),
])
def test_bad_manifests_are_refused(packaged, edit, message):
    _, paths = packaged
    _edit_manifest(paths.release_dir, edit)
    with pytest.raises(ReleaseError, match=message):
        verify.verify_release(paths.release_dir)


# ------------------------------------------------------------- safe extraction


def _tar(tmp_path: Path, members) -> Path:
    out = tmp_path / "t.tar"
    with tarfile.open(out, "w") as tar:
        for name, typ, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = typ, link
            tar.addfile(info, None)
    return out


@pytest.mark.parametrize("members", [
    # lexically inside, but d/l -> .. makes d/l/.. the destination's parent
    [("d", tarfile.DIRTYPE, ""), ("d/l", tarfile.SYMTYPE, ".."),
     ("x", tarfile.SYMTYPE, "d/l/..")],
    [("a", tarfile.SYMTYPE, "b/.."), ("b", tarfile.SYMTYPE, "..")],
    [("d", tarfile.DIRTYPE, ""), ("d/l", tarfile.SYMTYPE, ".."), ("h", tarfile.LNKTYPE, "d/l/../x")],
    [("loop1", tarfile.SYMTYPE, "loop2/x"), ("loop2", tarfile.SYMTYPE, "loop1/x")],
])
def test_symlink_chains_leaving_the_destination_are_refused(tmp_path, members):
    with pytest.raises(UnsafeArchive):
        archive.extract(_tar(tmp_path, members), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_symlinks_staying_inside_are_kept(tmp_path):
    t = _tar(tmp_path, [("d", tarfile.DIRTYPE, ""), ("d/l", tarfile.SYMTYPE, ".."),
                        ("x", tarfile.SYMTYPE, "d/l/d")])
    archive.extract(t, tmp_path / "out")
    assert os.readlink(tmp_path / "out" / "x") == "d/l/d"


# ------------------------------------------------------------- install and start


def test_request_comes_from_params_then_config(build):
    cfg, _ = build
    with pytest.raises(ReleaseError, match="no release URL"):
        fetch.resolve_request(cfg)
    assert fetch.resolve_request(cfg, "http://x/r.tgz", "AB" * 32) == \
        ("http://x/r.tgz", "ab" * 32)
    with pytest.raises(ReleaseError, match="64 hex digits"):
        fetch.resolve_request(cfg, "http://x", "abc")


def test_install_swaps_current_and_prunes_the_old(packaged):
    cfg, paths = packaged
    first = fetch.install(cfg, paths, paths.release_tarball, "a" * 64)
    assert paths.current_release.resolve() == first
    assert not os.path.isabs(os.readlink(paths.current_release))
    second = fetch.install(cfg, paths, paths.release_tarball, "a" * 64)
    assert second != first and paths.current_release.resolve() == second
    assert sorted(p.name for p in paths.releases.iterdir()) == sorted(["current", second.name])


def test_prune_removes_leftovers_of_dead_runs(packaged):
    cfg, paths = packaged
    root = fetch.install(cfg, paths, paths.release_tarball, "a" * 64)
    (paths.releases / ".incoming-999999999").mkdir()
    (paths.releases / f".incoming-{os.getppid()}").mkdir()  # a live process's staging
    fetch.prune(paths)
    names = {p.name for p in paths.releases.iterdir()}
    assert names == {"current", root.name, f".incoming-{os.getppid()}"}


def test_start_release_without_a_release(build):
    cfg, paths = build
    with pytest.raises(ReleaseError, match="no release installed"):
        start.start_release(cfg, paths, options=None)


def test_start_release_passes_the_release_files_to_the_launcher(packaged, monkeypatch):
    cfg, paths = packaged
    root = fetch.install(cfg, paths, paths.release_tarball, "a" * 64)
    calls = []

    def start_vm(cfg_, paths_, *, vm_config, measurement, image, hash_tree, options,
                 identity_dir=None):
        calls.append(dict(vm_config=vm_config, measurement=measurement, image=image,
                          hash_tree=hash_tree, options=options, identity_dir=identity_dir))
        return "started"

    fake = types.ModuleType("hbos.launch.start")
    fake.start_vm = start_vm
    monkeypatch.setitem(sys.modules, "hbos.launch.start", fake)
    import hbos.launch
    monkeypatch.setattr(hbos.launch, "start", fake)
    opts = object()
    assert start.start_release(cfg, paths, opts) == "started"
    assert calls == [dict(vm_config=root / "vm-config.toml", measurement=root / "measurement.json",
                          image=root / "guest.img", hash_tree=root / "hash_tree.bin",
                          options=opts, identity_dir=None)]
    # a tampered installed kernel is refused before the launcher is called
    flip_byte(root / layout.KERNEL)
    with pytest.raises(ReleaseError, match="vmlinuz: sha256 mismatch"):
        start.start_release(cfg, paths, opts)
    assert len(calls) == 1


def test_extract_refuses_more_than_max_bytes_before_writing(tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x" * 5000)
    t = tmp_path / "t.tar"
    with tarfile.open(t, "w") as tar:
        tar.add(src, arcname="f")
    with pytest.raises(UnsafeArchive, match="need 5000 bytes, more than the 4999 allowed"):
        archive.extract(t, tmp_path / "out", max_bytes=4999)
    assert not (tmp_path / "out").exists()
    archive.extract(t, tmp_path / "out", max_bytes=5000)
    assert (tmp_path / "out" / "f").stat().st_size == 5000


def test_start_release_forwards_the_ports_the_release_was_built_with(tmp_path, amdsev_ovmf,
                                                                     monkeypatch):
    # the guest services listen on the build's ports (baked into the image)
    cfg_b, paths_b = make_build(tmp_path / "b", amdsev_ovmf,
                                extra_yaml="ports: {hyperbeam: 12345, cu: 16363}\n")
    pack.package_release(cfg_b, paths_b)
    assert json.loads(paths_b.release_manifest.read_text())["ports"] == \
        {"hyperbeam": 12345, "cu": 16363, "ssh": cfg_b.ports.ssh}
    cfg_h, paths_h = make_build(tmp_path / "h", amdsev_ovmf)
    assert cfg_h.ports.hyperbeam != 12345
    fetch.install(cfg_h, paths_h, paths_b.release_tarball, "a" * 64)
    seen = []
    fake = types.ModuleType("hbos.launch.start")
    fake.start_vm = lambda c, p, **kw: seen.append(c.ports)
    monkeypatch.setitem(sys.modules, "hbos.launch.start", fake)
    import hbos.launch
    monkeypatch.setattr(hbos.launch, "start", fake)
    start.start_release(cfg_h, paths_h, None)
    assert (seen[0].hyperbeam, seen[0].cu, seen[0].ssh) == (12345, 16363, cfg_h.ports.ssh)


def test_oversized_manifest_is_refused_without_reading_it(packaged):
    _, paths = packaged
    with open(paths.release_manifest, "ab") as fh:
        fh.truncate(layout.SMALL_LIMIT + 10)
    with pytest.raises(ReleaseError, match="larger than 1048576 bytes"):
        verify.verify_release(paths.release_dir)


def test_verify_release_cli(packaged, capsys):
    from hbos import cli
    _, paths = packaged
    digest = layout.read_manifest(paths.release_dir).launch_digest
    tar = str(paths.release_tarball)
    assert cli.main(["verify-release", tar, "--sha256", sha256_file(paths.release_tarball),
                     "--launch-digest", digest]) == 0
    assert f"expected launch digest {digest}" in capsys.readouterr().out
    assert cli.main(["verify-release", str(paths.release_dir)]) == 0
    assert cli.main(["verify-release", tar, "--launch-digest", "ab" * 48]) == 1
    assert "not the pinned" in capsys.readouterr().out
    flip_byte(paths.release_dir / layout.INITRD)
    assert cli.main(["verify-release", str(paths.release_dir)]) == 1
    assert "initrd.img: sha256 mismatch" in capsys.readouterr().out
    assert cli.main(["verify-release", tar, "--sha256", "0" * 64]) == 1
