"""The layout of a release: the names of its files, its manifest, reading them.

A release is one build's launchable files plus the evidence to check them,
all at the top level of one directory (and of its tarball):

    guest.img  hash_tree.bin  vmlinuz  initrd.img  OVMF.fd
    vm-config.toml         the build's VM definition, file names relative to the release
    measurement.json       the launch inputs and expected digest (hbos.measure.digest)
    reference-values.json  what a verifier trusts (hbos.attest.reference)
    manifest.json          name, size, sha256 of every other file, the expected launch
                           digest, tool version, SOURCE_DATE_EPOCH and the guest ports

and, when signed (identity.enabled, hbos.release.provenance), id_block.b64,
id_auth.b64 and provenance.json (listed in the manifest) and manifest.json.sig.

This module only names and parses; it checks nothing against the files
(hbos.release.verify does) and imports no other module of hbos.release.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hbos.errors import ReleaseError
from hbos.util import limits
from hbos.util.fsutil import sha256_file

FORMAT = "hbos-release/1"

IMAGE = "guest.img"
HASH_TREE = "hash_tree.bin"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
FIRMWARE = "OVMF.fd"
VM_CONFIG = "vm-config.toml"
MEASUREMENT = "measurement.json"
MANIFEST = "manifest.json"
REFERENCE_VALUES = "reference-values.json"  # what a verifier trusts (hbos.attest.reference)

# Every file a release holds besides the manifest, sorted (the tarball order).
PAYLOAD = tuple(sorted((IMAGE, HASH_TREE, KERNEL, INITRD, FIRMWARE, VM_CONFIG, MEASUREMENT,
                        REFERENCE_VALUES)))

# A signed release (identity.enabled, hbos.release.provenance) also holds these, listed
# in the manifest, and the author key's signature over the manifest beside it.
ID_BLOCK = "id_block.b64"
ID_AUTH = "id_auth.b64"
PROVENANCE = "provenance.json"
OPTIONAL = tuple(sorted((ID_BLOCK, ID_AUTH, PROVENANCE)))
SIGNATURE = "manifest.json.sig"

# The VM definition's file keys and the release file each must name.
VM_FILES = {"kernel_file": KERNEL, "initrd_file": INITRD, "ovmf_file": FIRMWARE}

# Too big to re-hash on every start; dm-verity checks them block by block at
# run time against the root hash on the (measured) kernel cmdline.
LARGE = (IMAGE, HASH_TREE)

SMALL_LIMIT = 1 << 20  # what read_small reads at most (a release's JSON and base64 files)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX96 = re.compile(r"^[0-9a-f]{96}$")


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str
    tool_version: str
    source_date_epoch: int
    launch_digest: str
    files: tuple[FileEntry, ...]
    # The guest ports baked into the image (content services listen on them);
    # start_release forwards these, whatever the host's config says.
    ports: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "ports": dict(self.ports),
            "tool_version": self.tool_version,
            "source_date_epoch": self.source_date_epoch,
            "expected_launch_digest": self.launch_digest,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256}
                      for f in sorted(self.files, key=lambda f: f.name)],
        }

    @classmethod
    def parse(cls, data: Any, source: str = MANIFEST) -> "Manifest":
        if not isinstance(data, dict):
            raise ReleaseError(f"{source}: expected a JSON object")
        if data.get("format") != FORMAT:
            raise ReleaseError(f"{source}: format is {data.get('format')!r}, expected {FORMAT!r}",
                               hint="this release was made by an incompatible tool version")
        for key, typ in (("name", str), ("tool_version", str), ("source_date_epoch", int),
                         ("expected_launch_digest", str), ("files", list)):
            if not isinstance(data.get(key), typ) or isinstance(data.get(key), bool):
                raise ReleaseError(f"{source}: '{key}' is missing or not a {typ.__name__}")
        digest = data["expected_launch_digest"].lower()
        if not _HEX96.match(digest):
            raise ReleaseError(f"{source}: expected_launch_digest is not 96 hex digits")
        files = []
        for i, f in enumerate(data["files"]):
            if not (isinstance(f, dict) and isinstance(f.get("name"), str)
                    and isinstance(f.get("size"), int) and not isinstance(f.get("size"), bool)
                    and isinstance(f.get("sha256"), str) and _HEX64.match(f["sha256"].lower())):
                raise ReleaseError(f"{source}: files[{i}] needs a name, an integer size and "
                                   "a sha256 (64 hex digits)")
            files.append(FileEntry(f["name"], f["size"], f["sha256"].lower()))
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise ReleaseError(f"{source}: a file is listed more than once")
        if not set(PAYLOAD) <= set(names) <= set(PAYLOAD) | set(OPTIONAL):
            missing = sorted(set(PAYLOAD) - set(names))
            extra = sorted(set(names) - set(PAYLOAD) - set(OPTIONAL))
            raise ReleaseError(f"{source}: the file list is not a release's "
                               f"(missing: {', '.join(missing) or '-'}; "
                               f"unexpected: {', '.join(extra) or '-'})")
        ports = data.get("ports", {})
        if not (isinstance(ports, dict) and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535
                for v in ports.values())):
            raise ReleaseError(f"{source}: 'ports' must map names to TCP ports")
        return cls(name=data["name"], tool_version=data["tool_version"],
                   source_date_epoch=data["source_date_epoch"], launch_digest=digest,
                   files=tuple(sorted(files, key=lambda f: f.name)),
                   ports=tuple(sorted(ports.items())))


def read_small(path: Path, limit: int = SMALL_LIMIT) -> bytes:
    """A release's text file, refused above `limit` (never read a bomb into memory)."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ReleaseError(f"{path}: larger than {limit} bytes; not a release's {path.name}")
    return data


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise ReleaseError(f"release {root} has no {MANIFEST}")
    data = limits.load_json(path, limits.MANIFEST_BYTES, "release manifest", ReleaseError)
    return Manifest.parse(data, str(path))


def file_entry(path: Path, name: str | None = None) -> FileEntry:
    return FileEntry(name or path.name, path.stat().st_size, sha256_file(path))
