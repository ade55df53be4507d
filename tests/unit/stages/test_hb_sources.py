"""The pinned source set (hbos/stages/hb_sources.py): the pin list, the mirror's
archives against their pins, the tree digest, unpack() and fetch_one().

The mirror checks read ../shared/hyperbeam-sources (skipped without it, a
failure under CI); the rest builds small archives in tmp_path and serves them
from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import http.server
import os
import re
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import BuildError, ConfigError, HashMismatch, UnsafeArchive
from hbos.stages import hb_sources
from hbos.util import archive, fsutil
from tests.conftest import missing_prerequisite

HEX64 = re.compile(r"[0-9a-f]{64}")
HB_COMMIT = "3635c5e6254e001cdfd716117c177017e97cc04b"


def mirror_dir() -> Path:
    """The local profile's source mirror (../shared/hyperbeam-sources)."""
    cfg = hconfig.load(profile="local")
    mirror = cfg.path(cfg.sources.mirror)
    if not (mirror / "SOURCES.md").is_file():
        missing_prerequisite(f"the pinned source archives are not at {mirror} "
                             f"(../shared/hyperbeam-sources)")
    return mirror


def in_mirror() -> list:
    """The pins whose archive the mirror holds (without the mirror: all, for the ids)."""
    cfg = hconfig.load(profile="local")
    mirror = cfg.path(cfg.sources.mirror)
    pins = hb_sources.load()
    held = [s for s in pins if (mirror / s.file).is_file()] if mirror.is_dir() else pins
    return [pytest.param(s, id=s.name) for s in held]


# ----------------------------------------------------------------- the pin list


def test_the_pin_list():
    pins = hb_sources.load()
    assert len(pins) == 16
    for key in ("name", "dest", "file"):
        values = [getattr(s, key) for s in pins]
        assert len(values) == len(set(values)), key
    for s in pins:
        assert HEX64.fullmatch(s.sha256) and HEX64.fullmatch(s.tree), s.name
        assert s.url.startswith(("https://", "http://")) and s.licence, s.name
        assert not Path(s.dest).is_absolute() and ".." not in Path(s.dest).parts, s.name
    hb = hb_sources.by_name(pins, "HyperBEAM")
    assert hb.commit == HB_COMMIT and hb.dest == "HyperBEAM" and hb.repo == "permaweb/HyperBEAM"
    assert HB_COMMIT in hb.url
    # every dependency lands in HyperBEAM's _checkouts (or where its Makefiles look)
    assert {s.name for s in pins if s.dest.startswith("HyperBEAM/_checkouts/")} >= {
        "cowboy", "cowlib", "ranch", "gun", "elmdb", "b64fast", "luerl", "prometheus"}
    with pytest.raises(ConfigError, match="no source named 'nope'"):
        hb_sources.by_name(pins, "nope")


@pytest.mark.parametrize("text", ["", "{}", '{"sources": [{"name": "x"}]}', "[1]"])
def test_a_broken_pin_list_is_a_config_error(tmp_path, text):
    bad = tmp_path / "pins.json"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="not a source pin list"):
        hb_sources.load(bad)


# ----------------------------------------------------------------- the mirror


def test_mirror_archives_match_their_sha256_pins():
    mirror = mirror_dir()
    pins = hb_sources.load()
    held = [s for s in pins if (mirror / s.file).is_file()]
    # only LMDB (Debian's orig tarball) comes from its upstream URL
    assert {s.name for s in pins} - {s.name for s in held} <= {"lmdb"}
    for s in held:
        assert fsutil.sha256_file(mirror / s.file) == s.sha256, s.name


