"""The `content` stage: what the guest runs, as a root-relative tree.

Sources (content.source):
- docker:  resources/content.Dockerfile builds HyperBEAM and the AO compute unit
           from git refs resolved on the host to commit ids (git ls-remote) and
           passed as build arguments; the output is taken with docker create +
           cp + rm (hbos/stages/docker.py).
- dir:     a prebuilt root-relative tree, copied.
- tarball: the same as a tar archive, extracted safely (hbos/util/archive.py).
- hyperbeam: HyperBEAM's own release, built from the pinned sources by the
           hyperbeam stage (hbos/stages/hyperbeam.py, no Docker, no network),
           unpacked at opt/hyperbeam.
- erlang:  a STAND-IN, not HyperBEAM: tools/hb_node built into a relx release
           `hb` by the hb_node stage (hbos/stages/hb_node.py), for where
           trixie's erlang cannot be had (said on every build). Where no Erlang
           tooling is installed at all the stage falls back to the sample.
- sample:  tools/sample_node, a stdlib-only HTTP server answering
           GET /~meta@1.0/info, run by the guest's /usr/bin/python3.

Every source ends the same way: the systemd units (enabled by symlink, never
by systemctl), HyperBEAM's config.flat and the CU's env file are rendered from
config.yaml for the components the tree holds, the firmware the VM boots is
placed where HyperBEAM's SNP code opens its reference OVMF
(opt/hyperbeam/test/OVMF-1.55.fd: it recomputes peers' launch digests with
it), owners are set to root and
mtimes to source_date_epoch, the tree is renamed into place at
Paths.content_tree, and Paths.content_manifest ({source, refs, services,
sample_build, files: htree.manifest}) is
rewritten only when its content differs, so an unchanged rebuild does not
invalidate the verity image.

Up-to-date checks (dodo.py): config_changed on the keys hbos/tasks/table.py
declares (content, ports, source_date_epoch, rootfs.suite) plus file_dep on
the templates and the source's own files (file_deps()); for docker a callable
resolves the refs again (one `git ls-remote` per repo, each run) and compares
them with the manifest, so a moved branch rebuilds; for dir a callable
compares a stat fingerprint (paths, sizes, mtimes, modes) of the source tree.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from hbos.errors import BuildError, CommandFailed, ConfigError, HbosError
from hbos.measure.nodeconfig import render_config_flat  # HOST_DATA hashes it: rendered there
from hbos.paths import RESOURCES, TOOLS, Paths
from hbos.stages import ao_cu, docker, firmware, hb_node, hyperbeam
from hbos.util import archive, fsutil, run, templates, tree as htree

SAMPLE_SCRIPT = TOOLS / "sample_node" / "sample_node.py"
CU_WALLET_SCRIPT = RESOURCES / "cu-wallet.js"
DATA_DISK_SCRIPT = RESOURCES / "hbos-data.sh"
CU_MODE_CHECK = RESOURCES / "cu-mode-check.sh"

# Guest layout (root-relative)
UNIT_DIR = "etc/systemd/system"
WANTS_DIR = f"{UNIT_DIR}/multi-user.target.wants"
SAMPLE_DIR = "opt/hbos-sample"
HYPERBEAM_DIR = "opt/hyperbeam"
CU_DIR = "opt/cu"
NODE_BIN = "opt/node/bin/node"
GUEST_NODE = "/usr/bin/node"        # the guest root's nodejs (content.source hyperbeam)
CU_WALLET_GUEST = "/var/lib/cu/wallet.json"
HYPERBEAM_STATE = "/var/lib/hyperbeam"
# HyperBEAM's SNP code (native/dev_snp_nif/src/digest.rs) opens this path relative
# to its working directory, the release root, to recompute peers' launch digests
REFERENCE_OVMF = f"{HYPERBEAM_DIR}/test/OVMF-1.55.fd"
# what `rebar3_rustler` builds of native/dev_snp_nif, wherever the release keeps it
SNP_NIF_GLOB = "*dev_snp_nif*.so"
DATA_DISK_GUEST = "/dev/vdc"        # hbos.launch.qemu: the third virtio disk (--data-disk)
# The CU's `npm start` (servers/cu/package.json) runs node with this flag;
# -r dotenv/config is replaced by the unit's EnvironmentFile.
CU_NODE_FLAGS = ("--experimental-wasm-memory64",)

UNIT_TEMPLATES = ("service-user.j2", "sample-node.service.j2", "hyperbeam.service.j2",
                  "cu.service.j2", "config.flat.j2", "cu.env.j2", "hbos-data.service.j2")

COMMIT = re.compile(r"^[0-9a-fA-F]{40}$")


# ----------------------------------------------------------------- rendering


def systemd_quote(entry: str) -> str:
    """One Environment= assignment, double-quoted (systemd.exec(5) quoting).

    Backslash and double quote are escaped; % is doubled so systemd does not
    expand it as a specifier (systemd.unit(5), "Specifiers").
    """
    escaped = entry.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def _service_ctx(cfg, port: int) -> dict[str, Any]:
    c = cfg.content
    return {"user": c.service_user, "restart": c.restart, "restart_sec": c.restart_sec,
            "port": port}


def sample_build(script: Path = SAMPLE_SCRIPT) -> str:
    """The sample node's build name: its source hash (changes with the code)."""
    return f"hbos-sample-{fsutil.sha256_file(script)[:12]}"


