"""The SEV-SNP ID block and ID authentication information (SNP_LAUNCH_FINISH).

SEV Secure Nested Paging Firmware ABI, "ID Block" (96 bytes, little endian):

    0x00  LD[48]         the expected launch digest
    0x30  FAMILY_ID[16]
    0x40  IMAGE_ID[16]
    0x50  VERSION  u32   1
    0x54  GUEST_SVN u32
    0x58  POLICY   u64   must equal the policy the guest is launched with

"ID Authentication Information" (4096 bytes):

    0x000  ID_KEY_ALGO   u32   1 = ECDSA P-384 with SHA-384
    0x004  AUTH_KEY_ALGO u32
    0x040  ID_BLOCK_SIG[0x200]   the ID key's signature over the 96-byte ID block
    0x240  ID_KEY[0x404]         the ID public key (AMD format)
    0x680  ID_KEY_SIG[0x200]     the author key's signature over the 0x404-byte ID_KEY
    0x880  AUTHOR_KEY[0x404]     the author public key
    (everything else reserved, zero)

The PSP refuses to launch a guest whose measurement differs from LD or whose
policy differs from POLICY, and every attestation report then carries
FAMILY_ID, IMAGE_ID, GUEST_SVN, ID_KEY_DIGEST and AUTHOR_KEY_DIGEST. QEMU
takes both structures base64-encoded (sev-snp-guest `id-block=`, `id-auth=`).
Formats and signing (SHA-384 over the raw structures) agree byte for byte
with the virtee/sev crate's implementation (tests/vectors/idblock).
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from hbos.errors import IdentityError
from hbos.measure import identity
from hbos.util.fsutil import write_json, write_text

ID_BLOCK_SIZE = 96
ID_AUTH_SIZE = 4096
ID_BLOCK_VERSION = 1

# File names in build/identity/ and in a release (base64 text, as QEMU takes them).
ID_BLOCK_FILE = "id_block.b64"
ID_AUTH_FILE = "id_auth.b64"

_ID_BLOCK_SIG = 0x040
_ID_KEY = 0x240
_ID_KEY_SIG = 0x680
_AUTHOR_KEY = 0x880


@dataclass(frozen=True)
class IdBlock:
    launch_digest: bytes      # 48
    family_id: bytes          # 16
    image_id: bytes           # 16
    guest_svn: int
    policy: int
    version: int = ID_BLOCK_VERSION

    def to_bytes(self) -> bytes:
        if len(self.launch_digest) != 48 or len(self.family_id) != 16 or len(self.image_id) != 16:
            raise IdentityError("ID block: LD is 48 bytes, FAMILY_ID and IMAGE_ID 16 each")
        return (self.launch_digest + self.family_id + self.image_id
                + self.version.to_bytes(4, "little") + self.guest_svn.to_bytes(4, "little")
                + self.policy.to_bytes(8, "little"))

    @classmethod
    def from_bytes(cls, data: bytes) -> IdBlock:
        if len(data) != ID_BLOCK_SIZE:
            raise IdentityError(f"an ID block is {ID_BLOCK_SIZE} bytes, got {len(data)}")
        return cls(launch_digest=data[0:48], family_id=data[48:64], image_id=data[64:80],
                   version=int.from_bytes(data[80:84], "little"),
                   guest_svn=int.from_bytes(data[84:88], "little"),
                   policy=int.from_bytes(data[88:96], "little"))


def assemble_id_auth(id_block_sig: bytes, id_key: bytes, id_key_sig: bytes,
                     author_key: bytes) -> bytes:
    """The 4096-byte structure from its four parts (each in AMD's format)."""
    out = bytearray(ID_AUTH_SIZE)
    out[0:4] = identity.ALGO_ECDSA_P384_SHA384.to_bytes(4, "little")
    out[4:8] = identity.ALGO_ECDSA_P384_SHA384.to_bytes(4, "little")
    for offset, part, size in ((_ID_BLOCK_SIG, id_block_sig, identity.SIGNATURE_SIZE),
                               (_ID_KEY, id_key, identity.PUBKEY_SIZE),
                               (_ID_KEY_SIG, id_key_sig, identity.SIGNATURE_SIZE),
                               (_AUTHOR_KEY, author_key, identity.PUBKEY_SIZE)):
        if len(part) != size:
            raise IdentityError(f"ID auth: part at 0x{offset:x} must be {size} bytes")
        out[offset:offset + size] = part
    return bytes(out)


def sign(block: bytes, id_key: ec.EllipticCurvePrivateKey,
         author_key: ec.EllipticCurvePrivateKey) -> bytes:
    """ID authentication information for `block`: ID key signs the block, author key the ID key."""
    id_pub = identity.amd_public_key(id_key.public_key())
    return assemble_id_auth(identity.amd_signature(id_key, block), id_pub,
                            identity.amd_signature(author_key, id_pub),
                            identity.amd_public_key(author_key.public_key()))


@dataclass(frozen=True)
class AuthInfo:
    id_key_digest: str
    author_key_digest: str


def verify(block: bytes, auth: bytes) -> AuthInfo:
    """Check both signatures of an ID auth structure over `block`; return the key digests."""
    if len(block) != ID_BLOCK_SIZE:
        raise IdentityError(f"an ID block is {ID_BLOCK_SIZE} bytes, got {len(block)}")
    if len(auth) != ID_AUTH_SIZE:
        raise IdentityError(f"an ID auth structure is {ID_AUTH_SIZE} bytes, got {len(auth)}")
    for name, off in (("ID_KEY_ALGO", 0), ("AUTH_KEY_ALGO", 4)):
        algo = int.from_bytes(auth[off:off + 4], "little")
        if algo != identity.ALGO_ECDSA_P384_SHA384:
            raise IdentityError(f"ID auth: {name} {algo} is not ECDSA P-384/SHA-384 (1)")
    id_raw = auth[_ID_KEY:_ID_KEY + identity.PUBKEY_SIZE]
    author_raw = auth[_AUTHOR_KEY:_AUTHOR_KEY + identity.PUBKEY_SIZE]
    id_pub = identity.parse_amd_public_key(id_raw)
    author_pub = identity.parse_amd_public_key(author_raw)
    if not identity.verify_amd_signature(
            id_pub, block, auth[_ID_BLOCK_SIG:_ID_BLOCK_SIG + identity.SIGNATURE_SIZE]):
        raise IdentityError("ID auth: the ID key's signature does not match the ID block")
    if not identity.verify_amd_signature(
            author_pub, id_raw, auth[_ID_KEY_SIG:_ID_KEY_SIG + identity.SIGNATURE_SIZE]):
        raise IdentityError("ID auth: the author key's signature over the ID key does not match")
    return AuthInfo(identity.key_digest(id_pub), identity.key_digest(author_pub))


# ----------------------------------------------------------------- files


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def read_b64(path: Path, size: int, what: str) -> bytes:
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        raise IdentityError(f"{what} {path} does not exist", hint="run: doit id_block") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"cannot read {what} {path}: {exc}") from None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise IdentityError(f"{what} {path} is not base64") from None
    if len(data) != size:
        raise IdentityError(f"{what} {path} holds {len(data)} bytes, expected {size}")
    return data


