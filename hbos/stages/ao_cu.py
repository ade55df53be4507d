"""The `cu` stage: the AO compute unit from its pinned source and package-lock.json.

The CU is ao's `servers/cu` at the commit resources/cu-sources.json pins (the
head of tillathehun0/cu-experimental, the branch hb-os builds: its config.js
accepts UNIT_MODE hbu and reads HB_URL). Steps (full output in
build/logs/cu.log):

1. the build root (shared with the hyperbeam stage: trixie's node 20, npm,
   python3 and g++ for node-gyp);
2. the source: fetched and checked against its pins like HyperBEAM's
   (hbos.stages.hb_sources), unpacked at /build/cu/ao in the root; the
   overlay (below); the CU mode check (resources/cu-mode-check.sh: the
   UNIT_MODE content.cu_env sets must be one config.js accepts);
3. `npm ci --omit=dev` in the root, with the network (the registry) but
   nothing unpinned: package-lock.json names every package with its integrity
   hash and npm refuses a tarball that does not match. The host's CA bundle
   goes into the root (npm_config_cafile) for registries behind a TLS proxy.
   better-sqlite3 has no reachable prebuilt binary: node-gyp compiles it
   against the root's node headers (npm_config_nodedir=/usr), so the guest's
   node must be the same trixie nodejs (rootfs.packages holds `nodejs`);
4. pack servers/cu (with node_modules; without its tests) into
   build/cu/cu.tar and write build/cu/manifest.json.

Artifact-cached (kind "cu") on the pin, the overlay, the lock file's sha256,
the build root and source_date_epoch.

The overlay: `ao-loader-0.0.49` in package.json and package-lock.json: the
lock pins @permaweb/ao-loader 0.0.48, which the npm registry does not serve
(0.0.47 and 0.0.49 are); 0.0.49 has the same dependencies and engines.
"""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path
from typing import Any

from hbos.config import Config
from hbos.errors import BuildError, CommandFailed, ConfigError
from hbos.paths import RESOURCES, Paths
from hbos.stages import hb_overlay, hb_sources, hyperbeam
from hbos.util import cache, chroot, fsutil, run, tree as htree

PINS = RESOURCES / "cu-sources.json"
MODE_CHECK = RESOURCES / "cu-mode-check.sh"
BUILD = "/build/cu"
CU = "ao/servers/cu"                     # in the unpacked source
LEFT_OUT = ("test",)                     # not shipped: the CU's own tests
FORMAT = 1
# UNIT_MODE the CU's config.js falls back to when content.cu_env sets none
DEFAULT_MODE = "cu"

AO_LOADER_OLD = ("0.0.48", "sha512-X03O9WvvxN6Nk6/N1K6Nie+46fZFFv8B++LS+ppa+dciNCynVH3fbvv0"
                           "aMWDK1wwWVqTl7QOhrAIA23vCA/s1Q==")
AO_LOADER_NEW = ("0.0.49", "sha512-pO5K33kCg2krt/yXKzPyg6VVgqhbQh7YEMVZjbanQZPJJkr00du4CWVX"
                           "Ch+BbmJm1z5g+miOIq42zCxHf01pGA==")
_WHY = ("the lock pins @permaweb/ao-loader 0.0.48, which the npm registry does not serve "
        "(0.0.47 and 0.0.49 are); 0.0.49 has the same dependencies and engines")
EDITS = (
    hb_overlay.Edit("ao-loader-0.0.49", "package.json",
                    '"@permaweb/ao-loader": "^0.0.48"', '"@permaweb/ao-loader": "^0.0.49"', _WHY),
    hb_overlay.Edit("ao-loader-0.0.49-lock-root", "package-lock.json",
                    '"@permaweb/ao-loader": "^0.0.48"', '"@permaweb/ao-loader": "^0.0.49"', _WHY),
    hb_overlay.Edit("ao-loader-0.0.49-lock", "package-lock.json",
                    f'"version": "{AO_LOADER_OLD[0]}",\n'
                    f'      "resolved": "https://registry.npmjs.org/@permaweb/ao-loader/-/'
                    f'ao-loader-{AO_LOADER_OLD[0]}.tgz",\n'
                    f'      "integrity": "{AO_LOADER_OLD[1]}"',
                    f'"version": "{AO_LOADER_NEW[0]}",\n'
                    f'      "resolved": "https://registry.npmjs.org/@permaweb/ao-loader/-/'
                    f'ao-loader-{AO_LOADER_NEW[0]}.tgz",\n'
                    f'      "integrity": "{AO_LOADER_NEW[1]}"', _WHY),
)

NPM_SCRIPT = f"""\
set -eu
umask 022
mkdir -p "$HOME"
cd {BUILD}/{CU}
npm ci --omit=dev --no-audit --no-fund --foreground-scripts
node -e 'require("better-sqlite3")(":memory:").close()'
"""


def say(msg: str) -> None:
    print(f"cu: {msg}", flush=True)


def source(cfg: Config) -> hb_sources.Source:
    return hb_sources.by_name(hb_sources.load(cfg.path(cfg.hyperbeam.cu_pins)), "ao-cu")


