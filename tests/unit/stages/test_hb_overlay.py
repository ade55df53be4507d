"""The HyperBEAM overlay (hbos/stages/hb_overlay.py) against HyperBEAM's real
rebar.config and rebar.lock, from the pinned archive in the source mirror
(../shared/hyperbeam-sources; without it these tests skip, and fail under CI)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import BuildError
from hbos.stages import hb_overlay, hb_sources
from tests.conftest import missing_prerequisite

ROOT = Path(__file__).resolve().parents[3]
FILES = sorted({e.file for e in hb_overlay.EDITS})


@pytest.fixture(scope="module")
def hyperbeam_src(tmp_path_factory) -> Path:
    """HyperBEAM's source tree at the pinned commit, unpacked (and checked) once."""
    cfg = hconfig.load(profile="local")
    mirror = cfg.path(cfg.sources.mirror)
    hb = hb_sources.by_name(hb_sources.load(), "HyperBEAM")
    archive = mirror / hb.file
    if not archive.is_file():
        missing_prerequisite(f"HyperBEAM's pinned archive {archive} is not here (the source "
                             f"mirror ../shared/hyperbeam-sources)")
    work = tmp_path_factory.mktemp("hb-overlay")
    shutil.copyfile(archive, work / hb.file)
    assert hb_sources.unpack(hb, work / hb.file, work / "HyperBEAM") == "sha256"
    return work / "HyperBEAM"


@pytest.fixture
def src(hyperbeam_src, tmp_path) -> Path:
    """A fresh copy of the files the overlay edits."""
    dest = tmp_path / "HyperBEAM"
    dest.mkdir()
    for name in FILES:
        shutil.copyfile(hyperbeam_src / name, dest / name)
    return dest


def _texts(src: Path) -> dict[str, str]:
    return {name: (src / name).read_text(encoding="utf-8") for name in FILES}


def test_edits_are_named_once_explained_and_documented():
    names = [e.name for e in hb_overlay.EDITS]
    assert len(names) == len(set(names))
    assert FILES == ["rebar.config", "rebar.lock"]
    for e in hb_overlay.EDITS:
        assert e.old and e.old != e.new and e.why, e.name
    docs = (ROOT / "docs" / "content.md").read_text(encoding="utf-8")
    assert [n for n in names if f"`{n}`" not in docs] == []


@pytest.mark.parametrize("edit", hb_overlay.EDITS, ids=lambda e: e.name)
def test_every_edit_matches_the_pinned_commit_exactly_once(src, edit):
    assert (src / edit.file).read_text(encoding="utf-8").count(edit.old) == 1


def test_apply_removes_what_needs_a_network_or_the_rust_nif(src):
    before = _texts(src)
    assert "rebar3_rustler" in before["rebar.config"] and "erlang-lmdb" in before["rebar.lock"]
    assert hb_overlay.apply(src) == [e.name for e in hb_overlay.EDITS]
    after = _texts(src)
    for name, text in after.items():
        for gone in ("rebar3_rustler", "git rev-parse", "$(date", "erlang-lmdb",
                     "{cargo,"):
            assert gone not in text, (name, gone)
    config = after["rebar.config"]
    assert "{exclude_modules, [{hb, [dev_snp_nif]}]}" in config
    assert f'{{pc, {{git, "file://{hb_overlay.PC_REPO}", {{tag, "{hb_overlay.PC_TAG}"}}}}}}' \
        in config
    for var in ("${HB_BUILD_COMMIT}", "${HB_BUILD_COMMIT_SHORT}", "${SOURCE_DATE_EPOCH}",
                "-Wno-error=incompatible-pointer-types"):
        assert var in config, var
    # the lock still names the dependencies the build uses
    assert '<<"elmdb">>' in after["rebar.lock"] and '<<"cowboy">>' in after["rebar.lock"]


@pytest.mark.parametrize("edit", hb_overlay.EDITS, ids=lambda e: e.name)
@pytest.mark.parametrize("how", ["missing", "twice"])
def test_an_edit_that_does_not_match_exactly_once_names_itself(src, edit, how):
    path = src / edit.file
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(edit.old, "" if how == "missing" else edit.old * 2),
                    encoding="utf-8")
    with pytest.raises(BuildError) as exc:
        hb_overlay.apply(src)
    assert f"HyperBEAM overlay '{edit.name}'" in exc.value.message
    assert edit.file in exc.value.message and "exactly once" in exc.value.message
    assert exc.value.hint


def test_apply_is_not_silently_idempotent(src):
    hb_overlay.apply(src)
    applied = _texts(src)
    with pytest.raises(BuildError, match=f"overlay '{hb_overlay.EDITS[0].name}'"):
        hb_overlay.apply(src)
    assert _texts(src) == applied   # the failed second pass changed nothing