def test_pins_agree_with_the_mirrors_sources_table():
    mirror = mirror_dir()
    rows = {}
    for line in (mirror / "SOURCES.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].endswith(".tar.gz"):
            rows[cells[0]] = cells
    pins = [s for s in hb_sources.load() if s.file in rows]
    assert len(pins) == 15
    for s in pins:
        _, repo, _, commit, _, sha = rows[s.file]
        assert (commit, sha, repo) == (s.commit, s.sha256, s.repo), s.name


@pytest.mark.parametrize("source", in_mirror())
def test_mirror_archives_match_their_tree_pins(tmp_path, source):
    """The second pin: what another archive of the same commit (GitHub's tarball)
    is accepted by. Here the mirror's archive with the byte pin made useless."""
    archive_path = mirror_dir() / source.file
    if not archive_path.is_file():
        # lmdb's orig tarball is not in ../shared/hyperbeam-sources (fetched from
        # deb.debian.org by the stage); in_mirror() lists only the held ones, this
        # guards a mirror that loses a file between collection and the run
        pytest.skip(f"{source.file} is not in the mirror")
    got = tmp_path / source.file
    shutil.copyfile(archive_path, got)
    other_bytes = dataclasses.replace(source, sha256="0" * 64)
    assert hb_sources.unpack(other_bytes, got, tmp_path / "work" / source.dest) == "tree"


def test_fetch_and_unpack_from_the_mirror_directory(tmp_path):
    mirror = mirror_dir()
    pc = hb_sources.by_name(hb_sources.load(), "pc")
    said: list[str] = []
    got = hb_sources.fetch_one(pc, str(mirror), tmp_path / "downloads", Path, said.append)
    assert got == tmp_path / "downloads" / pc.file and said == []
    dest = tmp_path / "build" / pc.dest
    assert hb_sources.unpack(pc, got, dest) == "sha256"
    assert (dest / "rebar.config").is_file() and (dest / "LICENSE").is_file()


# ----------------------------------------------------------------- small archives

FILES = {"README.md": (b"demo\n", 0o644), "bin/run": (b"#!/bin/sh\necho run\n", 0o755),
         "src/demo.erl": (b"-module(demo).\n", 0o644)}


def make_tree(root: Path, extra: dict[str, tuple[bytes, int]] | None = None) -> Path:
    for rel, (data, mode) in {**FILES, **(extra or {})}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
    (root / "empty").mkdir(exist_ok=True)
    (root / "src" / "current").symlink_to("demo.erl")
    return root


def make_archive(tree: Path, out: Path, top: str, mode: str = "w:gz") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, mode) as tar:
        tar.add(tree, arcname=top)
    return out


def source_for(archive_path: Path, tree: Path, **kw) -> hb_sources.Source:
    fields = {"name": "demo", "repo": "example/demo", "commit": "c" * 40,
              "file": archive_path.name, "sha256": fsutil.sha256_file(archive_path),
              "tree": hb_sources.tree_digest(tree), "url": "http://127.0.0.1:9/none.tar.gz",
              "dest": "demo", "licence": "MIT", **kw}
    return hb_sources.Source(**fields)


def test_tree_digest_ignores_top_folder_and_compression(tmp_path):
    tree = make_tree(tmp_path / "tree")
    gz = make_archive(tree, tmp_path / "a.tar.gz", "a")
    xz = make_archive(tree, tmp_path / "b-123.tar.xz", "b-123", "w:xz")
    assert fsutil.sha256_file(gz) != fsutil.sha256_file(xz)
    archive.extract(gz, tmp_path / "x1")
    archive.extract(xz, tmp_path / "x2")
    want = hb_sources.tree_digest(tree)
    assert hb_sources.tree_digest(tmp_path / "x1" / "a") == want
    assert hb_sources.tree_digest(tmp_path / "x2" / "b-123") == want


def test_tree_digest_follows_content_exec_bit_and_links_only(tmp_path):
    tree = make_tree(tmp_path / "tree")
    want = hb_sources.tree_digest(tree)
    os.utime(tree / "README.md", (1, 1))
    os.chmod(tree / "README.md", 0o600)            # other mode bits: umask, tar filters
    os.chmod(tree / "bin" / "run", 0o700)
    (tree / "more-empty").mkdir()                  # directories do not count
    assert hb_sources.tree_digest(tree) == want

    (tree / "README.md").write_bytes(b"demo!\n")
    assert hb_sources.tree_digest(tree) != want
    (tree / "README.md").write_bytes(b"demo\n")
    assert hb_sources.tree_digest(tree) == want

    os.chmod(tree / "README.md", 0o700)            # the executable bit counts
    assert hb_sources.tree_digest(tree) != want
    os.chmod(tree / "README.md", 0o644)

    (tree / "src" / "current").unlink()
    (tree / "src" / "current").symlink_to("../README.md")
    assert hb_sources.tree_digest(tree) != want


def test_tree_digest_leaves_out_omitted_paths(tmp_path):
    tree = make_tree(tmp_path / "tree")
    want = hb_sources.tree_digest(tree)
    fuller = make_tree(tmp_path / "fuller", {"docs/assets/demo.mp4": (b"video", 0o644)})
    assert hb_sources.tree_digest(fuller) != want
    assert hb_sources.tree_digest(fuller, ("docs/*.mp4",)) == want


