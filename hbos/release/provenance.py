"""Signed releases: manifest.json.sig (the author key) and provenance.json (in-toto).

With `identity.enabled`, package_release adds to the release:

- `provenance.json`: an in-toto Statement v1 (https://in-toto.io/Statement/v1)
  with a SLSA provenance v1 predicate. Subjects: every release file with its
  sha256; resolved dependencies (the materials): the guest kernel .deb, the
  edk2 source pins (or the firmware file), the base root, the content and its
  refs, this tool's version and git commit. No wall-clock time: the same build
  gives the same statement. It is listed in manifest.json like every file.
- `manifest.json.sig`: JSON {format, algorithm, public_key (PEM), key_digest,
  signature}: the author key's ECDSA P-384/SHA-384 signature (DER, base64,
  RFC 6979 deterministic) over the exact bytes of manifest.json. key_digest is
  the SHA-384 of the key in AMD's format, the AUTHOR_KEY_DIGEST every
  attestation report of this release carries. Check it without this tool:
  `openssl dgst -sha384 -verify author.pub.pem -signature SIG.der manifest.json`
  (SIG.der = the base64-decoded signature).

A signature only says something when the verifier names the key it trusts
(`download_release --trusted-key`, `release.trusted_keys`): then a release that
is unsigned, signed by another key, or whose signature does not match is
refused before it is installed. Without a trusted key a present signature
must still verify (a broken one is refused, by hbos.release.verify), and
nothing else changes.

Of hbos.release this module imports only layout; hbos.release.verify calls
verify_signature when it checks a release (with its ID block and HOST_DATA).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hbos import __version__
from hbos.errors import HbosError, IdentityError, ReleaseError
from hbos.measure import identity
from hbos.paths import PROJECT_ROOT
from hbos.release import layout
from hbos.stages import firmware
from hbos.util import run
from hbos.util.fsutil import sha256_file, write_json, write_text

SIG_FORMAT = "hbos-release-signature/1"
ALGORITHM = "ecdsa-p384-sha384"
STATEMENT = "https://in-toto.io/Statement/v1"
PREDICATE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/permaweb/hb-os/hbos-release/v1"


# ----------------------------------------------------------------- signature


def signature_document(key, manifest_bytes: bytes) -> dict[str, Any]:
    pub = key.public_key()
    return {"format": SIG_FORMAT, "algorithm": ALGORITHM,
            "public_key": identity.public_pem(pub).decode(),
            "key_digest": identity.key_digest(pub),
            "signature": base64.b64encode(identity.sign_der(key, manifest_bytes)).decode()}


def sign_release(root: Path, key) -> str:
    """Write root/manifest.json.sig; return the signer's key digest."""
    doc = signature_document(key, (root / layout.MANIFEST).read_bytes())
    write_json(root / layout.SIGNATURE, doc)
    return doc["key_digest"]


@dataclass(frozen=True)
class Signer:
    key_digest: str
    public_pem: bytes