def host_cafile() -> Path:
    """The host's CA bundle (what the host's own TLS clients trust)."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile,
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise BuildError("no CA bundle on this host for npm (SSL_CERT_FILE, "
                     "/etc/ssl/certs/ca-certificates.crt)", hint="apt-get install ca-certificates")


def npm_env(cfg: Config) -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": f"{BUILD}/home", "npm_config_cache": f"{BUILD}/npm-cache",
            "npm_config_cafile": f"{BUILD}/ca.crt", "npm_config_nodedir": "/usr",
            "npm_config_update_notifier": "false", "TZ": "UTC", "LC_ALL": "C.UTF-8",
            "SOURCE_DATE_EPOCH": str(cfg.source_date_epoch),
            "JOBS": str(hyperbeam.jobs(cfg)), "MAKEFLAGS": f"-j{hyperbeam.jobs(cfg)}"}


def unit_mode(cfg: Config) -> str:
    """The UNIT_MODE the CU will run with (content.cu_env's, else the CU's default)."""
    mode = DEFAULT_MODE
    for entry in cfg.content.cu_env:
        key, _, value = entry.partition("=")
        if key == "UNIT_MODE":
            mode = value
    return mode


def cache_inputs(cfg: Config) -> dict[str, Any]:
    s = source(cfg)
    return {"format": FORMAT, "source": {"sha256": s.sha256, "tree": s.tree, "only": list(s.only)},
            "overlay": [[e.name, e.file, e.old, e.new] for e in EDITS],
            "script": NPM_SCRIPT, "packages": sorted(hyperbeam.PACKAGES),
            "suite": cfg.hyperbeam.suite, "mirror": cfg.hyperbeam.mirror,
            "left_out": list(LEFT_OUT), "source_date_epoch": cfg.source_date_epoch}


def build(cfg: Config, paths: Paths) -> None:
    """The stage: restored from the artifact cache when it holds this build, else built."""
    cache.cached(cfg, "cu", lambda: cache_inputs(cfg),
                 {"cu.tar": paths.cu_tar, "manifest.json": paths.cu_manifest},
                 lambda: _build(cfg, paths), stage="cu")


def _build(cfg: Config, paths: Paths) -> None:
    log = hyperbeam.fresh_log(paths, "cu")
    started = time.monotonic()
    paths.cu_dir.mkdir(parents=True, exist_ok=True)
    s = source(cfg)
    say(f"[1/4] build root ({paths.build_root}; full output: {log})")
    record = hyperbeam.make_build_root(cfg, paths, log, say)
    work = paths.build_root / BUILD.lstrip("/")
    fsutil.remove(work)
    say(f"[2/4] source: ao {s.commit[:12]} servers/cu "
        f"(mirror: {cfg.sources.mirror or 'none, upstream URL'})")
    got = hb_sources.fetch_one(s, cfg.sources.mirror, paths.downloads, cfg.path, say)
    verified = hb_sources.unpack(s, got, work / "ao")
    cu = work / CU
    applied = hb_overlay.apply(cu, EDITS, "CU")
    try:
        mode = run.output(["sh", str(MODE_CHECK), str(cu), unit_mode(cfg)]).strip()
    except CommandFailed as exc:
        raise ConfigError(f"content.cu_env: {exc.output.strip()}") from None
    say(f"  overlay {', '.join(applied)}; {mode}")
    (work / "ca.crt").write_bytes(host_cafile().read_bytes())
    (work / "npm.sh").write_text(NPM_SCRIPT)

    say("[3/4] npm ci --omit=dev (package-lock.json, integrity-checked; better-sqlite3 "
        "compiled by node-gyp; ~2 minutes on 2 cores)")
    t0 = time.monotonic()
    try:
        chroot.run_in(paths.build_root, ["/bin/bash", f"{BUILD}/npm.sh"], env=npm_env(cfg),
                      network=True, log=log, timeout=3600)
    except CommandFailed as exc:
        raise BuildError(f"npm ci of the AO compute unit failed (full output in {log}):\n"
                         f"{run.tail(exc.output, 15)}") from None
    npm_seconds = round(time.monotonic() - t0, 1)

    say(f"[4/4] packing {paths.cu_tar}")
    for name in LEFT_OUT:
        fsutil.remove(cu / name)
    htree.normalize_mtimes(cu, cfg.source_date_epoch)
    hyperbeam.pack(cu, paths.cu_tar, cfg.source_date_epoch)
    files = htree.manifest(cu)
    installed = record.get("installed", {})
    manifest = {
        "commit": s.commit, "repo": s.repo, "sha256": s.sha256, "tree": s.tree,
        "verified_by": verified, "overlay": applied, "unit_mode": unit_mode(cfg),
        "lock_sha256": fsutil.sha256_file(cu / "package-lock.json"),
        "node": installed.get("nodejs", ""), "npm": installed.get("npm", ""),
        "tar_sha256": fsutil.sha256_file(paths.cu_tar),
        "files": files, "size": sum(e.get("size", 0) for e in files),
    }
    fsutil.write_json(paths.cu_manifest, manifest)
    if not cfg.hyperbeam.keep_tree:
        fsutil.remove(work)
    n = sum(1 for e in files if e["type"] == "file")
    say(f"AO CU {s.commit[:12]}: {n} files, {manifest['size'] / 2**20:.0f} MiB; npm "
        f"{npm_seconds} s, stage {round(time.monotonic() - started, 1)} s (node "
        f"{manifest['node']})")


def file_deps() -> list[Path]:
    return [Path(__file__), Path(hb_overlay.__file__), MODE_CHECK]


def read_manifest(paths: Paths) -> dict[str, Any]:
    data = fsutil.read_json(paths.cu_manifest)
    if not isinstance(data, dict):
        raise BuildError(f"{paths.cu_manifest}: not a cu manifest")
    return data