def test_unpack_accepts_the_pinned_bytes(tmp_path):
    tree = make_tree(tmp_path / "tree")
    gz = make_archive(tree, tmp_path / "downloads" / "demo.tar.gz", "demo-cccc")
    src = source_for(gz, tree)
    dest = tmp_path / "build" / "demo"
    assert hb_sources.unpack(src, gz, dest) == "sha256"
    assert hb_sources.tree_digest(dest) == src.tree
    assert (dest / "bin" / "run").read_bytes() == FILES["bin/run"][0]
    assert os.readlink(dest / "src" / "current") == "demo.erl"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["demo"]   # no scratch left
    assert gz.is_file()


def test_unpack_accepts_other_bytes_of_the_same_tree(tmp_path):
    tree = make_tree(tmp_path / "tree")
    src = source_for(make_archive(tree, tmp_path / "pinned.tar.gz", "demo"), tree)
    github = make_archive(tree, tmp_path / "downloads" / src.file, "example-demo-cccccc",
                          "w:xz")
    assert fsutil.sha256_file(github) != src.sha256
    dest = tmp_path / "build" / "demo"
    assert hb_sources.unpack(src, github, dest) == "tree"
    assert hb_sources.tree_digest(dest) == src.tree


def test_unpack_refuses_an_archive_matching_neither_pin_and_deletes_it(tmp_path):
    tree = make_tree(tmp_path / "tree")
    src = source_for(make_archive(tree, tmp_path / "pinned.tar.gz", "demo"), tree)
    (tree / "src" / "demo.erl").write_bytes(b"-module(evil).\n")
    bad = make_archive(tree, tmp_path / "downloads" / src.file, "demo")
    dest = tmp_path / "build" / "demo"
    with pytest.raises(HashMismatch) as exc:
        hb_sources.unpack(src, bad, dest)
    assert "demo" in str(exc.value) and "matches neither pin" in str(exc.value)
    assert src.sha256 in str(exc.value) and src.tree in str(exc.value)
    assert not bad.exists()                       # the next run fetches again
    assert not dest.exists() and list((tmp_path / "build").iterdir()) == []


def test_unpack_deletes_a_download_that_is_no_archive(tmp_path):
    tree = make_tree(tmp_path / "tree")
    src = source_for(make_archive(tree, tmp_path / "pinned.tar.gz", "demo"), tree)
    page = tmp_path / "downloads" / src.file
    page.parent.mkdir()
    page.write_bytes(b"<html>429 Too Many Requests</html>\n")   # a proxy's answer, HTTP 200
    with pytest.raises(UnsafeArchive):
        hb_sources.unpack(src, page, tmp_path / "build" / "demo")
    assert not page.exists()


def test_unpack_removes_omitted_files_before_the_digest(tmp_path):
    tree = make_tree(tmp_path / "tree")
    extra = {"test/OVMF-1.55.fd": (b"firmware", 0o644), "docs/assets/x.mp4": (b"video", 0o644)}
    upstream = make_tree(tmp_path / "upstream", extra)
    omit = ("test/OVMF-1.55.fd", "docs/*.mp4")
    # the pins as the mirror's archive has them: without the files it lacks
    src = source_for(make_archive(tree, tmp_path / "mirror.tar.gz", "demo"), tree, omit=omit)
    full = make_archive(upstream, tmp_path / "downloads" / src.file, "demo-upstream")
    dest = tmp_path / "build" / "demo"
    assert hb_sources.unpack(src, full, dest) == "tree"
    assert not (dest / "test" / "OVMF-1.55.fd").exists()
    assert not (dest / "docs" / "assets" / "x.mp4").exists()
    # by the byte pin too: one tree, whichever pin matched
    by_bytes = dataclasses.replace(src, sha256=fsutil.sha256_file(full))
    assert hb_sources.unpack(by_bytes, full, dest) == "sha256"
    assert hb_sources.tree_digest(dest) == src.tree


def test_unpack_needs_one_top_folder(tmp_path):
    tree = make_tree(tmp_path / "tree")
    flat = tmp_path / "downloads" / "flat.tar.gz"
    flat.parent.mkdir()
    with tarfile.open(flat, "w:gz") as tar:
        for rel in FILES:
            tar.add(tree / rel, arcname=rel)
    with pytest.raises(BuildError, match="expected one top folder"):
        hb_sources.unpack(source_for(flat, tree), flat, tmp_path / "build" / "demo")