def render_sample_unit(cfg, build: str) -> str:
    return templates.render("sample-node.service.j2", build=build,
                            script=f"/{SAMPLE_DIR}/sample_node.py",
                            **_service_ctx(cfg, cfg.ports.hyperbeam))


def render_hyperbeam_unit(cfg) -> str:
    env = [systemd_quote(e) for e in cfg.content.hyperbeam_env]
    return templates.render("hyperbeam.service.j2", environment=env,
                            state=list(cfg.content.hyperbeam_state),
                            **_service_ctx(cfg, cfg.ports.hyperbeam))


def render_cu_unit(cfg) -> str:
    return templates.render("cu.service.j2", wallet=CU_WALLET_GUEST,
                            node_flags=list(CU_NODE_FLAGS), **_service_ctx(cfg, cfg.ports.cu))


def state_dirs(cfg) -> list[str]:
    """Where systemd keeps the services' StateDirectory= (DynamicUser: under private/)."""
    base = "/var/lib" if cfg.content.service_user == "root" else "/var/lib/private"
    return [f"{base}/hyperbeam", f"{base}/cu"]


def render_data_disk_unit(cfg) -> str:
    return templates.render("hbos-data.service.j2", device=DATA_DISK_GUEST,
                            dirs=state_dirs(cfg))


def render_cu_env(cfg) -> str:
    return templates.render("cu.env.j2", cu_port=cfg.ports.cu, hb_port=cfg.ports.hyperbeam,
                            wallet=CU_WALLET_GUEST, environment=list(cfg.content.cu_env))


# ----------------------------------------------------------------- tree helpers


def _write(tree: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = tree / rel
    htree.ensure_dir(path.parent)
    if path.is_symlink() or path.exists():
        fsutil.remove(path)
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)


def enable(tree: Path, unit: str) -> None:
    """`systemctl enable` by hand: a relative symlink in multi-user.target.wants."""
    link = tree / WANTS_DIR / unit
    htree.ensure_dir(link.parent)
    if link.is_symlink() or link.exists():
        fsutil.remove(link)
    os.symlink(f"../{unit}", link)


def install_unit(tree: Path, unit: str, text: str) -> None:
    _write(tree, f"{UNIT_DIR}/{unit}", text)
    enable(tree, unit)


def has_hyperbeam(tree: Path) -> bool:
    return (tree / HYPERBEAM_DIR / "bin" / "hb").exists()


def has_cu(tree: Path) -> bool:
    return (tree / CU_DIR / "package.json").exists() and (tree / NODE_BIN).exists()


def install_sample(cfg, tree: Path) -> list[str]:
    dest = tree / SAMPLE_DIR / "sample_node.py"
    htree.ensure_dir(dest.parent)
    shutil.copyfile(SAMPLE_SCRIPT, dest)
    os.chmod(dest, 0o755)
    install_unit(tree, "sample-node.service", render_sample_unit(cfg, sample_build()))
    return ["sample-node"]


def link_state(cfg, tree: Path) -> None:
    """opt/hyperbeam/NAME -> /var/lib/hyperbeam/NAME for every content.hyperbeam_state
    name: relx's start script cds into the read-only release root, and HyperBEAM
    writes its store (cache-mainnet/...) relative to it."""
    for name in cfg.content.hyperbeam_state:
        link = tree / HYPERBEAM_DIR / name
        if link.is_symlink() or link.exists():
            fsutil.remove(link)
        os.symlink(f"{HYPERBEAM_STATE}/{name}", link)


