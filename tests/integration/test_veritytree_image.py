"""hbos.stages.veritytree on the real guest image (issue 16 item 11): the in-process check
the verity stage runs accepts the image and hash tree the stage built, and rejects
a flipped data byte, a flipped hash-tree byte and a wrong salt (the pattern of
test_images.py::test_verity_verify_detects_a_flipped_byte)."""

from __future__ import annotations

import json
import shutil

import pytest

from hbos.errors import BuildError
from hbos.stages import veritytree

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _flip(path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
def real(guest_build):
    record = json.loads(guest_build.paths.verity_manifest.read_text())
    return guest_build, record["salt"], record["verity_uuid"]


def test_accepts_the_real_image(real):
    guest, salt, uuid = real
    veritytree.verify(guest.image, guest.hash_tree, guest.roothash, salt, uuid)


def test_rejects_a_flipped_data_byte(real, tmp_path):
    guest, salt, uuid = real
    image = tmp_path / "guest.img"
    shutil.copyfile(guest.image, image)
    _flip(image, 8192 + 100)
    with pytest.raises(BuildError, match=r"data block 2 \(offset 8192\) does not match"):
        veritytree.verify(image, guest.hash_tree, guest.roothash, salt, uuid)


def test_rejects_a_flipped_hash_tree_byte(real, tmp_path):
    guest, salt, uuid = real
    hashes = tmp_path / "hash_tree.bin"
    shutil.copyfile(guest.hash_tree, hashes)
    _flip(hashes, hashes.stat().st_size - 4096 + 5)    # the first hash of the last block
    with pytest.raises(BuildError, match="differs from the hashes of the data"):
        veritytree.verify(guest.image, hashes, guest.roothash, salt, uuid)


def test_rejects_a_wrong_salt(real):
    guest, salt, uuid = real
    other = ("00" if salt[:2] != "00" else "11") + salt[2:]
    with pytest.raises(BuildError, match="superblock differs: salt"):
        veritytree.verify(guest.image, guest.hash_tree, guest.roothash, other, uuid)
