"""The `hyperbeam` stage: HyperBEAM's release built from the pinned sources.

No Docker and no network during the build: the sources are the pinned
archives (hbos.stages.hb_sources: from their upstream URLs, or sources.mirror),
and the build runs in a Debian trixie build root (hbos.util.chroot: erlang
27, rebar3, cmake, GCC) inside a network namespace of its own, so a step that
tried to download would fail rather than fetch something unpinned.

Steps (progress per phase; full output in build/logs/hyperbeam.log):
1. the build root: mmdebstrap once, reused while suite, mirror and packages
   stay the same (build/build-root, shared with the cu stage; its record
   build-root.json beside it);
2. fetch the archives into build/downloads/ and check each pin;
3. unpack at fixed paths inside the root (/build/HyperBEAM, every dependency
   in its _checkouts/, WAMR where HyperBEAM's Makefile would clone it, LMDB
   where elmdb's Makefile would download it, pc as a local git repository),
   apply the overlay (hbos.stages.hb_overlay, each edit named and checked);
4. `rebar3 release` (WAMR ~30 s, the Erlang dependencies ~45 s, hb ~10 s, relx);
5. pack `_build/default/rel/hb` into build/hyperbeam/hb.tar (sorted, owners 0,
   mtimes source_date_epoch) and write build/hyperbeam/manifest.json.

The two outputs are artifact-cached (hbos.util.cache, kind "hyperbeam"): a
clean build directory with the same pins, overlay, build script and build root
restores them in seconds.

Reproducible: the build path inside the root is fixed (/build/HyperBEAM; the
compile info and hb_beamr.so embed it), the build time HyperBEAM records is
source_date_epoch, the commit comes from the pin. ERTS and OTP come from the
build root's erlang packages: the manifest records their versions.

The SNP NIF (native/dev_snp_nif, Rust) needs crates no reachable registry
serves: the release leaves it out (overlay `exclude-snp-nif`) and the
manifest says `snp_nif: false` with the reason; start refuses an SNP launch of
such an image unless allowed (hbos.launch.start).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any, Callable

from hbos.config import Config
from hbos.errors import BuildError, CommandFailed
from hbos.paths import Paths
from hbos.stages import hb_overlay, hb_sources
from hbos.util import cache, chroot, fsutil, run, tree as htree

# what the builds need inside the root, one root for both: HyperBEAM (OTP 27:
# trixie's erlang; cmake for WAMR) and the AO compute unit (node, npm; python3 and
# g++ for node-gyp, which compiles better-sqlite3)
PACKAGES = ("build-essential", "ca-certificates", "cmake", "erlang-dev", "erlang-nox",
            "erlang-src", "git", "libssl-dev", "nodejs", "npm", "python3", "rebar3")
BUILD = "/build"                       # fixed: the beams and hb_beamr.so embed the path
SRC = f"{BUILD}/HyperBEAM"
RELEASE = "_build/default/rel/hb"
LMDB_ARCHIVE = "HyperBEAM/_checkouts/elmdb/c_src/lmdb/LMDB_0.9.31.tar.gz"
SNP_NIF_REASON = ("native/dev_snp_nif (Rust) needs crates no reachable registry serves; "
                  "the release leaves it out (dev_snp cannot make or check reports)")
FORMAT = 1   # of the outputs; part of the cache key

BUILD_SCRIPT = """\
set -eu
umask 022
mkdir -p "$HOME"
cd {src}
rebar3 release
""".format(src=SRC)


def say(msg: str) -> None:
    print(f"hyperbeam: {msg}", flush=True)


def build_env(cfg: Config, commit: str, jobs: int) -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": f"{BUILD}/home", "REBAR_CACHE_DIR": f"{BUILD}/rebar-cache",
            "HEX_OFFLINE": "1", "REBAR_OFFLINE": "1", "TZ": "UTC", "LC_ALL": "C.UTF-8",
            "SOURCE_DATE_EPOCH": str(cfg.source_date_epoch),
            "HB_BUILD_COMMIT": commit, "HB_BUILD_COMMIT_SHORT": commit[:7],
            "MAKEFLAGS": f"-j{jobs}"}


def jobs(cfg: Config) -> int:
    return cfg.hyperbeam.jobs or os.cpu_count() or 1


def make_build_root(cfg: Config, paths: Paths, log: Path,
                    tell: Callable[[str], None] = say) -> dict[str, Any]:
    """The build root (shared with the cu stage), made or reused; its record."""
    return chroot.make_root(paths.build_root, cfg.hyperbeam.suite, cfg.hyperbeam.mirror,
                            PACKAGES, log=log, say=tell)


def pins(cfg: Config) -> list[hb_sources.Source]:
    return hb_sources.load(cfg.path(cfg.hyperbeam.pins))


def cache_inputs(cfg: Config) -> dict[str, Any]:
    """What the release is a function of (the artifact cache's key)."""
    return {"format": FORMAT,
            "sources": [{"name": s.name, "sha256": s.sha256, "tree": s.tree, "dest": s.dest,
                         "omit": list(s.omit)} for s in pins(cfg)],
            "overlay": [[e.name, e.file, e.old, e.new] for e in hb_overlay.EDITS],
            "script": BUILD_SCRIPT, "packages": sorted(PACKAGES),
            "suite": cfg.hyperbeam.suite, "mirror": cfg.hyperbeam.mirror,
            "source_date_epoch": cfg.source_date_epoch}


def build(cfg: Config, paths: Paths) -> None:
    """The stage: restored from the artifact cache when it holds this build, else built."""
    cache.cached(cfg, "hyperbeam", lambda: cache_inputs(cfg),
                 {"hb.tar": paths.hyperbeam_tar, "manifest.json": paths.hyperbeam_manifest},
                 lambda: _build(cfg, paths), stage="hyperbeam")


# what this stage keeps under /build in the shared root (the cu stage has /build/cu)
OWN = ("HyperBEAM", "plugins", "home", "rebar-cache", "build.sh")


def clear_work(work: Path) -> None:
    for name in OWN:
        fsutil.remove(work / name)


def place_sources(cfg: Config, paths: Paths, work: Path, log: Path) -> dict[str, str]:
    """Fetch, verify and unpack every pinned source under `work` (the root's /build)."""
    found: dict[str, str] = {}
    for s in pins(cfg):
        got = hb_sources.fetch_one(s, cfg.sources.mirror, paths.downloads, cfg.path, say)
        found[s.name] = hb_sources.unpack(s, got, work / s.dest)
    lmdb = hb_sources.by_name(pins(cfg), "lmdb")
    # elmdb's Makefile extracts LMDB_ARCHIVE into the directory it needs: both in
    # place, the archive older, so make neither downloads nor extracts
    archive_copy = work / LMDB_ARCHIVE
    shutil.copyfile(paths.downloads / lmdb.file, archive_copy)
    os.utime(archive_copy, (cfg.source_date_epoch, cfg.source_date_epoch))
    os.utime(work / lmdb.dest, None)
    return found


def init_plugin_repo(root: Path, log: Path) -> None:
    """pc as a git repository at its tag, what the overlay's plugins entry names."""
    env = {"HOME": f"{BUILD}/home", "GIT_AUTHOR_NAME": "hbos", "GIT_AUTHOR_EMAIL": "hbos@localhost",
           "GIT_COMMITTER_NAME": "hbos", "GIT_COMMITTER_EMAIL": "hbos@localhost",
           "GIT_AUTHOR_DATE": "@0 +0000", "GIT_COMMITTER_DATE": "@0 +0000",
           "PATH": "/usr/bin:/bin"}
    for argv in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "commit", "-q", "-m", "pc"], ["git", "tag", hb_overlay.PC_TAG]):
        chroot.run_in(root, argv, env=env, cwd=hb_overlay.PC_REPO, log=log)