def install_data_disk(cfg, tree: Path) -> None:
    dest = tree / "opt" / "hbos" / "hbos-data.sh"
    htree.ensure_dir(dest.parent)
    shutil.copyfile(DATA_DISK_SCRIPT, dest)
    os.chmod(dest, 0o755)
    install_unit(tree, "hbos-data.service", render_data_disk_unit(cfg))


def install_reference_ovmf(tree: Path, ovmf: Path) -> str:
    """The firmware the VM boots, where HyperBEAM's verifier opens its reference; sha256."""
    if not ovmf.is_file():
        raise BuildError(f"no firmware at {ovmf} to install as HyperBEAM's reference OVMF",
                         hint="build it first: doit firmware")
    dest = tree / REFERENCE_OVMF
    htree.ensure_dir(dest.parent)
    if dest.is_symlink() or dest.exists():
        fsutil.remove(dest)
    shutil.copyfile(ovmf, dest)
    os.chmod(dest, 0o644)
    return fsutil.sha256_file(dest)


def release_vm_args(tree: Path) -> Path | None:
    """The vm.args relx's start script reads when the release root has none."""
    found = sorted((tree / HYPERBEAM_DIR / "releases").glob("*/vm.args"))
    return found[-1] if found else None


def hostnamed_vm_args(text: str) -> str | None:
    """`text` with a bare `-sname NAME` given the host, `-sname NAME@localhost`; None
    when there is no bare -sname (nothing to change).

    With a bare -sname, relx's start script boots a second BEAM only to learn the
    host name (relx_get_nodename), on every `bin/hb` call: tens of seconds in an
    emulated guest, for `foreground` and again for ExecStop's `eval`."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) == 2 and parts[0] == "-sname" and "@" not in parts[1]:
            lines[i] = f"-sname {parts[1]}@localhost\n"
            return "".join(lines)
    return None


def install_vm_args(tree: Path) -> bool:
    """opt/hyperbeam/vm.args: relx's start script prefers one in the release root
    over releases/VSN/vm.args; the release's own, with the host named."""
    src = release_vm_args(tree)
    text = hostnamed_vm_args(src.read_text(encoding="utf-8")) if src else None
    if text is None:
        return False
    _write(tree, f"{HYPERBEAM_DIR}/vm.args", text)
    return True


def install_built_cu(cfg, paths, tree: Path) -> None:
    """The cu stage's CU at opt/cu, run by the guest root's own node (trixie's
    nodejs, the one its better-sqlite3 was compiled against): opt/node/bin/node
    links to it."""
    if "nodejs" not in cfg.rootfs.packages:
        raise ConfigError("content.cu with content.source hyperbeam runs the CU with the "
                          "guest root's node, but rootfs.packages has no nodejs",
                          hint="add nodejs to rootfs.packages, or set content.cu: false")
    archive.extract(paths.cu_tar, tree / CU_DIR)
    link = tree / NODE_BIN
    htree.ensure_dir(link.parent)
    os.symlink(GUEST_NODE, link)


def has_snp_nif(tree: Path) -> bool:
    """Whether the release holds HyperBEAM's SNP NIF (dev_snp makes reports with it)."""
    return any((tree / HYPERBEAM_DIR).rglob(SNP_NIF_GLOB))


def install_services(cfg, tree: Path, ovmf: Path | None = None) -> list[str]:
    """Units and configuration for the components the tree holds."""
    installed = []
    if has_hyperbeam(tree):
        _write(tree, f"{HYPERBEAM_DIR}/config.flat", render_config_flat(cfg))
        if ovmf is not None:
            install_reference_ovmf(tree, ovmf)
        install_vm_args(tree)
        link_state(cfg, tree)
        install_unit(tree, "hyperbeam.service", render_hyperbeam_unit(cfg))
        installed.append("hyperbeam")
    if cfg.content.cu and has_cu(tree):
        _write(tree, f"{CU_DIR}/cu.env", render_cu_env(cfg))
        wallet = tree / "opt" / "hbos" / "cu-wallet.js"
        htree.ensure_dir(wallet.parent)
        shutil.copyfile(CU_WALLET_SCRIPT, wallet)
        os.chmod(wallet, 0o644)
        install_unit(tree, "cu.service", render_cu_unit(cfg))
        installed.append("cu")
    if installed:
        install_data_disk(cfg, tree)
    return installed


