"""The `hb_node` stage: tools/hb_node built into a relx release named `hb`.

The local profile's payload (content.source: erlang). It is built with the
same machinery as HyperBEAM's release (rebar3 + relx: include_erts, the
extended start script, `bin/hb foreground`) from Debian's `erlang` and
`rebar3`, with no dependencies (hex.pm is never contacted), and installed by
the content stage at opt/hyperbeam, where the production hyperbeam.service
runs it unchanged.

Steps: copy the application's sources (never its _build) into a scratch
directory, `rebar3 release` there, rename `_build/default/rel/hb` into
Paths.hb_node_tree atomically, set every mtime to source_date_epoch and
write Paths.hb_node_manifest ({available, otp_release, erts, rebar3,
files}) only when it differs, so an unchanged rebuild invalidates nothing.

Without `erl` or `rebar3` the manifest records {available: false, reason}
and the content stage falls back to the Python sample node, saying so.

Reproducibility: the beams are compiled with `deterministic`; the start
script, boot files, vm.args and sys.config are generated from the sources.
Two builds on one host give identical trees (the unit test compares them).
Not reproducible across hosts: ERTS and the OTP applications are copied from
the installed Erlang, so the tree follows the host's `erlang` package version
(recorded in the manifest); relx's default vm.args carries no build-specific
value.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from hbos import paths
from hbos.errors import BuildError, CommandFailed
from hbos.util import fsutil, run, tools, tree as htree

SOURCE = paths.TOOLS / "hb_node"
RELEASE = "hb"
TOOLS = ("erl", "rebar3")
PACKAGES = {"erl": "erlang-nox (or erlang)", "rebar3": "rebar3"}


def source_files(src: Path = SOURCE) -> list[Path]:
    """The application's sources (what the release is built from)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "_build")
        out += [Path(dirpath) / f for f in sorted(filenames) if f != ".gitignore"]
    return out


def missing_tools() -> list[str]:
    return [t for t in TOOLS if tools.find(t) is None]


def unavailable_text(missing: list[str]) -> str:
    return ("no Erlang tooling: " + ", ".join(f"{t} (package {PACKAGES[t]})" for t in missing)
            + " not installed")


def release_argv() -> list[str]:
    return ["rebar3", "release"]


def _manifest(paths) -> dict[str, Any]:
    try:
        data = fsutil.read_json(paths.hb_node_manifest)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def available(paths) -> bool:
    return bool(_manifest(paths).get("available")) and \
        (paths.hb_node_tree / "bin" / RELEASE).is_file()


def unavailable_reason(paths) -> str:
    return _manifest(paths).get("reason") or f"no release at {paths.hb_node_tree}"


def versions(log: Path | None = None) -> dict[str, str]:
    script = ('io:format("~s ~s", [erlang:system_info(otp_release), '
              'erlang:system_info(version)]), halt().')
    otp, erts = run.output(["erl", "-noshell", "-eval", script], log=log).split()
    rebar = run.output(["rebar3", "version"], log=log).strip()
    return {"otp_release": otp, "erts": erts, "rebar3": rebar}


def build(cfg, paths) -> None:
    """Build the release (or record why not) and write the manifest."""
    log = paths.log("hb_node")
    paths.hb_node_dir.mkdir(parents=True, exist_ok=True)
    missing = missing_tools()
    if missing:
        fsutil.remove(paths.hb_node_tree)
        fsutil.write_json_if_changed(paths.hb_node_manifest,
                          {"available": False, "reason": unavailable_text(missing)})
        print(f"hb_node: {unavailable_text(missing)}; the content stage will use the "
              f"Python sample node instead")
        return
    scratch = paths.hb_node_dir / f".src-{os.getpid()}"
    fsutil.remove(scratch)
    try:
        for f in source_files():
            dest = scratch / f.relative_to(SOURCE)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        env = {"SOURCE_DATE_EPOCH": str(cfg.source_date_epoch),
               # rebar3's own cache, kept in the build dir; never hex.pm
               "REBAR_CACHE_DIR": str(paths.hb_node_dir / "rebar3-cache"),
               "HEX_OFFLINE": "1", "REBAR_OFFLINE": "1"}
        try:
            run.run(release_argv(), cwd=scratch, env=env, log=log, timeout=900)
        except CommandFailed as exc:
            raise BuildError(f"rebar3 release of {SOURCE} failed (full output in {log}):\n"
                             f"{run.tail(exc.output, 15)}") from None
        built = scratch / "_build" / "default" / "rel" / RELEASE
        if not list(built.glob("erts-*/bin/beam.smp")):
            raise BuildError(f"the release in {built} has no erts-*/bin/beam.smp "
                             f"(include_erts)")
        with fsutil.atomic_path(paths.hb_node_tree) as tmp:
            os.rename(built, tmp)
            htree.normalize_mtimes(tmp, cfg.source_date_epoch)
    finally:
        fsutil.remove(scratch)
    data: dict[str, Any] = {"available": True, **versions(log),
                            "files": htree.manifest(paths.hb_node_tree)}
    changed = fsutil.write_json_if_changed(paths.hb_node_manifest, data)
    files = sum(1 for e in data["files"] if e["type"] == "file")
    print(f"hb_node: {paths.hb_node_tree} (OTP {data['otp_release']}, "
          f"ERTS {data['erts']}): {files} files; manifest "
          f"{'updated' if changed else 'unchanged'}")


# ----------------------------------------------------------------- doit glue


def tooling_unchanged(paths) -> Callable[..., bool]:
    """doit uptodate: False when the recorded availability no longer matches the
    host (Erlang tooling installed or removed since the last run)."""
    def check(task=None, values=None) -> bool:
        recorded = _manifest(paths)
        if not recorded:
            return False
        return bool(recorded.get("available")) == (not missing_tools()) and \
            (not recorded.get("available") or available(paths))
    check.__name__ = "hb_node_tooling_unchanged"
    return check
