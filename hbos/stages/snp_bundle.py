"""AMD's SNP bundle: host kernel, QEMU, OVMF and guest kernel.

An AMDESE/AMDSEV `snp-release-*` tree (what AMD's build scripts produce from
its fork branches), fetched from a URL pinned by sha256 or taken from a local
tarball or directory, unpacked safely under build/snp-release/ and described
by build/snp-release.json. Config key and doit task keep AMD's name,
`snp_release`. Not to be confused with our own packaged guest release
(hbos/release/layout.py, `doit package_release`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hbos.config import Config
from hbos.errors import BuildError, ConfigError
from hbos.paths import Paths
from hbos.util import archive, fetch
from hbos.util.fsutil import read_json, sha256_file, write_json


def configured(cfg: Config) -> bool:
    return bool(cfg.snp_release.url or cfg.snp_release.path)


def fetch_bundle(cfg: Config, paths: Paths) -> None:
    """Download (or take) the bundle, verify it, unpack it, write its manifest."""
    rel = cfg.snp_release
    if not configured(cfg):
        print("snp_release: none configured (snp_release.url / snp_release.path); "
              "nothing to fetch", file=sys.stderr)
        write_json(paths.snp_bundle_manifest, {"configured": False})
        return
    record: dict[str, Any] = {"configured": True}
    if rel.url:
        if not rel.sha256:
            raise ConfigError("snp_release.url is set but snp_release.sha256 is empty",
                              hint="pin the tarball: sha256sum snp-release.tar.gz")
        tarball = paths.downloads / "snp-release.tar.gz"
        if not (tarball.is_file() and sha256_file(tarball) == rel.sha256.lower()):
            print(f"snp_release: downloading {rel.url}", file=sys.stderr)
            fetch.download(rel.url, tarball, sha256=rel.sha256)
        archive.extract(tarball, paths.snp_bundle_dir)
        record.update(url=rel.url, sha256=rel.sha256.lower())
        root = _tree_root(paths.snp_bundle_dir)
    else:
        local = cfg.path(rel.path)
        if local.is_dir():
            root = local
            record.update(path=str(local))
        elif local.is_file():
            digest = sha256_file(local)
            if rel.sha256 and digest != rel.sha256.lower():
                raise BuildError(f"sha256 mismatch for {local}:\n  expected {rel.sha256.lower()}"
                                 f"\n  got      {digest}")
            archive.extract(local, paths.snp_bundle_dir)
            record.update(path=str(local), sha256=digest)
            root = _tree_root(paths.snp_bundle_dir)
        else:
            raise ConfigError(f"snp_release.path {local} does not exist")
    record["root"] = str(root)
    record["files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    write_json(paths.snp_bundle_manifest, record)
    print(f"snp_release: {len(record['files'])} files in {root}", file=sys.stderr)


def _tree_root(extracted: Path) -> Path:
    """The bundle's top directory (tarballs usually hold one snp-release-*/)."""
    entries = [p for p in extracted.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return extracted


def root(paths: Paths) -> Path:
    """The unpacked bundle tree recorded by fetch_bundle()."""
    try:
        manifest = read_json(paths.snp_bundle_manifest)
    except FileNotFoundError:
        raise BuildError("the SNP bundle has not been fetched", hint="run: doit snp_release") from None
    if not manifest.get("configured"):
        raise ConfigError("this stage needs an SNP bundle, but none is configured",
                          hint="set snp_release.url + sha256 (or snp_release.path) in config.yaml, "
                               "or choose another source (e.g. profile=local)")
    return Path(manifest["root"])


def find_one(base: Path, patterns: list[str], what: str) -> Path:
    """The first file under `base` matching one of `patterns` (in preference order)."""
    for pattern in patterns:
        hits = sorted(p for p in base.glob(pattern) if p.is_file())
        if hits:
            return hits[0]
    raise BuildError(f"the SNP bundle at {base} has no {what} (looked for {', '.join(patterns)})")


def guest_kernel_deb(paths: Paths) -> Path:
    base = root(paths)
    debs = [p for p in sorted(base.glob("linux/guest/linux-image-*.deb")) if "-dbg" not in p.name]
    if not debs:
        raise BuildError(f"the SNP bundle at {base} has no guest kernel "
                         "(linux/guest/linux-image-*.deb)")
    return debs[0]


def ovmf(paths: Paths) -> Path:
    return find_one(root(paths), ["usr/local/share/qemu/DIRECT_BOOT_OVMF.fd",
                                  "usr/local/share/qemu/OVMF.fd", "**/OVMF*.fd"], "OVMF firmware")


def qemu(paths: Paths) -> Path:
    return find_one(root(paths), ["usr/local/bin/qemu-system-x86_64", "**/qemu-system-x86_64"],
                    "QEMU binary")
