"""Launch identity keys: the ID key and the author key (ECDSA P-384).

    keys_dir/id.pem          ID key (private, PKCS#8 PEM, mode 0600): signs the ID block
    keys_dir/id.pub.pem      its public key
    keys_dir/author.pem      author key (private, 0600): signs the ID key and releases
    keys_dir/author.pub.pem  its public key

`keys_dir` is `identity.keys_dir`, by default `$XDG_CONFIG_HOME/hbos/keys`
(`~/.config/hbos/keys`): never under build/, so no image, release or log
can pick a private key up. A key that exists is never overwritten.

AMD's formats (SEV-SNP firmware ABI, "ECDSA Public Key Format" and "ECDSA
Signature Format"): a public key is 0x404 bytes, CURVE (u32 LE, 2 = P-384),
QX and QY as 72-byte little-endian integers, then zeros; a signature is
0x200 bytes, R and S as 72-byte little-endian integers, then zeros. The
ID_KEY_DIGEST and AUTHOR_KEY_DIGEST of an attestation report are the
SHA-384 of the 0x404-byte public key.

Signatures are deterministic (RFC 6979): the same block signed by the same
key gives the same bytes, so the ID authentication structure and a release
signature are reproducible.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from hbos.errors import IdentityError
from hbos.measure import nodeconfig

CURVE_P384 = 2              # SNP ABI: ECDSA curve id of P-384
ALGO_ECDSA_P384_SHA384 = 1  # SNP ABI: ID_KEY_ALGO / AUTH_KEY_ALGO
POINT = 72                  # bytes per coordinate/scalar (576 bits) in AMD's formats
PUBKEY_SIZE = 0x404
SIGNATURE_SIZE = 0x200

ID, AUTHOR = "id", "author"


@dataclass(frozen=True)
class KeyFiles:
    directory: Path

    def private(self, role: str) -> Path:
        return self.directory / f"{role}.pem"

    def public(self, role: str) -> Path:
        return self.directory / f"{role}.pub.pem"

    def all(self) -> list[Path]:
        return [self.private(ID), self.public(ID), self.private(AUTHOR), self.public(AUTHOR)]


def default_keys_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hbos" / "keys"


def key_files(cfg) -> KeyFiles:
    value = cfg.identity.keys_dir
    return KeyFiles(cfg.path(value) if value else default_keys_dir())


# ----------------------------------------------------------------- keys on disk


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode`; refuse (never truncate) when it exists."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails with FileExistsError instead of replacing a key
    finally:
        tmp.unlink(missing_ok=True)


def create_keys(files: KeyFiles) -> list[Path]:
    """Create whatever of the four files is missing; return the ones created.

    An existing private key is kept (its public key is rewritten from it only
    when missing); nothing is ever overwritten.
    """
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    created: list[Path] = []
    for role in (ID, AUTHOR):
        priv = files.private(role)
        if priv.exists():
            key = load_private(priv)
        else:
            key = ec.generate_private_key(ec.SECP384R1())
            try:
                _write_new(priv, _private_pem(key), 0o600)
            except FileExistsError:  # created meanwhile by another process: use that one
                key = load_private(priv)
            else:
                created.append(priv)
        pub = files.public(role)
        if pub.exists():
            if public_pem(load_public(pub)) != public_pem(key.public_key()):
                raise IdentityError(f"{pub} is not the public key of {priv}",
                                    hint=f"move {pub} away; `doit keys` then rewrites it")
        else:
            try:
                _write_new(pub, public_pem(key.public_key()), 0o644)
                created.append(pub)
            except FileExistsError:
                pass
    return created


def load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"private key {path} does not exist",
                            hint="create the keys: doit keys") from None
    except OSError as exc:
        raise IdentityError(f"cannot read private key {path}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise IdentityError(f"private key {path} is readable by others "
                            f"(mode {stat.S_IMODE(st.st_mode):04o})",
                            hint=f"chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
        raise IdentityError(f"{path} is not an ECDSA P-384 key",
                            hint="SEV-SNP ID and author keys are ECDSA P-384 (secp384r1)")
    return key


def load_public(path: Path) -> ec.EllipticCurvePublicKey:
    """A P-384 public key from a PEM file (a public key, or a private key's public half)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"public key {path} does not exist") from None
    except OSError as exc:
        raise IdentityError(f"cannot read public key {path}: {exc.strerror}") from None
    return parse_public_pem(data, str(path))


def parse_public_pem(data: bytes, source: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityError(f"{source} is not a PEM public key",
                            hint="pass the .pub.pem file (e.g. author.pub.pem)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise IdentityError(f"{source} is not an ECDSA P-384 public key")
    return key


# ----------------------------------------------------------------- AMD formats


def _le(value: int) -> bytes:
    return value.to_bytes(POINT, "little")


def amd_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 0x404-byte SEV public key structure (SNP ABI "ECDSA Public Key Format")."""
    nums = key.public_numbers()
    out = CURVE_P384.to_bytes(4, "little") + _le(nums.x) + _le(nums.y)
    return out + bytes(PUBKEY_SIZE - len(out))


def parse_amd_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    if len(data) != PUBKEY_SIZE:
        raise IdentityError(f"an SEV public key is {PUBKEY_SIZE} bytes, got {len(data)}")
    curve = int.from_bytes(data[:4], "little")
    if curve != CURVE_P384:
        raise IdentityError(f"SEV public key: curve {curve} is not P-384 ({CURVE_P384})")
    x = int.from_bytes(data[4:4 + POINT], "little")
    y = int.from_bytes(data[4 + POINT:4 + 2 * POINT], "little")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()
    except ValueError:
        raise IdentityError("SEV public key: the point is not on P-384") from None


def key_digest(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-384 of the AMD-format public key (a report's ID/AUTHOR_KEY_DIGEST), 96 hex."""
    return hashlib.sha384(amd_public_key(key)).hexdigest()


_ECDSA = ec.ECDSA(hashes.SHA384(), deterministic_signing=True)


def sign_der(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-384 / SHA-384 over `data`, DER (RFC 6979 deterministic)."""
    return key.sign(data, _ECDSA)


def amd_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """The 0x200-byte SEV signature structure over `data` (r, s little-endian)."""
    r, s = decode_dss_signature(sign_der(key, data))
    out = _le(r) + _le(s)
    return out + bytes(SIGNATURE_SIZE - len(out))


def verify_amd_signature(key: ec.EllipticCurvePublicKey, data: bytes, sig: bytes) -> bool:
    if len(sig) != SIGNATURE_SIZE:
        return False
    r = int.from_bytes(sig[:POINT], "little")
    s = int.from_bytes(sig[POINT:2 * POINT], "little")
    if r == 0 or s == 0:
        return False
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


def verify_der(key: ec.EllipticCurvePublicKey, data: bytes, sig: bytes) -> bool:
    try:
        key.verify(sig, data, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        return False
    return True


# ----------------------------------------------------------------- the keys stage


def make_keys(cfg, paths=None) -> None:
    """`doit keys`: create the ID and author keys where missing (never overwrite)."""
    files = key_files(cfg)
    created = create_keys(files)
    for role in (ID, AUTHOR):
        pub = load_public(files.public(role))
        state = "created" if files.private(role) in created else "kept (exists)"
        print(f"keys: {role} key {files.private(role)} {state}; digest {key_digest(pub)}",
              file=sys.stderr)
    if not cfg.identity.enabled:
        print("keys: identity.enabled is false: the build does not use them yet",
              file=sys.stderr)


def digests(cfg) -> dict[str, str]:
    """id_key_digest and author_key_digest of the configured keys (from the public files)."""
    files = key_files(cfg)
    out = {}
    for role in (ID, AUTHOR):
        pub = files.public(role)
        if not pub.exists():
            raise IdentityError(f"identity.enabled but {pub} does not exist",
                                hint="create the keys: doit keys")
        out[f"{role}_key_digest"] = key_digest(load_public(pub))
    return out


def measurement_fields(cfg, record: dict) -> dict:
    """What measurement.json records of the launch identity: host_data (64 hex) and the
    node configuration it hashes; id_key_digest, author_key_digest (96 hex) and
    guest_svn, all null when identity is disabled."""
    fields = nodeconfig.measurement_fields(cfg, record)
    if cfg.identity.enabled:
        fields.update(digests(cfg), guest_svn=cfg.identity.guest_svn)
    else:
        fields.update(id_key_digest=None, author_key_digest=None, guest_svn=None)
    return fields