def block_for(record: dict[str, Any], guest_svn: int) -> IdBlock:
    """The ID block promising what measurement.json records (digest, ids, policy)."""
    expected = record.get("expected_hash")
    if not expected:
        raise IdentityError("measurement.json has no expected launch digest, so there is "
                            "nothing for an ID block to promise",
                            hint=record.get("expected_hash_reason") or "run: doit measure")
    vm = record.get("vm") or {}
    try:
        policy = int(str(vm["guest_policy"]), 0)
        family = bytes.fromhex(str(vm.get("family_id", "0" * 32)))
        image = bytes.fromhex(str(vm.get("image_id", "0" * 32)))
    except (KeyError, ValueError):
        raise IdentityError("measurement.json lacks vm.guest_policy or has a bad "
                            "vm.family_id/image_id", hint="run: doit measure") from None
    return IdBlock(launch_digest=bytes.fromhex(expected), family_id=family, image_id=image,
                   guest_svn=guest_svn, policy=policy)


def describe(block: IdBlock, info: AuthInfo) -> dict[str, Any]:
    return {"launch_digest": block.launch_digest.hex(), "family_id": block.family_id.hex(),
            "image_id": block.image_id.hex(), "version": block.version,
            "guest_svn": block.guest_svn, "policy": f"0x{block.policy:x}",
            "id_key_digest": info.id_key_digest, "author_key_digest": info.author_key_digest}


def write_id_block(cfg, paths) -> None:
    """`doit id_block`: sign the ID block for measurement.json with the configured keys."""
    if not cfg.identity.enabled:
        raise IdentityError("identity.enabled is false", hint="set identity.enabled: true")
    try:
        record = json.loads(paths.measurement.read_text())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read {paths.measurement}: {exc}",
                            hint="run: doit measure") from None
    files = identity.key_files(cfg)
    id_key = identity.load_private(files.private(identity.ID))
    author_key = identity.load_private(files.private(identity.AUTHOR))
    recorded = {k: record.get(k) for k in ("id_key_digest", "author_key_digest")}
    actual = {"id_key_digest": identity.key_digest(id_key.public_key()),
              "author_key_digest": identity.key_digest(author_key.public_key())}
    if recorded != actual:
        raise IdentityError(f"{paths.measurement} names other keys than {files.directory} "
                            f"({recorded} vs {actual})", hint="run: doit measure")
    block = block_for(record, cfg.identity.guest_svn)
    raw = block.to_bytes()
    auth = sign(raw, id_key, author_key)
    info = verify(raw, auth)
    write_text(paths.id_auth, b64(auth) + "\n")
    write_text(paths.id_block, b64(raw) + "\n")
    write_json(paths.id_block_json, describe(block, info))
    print(f"id_block: {paths.id_block} for launch digest {block.launch_digest.hex()}\n"
          f"  policy 0x{block.policy:x}, guest SVN {block.guest_svn}, "
          f"ID key {info.id_key_digest[:16]}..., author key {info.author_key_digest[:16]}...",
          file=sys.stderr)


def check_for_launch(block_b64: str, auth_b64: str, record: dict[str, Any],
                     policy: int) -> AuthInfo:
    """The ID block must promise this launch (else the PSP refuses it with an opaque error)."""
    try:
        raw = base64.b64decode(block_b64, validate=True)
        auth = base64.b64decode(auth_b64, validate=True)
    except (binascii.Error, ValueError):
        raise IdentityError("the ID block or ID auth is not base64") from None
    block = IdBlock.from_bytes(raw)
    info = verify(raw, auth)
    expected = (record.get("expected_hash") or "").lower()
    problems = []
    if block.launch_digest.hex() != expected:
        problems.append(f"its LD {block.launch_digest.hex()} is not the expected digest "
                        f"{expected or '(none)'}")
    if block.policy != policy:
        problems.append(f"its policy 0x{block.policy:x} is not the launch policy 0x{policy:x}")
    for key in ("id_key_digest", "author_key_digest"):
        if record.get(key) and record[key] != getattr(info, key):
            problems.append(f"its {key} {getattr(info, key)} is not measurement.json's "
                            f"{record[key]}")
    if problems:
        raise IdentityError("the ID block does not describe this launch: " + "; ".join(problems),
                            hint="rebuild it: doit id_block")
    return info
