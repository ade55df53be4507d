"""Safe extraction: every unsafe member kind is refused and nothing is written."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from hbos.errors import UnsafeArchive
from hbos.util import archive


def make_tar(path: Path, members: list[tuple[str, str, str | bytes]]) -> Path:
    """members: (kind, name, data-or-linkname); kind in file/dir/sym/hard/chr/fifo."""
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                raw = data if isinstance(data, bytes) else data.encode()
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = str(data)
            tar.addfile(info)
    return path


def test_good_archive_extracts(tmp_path):
    tar = make_tar(tmp_path / "ok.tar.gz", [("dir", "top", ""), ("file", "top/a.txt", "A"),
                                            ("sym", "top/link", "a.txt"),
                                            ("hard", "top/hard", "top/a.txt")])
    dest = tmp_path / "out"
    archive.extract(tar, dest)
    assert (dest / "top" / "a.txt").read_text() == "A"
    assert (dest / "top" / "link").resolve() == (dest / "top" / "a.txt").resolve()
    assert (dest / "top" / "hard").read_text() == "A"


BAD = {
    "absolute": [("file", "/etc/evil", "x")],
    "dotdot": [("file", "../evil", "x")],
    "dotdot-inner": [("file", "a/../../evil", "x")],
    "symlink-absolute": [("sym", "link", "/etc/passwd")],
    "symlink-escape": [("sym", "a/link", "../../outside")],
    "hardlink-escape": [("hard", "hard", "../outside")],
    "device": [("chr", "dev/null", "")],
    "fifo": [("fifo", "pipe", "")],
    "duplicate": [("file", "a", "1"), ("file", "a", "2")],
    "through-symlink": [("sym", "d", "."), ("file", "d/x", "x")],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path, case):
    tar = make_tar(tmp_path / f"{case}.tar.gz", [("file", "fine.txt", "ok")] + BAD[case])
    dest = tmp_path / "sub" / "out"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchive) as exc:
        archive.extract(tar, dest)
    assert f"{case}.tar.gz" in str(exc.value)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name != "sub") == \
        [b for b in before]


def test_failed_extraction_keeps_previous_destination(tmp_path):
    dest = tmp_path / "out"
    archive.extract(make_tar(tmp_path / "v1.tar.gz", [("file", "v", "1")]), dest)
    with pytest.raises(UnsafeArchive):
        archive.extract(make_tar(tmp_path / "v2.tar.gz", [("file", "../x", "2")]), dest)
    assert (dest / "v").read_text() == "1"


def test_not_a_tarball(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"definitely not a tar")
    with pytest.raises(UnsafeArchive, match="not a readable tar archive"):
        archive.extract(junk, tmp_path / "out")