# ----------------------------------------------------------------- git refs


def pick_ref(ls_remote: str, ref: str) -> str | None:
    """The commit `ref` names in `git ls-remote` output, or None.

    Preference: branch, peeled annotated tag, tag, then an exact full name
    (HEAD, refs/...).
    """
    refs: dict[str, str] = {}
    for line in ls_remote.splitlines():
        sha, _, name = line.strip().partition("\t")
        if COMMIT.match(sha) and name:
            refs[name] = sha.lower()
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
        if name in refs:
            return refs[name]
    return None


def ls_remote_argv(repo: str, ref: str) -> list[str]:
    return ["git", "ls-remote", repo, ref, f"{ref}^{{}}"]


def resolve_ref(repo: str, ref: str, log: Path | None = None) -> str:
    """A branch or tag of `repo` resolved to its commit id (a commit id as it is)."""
    if COMMIT.match(ref):
        return ref.lower()
    try:
        out = run.run(ls_remote_argv(repo, ref), env={"GIT_TERMINAL_PROMPT": "0"},
                      log=log, quiet=True, timeout=120).stdout.decode(errors="replace")
    except CommandFailed as exc:
        raise BuildError(f"cannot resolve '{ref}' in {repo}: git ls-remote failed:\n"
                         f"{run.tail(exc.output, 5)}") from None
    commit = pick_ref(out, ref)
    if commit is None:
        raise BuildError(f"'{ref}' is not a branch or tag of {repo}",
                         hint="use a branch, a tag or a full 40-hex commit id")
    return commit


def wanted_refs(cfg, log: Path | None = None) -> dict[str, dict[str, str]]:
    """{component: {repo, ref, commit}} for what a docker build would check out now."""
    c = cfg.content
    comps = {"hyperbeam": (c.hyperbeam_repo, c.hyperbeam_ref)}
    if c.cu:
        comps["ao"] = (c.ao_repo, c.ao_ref)
    return {name: {"repo": repo, "ref": ref, "commit": resolve_ref(repo, ref, log)}
            for name, (repo, ref) in comps.items()}


# ----------------------------------------------------------------- sources


def docker_build_args(cfg, refs: dict[str, dict[str, str]]) -> dict[str, str]:
    c = cfg.content
    args = {"HB_REPO": c.hyperbeam_repo, "HB_COMMIT": refs["hyperbeam"]["commit"],
            "HB_PROFILE": c.hyperbeam_profile, "OTP_VERSION": c.otp_version,
            "NODE_VERSION": c.node_version, "GUEST_SUITE": cfg.rootfs.suite}
    if c.cu:
        args.update(AO_REPO=c.ao_repo, AO_COMMIT=refs["ao"]["commit"],
                    CU_UNIT_MODE=ao_cu.unit_mode(cfg))
    args.update(dict(e.partition("=")[::2] for e in c.docker_build_args))
    return args


def docker_context(cfg, paths, dockerfile: Path) -> Path:
    """The build context: a copy of the Dockerfile's directory plus the rendered
    config.flat (written into HyperBEAM's source tree before `rebar3 release`,
    as hb-os does) and the CU mode check; the project's directories are never
    the context, and the Dockerfile's own directory is never written to."""
    ctx = paths.content_dir / "docker-context"
    fsutil.remove(ctx)
    htree.copy(dockerfile.parent, ctx, what="content.dockerfile")
    (ctx / "config.flat").write_text(render_config_flat(cfg), encoding="utf-8")
    shutil.copyfile(CU_MODE_CHECK, ctx / "cu-mode-check.sh")
    os.chmod(ctx / "cu-mode-check.sh", 0o755)
    return ctx


def docker_target(cfg) -> str:
    return "content" if cfg.content.cu else "content-hb"


