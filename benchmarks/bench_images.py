"""Benchmark the guest image stages (prints numbers; asserts nothing).

    python3 benchmarks/bench_images.py [--pad-mib 750] [--keep]

With the base rootfs cached (the tests' cache, built once if missing), it
times the initramfs and verity stages on a root padded to about 1 GiB, then
runs the same tools by hand on the same assembled tree (mkfs.erofs +
veritysetup format, as one would without this project) and prints the ratio
(target <= 1.3x), the verity throughput beside hashlib sha256 (the limit on
this machine) and the peak RSS of the build process and of its tools
(target < 300 MB for a 1 GB root).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hbos import config as hconfig  # noqa: E402
from hbos.paths import Paths  # noqa: E402
from hbos.stages import initramfs, kernel, rootfs, verity  # noqa: E402
from tests.conftest import (  # noqa: E402
    cache_dir,
    cached_kernel_deb,
    link_base_rootfs,
    rootfs_cache_key,
    write_overlay,
    write_test_content,
)

MiB = 1 << 20


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def base_cache() -> Paths:
    cfg = hconfig.load(profile="local")
    root = cache_dir() / "base-rootfs" / rootfs_cache_key(cfg)
    root.mkdir(parents=True, exist_ok=True)
    cfg = hconfig.load(profile="local", overlay=write_overlay(root / "overlay.yaml",
                                                              f"build_dir: {root}\n"))
    paths = Paths.from_config(cfg)
    if not rootfs.up_to_date(cfg, paths)():
        print("base rootfs not cached: building it (mmdebstrap) ...", flush=True)
        rootfs.build(cfg, paths)
    return paths


def pad(tree: Path, mib: int) -> None:
    """Incompressible filler so the root is about the size asked for."""
    out = tree / "opt" / "hbos-bench" / "filler.bin"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(MiB))


def image_workspace(work: Path, pad_mib: int):
    """A local-profile build dir in `work` with the cached kernel unpacked and the
    base root linked, and a padded test content tree: (cfg, paths, content,
    content manifest), or None (said why) when the test cache has no kernel."""
    deb = cached_kernel_deb()
    if not deb.is_file():
        print(f"no cached kernel .deb at {deb}: run python3 -m tests.support.prepare")
        return None
    cache = base_cache()
    overlay = write_overlay(work / "overlay.yaml", (
        f"build_dir: {work / 'build'}\nkernel: {{source: deb, deb: {deb}}}\n"))
    cfg = hconfig.load(profile="local", overlay=overlay)
    paths = Paths.from_config(cfg)
    link_base_rootfs(cache, paths)
    kernel.unpack(cfg, paths)
    content = write_test_content(work / "content")
    pad(content, pad_mib)
    manifest = work / "content-manifest.json"
    manifest.write_text("{}\n")
    return cfg, paths, content, manifest


def sha256_throughput(total: int = 512 * MiB) -> float:
    buf = os.urandom(64 * MiB)
    h = hashlib.sha256()
    t = time.perf_counter()
    for _ in range(total // len(buf)):
        h.update(buf)
    return total / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad-mib", type=int, default=750, help="filler in the content tree")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hbos-bench-images-"))
    try:
        ws = image_workspace(work, args.pad_mib)
        if ws is None:
            return 2
        cfg, paths, content, manifest = ws

        t_initrd, _ = timed(initramfs.build, cfg, paths)
        # first build: also extracts rootfs.tar once (kept for later builds)
        t_first, _ = timed(verity.build, cfg, paths, content, manifest)
        # a rebuild after a content change (the usual case)
        (content / "opt" / "hbos-test" / "www" / "index.html").write_text("changed\n")
        manifest.write_text('{"changed": true}\n')
        t_verity, roothash = timed(verity.build, cfg, paths, content, manifest)
        data_size = paths.verity_image.stat().st_size

        # by hand, same tree: assemble (not timed), then mkfs + veritysetup format
        tree = work / "hand-tree"
        verity.assemble(cfg, paths, tree, content)
        img, hashes = work / "hand.img", work / "hand.hash"
        t_mkfs, _ = timed(subprocess.run, ["mkfs.erofs", "--quiet", f"-T{cfg.source_date_epoch}",
                                           str(img), str(tree)], check=True)
        t_format, _ = timed(subprocess.run, ["veritysetup", "format", str(img), str(hashes)],
                            check=True, capture_output=True)
        t_hand = t_mkfs + t_format
        shutil.rmtree(tree)

        self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        sha = sha256_throughput()

        print()
        print(f"root image          : {data_size / MiB:8.1f} MiB ({cfg.image.filesystem}), "
              f"root hash {roothash[:16]}...")
        print(f"initramfs stage     : {t_initrd:8.2f} s  ({paths.initramfs.stat().st_size / MiB:.1f} MiB)")
        print(f"verity stage, first : {t_first:8.2f} s  (+ one-time extraction of rootfs.tar)")
        print(f"verity stage        : {t_verity:8.2f} s  (clone base + modules + content + mkfs "
              f"+ format + verify)")
        print(f"by hand, same tree  : {t_hand:8.2f} s  (mkfs.erofs {t_mkfs:.2f} s + "
              f"veritysetup format {t_format:.2f} s)")
        print(f"ratio stage/by hand : {t_verity / t_hand:8.2f} x  (target <= 1.3x; "
              f"first build {t_first / t_hand:.2f} x)")
        print(f"verity throughput   : {data_size / t_format / MiB:8.1f} MiB/s "
              f"(veritysetup format)")
        print(f"hashlib sha256      : {sha / MiB:8.1f} MiB/s (the limit on this machine)")
        print(f"peak RSS build proc : {self_rss / MiB:8.1f} MiB  (target < 300 MB)")
        print(f"peak RSS of a tool  : {child_rss / MiB:8.1f} MiB")
        return 0
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
