#!/usr/bin/env python3
"""Release cost on a large image: package, then download + verify + install
over a local HTTP server. Prints times, throughput and peak RSS (the tarball
and the hashes are streamed, so RSS must stay far below the image size).
Asserts nothing.

    python3 benchmarks/release_bench.py [--image-mib 1024] [--level 6] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_httpserver import HTTPServer  # noqa: E402
from werkzeug import Response  # noqa: E402

from hbos.release import fetch, pack  # noqa: E402
from tests.support.release_fixtures import make_build  # noqa: E402

OVMF = ROOT / "tests" / "vectors" / "measurement" / "ovmf_AmdSev_suffix.bin"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_image(path: Path, mib: int) -> None:
    """Half random, half zero blocks: compresses roughly like a real root image."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        for i in range(mib):
            out.write(block if i % 2 else bytes(1 << 20))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-mib", type=int, default=1024)
    ap.add_argument("--dir", default="/tmp/hbos-release-bench")
    ap.add_argument("--level", type=int, default=6, help="release.compresslevel")
    args = ap.parse_args()
    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    cfg, paths = make_build(work, OVMF, extra_yaml=f"release: {{compresslevel: {args.level}}}\n")
    write_image(paths.verity_image, args.image_mib)
    size = args.image_mib
    print(f"image {size} MiB, gzip level {args.level}, start RSS {rss_mib():.0f} MiB")

    t = time.perf_counter()
    pack.package_release(cfg, paths)
    dt = time.perf_counter() - t
    tar_mib = paths.release_tarball.stat().st_size / (1 << 20)
    print(f"package_release: {dt:.1f} s ({size / dt:.0f} MiB/s of image), tarball {tar_mib:.0f} "
          f"MiB, peak RSS {rss_mib():.0f} MiB")

    server = HTTPServer(threaded=True)
    server.start()
    try:
        def serve(request):
            def body():
                with open(paths.release_tarball, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        yield chunk
            return Response(body(), headers={
                "Content-Length": str(paths.release_tarball.stat().st_size)})
        server.expect_request("/r.tar.gz").respond_with_handler(serve)
        digest = paths.release_tarball_sha256.read_text().split()[0]
        t = time.perf_counter()
        fetch.download_release(cfg, paths, server.url_for("/r.tar.gz"), digest,
                               progress=False)
        dt = time.perf_counter() - t
    finally:
        server.clear()
        server.stop()
    print(f"download_release (fetch + extract + verify + install): {dt:.1f} s "
          f"({size / dt:.0f} MiB/s of image), peak RSS {rss_mib():.0f} MiB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
