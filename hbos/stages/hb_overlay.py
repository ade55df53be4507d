"""The overlays: every change the `hyperbeam` and `cu` stages make to their sources' build files.

Each edit is named, says why, and is an exact text replacement that must match
(a HyperBEAM commit whose files no longer hold the text fails the build
naming the edit, instead of building something else). docs/content.md lists
them. Nothing else in HyperBEAM's source tree is changed; the dependencies'
trees are never changed (LMDB is placed where elmdb's Makefile would
download it, WAMR where HyperBEAM's Makefile would clone it: see
hbos.stages.hyperbeam).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hbos.errors import BuildError

# Where the build root holds the pc plugin as a git repository (file:// URL)
PC_REPO = "/build/plugins/pc"
PC_TAG = "v1.15.0"


@dataclass(frozen=True)
class Edit:
    name: str
    file: str          # relative to HyperBEAM's source root
    old: str
    new: str
    why: str


EDITS = (
    Edit("plugins-offline", "rebar.config",
         "{plugins, [pc, rebar3_rustler, rebar_edown_plugin]}.",
         f'{{plugins, [{{pc, {{git, "file://{PC_REPO}", {{tag, "{PC_TAG}"}}}}}}]}}.',
         "rebar3 fetches plugins from hex.pm: pc (the port compiler) comes from the pinned "
         "archive as a local git repository; rebar3_rustler (the Rust NIF, see snp_nif) and "
         "rebar_edown_plugin (docs) are not built"),
    Edit("no-cargo", "rebar.config",
         "        {compile, {cargo, build}}\n",
         "",
         "the cargo provider belongs to rebar3_rustler (dropped above); the Rust NIF "
         "dev_snp_nif needs crates no reachable registry serves"),
    Edit("no-cargo-clean", "rebar.config",
         "        {clean, {pc, clean}},\n        {clean, {cargo, clean}}\n",
         "        {clean, {pc, clean}}\n",
         "as no-cargo"),
    Edit("no-lmdb-dep", "rebar.config",
         '    {lmdb, {git, "https://github.com/twilson63/erlang-lmdb", '
         '{ref, "8a4fedc38c7a44eef6af816b5e840bd362d67f1a"}}},\n',
         "",
         "erlang-lmdb is unused (no module under src/ calls it) and its Makefile downloads "
         "LMDB at build time; elmdb is the LMDB binding HyperBEAM uses"),
    Edit("no-lmdb-lock", "rebar.lock",
         ' {<<"lmdb">>,\n  {git,"https://github.com/twilson63/erlang-lmdb",\n'
         '       {ref,"8a4fedc38c7a44eef6af816b5e840bd362d67f1a"}},\n  0},\n',
         "",
         "as no-lmdb-dep"),
    Edit("buildinfo-commit", "rebar.config",
         "$(git rev-parse HEAD)", "${HB_BUILD_COMMIT}",
         "the source is an archive, not a git checkout: the commit comes from the pin"),
    Edit("buildinfo-short", "rebar.config",
         "$(git rev-parse --short HEAD)", "${HB_BUILD_COMMIT_SHORT}",
         "as buildinfo-commit"),
    Edit("buildinfo-time", "rebar.config",
         "$(date +%s)", "${SOURCE_DATE_EPOCH}",
         "HB_BUILD_TIME is the build's source_date_epoch, so two builds give the same beams"),
    Edit("gcc14", "rebar.config",
         '"$CFLAGS -I${REBAR_ROOT_DIR}/_build/wamr/core/iwasm/include',
         '"$CFLAGS -Wno-error=incompatible-pointer-types '
         '-I${REBAR_ROOT_DIR}/_build/wamr/core/iwasm/include',
         "GCC 14 (trixie) makes -Wincompatible-pointer-types an error; hb_beamr.c has such "
         "warnings upstream"),
    Edit("elmdb-priv-hook", "rebar.config",
         '{ compile, "cp _build/default/lib/elmdb/priv/* priv/ 2>/dev/null || true" }',
         """{ compile, "sh -c 'cp _build/default/lib/elmdb/priv/* priv/ 2>/dev/null || true'" }""",
         "rebar3 runs a hook as `exec CMD`, so the `|| true` never applies and the hook fails "
         "when elmdb is not under _build/default/lib (it is a _checkouts dependency here); "
         "in a shell it means what it says"),
    Edit("exclude-snp-nif", "rebar.config",
         "\t{include_erts, true},\n",
         "\t{include_erts, true},\n\t{exclude_modules, [{hb, [dev_snp_nif]}]},\n",
         "without the Rust NIF, dev_snp_nif's on_load fails and the release does not boot "
         "(on_load_function_failed); dev_snp then cannot make or check reports, the rest runs"),
)


def apply(src: Path, edits: tuple[Edit, ...] = EDITS, what: str = "HyperBEAM") -> list[str]:
    """Apply `edits` to the source tree at `src`; the edits' names."""
    applied = []
    for edit in edits:
        path = src / edit.file
        text = path.read_text(encoding="utf-8")
        if text.count(edit.old) != 1:
            raise BuildError(f"{what} overlay '{edit.name}': {edit.file} does not hold "
                             f"the text it replaces exactly once (another commit?)",
                             hint="update the overlay's edits for this commit")
        path.write_text(text.replace(edit.old, edit.new), encoding="utf-8")
        applied.append(edit.name)
    return applied
