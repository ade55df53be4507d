"""Benchmark the verity stage against the same tools run by hand (prints; asserts nothing).

    python3 benchmarks/bench_verity.py [--pad-mib 750] [--runs 3]

With the base rootfs cached (the tests' cache, built once if missing) and a
content tree padded to about --pad-mib MiB of incompressible filler, it times

- the verity stage after a content change (median of --runs rebuilds): clone
  base + modules + content + mkfs + veritysetup format + the check;
- by hand on the same assembled tree (median of --runs): rm the previous
  image and hash tree, mkfs.erofs + veritysetup format, as one would rebuild
  without this project (the stage replaces its previous image too);
- the stage as it was before (format, then a `veritysetup verify` pass),
  interleaved with the runs above so both see the same machine load;
- the two ways of checking the result, alone on the final image:
  `veritysetup verify` (what the stage ran before issue 16 item 11) and the
  in-process verifier hbos.stages.veritytree.verify (sequential, no overlap);

and prints the ratio stage / by hand (issue 16 item 11: target <= 1.3x). The
stage prints its own step times on stderr ("verity: extract ..., verify ...").
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_images import image_workspace, timed  # noqa: E402

from hbos.paths import Paths  # noqa: E402
from hbos.stages import verity  # noqa: E402
from hbos.util import run  # noqa: E402

MiB = 1 << 20


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children so far."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed_cpu(fn, *args, **kwargs) -> tuple[float, float, object]:
    """(wall, cpu, result): CPU time is what a loaded machine cannot hide."""
    c = cpu_seconds()
    wall, result = timed(fn, *args, **kwargs)
    return wall, cpu_seconds() - c, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad-mib", type=int, default=750, help="filler in the content tree")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each side (median)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hbos-bench-verity-"))
    try:
        ws = image_workspace(work, args.pad_mib)
        if ws is None:
            return 2
        cfg, paths, content, manifest = ws
        index = content / "opt" / "hbos-test" / "www" / "index.html"

        verity.build(cfg, paths, content, manifest)     # first: extracts rootfs.tar once
        stage, stage_cpu, legacy = [], [], []
        for i in range(args.runs):                       # rebuilds after a content change
            # before (veritysetup verify after format) and after, interleaved: same load
            index.write_text(f"legacy {i}\n")
            manifest.write_text(f'{{"legacy": {i}}}\n')
            with mock.patch.object(verity, "format_hash_tree", format_then_veritysetup_verify):
                t, _, _ = timed_cpu(verity.build, cfg, paths, content, manifest)
            legacy.append(t)
            index.write_text(f"changed {i}\n")
            manifest.write_text(f'{{"changed": {i}}}\n')
            t, c, roothash = timed_cpu(verity.build, cfg, paths, content, manifest)
            stage.append(t)
            stage_cpu.append(c)
        data_size = paths.verity_image.stat().st_size

        tree = work / "hand-tree"
        verity.assemble(cfg, paths, tree, content)
        img, hashes = work / "hand.img", work / "hand.hash"
        hand, mkfs, fmt, hand_cpu = [], [], [], []
        # untimed: a previous image to replace, as every timed stage run has
        rebuild_by_hand(img, hashes, ["mkfs.erofs", "--quiet", str(img), str(tree)])
        for _ in range(args.runs):
            # a rebuild by hand replaces the previous outputs, as the stage does (freeing
            # a 1 GB file's blocks takes about a second here): timed as part of mkfs
            c0 = cpu_seconds()
            t_mkfs, _ = timed(rebuild_by_hand, img, hashes,
                              ["mkfs.erofs", "--quiet", f"-T{cfg.source_date_epoch}", str(img),
                               str(tree)])
            t_fmt, _ = timed(subprocess.run, ["veritysetup", "format", str(img), str(hashes)],
                             check=True, capture_output=True)
            mkfs.append(t_mkfs)
            fmt.append(t_fmt)
            hand.append(t_mkfs + t_fmt)
            hand_cpu.append(cpu_seconds() - c0)
        shutil.rmtree(tree)

        ids = json_ids(paths)
        t_vverify, c_vverify, _ = timed_cpu(subprocess.run, verity.veritysetup_verify_argv(
            paths.verity_image, paths.hash_tree, roothash), check=True, capture_output=True)
        t_inproc = c_inproc = None
        try:
            from hbos.stages import veritytree
        except ImportError:
            veritytree = None  # type: ignore[assignment]
        if veritytree is not None:
            t_inproc, c_inproc, _ = timed_cpu(veritytree.verify, paths.verity_image, paths.hash_tree,
                                str(roothash), ids["salt"], ids["verity_uuid"])

        t_stage, t_hand = statistics.median(stage), statistics.median(hand)
        print()
        print(f"root image          : {data_size / MiB:8.1f} MiB ({cfg.image.filesystem})")
        print(f"verity stage        : {t_stage:8.2f} s  median of {args.runs} "
              f"({', '.join(f'{t:.2f}' for t in stage)})")
        print(f"by hand, same tree  : {t_hand:8.2f} s  median of {args.runs} "
              f"(rm previous + mkfs.erofs {statistics.median(mkfs):.2f} s + veritysetup format "
              f"{statistics.median(fmt):.2f} s)")
        print(f"ratio stage/by hand : {t_stage / t_hand:8.2f} x  (target <= 1.3x)")
        t_rm = statistics.median(RM_TIMES[1:])
        print(f"  of which rm       : {t_rm:8.2f} s  (median); without it, by hand "
              f"{t_hand - t_rm:.2f} s and the ratio {t_stage / (t_hand - t_rm):.2f} x")
        t_legacy = statistics.median(legacy)
        print(f"before (verify pass): {t_legacy:8.2f} s  median of {args.runs} "
              f"({', '.join(f'{t:.2f}' for t in legacy)}): the stage with `veritysetup "
              f"verify` after format, interleaved with the runs above")
        print(f"ratio before/by hand: {t_legacy / t_hand:8.2f} x  "
              f"({t_legacy / (t_hand - t_rm):.2f} x without the rm)")
        c_stage, c_hand = statistics.median(stage_cpu), statistics.median(hand_cpu)
        print(f"CPU stage / by hand : {c_stage:8.2f} s / {c_hand:.2f} s = {c_stage / c_hand:.2f} x "
              f"(user+sys incl. tools; what a loaded machine shows as wall time)")
        print(f"veritysetup verify  : {t_vverify:8.2f} s  (CPU {c_vverify:.2f} s) alone on the "
              f"final image")
        if t_inproc is not None:
            print(f"in-process verify   : {t_inproc:8.2f} s  (CPU {c_inproc:.2f} s) alone on the "
                  f"final image (hbos.stages.veritytree, sequential)")
        print(f"load average        : {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
              f"on {os.cpu_count()} CPUs (the ratio is meaningful on an idle machine)")
        return 0
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def format_then_veritysetup_verify(data: Path, hash_tree: Path, ids: dict[str, str],
                                   log: Path | None = None, steps=None) -> str:
    """The check before issue 16 item 11: veritysetup format, then veritysetup verify."""
    step = steps or verity.Steps()
    hash_tree.touch()
    proc = step("format", run.run, verity.veritysetup_format_argv(
        data, hash_tree, ids["verity_uuid"], ids["salt"]), log=log)
    roothash = verity.parse_root_hash(proc.stdout.decode(errors="replace"))
    step("verify", run.run, verity.veritysetup_verify_argv(data, hash_tree, roothash), log=log)
    return roothash


RM_TIMES: list[float] = []


def rebuild_by_hand(img: Path, hashes: Path, mkfs: list[str]) -> None:
    """rm -f the previous image and hash tree (its time kept in RM_TIMES), then mkfs."""
    t = time.perf_counter()
    img.unlink(missing_ok=True)
    hashes.unlink(missing_ok=True)
    RM_TIMES.append(time.perf_counter() - t)
    subprocess.run(mkfs, check=True)


def json_ids(paths: Paths) -> dict:
    import json
    return json.loads(paths.verity_manifest.read_text())


if __name__ == "__main__":
    sys.exit(main())