# ----------------------------------------------------------------- fetch_one


class Server:
    """A real HTTP server on 127.0.0.1 serving `root`; `seen` holds (path, status)."""

    def __init__(self, root: Path):
        self.root = root
        self.seen: list[tuple[str, int]] = []
        seen = self.seen

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_request(self, code="-", size="-"):
                seen.append((self.path, int(code)))

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    (tmp_path / "www" / "upstream").mkdir(parents=True)
    (tmp_path / "www" / "mirror").mkdir()
    srv = Server(tmp_path / "www")
    yield srv
    srv.close()


@pytest.fixture
def demo(tmp_path, server) -> hb_sources.Source:
    """A source whose upstream URL the server answers."""
    tree = make_tree(tmp_path / "tree")
    gz = make_archive(tree, tmp_path / "www" / "upstream" / "demo-cccccccccccc.tar.gz", "demo")
    return source_for(gz, tree, url=f"{server.url}/upstream/{gz.name}")


def test_fetch_copies_from_a_mirror_directory(tmp_path, server, demo):
    (tmp_path / "m").mkdir()
    shutil.copyfile(server.root / "upstream" / demo.file, tmp_path / "m" / demo.file)
    said: list[str] = []
    # a relative mirror resolves through the given function (cfg.path in the stage)
    got = hb_sources.fetch_one(demo, "m", tmp_path / "downloads", lambda p: tmp_path / p,
                               said.append)
    assert got == tmp_path / "downloads" / demo.file
    assert got.read_bytes() == (tmp_path / "m" / demo.file).read_bytes()
    assert said == [] and server.seen == []
    assert hb_sources.unpack(demo, got, tmp_path / "build" / "demo") == "sha256"


def test_fetch_falls_back_to_upstream_when_the_mirror_directory_lacks_it(tmp_path, server,
                                                                          demo):
    (tmp_path / "m").mkdir()
    said: list[str] = []
    got = hb_sources.fetch_one(demo, str(tmp_path / "m"), tmp_path / "downloads", Path,
                               said.append)
    assert fsutil.sha256_file(got) == demo.sha256
    assert server.seen == [(f"/upstream/{demo.file}", 200)]
    assert len(said) == 1
    assert "demo" in said[0] and "not in the mirror" in said[0] and demo.url in said[0]


def test_fetch_from_a_mirror_url(tmp_path, server, demo):
    shutil.copyfile(server.root / "upstream" / demo.file, server.root / "mirror" / demo.file)
    said: list[str] = []
    got = hb_sources.fetch_one(demo, f"{server.url}/mirror/", tmp_path / "downloads", Path,
                               said.append)
    assert fsutil.sha256_file(got) == demo.sha256
    assert server.seen == [(f"/mirror/{demo.file}", 200)] and said == []


def test_fetch_falls_back_to_upstream_when_the_mirror_url_lacks_it(tmp_path, server, demo):
    said: list[str] = []
    got = hb_sources.fetch_one(demo, f"{server.url}/mirror", tmp_path / "downloads", Path,
                               said.append)
    assert fsutil.sha256_file(got) == demo.sha256
    assert server.seen == [(f"/mirror/{demo.file}", 404), (f"/upstream/{demo.file}", 200)]
    assert len(said) == 1 and "404" in said[0] and f"fetching {demo.url}" in said[0]


def test_fetch_without_a_mirror_uses_upstream_and_fails_naming_the_source(tmp_path, server,
                                                                          demo):
    got = hb_sources.fetch_one(demo, "", tmp_path / "downloads", Path, print)
    assert fsutil.sha256_file(got) == demo.sha256
    gone = dataclasses.replace(demo, file="gone.tar.gz", url=f"{server.url}/upstream/gone")
    with pytest.raises(BuildError) as exc:
        hb_sources.fetch_one(gone, str(tmp_path / "m"), tmp_path / "downloads", Path,
                             lambda msg: None)
    assert "cannot fetch demo" in exc.value.message and "404" in exc.value.message
    assert "sources.mirror" in (exc.value.hint or "") and "gone.tar.gz" in exc.value.hint
    assert not (tmp_path / "downloads" / "gone.tar.gz").exists()


def test_fetch_reuses_a_download_already_there(tmp_path, server, demo):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / demo.file).write_bytes(b"checked later by unpack")
    assert hb_sources.fetch_one(demo, str(tmp_path / "nowhere"), downloads, Path,
                                print) == downloads / demo.file
    assert server.seen == []
