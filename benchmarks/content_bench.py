#!/usr/bin/env python3
"""Content stage costs: a sample build, a no-op `doit content`, a dir build of a
larger prebuilt tree and the docker path's per-run ref check (git ls-remote on
a local repository: the network round trip to a real remote comes on top).
Prints the numbers; asserts nothing.

    python3 benchmarks/content_bench.py [--files 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hbos import config as hconfig  # noqa: E402
from hbos.paths import Paths  # noqa: E402
from hbos.stages import content  # noqa: E402
from hbos.util import tree as htree  # noqa: E402


def timed(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def doit(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), *args],
                   cwd=ROOT, check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        over = tmp / "over.yaml"
        over.write_text(f"build_dir: {tmp / 'build'}\n")
        cfg = hconfig.load(overlay=over, profile="local")
        paths = Paths.from_config(cfg)
        print(f"sample build (content.build):      {timed(lambda: content.build(cfg, paths), a.runs):.3f} s")
        doit("content", f"config={over}", "profile=local")
        print(f"no-op `doit content` (sample):     "
              f"{timed(lambda: doit('content', f'config={over}', 'profile=local'), a.runs):.3f} s")
        print(f"`doit list` (baseline):            {timed(lambda: doit('list'), a.runs):.3f} s")

        src = tmp / "prebuilt" / "opt" / "hyperbeam" / "lib"
        src.mkdir(parents=True)
        for i in range(a.files):
            (src / f"f{i}.beam").write_bytes(os.urandom(4096))
        (tmp / "prebuilt/opt/hyperbeam/bin").mkdir()
        (tmp / "prebuilt/opt/hyperbeam/bin/hb").write_text("#!/bin/sh\n")
        over2 = tmp / "over2.yaml"
        over2.write_text(f"build_dir: {tmp / 'build2'}\n"
                         f"content: {{source: dir, path: {tmp / 'prebuilt'}}}\n")
        cfg2 = hconfig.load(overlay=over2)
        paths2 = Paths.from_config(cfg2)
        print(f"dir build, {a.files} x 4 KiB files:     "
              f"{timed(lambda: content.build(cfg2, paths2), a.runs):.3f} s")
        print(f"dir fingerprint (uptodate check):  "
              f"{timed(lambda: htree.fingerprint(tmp / 'prebuilt'), a.runs):.3f} s")

        repo = tmp / "repo"
        env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
               "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "x"],
                       check=True, env=env)
        print(f"ref check (git ls-remote, local):  "
              f"{timed(lambda: content.resolve_ref(str(repo), 'main'), a.runs):.3f} s")


if __name__ == "__main__":
    main()
