"""Download a URL to a file: streamed, hashed while writing, atomic, retried.

A failed download names the URL and the HTTP status; a sha256 mismatch shows
both hashes and keeps nothing.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.parse
from pathlib import Path

from hbos.errors import DownloadError, HashMismatch
from hbos.util.fsutil import atomic_path

CHUNK = 1 << 20
TIMEOUT = (10, 60)  # connect, read (seconds)
TRANSIENT_STATUS = {429, 500, 502, 503, 504}


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             retries: int = 3, backoff: float = 1.0, progress: bool | None = None,
             timeout: tuple[float, float] = TIMEOUT) -> str:
    """Fetch `url` into `dest` atomically and return the file's hex sha256.

    Transient failures (connection errors, 429/5xx, a truncated body) are
    retried `retries` times in all with exponential backoff; a 4xx is final.
    """
    dest = Path(dest)
    if parse_url(url).scheme not in ("http", "https"):
        raise DownloadError(f"cannot fetch {url!r}: only http and https URLs are fetched")
    if progress is None:
        progress = sys.stderr.isatty()
    last: DownloadError | None = None
    for attempt in range(1, retries + 1):
        try:
            digest = _fetch_once(url, dest, progress, timeout)
            break
        except _Transient as exc:
            last = DownloadError(str(exc))
            if attempt < retries:
                print(f"  {exc}; retrying ({attempt}/{retries - 1})", file=sys.stderr)
                time.sleep(backoff * 2 ** (attempt - 1))
    else:
        assert last is not None
        raise last
    if sha256 and digest != sha256.lower():
        dest.unlink(missing_ok=True)
        raise HashMismatch(f"sha256 mismatch for {url}:\n"
                           f"  expected {sha256.lower()}\n  got      {digest}",
                           hint="the file changed upstream or the pinned hash is wrong; "
                                "nothing was kept")
    return digest


def parse_url(url: str) -> urllib.parse.ParseResult:
    """`url` split into its parts, or one line saying why it is not a URL."""
    try:
        parsed = urllib.parse.urlparse(url)
        parsed.port  # noqa: B018 -- raises on a non-numeric or out-of-range port
    except ValueError as exc:
        raise DownloadError(f"malformed URL {url!r}: {exc}") from None
    if parsed.scheme in ("http", "https") and not parsed.hostname:
        raise DownloadError(f"malformed URL {url!r}: no host")
    return parsed


class _Transient(Exception):
    pass


def _fetch_once(url: str, dest: Path, progress: bool, timeout) -> str:
    # requests costs ~0.2 s, and every doit run (even a no-op) loads this module
    # through the stages that download: imported only when a download happens.
    import requests  # heavy: only for a download
    import urllib3  # with requests: its exception types
    from tqdm import tqdm  # the progress bar of a download

    try:
        # identity: the bytes hashed and stored are the bytes served, even when
        # a server labels a .tar.gz with Content-Encoding: gzip.
        resp = requests.get(url, stream=True, timeout=timeout,
                            headers={"Accept-Encoding": "identity"})
    except requests.RequestException as exc:
        raise _Transient(f"cannot fetch {url}: {exc.__class__.__name__}: {exc}") from None
    with resp:
        if resp.status_code in TRANSIENT_STATUS:
            raise _Transient(f"cannot fetch {url}: HTTP {resp.status_code} {resp.reason}")
        if resp.status_code != 200:
            raise DownloadError(f"cannot fetch {url}: HTTP {resp.status_code} {resp.reason}")
        total = int(resp.headers.get("Content-Length") or 0) or None
        h = hashlib.sha256()
        received = 0
        with atomic_path(dest) as tmp, open(tmp, "wb") as out, \
                tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                     disable=not progress, file=sys.stderr) as bar:
            try:
                # raw stream, not iter_content: never undo a Content-Encoding,
                # and urllib3 enforces Content-Length (IncompleteRead).
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _Transient(f"cannot fetch {url}: connection broke after "
                                 f"{received} bytes ({exc.__class__.__name__})") from None
            if total is not None and received != total:
                raise _Transient(f"cannot fetch {url}: truncated body, "
                                 f"got {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
    return h.hexdigest()