def from_docker(cfg, paths, tree: Path) -> dict[str, Any]:
    """Build the image, copy its /hbos out, move /hbos/tree to `tree`; return refs."""
    log = paths.log("content")
    dockerfile = cfg.path(cfg.content.dockerfile)
    if not dockerfile.is_file():
        raise ConfigError(f"content.dockerfile: {dockerfile} does not exist")
    docker.require_engine(log)
    refs = wanted_refs(cfg, log)
    staging = paths.content_dir / f".docker-out-{os.getpid()}"
    fsutil.remove(staging)
    staging.mkdir(parents=True)
    try:
        docker.build_and_export(dockerfile, docker_context(cfg, paths, dockerfile),
                                cfg.content.image_tag,
                                docker_target(cfg), docker_build_args(cfg, refs),
                                staging, log=log)
        if not (staging / "tree").is_dir():
            raise BuildError(f"the image {cfg.content.image_tag} has no {docker.IMAGE_OUT}/tree "
                             f"(see the output contract in {dockerfile.name})")
        for name, entry in refs.items():
            built = staging / "refs" / name
            if built.is_file():
                got = built.read_text().strip().lower()
                if got != entry["commit"]:
                    raise BuildError(f"{name}: the image checked out {got}, "
                                     f"expected {entry['commit']}")
        os.rename(staging / "tree", tree)
    finally:
        fsutil.remove(staging)
    if not has_hyperbeam(tree):
        raise BuildError(f"the image holds no {HYPERBEAM_DIR}/bin/hb")
    if cfg.content.cu and not has_cu(tree):
        raise BuildError(f"the image holds no {CU_DIR}/package.json or {NODE_BIN}")
    return refs


def _source_path(cfg, kind: str) -> Path:
    if not cfg.content.path:
        raise ConfigError(f"content.source is '{kind}' but content.path is empty",
                          hint=f"set content.path to the prebuilt content {kind}")
    path = cfg.path(cfg.content.path)
    if kind == "dir" and not path.is_dir():
        raise ConfigError(f"content.path: {path} is not a directory")
    if kind == "tarball" and not path.is_file():
        raise ConfigError(f"content.path: {path} does not exist")
    return path


# ----------------------------------------------------------------- the stage


def manifest_data(source: str, refs: dict[str, Any], services: list[str],
                  tree: Path) -> dict[str, Any]:
    """The manifest: a function of the content only (never of paths or times).

    services: the enabled units' names; for the sample also its build name,
    which GET /~meta@1.0/info reports (a launcher can check the guest runs it).
    """
    data: dict[str, Any] = {"source": source, "refs": refs, "services": sorted(services),
                            "files": htree.manifest(tree)}
    if "sample-node" in services:
        data["sample_build"] = sample_build()
    return data


write_if_changed = fsutil.write_json_if_changed  # the manifest's mtime moves only with its content


def build(cfg, paths) -> None:
    """Populate Paths.content_tree from content.source and write the manifest."""
    source = cfg.content.source
    paths.content_dir.mkdir(parents=True, exist_ok=True)
    refs: dict[str, Any] = {}
    state: dict[str, Any] = {"source": source}
    with fsutil.atomic_path(paths.content_tree) as tmp:
        if source == "erlang":
            print("content: erlang: tools/hb_node is a stand-in written for the tests, NOT "
                  "HyperBEAM (content.source: hyperbeam builds the real node)")
        if source == "erlang" and not hb_node.available(paths):
            print(f"content: erlang: {hb_node.unavailable_reason(paths)}; using the "
                  f"Python sample node instead (fallback)")
            state["fallback"] = "sample"
        if source == "sample" or state.get("fallback"):
            htree.ensure_dir(tmp)
            installed = install_sample(cfg, tmp)
        else:
            if source == "docker":
                refs = from_docker(cfg, paths, tmp)
            elif source == "dir":
                src = _source_path(cfg, "dir")
                state.update(path=str(src), fingerprint=htree.fingerprint(src))
                htree.copy(src, tmp, what="content.path")
            elif source == "tarball":
                archive.extract(_source_path(cfg, "tarball"), tmp)
            elif source == "erlang":
                htree.ensure_dir(tmp / "opt")
                htree.copy(paths.hb_node_tree, tmp / HYPERBEAM_DIR, what="hyperbeam release")
            elif source == "hyperbeam":
                htree.ensure_dir(tmp / "opt")
                archive.extract(paths.hyperbeam_tar, tmp / HYPERBEAM_DIR)
                if cfg.content.cu:
                    install_built_cu(cfg, paths, tmp)
            else:  # config validation makes this unreachable
                raise ConfigError(f"content.source: unknown source {source!r}")
            installed = install_services(cfg, tmp, firmware.resolve(cfg, paths))
        os.chmod(tmp, 0o755)  # the guest root's own mode, whatever the source had
        htree.normalize_owners(tmp)
        htree.normalize_mtimes(tmp, cfg.source_date_epoch)
    data = manifest_data("sample" if state.get("fallback") else source, refs, installed,
                         paths.content_tree)
    if state.get("fallback"):
        data["fallback_from"] = source
    elif source == "erlang":
        release = fsutil.read_json(paths.hb_node_manifest)
        data["hb_node"] = {k: release[k] for k in ("otp_release", "erts", "rebar3")}
    elif source == "hyperbeam":
        release = hyperbeam.read_manifest(paths)
        data["hyperbeam"] = {k: release[k] for k in ("commit", "repo", "overlay", "build_root")}
        if "cu" in installed:
            built = ao_cu.read_manifest(paths)
            data["cu"] = {k: built[k] for k in ("commit", "repo", "overlay", "unit_mode",
                                                 "lock_sha256", "node")}
    data["snp_nif"] = has_snp_nif(paths.content_tree)
    if (paths.content_tree / REFERENCE_OVMF).is_file():
        data["reference_ovmf"] = {"path": REFERENCE_OVMF,
                                  "sha256": fsutil.sha256_file(paths.content_tree / REFERENCE_OVMF)}
    changed = write_if_changed(paths.content_manifest, data)
    fsutil.write_json(paths.content_state, state)
    files = sum(1 for e in data["files"] if e["type"] == "file")
    what = ", ".join(installed) or "no known service (the tree's own units only)"
    print(f"content: {source}: {files} files, services: {what}; manifest "
          f"{'updated' if changed else 'unchanged'} ({paths.content_manifest})")


