"""hbos.stages.veritytree, the in-process check of `veritysetup format`, against real
veritysetup output on small files (issue 16 item 11)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hbos.errors import BuildError
from hbos.stages import verity, veritytree
from tests.conftest import missing_prerequisite

SALT = "5a" * 32
UUID = "12345678-1234-4234-8234-123456789abc"
BLOCK = 4096


@pytest.fixture(autouse=True)
def _veritysetup():
    if shutil.which("veritysetup") is None:
        missing_prerequisite("veritysetup is not installed (Debian package cryptsetup-bin)")


def formatted(tmp_path: Path, blocks: int, *, sparse: bool = False,
              salt: str = SALT) -> tuple[Path, Path, str]:
    """A data file of `blocks` blocks and its hash file, made by real veritysetup format."""
    data, hashes = tmp_path / f"data-{blocks}.img", tmp_path / f"hash-{blocks}.bin"
    with open(data, "wb") as fh:
        if sparse:      # zeros but the first and last block: cheap, yet many levels
            fh.truncate(blocks * BLOCK)
            fh.write(b"first" * 800)
            fh.seek((blocks - 1) * BLOCK)
            fh.write(b"last" * 1000)
        else:
            for i in range(blocks):
                fh.write(i.to_bytes(4, "little") * (BLOCK // 4))
    hashes.touch()
    proc = subprocess.run(verity.veritysetup_format_argv(data, hashes, UUID, salt),
                          capture_output=True, text=True, check=True)
    return data, hashes, verity.parse_root_hash(proc.stdout)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


# 1 block: no hash level; 2 and 129: one and two levels; 16385 (sparse): three levels
@pytest.mark.parametrize("blocks,sparse", [(1, False), (2, False), (129, False), (16385, True)])
def test_accepts_what_veritysetup_format_wrote(tmp_path, blocks, sparse):
    data, hashes, root = formatted(tmp_path, blocks, sparse=sparse)
    tree = veritytree.compute(data, bytes.fromhex(SALT))
    assert tree.roothash == root and tree.data_blocks == blocks
    assert hashes.stat().st_size == BLOCK + len(tree.hash_area)
    veritytree.verify(data, hashes, root, SALT, UUID)
    # and veritysetup itself agrees with the file the check accepted
    subprocess.run(verity.veritysetup_verify_argv(data, hashes, root), check=True,
                   capture_output=True)


def test_superblock_fields(tmp_path):
    _, hashes, _ = formatted(tmp_path, 3)
    sb = veritytree.parse_superblock(hashes.read_bytes()[:512])
    assert sb == veritytree.Superblock(version=1, hash_type=1, uuid=UUID, algorithm="sha256",
                                       data_block_size=BLOCK, hash_block_size=BLOCK,
                                       data_blocks=3, salt=bytes.fromhex(SALT))


def test_rejects_a_flipped_data_byte(tmp_path):
    data, hashes, root = formatted(tmp_path, 129)
    flip(data, 5 * BLOCK + 100)
    # 129 blocks: hash block 0 is the top level, 1 and 2 the bottom (128 hashes each)
    with pytest.raises(BuildError, match=r"hash block 1 \(offset 8192\) differs .*"
                                         r"data block 5 \(offset 20480\) does not match"):
        veritytree.verify(data, hashes, root, SALT, UUID)


def test_rejects_a_flipped_data_byte_in_a_single_block_image(tmp_path):
    data, hashes, root = formatted(tmp_path, 1)
    flip(data, 10)
    with pytest.raises(BuildError, match="root hash .* differs from the data's"):
        veritytree.verify(data, hashes, root, SALT, UUID)


# the hash file of 129 blocks: superblock, top level (1 block), bottom level (2 blocks)
@pytest.mark.parametrize("offset,block", [(BLOCK + 7, 0), (2 * BLOCK + 31, 1),
                                          (3 * BLOCK + 32 * 127, 2)])
def test_rejects_a_flipped_hash_tree_byte_in_every_level(tmp_path, offset, block):
    data, hashes, root = formatted(tmp_path, 129)
    flip(hashes, offset)
    with pytest.raises(BuildError, match=rf"hash block {block} \(offset {BLOCK * (block + 1)}\)"):
        veritytree.verify(data, hashes, root, SALT, UUID)


def test_rejects_a_byte_in_the_zero_padding_of_a_hash_block(tmp_path):
    data, hashes, root = formatted(tmp_path, 129)
    flip(hashes, 3 * BLOCK + BLOCK - 1)      # after the last hash of the bottom level
    with pytest.raises(BuildError, match="hash block 2 .*zero padding is not zero"):
        veritytree.verify(data, hashes, root, SALT, UUID)


def test_rejects_a_wrong_salt(tmp_path):
    data, hashes, root = formatted(tmp_path, 129)
    with pytest.raises(BuildError, match="superblock differs: salt"):
        veritytree.verify(data, hashes, root, "a5" * 32, UUID)
    # a hash file made with another salt, checked against the right one
    other = tmp_path / "other"
    other.mkdir()
    _, hashes2, root2 = formatted(other, 129, salt="a5" * 32)
    with pytest.raises(BuildError, match="salt"):
        veritytree.verify(data, hashes2, root2, SALT, UUID)


def test_rejects_a_wrong_root_hash_uuid_and_a_truncated_file(tmp_path):
    data, hashes, root = formatted(tmp_path, 129)
    with pytest.raises(BuildError, match="root hash"):
        veritytree.verify(data, hashes, "00" * 32, SALT, UUID)
    with pytest.raises(BuildError, match="superblock differs: uuid"):
        veritytree.verify(data, hashes, root, SALT, "87654321-1234-4234-8234-123456789abc")
    with open(hashes, "r+b") as fh:
        fh.truncate(3 * BLOCK)
    with pytest.raises(BuildError, match="bytes of hashes"):
        veritytree.verify(data, hashes, root, SALT, UUID)
    hashes.write_bytes(b"not a superblock" * 64)
    with pytest.raises(BuildError, match="bad signature"):
        veritytree.verify(data, hashes, root, SALT, UUID)


def test_rejects_data_that_is_not_whole_blocks(tmp_path):
    data = tmp_path / "odd.img"
    data.write_bytes(b"x" * 5000)
    with pytest.raises(BuildError, match="whole number"):
        veritytree.compute(data, b"")


def test_stage_formats_and_checks(tmp_path):
    """The stage's format_hash_tree: real veritysetup format, checked in-process."""
    data, _, root = formatted(tmp_path, 129)
    hashes = tmp_path / "stage-hash.bin"
    steps = verity.Steps()
    ids = {"salt": SALT, "verity_uuid": UUID}
    assert verity.format_hash_tree(data, hashes, ids, steps=steps) == root
    assert set(steps.times) == {"format", "verify"}


def test_stage_check_catches_a_format_that_disagrees(tmp_path, monkeypatch):
    """If veritysetup format wrote with another salt than the stage asked for, the
    stage fails (the check compares with the ids, not with what format wrote)."""
    data, _, _ = formatted(tmp_path, 129)
    real = verity.veritysetup_format_argv
    monkeypatch.setattr(verity, "veritysetup_format_argv",
                        lambda d, h, u, s: real(d, h, u, "a5" * 32))
    with pytest.raises(BuildError, match="superblock differs: salt"):
        verity.format_hash_tree(data, tmp_path / "h.bin", {"salt": SALT, "verity_uuid": UUID})
