"""The dm-verity hash tree computed in-process: the check after `veritysetup format`.

What `veritysetup format --format=1 --hash=sha256` writes into the hash file
(https://docs.kernel.org/admin-guide/device-mapper/verity.html, and cryptsetup's
docs/on-disk-format of the verity superblock):

- block 0: the 512-byte superblock, zero-padded to one hash block:
  "verity\\0\\0", version u32 (1), hash type u32 (1 = salt first), uuid[16],
  algorithm[32] ("sha256"), data block size u32, hash block size u32,
  data blocks u64, salt size u16, 6 pad bytes, salt[256], 168 pad bytes
  (little-endian);
- then the hash levels, the top (the one whose single block the root hash
  covers) first and the level over the data blocks last. Each level is the
  list of sha256(salt || block) of the blocks below it, 32 bytes each, 128 to
  a 4096-byte block, the last block zero-padded;
- root hash = sha256(salt || the top level's only block).

`compute` rebuilds all of that from the data alone, at hashlib speed; the
verity stage runs it in a thread while `veritysetup format` runs (the data
was just written by mkfs, so both read it from the page cache), then `check`
compares the superblock fields, every hash block byte for byte and the root
hash with what veritysetup format wrote and printed. This is the check
`veritysetup verify` made (osbuild's pattern), but independent of
veritysetup and without a second pass over the data after format.
"""

from __future__ import annotations

import hashlib
import struct
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

from hbos.errors import BuildError

SIGNATURE = b"verity\0\0"
SUPERBLOCK = struct.Struct("<8sII16s32sIIQH6s256s168s")   # 512 bytes
VERSION = 1          # --format=1: salt hashed before the block
ALGORITHM = "sha256"
DIGEST = 32
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Superblock:
    version: int
    hash_type: int
    uuid: str
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes


def parse_superblock(raw: bytes) -> Superblock:
    if len(raw) < SUPERBLOCK.size:
        raise BuildError(f"verity superblock: {len(raw)} bytes, expected {SUPERBLOCK.size}")
    (sig, version, hash_type, uuid, alg, dbs, hbs, blocks, salt_size, _pad1, salt,
     _pad2) = SUPERBLOCK.unpack_from(raw)
    if sig != SIGNATURE:
        raise BuildError(f"verity superblock: bad signature {sig!r}")
    if salt_size > len(salt):
        raise BuildError(f"verity superblock: salt size {salt_size} > {len(salt)}")
    return Superblock(version=version, hash_type=hash_type, uuid=str(uuidlib.UUID(bytes=uuid)),
                      algorithm=alg.rstrip(b"\0").decode(errors="replace"),
                      data_block_size=dbs, hash_block_size=hbs, data_blocks=blocks,
                      salt=salt[:salt_size])


@dataclass(frozen=True)
class Tree:
    """What veritysetup format must have written for the data: the hash area (after
    the superblock block, top level first) and the root hash."""
    data_blocks: int
    hash_area: bytes
    roothash: str
    level_blocks: tuple[int, ...] = ()      # blocks of each level, top first


def _hash_blocks(base, view: memoryview, block: int, out: bytearray) -> None:
    copy, extend = base.copy, out.extend
    for i in range(0, len(view), block):
        h = copy()
        h.update(view[i:i + block])
        extend(h.digest())


def _pad(level: bytearray, block: int) -> bytearray:
    if len(level) % block:
        level.extend(bytes(block - len(level) % block))
    return level


def compute(data: Path, salt: bytes, block: int = 4096) -> Tree:
    """The hash tree of `data` (a whole number of `block`-byte blocks)."""
    base = hashlib.sha256(salt)
    size = data.stat().st_size
    if size == 0 or size % block:
        raise BuildError(f"verity data {data}: {size} bytes is not a whole number of "
                         f"{block}-byte blocks")
    level = bytearray()
    buf = bytearray(READ_CHUNK - READ_CHUNK % block)
    view = memoryview(buf)
    read = 0
    with open(data, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            if n % block:                   # a short read mid-block: finish the block
                more = fh.read(block - n % block)
                buf[n:n + len(more)] = more
                n += len(more)
            _hash_blocks(base, view[:n], block, level)
            read += n
    if read != size:
        raise BuildError(f"verity data {data} changed size while it was hashed")
    blocks = size // block
    if blocks == 1:
        # no hash level: the root hash is the data block's hash (kernel: levels = 0)
        return Tree(blocks, b"", level.hex())
    levels = [_pad(level, block)]
    while len(levels[-1]) > block:
        up = bytearray()
        _hash_blocks(base, memoryview(levels[-1]), block, up)
        levels.append(_pad(up, block))
    root = base.copy()
    root.update(levels[-1])
    return Tree(blocks, b"".join(reversed(levels)), root.hexdigest(),
                tuple(len(lv) // block for lv in reversed(levels)))


def check(tree: Tree, hash_tree: Path, roothash: str, salt: bytes, uuid: str,
          block: int = 4096) -> None:
    """Compare what veritysetup format wrote and printed with `tree`; raise on any difference."""
    raw = hash_tree.read_bytes()
    where = f"verity hash tree {hash_tree}"
    sb = parse_superblock(raw[:block])
    want = Superblock(version=VERSION, hash_type=VERSION, uuid=uuid, algorithm=ALGORITHM,
                      data_block_size=block, hash_block_size=block,
                      data_blocks=tree.data_blocks, salt=salt)
    if sb != want:
        diffs = [f"{k} {getattr(sb, k)!r} (expected {getattr(want, k)!r})"
                 for k in want.__dataclass_fields__ if getattr(sb, k) != getattr(want, k)]
        raise BuildError(f"{where}: superblock differs: {'; '.join(diffs)}")
    if any(raw[SUPERBLOCK.size:block]):
        raise BuildError(f"{where}: the superblock's padding is not zero")
    area = raw[block:]
    if len(area) != len(tree.hash_area):
        raise BuildError(f"{where}: {len(area)} bytes of hashes, expected {len(tree.hash_area)}")
    if area != tree.hash_area:
        # the last differing block is the lowest: for a changed data block, the
        # hash block over it (its ancestors differ only because of it)
        last = next(i for i in reversed(range(0, len(area), block))
                    if area[i:i + block] != tree.hash_area[i:i + block])
        index = last // block
        what = ""
        bottom = len(tree.level_blocks) and sum(tree.level_blocks[:-1])
        if index >= bottom:
            got, exp = area[last:last + block], tree.hash_area[last:last + block]
            slot = next(j for j in range(0, block, DIGEST) if got[j:j + DIGEST] != exp[j:j + DIGEST])
            first_data = (index - bottom) * (block // DIGEST) + slot // DIGEST
            what = (f": the hash of data block {first_data} (offset {first_data * block}) "
                    "does not match the data" if first_data < tree.data_blocks else
                    ": its zero padding is not zero")
        raise BuildError(f"{where}: hash block {index} (offset {block + last}) differs "
                         f"from the hashes of the data{what}")
    if roothash != tree.roothash:
        raise BuildError(f"{where}: root hash {roothash} differs from the data's {tree.roothash}")


def verify(data: Path, hash_tree: Path, roothash: str, salt: str, uuid: str,
           block: int = 4096) -> None:
    """`veritysetup verify`, in-process and stricter: every hash block, the superblock,
    the salt and the root hash. `salt` is hex."""
    salt_bytes = bytes.fromhex(salt)
    check(compute(data, salt_bytes, block), hash_tree, roothash, salt_bytes, uuid, block)