def pack(tree: Path, out: Path, mtime: int) -> None:
    """Deterministic tar of `tree` (entries sorted, owners 0, one mtime)."""
    with fsutil.atomic_path(out) as tmp, \
            tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for full, rel, _ in htree.walk(tree):
            info = tar.gettarinfo(full, arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = mtime
            info.pax_headers = {}
            if info.isfile():
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def fresh_log(paths: Paths, stage: str) -> Path:
    """The stage's log, emptied: it holds this build's output only."""
    log = paths.log(stage)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    return log


def _build(cfg: Config, paths: Paths) -> None:
    log = fresh_log(paths, "hyperbeam")
    started = time.monotonic()
    paths.hyperbeam_dir.mkdir(parents=True, exist_ok=True)
    root = paths.build_root
    hb = hb_sources.by_name(pins(cfg), "HyperBEAM")

    say(f"[1/5] build root: Debian {cfg.hyperbeam.suite} with erlang, rebar3, cmake, gcc "
        f"({root}; full output: {log})")
    record = make_build_root(cfg, paths, log)

    work = root / BUILD.lstrip("/")
    clear_work(work)
    say(f"[2/5] sources: {len(pins(cfg))} pinned archives "
        f"(mirror: {cfg.sources.mirror or 'none, upstream URLs'})")
    verified = place_sources(cfg, paths, work, log)
    say(f"[3/5] HyperBEAM {hb.commit[:12]}: overlay "
        f"{', '.join(hb_overlay.apply(work / 'HyperBEAM'))}")
    (work / "HyperBEAM" / "config.flat").write_text("")  # relx copies it; content renders it
    (work / "build.sh").write_text(BUILD_SCRIPT)
    init_plugin_repo(root, log)

    say(f"[4/5] rebar3 release (WAMR, the Erlang dependencies, hb, relx; {jobs(cfg)} jobs; "
        f"~2 minutes on 2 cores)")
    t0 = time.monotonic()
    try:
        chroot.run_in(root, ["/bin/bash", f"{BUILD}/build.sh"],
                      env=build_env(cfg, hb.commit, jobs(cfg)), log=log, timeout=3600)
    except CommandFailed as exc:
        raise BuildError(f"rebar3 release of HyperBEAM failed (full output in {log}):\n"
                         f"{run.tail(exc.output, 15)}") from None
    compile_seconds = round(time.monotonic() - t0, 1)
    rel = work / "HyperBEAM" / RELEASE
    if not list(rel.glob("erts-*/bin/beam.smp")) or not (rel / "bin" / "hb").is_file():
        raise BuildError(f"the release in {rel} has no bin/hb or erts-*/bin/beam.smp")

    say(f"[5/5] packing {paths.hyperbeam_tar}")
    htree.normalize_mtimes(rel, cfg.source_date_epoch)
    pack(rel, paths.hyperbeam_tar, cfg.source_date_epoch)
    files = htree.manifest(rel)
    installed = record.get("installed", {})
    manifest = {
        "commit": hb.commit, "repo": hb.repo,
        "sources": [{"name": s.name, "repo": s.repo, "commit": s.commit, "sha256": s.sha256,
                     "tree": s.tree, "licence": s.licence, "verified_by": verified[s.name]}
                    for s in pins(cfg)],
        "overlay": [e.name for e in hb_overlay.EDITS],
        "snp_nif": False, "snp_nif_reason": SNP_NIF_REASON,
        "build_root": {"suite": record.get("suite"), "mirror": record.get("mirror"),
                       "versions": {p: installed.get(p, "") for p in
                                    ("erlang-nox", "erlang-base", "rebar3", "gcc", "cmake")}},
        "erts": sorted(p.name for p in rel.glob("erts-*")),
        "tar_sha256": fsutil.sha256_file(paths.hyperbeam_tar),
        "files": files,
        "size": sum(e.get("size", 0) for e in files),
    }
    fsutil.write_json(paths.hyperbeam_manifest, manifest)
    if not cfg.hyperbeam.keep_tree:
        clear_work(work)
    n = sum(1 for e in files if e["type"] == "file")
    say(f"HyperBEAM {hb.commit[:12]}: {n} files, {manifest['size'] / 2**20:.0f} MiB; "
        f"rebar3 {compile_seconds} s, stage {round(time.monotonic() - started, 1)} s; "
        f"snp_nif: false ({SNP_NIF_REASON})")


def file_deps() -> list[Path]:
    """The stage's own code that shapes the release (the overlay, the build steps)."""
    return [Path(hb_overlay.__file__), Path(__file__), Path(hb_sources.__file__)]


def read_manifest(paths: Paths) -> dict[str, Any]:
    data = fsutil.read_json(paths.hyperbeam_manifest)
    if not isinstance(data, dict):
        raise BuildError(f"{paths.hyperbeam_manifest}: not a hyperbeam manifest")
    return data