def verify_signature(root: Path) -> Signer | None:
    """The signer of root/manifest.json, or None when unsigned; a bad signature raises."""
    path = root / layout.SIGNATURE
    if not path.exists():
        return None
    try:
        doc = json.loads(layout.read_small(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{layout.SIGNATURE}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SIG_FORMAT \
            or doc.get("algorithm") != ALGORITHM:
        raise ReleaseError(f"{layout.SIGNATURE}: not a {SIG_FORMAT} {ALGORITHM} signature")
    try:
        pem = str(doc["public_key"]).encode()
        pub = identity.parse_public_pem(pem, f"{layout.SIGNATURE} public_key")
        sig = base64.b64decode(str(doc["signature"]), validate=True)
    except (KeyError, binascii.Error, ValueError):
        raise ReleaseError(f"{layout.SIGNATURE}: needs public_key (PEM) and signature "
                           "(base64)") from None
    except IdentityError as exc:
        raise ReleaseError(exc.message) from None
    digest = identity.key_digest(pub)
    if doc.get("key_digest") != digest:
        raise ReleaseError(f"{layout.SIGNATURE}: key_digest does not match its public key")
    if not identity.verify_der(pub, layout.read_small(root / layout.MANIFEST), sig):
        raise ReleaseError(f"{layout.SIGNATURE}: the signature does not match manifest.json",
                           hint="the manifest was altered after signing; refusing this release")
    return Signer(digest, identity.public_pem(pub))


def trusted_keys(cfg, trusted_key: str = "") -> list[Path]:
    """--trusted-key, else release.trusted_keys (paths resolved against the config)."""
    if trusted_key:
        return [Path(trusted_key).expanduser().resolve()]
    return [cfg.path(p) for p in cfg.release.trusted_keys]


def check_trusted(root: Path, trusted: list[Path]) -> Signer:
    """Refuse a release not signed by one of `trusted` (PEM public keys)."""
    try:
        allowed = {identity.key_digest(identity.load_public(p)): p for p in trusted}
    except IdentityError as exc:
        raise ReleaseError(f"trusted key: {exc.message}", hint=exc.hint) from None
    signer = verify_signature(root)
    if signer is None:
        raise ReleaseError(f"the release is unsigned (no {layout.SIGNATURE}), but a trusted "
                           "key is required",
                           hint="ask its publisher for a signed release (identity.enabled)")
    if signer.key_digest not in allowed:
        raise ReleaseError(f"the release is signed by key {signer.key_digest}, which is not a "
                           f"trusted key ({', '.join(str(p) for p in trusted)})",
                           hint="another author signed it; refusing this release")
    return signer


# ----------------------------------------------------------------- provenance


def _git_commit(root: Path) -> dict[str, Any]:
    try:
        commit = run.output(["git", "-C", root, "rev-parse", "HEAD"], quiet=True).strip()
        dirty = bool(run.output(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                quiet=True).strip())
    except HbosError:
        return {}
    return {"gitCommit": commit, "dirty": dirty}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def materials(cfg, paths) -> list[dict[str, Any]]:
    """The inputs of the release, as in-toto ResourceDescriptors."""
    out: list[dict[str, Any]] = []
    kernel = _read(paths.kernel_manifest)
    if kernel:
        out.append({"name": "guest-kernel.deb", "uri": f"file:{Path(kernel['deb']).name}",
                    "digest": {"sha256": kernel["deb_sha256"]},
                    "annotations": {"version": kernel.get("version"),
                                    "source": cfg.kernel.source,
                                    **({"package": cfg.kernel.package}
                                       if cfg.kernel.source == "package" else {})}})
    if firmware.built_here(cfg):
        f = cfg.firmware
        out += [{"name": "edk2.orig.tar.xz", "uri": f.orig_url, "digest": {"sha256": f.orig_sha256}},
                {"name": "edk2.debian.tar.xz", "uri": f.debian_url,
                 "digest": {"sha256": f.debian_sha256},
                 "annotations": {"platform": f.platform, "build_type": f.build_type}}]
    base = _read(paths.base_rootfs_manifest)
    if base:
        out.append({"name": "base-rootfs.tar", "digest": {"sha256": base["sha256"]},
                    "annotations": {"suite": cfg.rootfs.suite, "mirror": cfg.rootfs.mirror}})
    if paths.content_manifest.exists():
        content = _read(paths.content_manifest) or {}
        out.append({"name": "content", "digest": {"sha256": sha256_file(paths.content_manifest)},
                    "annotations": {"source": content.get("source"),
                                    "refs": content.get("refs", {})}})
    tool: dict[str, Any] = {"name": "hbos", "annotations": {"version": __version__}}
    git = _git_commit(PROJECT_ROOT)
    if git:
        tool["digest"] = {"gitCommit": git["gitCommit"]}
        tool["annotations"]["dirty"] = git["dirty"]
    out.append(tool)
    return out


def statement(cfg, paths, files: list[layout.FileEntry]) -> dict[str, Any]:
    return {
        "_type": STATEMENT,
        "subject": [{"name": f.name, "digest": {"sha256": f.sha256}}
                    for f in sorted(files, key=lambda f: f.name)],
        "predicateType": PREDICATE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"release": cfg.release.name, "profile": cfg.profile,
                                       "source_date_epoch": cfg.source_date_epoch,
                                       "vm": cfg.slice("vm")["vm"]},
                "resolvedDependencies": materials(cfg, paths),
            },
            "runDetails": {"builder": {"id": f"hbos/{__version__}"}},
        },
    }


def write_provenance(cfg, paths, root: Path, files: list[layout.FileEntry]) -> None:
    write_text(root / layout.PROVENANCE, json.dumps(statement(cfg, paths, files), indent=2,
                                                     sort_keys=True) + "\n")


def describe(root: Path) -> str:
    """A few lines about provenance.json for verify-release (empty when absent)."""
    path = root / layout.PROVENANCE
    if not path.exists():
        return ""
    try:
        data = json.loads(layout.read_small(path))
        deps = data["predicate"]["buildDefinition"]["resolvedDependencies"]
        if not (isinstance(deps, list) and all(isinstance(d, dict) for d in deps)):
            raise TypeError("resolvedDependencies is not a list of objects")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, ReleaseError):
        return f"  {layout.PROVENANCE}: not an in-toto statement this tool can read"
    lines = [(f"  provenance ({data.get('predicateType')}): {len(data.get('subject', []))} "
             "subjects; materials:")]
    for d in deps:
        digest = ", ".join(f"{k} {v}" for k, v in (d.get("digest") or {}).items()) or "-"
        lines.append(f"    {d.get('name')}: {digest}")
    return "\n".join(lines)
