"""The hyperbeam stage's pure parts (hbos/stages/hyperbeam.py): what the artifact
cache key is a function of, the build's environment, and the deterministic pack.
The build itself (mmdebstrap, rebar3 in a chroot) is tests/integration's."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from hbos.stages import hb_overlay, hb_sources, hyperbeam
from hbos.util import archive, tree as htree
from tests.conftest import config_in

COMMIT = "3635c5e6254e001cdfd716117c177017e97cc04b"


def inputs(tmp_path: Path, extra: str = "") -> dict:
    where = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}"
    where.mkdir()
    cfg, _ = config_in(where, extra)
    return hyperbeam.cache_inputs(cfg)


def test_cache_inputs_name_every_pin_and_edit(tmp_path):
    got = inputs(tmp_path)
    assert [s["name"] for s in got["sources"]] == [s.name for s in hb_sources.load()]
    assert [e[0] for e in got["overlay"]] == [e.name for e in hb_overlay.EDITS]
    assert json.loads(json.dumps(got)) == got        # plain data: the cache key hashes it
    assert inputs(tmp_path) == got                   # and a function of the config only


def test_a_changed_pin_changes_the_cache_key(tmp_path):
    data = json.loads(hb_sources.PINS.read_text())
    base = inputs(tmp_path)
    for field in ("sha256", "tree"):
        changed = json.loads(json.dumps(data))
        old = changed["sources"][3][field]
        changed["sources"][3][field] = ("0" if old[0] != "0" else "1") + old[1:]
        pins = tmp_path / f"pins-{field}.json"
        pins.write_text(json.dumps(changed))
        assert inputs(tmp_path, f"hyperbeam: {{pins: {pins}}}\n") != base, field
    same = tmp_path / "pins-copy.json"
    same.write_text(json.dumps(data, indent=2))
    assert inputs(tmp_path, f"hyperbeam: {{pins: {same}}}\n") == base


def test_a_changed_overlay_edit_changes_the_cache_key(tmp_path, monkeypatch):
    base = inputs(tmp_path)
    last = hb_overlay.EDITS[-1]
    monkeypatch.setattr(hb_overlay, "EDITS", (*hb_overlay.EDITS[:-1],
                                              dataclasses.replace(last, new=last.new + " ")))
    assert inputs(tmp_path) != base
    monkeypatch.setattr(hb_overlay, "EDITS", hb_overlay.EDITS[:-1])
    assert inputs(tmp_path) != base


@pytest.mark.parametrize("extra", [
    "source_date_epoch: 1700000000\n",
    "hyperbeam: {suite: bookworm}\n",
    "hyperbeam: {mirror: 'http://deb.example/debian'}\n",
])
def test_what_shapes_the_release_changes_the_cache_key(tmp_path, extra):
    assert inputs(tmp_path, extra) != inputs(tmp_path)


@pytest.mark.parametrize("extra", [
    "sources: {mirror: ../shared/hyperbeam-sources}\n",
    "sources: {mirror: 'http://archives.example/hb/'}\n",
    "hyperbeam: {jobs: 7, keep_tree: true}\n",
])
def test_where_and_how_fast_it_is_built_does_not(tmp_path, extra):
    assert inputs(tmp_path, extra) == inputs(tmp_path)


def test_build_env(tmp_path):
    cfg, _ = config_in(tmp_path, "source_date_epoch: 1700000123\n")
    env = hyperbeam.build_env(cfg, COMMIT, 3)
    assert env["SOURCE_DATE_EPOCH"] == "1700000123"
    assert env["HB_BUILD_COMMIT"] == COMMIT and env["HB_BUILD_COMMIT_SHORT"] == COMMIT[:7]
    assert env["HEX_OFFLINE"] == "1" and env["REBAR_OFFLINE"] == "1"
    assert env["MAKEFLAGS"] == "-j3"
    assert all(isinstance(v, str) for v in env.values())
    # every variable the overlay puts into rebar.config is set (rebar3 sets REBAR_ROOT_DIR)
    used = {v for e in hb_overlay.EDITS for v in re.findall(r"\$\{(\w+)\}", e.new)}
    assert used - {"REBAR_ROOT_DIR"} <= set(env), used - set(env)


def test_jobs_default_to_the_cpu_count(tmp_path):
    cfg, _ = config_in(tmp_path)
    assert hyperbeam.jobs(cfg) == (os.cpu_count() or 1)
    cfg, _ = config_in(tmp_path, "hyperbeam: {jobs: 5}\n")
    assert hyperbeam.jobs(cfg) == 5


# ----------------------------------------------------------------- pack


def release_tree(root: Path) -> Path:
    """A small tree shaped like relx's output."""
    files = {"bin/hb": (b"#!/bin/sh\nexec beam\n", 0o755),
             "releases/0.0.1/vm.args": (b"-sname hb\n", 0o644),
             "erts-15.2/bin/beam.smp": (b"\x7fELF beam", 0o755),
             "lib/hb-0.0.1/ebin/hb.beam": (b"FOR1 beam", 0o644)}
    for rel, (data, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
    (root / "lib" / "hb-0.0.1" / "priv").mkdir()
    (root / "bin" / "hb-0.0.1").symlink_to("hb")
    os.link(root / "erts-15.2" / "bin" / "beam.smp", root / "erts-15.2" / "bin" / "beam")
    return root


def test_pack_is_deterministic(tmp_path):
    tree = release_tree(tmp_path / "rel")
    a, b = tmp_path / "a" / "hb.tar", tmp_path / "b" / "hb.tar"
    hyperbeam.pack(tree, a, 1700000000)
    for p in [tree, *tree.rglob("*")]:          # other times on disk: the same archive
        os.utime(p, (1, 1), follow_symlinks=False)
    hyperbeam.pack(tree, b, 1700000000)
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [rel for _, rel, _ in htree.walk(tree)]
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", ""), m.name
        assert m.mtime == 1700000000, m.name
    hyperbeam.pack(tree, b, 1700000001)
    assert a.read_bytes() != b.read_bytes()


def test_pack_extracts_to_the_same_tree(tmp_path):
    tree = release_tree(tmp_path / "rel")
    out = tmp_path / "hb.tar"
    hyperbeam.pack(tree, out, 1700000000)
    dest = tmp_path / "opt" / "hyperbeam"
    archive.extract(out, dest)
    assert htree.manifest(dest) == htree.manifest(tree)
    assert os.readlink(dest / "bin" / "hb-0.0.1") == "hb"
    assert (dest / "bin" / "hb").stat().st_mode & 0o777 == 0o755
    assert os.path.samefile(dest / "erts-15.2" / "bin" / "beam",
                            dest / "erts-15.2" / "bin" / "beam.smp")
    assert (dest / "bin" / "hb").stat().st_mtime == 1700000000