# ----------------------------------------------------------------- doit glue


def file_deps(cfg) -> list[Path]:
    """Files the content is made from (besides config, checked by config_changed)."""
    deps = [templates.path(t) for t in UNIT_TEMPLATES]
    source = cfg.content.source
    if source in ("sample", "erlang"):
        deps.append(SAMPLE_SCRIPT)
    if source != "sample":
        deps += [CU_WALLET_SCRIPT, DATA_DISK_SCRIPT]
    if source == "erlang":
        deps.append(paths_manifest(cfg))
    if source == "hyperbeam":
        p = Paths.from_config(cfg)
        deps += [p.hyperbeam_tar, p.hyperbeam_manifest]
        if cfg.content.cu:
            deps += [p.cu_tar, p.cu_manifest]
    if source == "docker":
        deps += [cfg.path(cfg.content.dockerfile), CU_MODE_CHECK]
    if source == "tarball" and cfg.content.path:
        deps.append(cfg.path(cfg.content.path))
    return deps


def paths_manifest(cfg) -> Path:
    return Paths.from_config(cfg).hb_node_manifest


def _recorded(path: Path) -> Any:
    try:
        return fsutil.read_json(path)
    except (OSError, ValueError):
        return None


def refs_unchanged(cfg, paths) -> Callable[..., bool]:
    """doit uptodate: False when a configured branch/tag now names another commit."""
    def check(task=None, values=None) -> bool:
        manifest = _recorded(paths.content_manifest)
        if not isinstance(manifest, dict):
            return False
        try:
            return manifest.get("refs") == wanted_refs(cfg)
        except (HbosError, OSError):
            return False  # let the action run and report the error in one line
    check.__name__ = "content_refs_unchanged"
    return check


def dir_unchanged(cfg, paths) -> Callable[..., bool]:
    """doit uptodate: False when the source directory's stat fingerprint moved."""
    def check(task=None, values=None) -> bool:
        state = _recorded(paths.content_state)
        if not isinstance(state, dict) or not cfg.content.path:
            return False
        src = cfg.path(cfg.content.path)
        if not src.is_dir():
            return False
        return state.get("path") == str(src) and state.get("fingerprint") == htree.fingerprint(src)
    check.__name__ = "content_dir_unchanged"
    return check


def uptodate_checks(cfg, paths) -> list[Callable[..., bool]]:
    if cfg.content.source == "docker":
        return [refs_unchanged(cfg, paths)]
    if cfg.content.source == "dir":
        return [dir_unchanged(cfg, paths)]
    return []
