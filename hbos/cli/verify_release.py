"""`hbos verify-release PATH`: check a release offline, without installing it.

PATH is a release tarball or an extracted release directory. The same checks
as download_release run: the tarball's sha256 when --sha256 is given, safe
extraction into a temporary directory (hbos.release.unpack), then
hbos.release.verify (every file against the manifest, the launch digest
recomputed, signature, ID block) and, with --trusted-key, the signer
(hbos.release.provenance); nothing is kept. Exit 0 when the release verifies,
1 when it is refused.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hbos.errors import HashMismatch, ReleaseError, UnsafeArchive
from hbos.release import layout, provenance, unpack, verify
from hbos.util.fsutil import sha256_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="release.tar.gz or a release directory")
    p.add_argument("--sha256", default="", help="expected sha256 of the tarball")
    p.add_argument("--launch-digest", default="",
                   help="expected launch digest (96 hex digits), e.g. from a trusted build")
    p.add_argument("--trusted-key", default="",
                   help="author public key (PEM): refuse unless the release is signed by it")


def verify_path(path: Path, *, sha256: str = "", launch_digest: str = "",
                trusted_key: str = "", report=None) -> layout.Manifest:
    """Verify a tarball or directory; raise ReleaseError/UnsafeArchive/HashMismatch.

    `report(root)` is called on the verified directory (signer, provenance)."""
    if path.is_dir():
        if sha256:
            raise ReleaseError("--sha256 applies to a tarball, not to a directory")
        return _verified(path, launch_digest, trusted_key, report)
    if not path.is_file():
        raise ReleaseError(f"{path} is not a regular file" if path.exists()
                           else f"{path} does not exist")
    if sha256:
        got = sha256_file(path)
        if got != sha256.lower():
            raise HashMismatch(f"sha256 mismatch for {path}:\n  expected {sha256.lower()}\n"
                               f"  got      {got}")
    with tempfile.TemporaryDirectory(prefix="hbos-verify-") as tmp:
        root = Path(tmp) / "release"
        unpack.extract(path, root, max_bytes=unpack.free_space(Path(tmp)))
        return _verified(root, launch_digest, trusted_key, report)


def _verified(root: Path, launch_digest: str, trusted_key: str, report) -> layout.Manifest:
    manifest = verify.verify_release(root, pinned_digest=launch_digest)
    if trusted_key:
        provenance.check_trusted(root, [Path(trusted_key).expanduser()])
    if report is not None:
        report(root)
    return manifest


def signer_lines(root: Path) -> str:
    """Who signed the release and what it was built from (verify-release output)."""
    signer = provenance.verify_signature(root)
    lines = [f"  signed by author key {signer.key_digest}" if signer
             else "  unsigned (no manifest.json.sig): consistent, not authenticated"]
    more = provenance.describe(root)
    if more:
        lines.append(more)
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    details: list[str] = []
    try:
        m = verify_path(args.path, sha256=args.sha256, launch_digest=args.launch_digest,
                        trusted_key=args.trusted_key,
                        report=lambda root: details.append(signer_lines(root)))
    except (ReleaseError, UnsafeArchive, HashMismatch) as exc:
        print(f"REFUSED {args.path}: {exc}")
        return 1
    print(f"OK {args.path}: {m.name} (hbos {m.tool_version}, SOURCE_DATE_EPOCH "
          f"{m.source_date_epoch})\n  expected launch digest {m.launch_digest}")
    for line in details:
        print(line)
    return 0
