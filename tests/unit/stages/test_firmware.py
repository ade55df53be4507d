"""Firmware selection and the edk2 build's pure parts (no network, no tools).

Downloads go to a real local HTTP server (pytest-httpserver).
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
from pathlib import Path

import pytest

from hbos import config
from hbos.errors import BuildError, ConfigError, DownloadError, HashMismatch, ToolMissing, UnsafeArchive
from hbos.paths import Paths
from hbos.stages import edk2, firmware
from hbos.util import archive

BODY = b"edk2 orig tarball bytes " * 500
SHA = hashlib.sha256(BODY).hexdigest()

# The shape of OvmfPkg/AmdSev/Grub/grub.sh in edk2 2025.02 (abridged).
GRUB_SH = """set -e
GRUB_MODULES="
            part_msdos
            linux
            reboot
            sevsecret
            "
basedir=$(dirname -- "$0")
rm -f -- "${basedir}/disk.fat"
mkfs.msdos -C -- "${basedir}/disk.fat" 64
mcopy -i "${basedir}/disk.fat" -- "${basedir}/grub.cfg" ::grub.cfg
${mkimage} -O x86_64-efi -o "${basedir}/grub.efi" ${GRUB_MODULES}
"""


def _cfg(tmp_path, **firmware_keys):
    overlay = tmp_path / "overlay.yaml"
    lines = [f"build_dir: {tmp_path / 'build'}", "firmware:"]
    lines += [f"  {k}: {v}" for k, v in firmware_keys.items()] or ["  source: build"]
    overlay.write_text("\n".join(lines) + "\n")
    cfg = config.load(overlay=overlay)
    return cfg, Paths.from_config(cfg)


# ------------------------------------------------------------- resolution


def test_build_source_resolves_to_built_ovmf(tmp_path):
    cfg, paths = _cfg(tmp_path, source="build")
    assert firmware.built_here(cfg)
    assert firmware.resolve(cfg, paths) == tmp_path / "build" / "firmware" / "OVMF.fd"


def test_explicit_ovmf_wins_over_build(tmp_path):
    given = tmp_path / "mine.fd"
    cfg, paths = _cfg(tmp_path, source="build", ovmf=str(given))
    assert not firmware.built_here(cfg)
    assert firmware.resolve(cfg, paths) == given


def test_path_source_without_ovmf_is_a_config_error(tmp_path):
    cfg, paths = _cfg(tmp_path, source="path")
    with pytest.raises(ConfigError, match="firmware.ovmf is empty"):
        firmware.resolve(cfg, paths)


def test_local_profile_builds_the_firmware():
    assert firmware.built_here(config.load(profile="local"))


def test_default_pins_are_debian_trixie_edk2():
    fw = config.load().firmware
    orig, debian = edk2.sources(config.load())
    assert orig.name == "edk2_2025.02.orig.tar.xz"
    assert debian.name.startswith("edk2_2025.02-") and debian.name.endswith(".debian.tar.xz")
    assert orig.url.startswith("http://deb.debian.org/debian/pool/main/e/edk2/")
    assert len(fw.orig_sha256) == len(fw.debian_sha256) == 64
    assert fw.platform == "OvmfPkg/AmdSev/AmdSevX64.dsc"


def test_bad_pin_is_rejected_with_its_key(tmp_path):
    with pytest.raises(ConfigError, match="orig_sha256"):
        _cfg(tmp_path, orig_sha256="abc")


# ----------------------------------------------------------- source pinning


def test_fetch_source_downloads_and_verifies(httpserver, tmp_path):
    httpserver.expect_request("/pool/edk2.orig.tar.xz").respond_with_data(BODY)
    src = edk2.Source(httpserver.url_for("/pool/edk2.orig.tar.xz"), SHA)
    got = edk2.fetch_source(src, tmp_path)
    assert got == tmp_path / "edk2.orig.tar.xz" and got.read_bytes() == BODY


def test_fetch_source_reuses_a_verified_copy_without_network(httpserver, tmp_path):
    (tmp_path / "edk2.orig.tar.xz").write_bytes(BODY)
    src = edk2.Source(httpserver.url_for("/pool/edk2.orig.tar.xz"), SHA)
    assert edk2.fetch_source(src, tmp_path).read_bytes() == BODY
    assert len(httpserver.log) == 0


def test_fetch_source_replaces_a_corrupt_copy(httpserver, tmp_path):
    (tmp_path / "edk2.orig.tar.xz").write_bytes(b"truncated")
    httpserver.expect_request("/pool/edk2.orig.tar.xz").respond_with_data(BODY)
    src = edk2.Source(httpserver.url_for("/pool/edk2.orig.tar.xz"), SHA)
    assert edk2.fetch_source(src, tmp_path).read_bytes() == BODY
    assert len(httpserver.log) == 1


def test_sha256_mismatch_shows_both_hashes_and_keeps_nothing(httpserver, tmp_path):
    httpserver.expect_request("/pool/edk2.debian.tar.xz").respond_with_data(BODY)
    pinned = "ab" * 32
    src = edk2.Source(httpserver.url_for("/pool/edk2.debian.tar.xz"), pinned)
    with pytest.raises(HashMismatch) as exc:
        edk2.fetch_source(src, tmp_path / "downloads")
    msg = str(exc.value)
    assert pinned in msg and SHA in msg and src.url in msg
    assert list((tmp_path / "downloads").iterdir()) == []


def test_missing_pool_file_names_url_and_status(httpserver, tmp_path):
    httpserver.expect_request("/pool/gone.tar.xz").respond_with_data("", status=404)
    src = edk2.Source(httpserver.url_for("/pool/gone.tar.xz"), SHA)
    with pytest.raises(DownloadError, match=r"404") as exc:
        edk2.fetch_source(src, tmp_path)
    assert src.url in str(exc.value)
    assert not (tmp_path / "gone.tar.xz").exists()


def test_unreachable_archive_names_the_url(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/debian/pool/main/e/edk2/edk2_2025.02.orig.tar.xz"
    with pytest.raises(DownloadError) as exc:
        edk2.fetch_source(edk2.Source(url, SHA), tmp_path, retries=2, backoff=0)
    assert url in str(exc.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------- build inputs


def test_parse_series_keeps_order_and_skips_comments():
    text = "a.diff\n# comment\n\nb.patch -p1\nc.patch # trailing\n"
    assert edk2.parse_series(text) == ["a.diff", "b.patch", "c.patch"]


def test_patch_argv_is_exact():
    assert edk2.patch_argv(Path("/t/debian/patches/x.diff")) == [
        "patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch",
        "-i", "/t/debian/patches/x.diff"]


def test_grub_script_drops_sevsecret_and_pins_fat_metadata():
    out = edk2.grub_script(GRUB_SH, ("sevsecret",))
    assert "sevsecret" not in out
    modules = out.split('GRUB_MODULES="', 1)[1].split('"', 1)[0].split()
    assert modules == ["part_msdos", "linux", "reboot"]
    assert 'mkfs.msdos --invariant -C -- "${basedir}/disk.fat" 64' in out
    assert 'mcopy -m -i "${basedir}/disk.fat"' in out
    # nothing else changed
    assert out.replace(" --invariant", "").replace(" -m -i", " -i") == \
        GRUB_SH.replace("            sevsecret\n", "")


def test_grub_script_refuses_an_unexpected_shape():
    with pytest.raises(BuildError, match="GRUB_MODULES"):
        edk2.grub_script("echo hi\n", ("sevsecret",))
    with pytest.raises(BuildError, match="mcopy -i"):
        edk2.grub_script(GRUB_SH.replace("mcopy -i", "cp"), ("sevsecret",))


def test_build_argv_is_exact(tmp_path):
    cfg, _ = _cfg(tmp_path, source="build", build_options='["-D", "FOO=TRUE"]')
    assert edk2.build_argv(cfg, 2) == [
        "bash", "-c", 'args=("$@"); set --; . ./edksetup.sh && exec build "${args[@]}"',
        "edk2-build",
        "-a", "X64", "-t", "GCC5", "-b", "RELEASE", "-p", "OvmfPkg/AmdSev/AmdSevX64.dsc",
        "-n", "2", "-D", "FOO=TRUE"]
    assert edk2.basetools_argv(2) == ["make", "-C", "BaseTools", "-j2"]


def test_build_env_pins_time_and_locale():
    assert edk2.build_env(1704067200) == {
        "SOURCE_DATE_EPOCH": "1704067200", "TZ": "UTC", "LC_ALL": "C",
        "PYTHONDONTWRITEBYTECODE": "1"}


def test_missing_build_deps_name_debian_packages(monkeypatch):
    absent = {"nasm", "iasl", "mcopy"}
    got = edk2.missing_build_deps(find=lambda p: None if p in absent else f"/usr/bin/{p}",
                                  exists=lambda f: "uuid" not in f)
    assert got == {"nasm": "nasm", "iasl": "acpica-tools", "mcopy": "mtools",
                   "/usr/include/uuid/uuid.h": "uuid-dev"}
    monkeypatch.setattr(edk2, "missing_build_deps", lambda: got)
    with pytest.raises(ToolMissing) as exc:
        edk2.require_build_deps()
    assert "apt-get install acpica-tools mtools nasm uuid-dev" in str(exc.value)


def _tar_xz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unpack_puts_debian_dir_into_the_tree(tmp_path):
    orig = _tar_xz(tmp_path / "o.tar.xz", {"edk2-2025.02/README.md": b"edk2\n"})
    deb = _tar_xz(tmp_path / "d.tar.xz", {"debian/patches/series": b"a.diff\n",
                                          "debian/patches/a.diff": b""})
    work = tmp_path / "work"
    (work / "stale").mkdir(parents=True)
    tree = edk2.unpack(orig, deb, work)
    assert len(str(tree)) == edk2.WORKSPACE_LENGTH
    assert tree.parent == work and tree.name.startswith("edk2-2025.02_")
    assert (tree / "README.md").read_text() == "edk2\n"
    assert (tree / "debian" / "patches" / "series").read_text() == "a.diff\n"
    assert [p.name for p in work.iterdir()] == [tree.name]


def test_padded_tree_has_a_fixed_length_whatever_the_build_dir():
    short = edk2.padded_tree(Path("/b/firmware/edk2"), "edk2-2025.02", 64)
    long = edk2.padded_tree(Path("/tmp/a/much/longer/build/dir/firmware/edk2"), "edk2-2025.02", 64)
    assert len(str(short)) == len(str(long)) == 64
    assert short == Path("/b/firmware/edk2/edk2-2025.02" + "_" * 35)


def test_padded_tree_refuses_a_build_dir_that_is_too_long():
    with pytest.raises(BuildError, match="shorter build_dir"):
        edk2.padded_tree(Path("/x" * 40), "edk2-2025.02", 64)


def test_unpack_refuses_a_debian_tarball_without_patches(tmp_path):
    orig = _tar_xz(tmp_path / "o.tar.xz", {"edk2-2025.02/README.md": b"edk2\n"})
    deb = _tar_xz(tmp_path / "d.tar.xz", {"debian/control": b""})
    with pytest.raises(BuildError, match="debian/patches"):
        edk2.unpack(orig, deb, tmp_path / "work")


def test_fill_brotli_copies_the_embedded_sources_once(tmp_path):
    embedded = tmp_path / edk2.BROTLI_EMBEDDED / "c" / "enc"
    embedded.mkdir(parents=True)
    (embedded / "encode.c").write_text("int x;\n")
    (tmp_path / edk2.BROTLI_BASETOOLS).mkdir(parents=True)
    assert edk2.fill_brotli(tmp_path)
    assert (tmp_path / edk2.BROTLI_BASETOOLS / "c" / "enc" / "encode.c").read_text() == "int x;\n"
    assert not edk2.fill_brotli(tmp_path)  # already filled


def test_fix_grub_edits_the_copy_and_stamps_grub_cfg(tmp_path):
    script = tmp_path / edk2.GRUB_SCRIPT
    script.parent.mkdir(parents=True)
    script.write_text(GRUB_SH)
    (tmp_path / edk2.GRUB_CFG).write_text("set x=1\n")
    edk2.fix_grub(tmp_path, ("sevsecret",), 1704067200)
    assert "sevsecret" not in script.read_text()
    assert (tmp_path / edk2.GRUB_CFG).stat().st_mtime == 1704067200


def test_edk2_source_extraction_skips_absolute_host_symlinks_only(tmp_path):
    tarball = tmp_path / "o.tar.xz"
    with tarfile.open(tarball, "w:xz") as tar:
        for name, target in (("edk2/X11IncludeHack", "/opt/X11/include"),
                             ("edk2/inner", "README")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
        info = tarfile.TarInfo("edk2/README")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    skipped = archive.extract(tarball, tmp_path / "out", skip_host_symlinks=True)
    assert skipped == ["edk2/X11IncludeHack -> /opt/X11/include"]
    assert not (tmp_path / "out" / "edk2" / "X11IncludeHack").is_symlink()
    assert (tmp_path / "out" / "edk2" / "inner").read_text() == "hi\n"


@pytest.mark.parametrize("name,linkname", [("../evil", ""), ("edk2/up", "../../etc")])
def test_edk2_source_extraction_refuses_escapes_and_keeps_nothing(tmp_path, name, linkname):
    tarball = tmp_path / "o.tar"
    with tarfile.open(tarball, "w") as tar:
        info = tarfile.TarInfo(name)
        if linkname:
            info.type, info.linkname = tarfile.SYMTYPE, linkname
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnsafeArchive):
        archive.extract(tarball, tmp_path / "out", skip_host_symlinks=True)
    assert not (tmp_path / "out").exists()
