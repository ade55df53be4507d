"""download_release: fetch a release tarball, verify it, and install it.

    build/downloads/release.tar.gz     the tarball of the current release
    build/releases/<sha16>.<rand>/     an installed, verified release
    build/releases/current -> <dir>    the one start_release launches

The tarball is fetched by hbos.util.fetch (streamed, retried on transient errors,
truncation detected) or, from a `file://` URL or a plain path, copied (for hosts
without a server); its sha256 is checked when pinned. hbos.release.unpack
extracts it (hbos.util.archive's member checks: absolute paths, `..`, escaping
links, devices, fifos, duplicates refused; then only the files the manifest
names, at its sizes, within the free space, all checked before writing) into a
staging directory inside build/releases/, where it is verified
(hbos.release.verify; with a trusted key, its signer first, by
hbos.release.provenance). Only then does the `current` symlink move to it, by
one atomic rename; a refused release leaves the previous one in place and
nothing of itself behind.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import urllib.parse
from pathlib import Path

from hbos.errors import HashMismatch, ReleaseError
from hbos.release import layout, provenance, unpack, verify
from hbos.util import fetch
from hbos.util.fsutil import atomic_path, remove, sha256_file

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def resolve_request(cfg, url: str = "", sha256: str = "") -> tuple[str, str]:
    """URL and pinned sha256 (lowercase, or "") from the task params, else config."""
    url = (url or cfg.release.url).strip()
    if not url:
        raise ReleaseError("no release URL given",
                           hint="doit download_release --url URL [--sha256 HEX], "
                                "or set release.url in config.yaml")
    fetch.parse_url(url)  # a malformed URL is a usage error, not a retried download
    pin = (sha256 or cfg.release.sha256).strip().lower()
    if pin and not _HEX64.match(pin):
        raise ReleaseError(f"--sha256 must be 64 hex digits, got {pin!r}")
    return url, pin


def download_release(cfg, paths, url: str = "", sha256: str = "", trusted_key: str = "", *,
                     progress: bool | None = None) -> Path:
    """Fetch, verify and install a release; return its installed directory.

    With a trusted key (--trusted-key, release.trusted_keys) the release must
    carry that author's valid signature (hbos.release.provenance), checked before install.
    """
    remove_partials(paths)
    url, pin = resolve_request(cfg, url, sha256)
    trusted = provenance.trusted_keys(cfg, trusted_key)
    if not pin and not trusted:
        print("download_release: warning: no --sha256 given; the release will be checked for "
              "consistency, not authenticity (pin its sha256 or release.launch_digest)",
              file=sys.stderr)
    incoming = paths.release_download.with_name(f".incoming-{os.getpid()}.tar.gz")
    try:
        digest = fetch_tarball(cfg, url, incoming, pin, progress)
        root = install(cfg, paths, incoming, digest, trusted=trusted)
    except BaseException:
        remove(incoming)  # nothing of a refused release is kept; the previous one stays
        raise
    os.replace(incoming, paths.release_download)
    manifest = layout.read_manifest(root)
    print(f"download_release: installed {manifest.name} ({manifest.tool_version}) from {url}\n"
          f"  tarball sha256 {digest}\n  expected launch digest {manifest.launch_digest}\n"
          f"  {paths.current_release} -> {root.name}")
    return root


def remove_partials(paths) -> None:
    """Remove the partial downloads (.incoming-PID...) of runs that were killed."""
    if not paths.downloads.is_dir():
        return
    for entry in paths.downloads.iterdir():
        m = re.match(r"^\.\.?incoming-(\d+)", entry.name)
        if m and (int(m[1]) == os.getpid() or not _alive(int(m[1]))):
            remove(entry)


def local_source(url: str) -> Path | None:
    """The file a `file://` URL or a plain path names (for air-gapped hosts), else None."""
    parsed = fetch.parse_url(url)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "":
        return Path(url).expanduser()
    return None


def fetch_tarball(cfg, url: str, dest: Path, pin: str, progress: bool | None) -> str:
    """`url` (http(s), file:// or a path) -> `dest`; returns its sha256, checked if pinned."""
    local = local_source(url)
    if local is None:
        r = cfg.release
        return fetch.download(url, dest, sha256=pin or None, retries=r.retries,
                              backoff=r.backoff_ms / 1000, progress=progress,
                              timeout=(r.connect_timeout, r.read_timeout))
    if not local.is_file():
        raise ReleaseError(f"release tarball {local} is not a regular file" if local.exists()
                           else f"release tarball {local} does not exist")
    with atomic_path(dest) as tmp:
        shutil.copyfile(local, tmp)
        digest = sha256_file(tmp)
        if pin and digest != pin:
            raise HashMismatch(f"sha256 mismatch for {local}:\n  expected {pin}\n  got      {digest}",
                               hint="the file is not the release you pinned; nothing was kept")
    return digest


def install(cfg, paths, tarball: Path, tarball_sha256: str, *,
            trusted: list[Path] | tuple[Path, ...] = ()) -> Path:
    """Extract `tarball` into a staging dir, verify it (and its signer when
    keys are trusted), then make it current."""
    releases = paths.releases
    releases.mkdir(parents=True, exist_ok=True)
    prune(paths)
    stage = releases / f".incoming-{os.getpid()}"
    remove(stage)
    try:
        unpack.extract(tarball, stage, max_bytes=unpack.free_space(releases))
        if trusted:  # cheap (manifest + signature): refuse before hashing the images
            check_signer(stage, trusted)
        verify.verify_release(stage, pinned_digest=cfg.release.launch_digest)
        final = releases / f"{tarball_sha256[:16]}.{secrets.token_hex(4)}"
        os.rename(stage, final)
    except BaseException:
        remove(stage)
        raise
    point_current(paths.current_release, final)
    prune(paths)
    return final


def check_signer(stage: Path, trusted) -> None:
    signer = provenance.check_trusted(stage, list(trusted))
    print(f"download_release: signed by trusted author key {signer.key_digest}", file=sys.stderr)


def point_current(current: Path, target: Path) -> None:
    """Atomically repoint the `current` symlink (relative, so build/ can move)."""
    tmp = current.with_name(f".{current.name}.tmp-{os.getpid()}")
    remove(tmp)
    os.symlink(target.name, tmp)
    try:
        os.replace(tmp, current)
    except OSError as exc:
        remove(tmp)
        raise ReleaseError(f"cannot make {target} the current release: {exc}",
                           hint=f"{current} must be a symlink (or absent)") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune(paths) -> None:
    """Remove every release dir but the current one (and live stagings)."""
    releases = paths.releases
    current = paths.current_release
    keep = {current.name}
    if current.is_symlink():
        keep.add(os.readlink(current))
    for entry in releases.iterdir():
        if entry.name in keep:
            continue
        m = re.match(r"^\..*-(\d+)$", entry.name)  # a staging or temp name
        if m and int(m[1]) != os.getpid() and _alive(int(m[1])):
            continue  # another download_release at work
        remove(entry)
