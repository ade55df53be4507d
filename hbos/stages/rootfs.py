"""The base Debian root filesystem (build/base/rootfs.tar) and the debug disk
(build/guest/base.qcow2).

mmdebstrap builds the root as a tarball; with SOURCE_DATE_EPOCH set it is
bit-reproducible for the same mirror state (pin it with a snapshot.debian.org
mirror). Host-specific files mmdebstrap leaves alone (/etc/hostname,
/etc/resolv.conf) are written by customize hooks. As root mmdebstrap runs in
"root" mode (it mounts /proc, /sys, /dev inside its own temporary chroot, which
it cleans up itself); as a normal user it needs unprivileged user namespaces
("unshare" mode) and subuids in /etc/subuid. The project itself mounts nothing.

`extract()` unpacks the tarball into a directory for `mkfs -d`; the device
nodes mmdebstrap puts in /dev are left out (the guest mounts devtmpfs there).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from hbos.config import Config
from hbos.errors import BuildError, DownloadError
from hbos.paths import Paths
from hbos.stages import kernel
from hbos.util import cache, run, templates, tools, tree as htree
from hbos.util.fsutil import atomic_path, read_json, sha256_file, write_json

# ------------------------------------------------------------ base rootfs


def mmdebstrap_argv(cfg: Config, out: Path) -> list[str]:
    """The exact mmdebstrap command for the rootfs config (run with SOURCE_DATE_EPOCH)."""
    rc = cfg.rootfs
    argv = ["mmdebstrap", f"--variant={rc.variant}", "--format=tar"]
    if rc.packages:
        argv.append(f"--include={','.join(rc.packages)}")
    for pattern in rc.path_exclude:
        argv.append(f"--dpkgopt=path-exclude={pattern}")
    for pattern in rc.path_include:
        argv.append(f"--dpkgopt=path-include={pattern}")
    # files mmdebstrap copies from the build host: make them host-independent
    argv.append(f"--customize-hook=echo {rc.hostname} > \"$1/etc/hostname\"")
    argv.append(f"--customize-hook=printf 'nameserver {rc.nameserver}\\n' > \"$1/etc/resolv.conf\"")
    argv += [rc.suite, str(out), rc.mirror]
    return argv


def check_mirror(cfg: Config, timeout: float = 20) -> None:
    """Fail early, naming the URL, when the mirror cannot serve the suite."""
    mirror = cfg.rootfs.mirror.rstrip("/")
    if not mirror.startswith(("http://", "https://")):
        return
    url = f"{mirror}/dists/{cfg.rootfs.suite}/Release"
    import requests  # heavy (~0.2 s): only for the mirror check
    try:
        resp = requests.head(url, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        raise DownloadError(f"cannot reach the Debian mirror {url}: {type(exc).__name__}",
                            hint="check rootfs.mirror and rootfs.suite, and the network") from None
    if resp.status_code >= 400:
        raise DownloadError(f"Debian mirror {url} answered HTTP {resp.status_code}",
                            hint="check rootfs.mirror and rootfs.suite")


def mmdebstrap_env(cfg: Config) -> dict[str, str]:
    return {"SOURCE_DATE_EPOCH": str(cfg.source_date_epoch), "LC_ALL": "C.UTF-8"}


def tool_version(argv: list[str]) -> str:
    proc = run.run(argv, check=False, quiet=True)
    lines = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
    return lines[0].strip() if lines else ""


def cache_inputs(cfg: Config) -> dict:
    """What determines rootfs.tar and rootfs.json: the exact mmdebstrap command
    (suite, mirror, variant, packages, path filters, hooks), its environment
    (SOURCE_DATE_EPOCH), the recorded config, and the mmdebstrap and apt
    versions. (A mirror that is not a snapshot serves newer packages over time:
    the cache keeps the first root built; docs/cache.md says how to refresh it.)"""
    tools.require("mmdebstrap")
    return {"argv": mmdebstrap_argv(cfg, Path("OUT.tar")), "env": mmdebstrap_env(cfg),
            "record": recorded_config(cfg),
            "mmdebstrap": tool_version(["mmdebstrap", "--version"]),
            "apt": tool_version(["apt-get", "--version"])}


def build(cfg: Config, paths: Paths) -> None:
    """The base_rootfs stage: restored from the artifact cache (hbos.util.cache) when
    it holds a root with the same inputs, else built with mmdebstrap (and stored)."""
    cache.cached(cfg, "base_rootfs", lambda: cache_inputs(cfg),
                 {"rootfs.tar": paths.base_rootfs, "rootfs.json": paths.base_rootfs_manifest},
                 lambda: build_rootfs(cfg, paths), stage="base_rootfs")


def build_rootfs(cfg: Config, paths: Paths) -> None:
    """mmdebstrap -> rootfs.tar (+ rootfs.json with its sha256)."""
    tools.require("mmdebstrap")
    check_mirror(cfg)
    env = mmdebstrap_env(cfg)
    with atomic_path(paths.base_rootfs) as tmp:
        # mmdebstrap picks the format from the name: keep the .tar suffix
        out = tmp.with_name(tmp.name + ".tar")
        try:
            run.run(mmdebstrap_argv(cfg, out), env=env, log=paths.log("base_rootfs"))
            os.replace(out, tmp)
        finally:
            if out.exists():
                out.unlink()
    write_json(paths.base_rootfs_manifest, {
        "sha256": sha256_file(paths.base_rootfs),
        "size": paths.base_rootfs.stat().st_size,
        **recorded_config(cfg),
    })
    print(f"base_rootfs: {paths.base_rootfs} "
          f"({paths.base_rootfs.stat().st_size >> 20} MiB)", file=sys.stderr)


def recorded_config(cfg: Config) -> dict:
    """What rootfs.json records of the config that made rootfs.tar."""
    return {"rootfs": cfg.slice("rootfs")["rootfs"], "source_date_epoch": cfg.source_date_epoch}


def up_to_date(cfg: Config, paths: Paths):
    """doit uptodate: rootfs.tar exists with the size rootfs.json recorded for this config.

    Kept in the artifact rather than doit's database, so a base root copied
    from a cache (or another build dir) is not rebuilt for nothing.
    """
    def check(task=None, values=None) -> bool:
        try:
            data = read_json(paths.base_rootfs_manifest)
        except (FileNotFoundError, ValueError):
            return False
        recorded = {"rootfs": data.get("rootfs"), "source_date_epoch": data.get("source_date_epoch")}
        return (recorded == json.loads(json.dumps(recorded_config(cfg)))
                and paths.base_rootfs.is_file()
                and paths.base_rootfs.stat().st_size == data.get("size"))
    return check


def manifest(paths: Paths) -> dict:
    try:
        return read_json(paths.base_rootfs_manifest)
    except FileNotFoundError:
        raise BuildError("the base root filesystem has not been built",
                         hint="run: doit base_rootfs") from None


def extract_argv(tar: Path, dest: Path) -> list[str]:
    """GNU tar unpacking the rootfs as it is (owners, modes), minus /dev nodes."""
    owner = "--same-owner" if os.geteuid() == 0 else "--no-same-owner"
    return ["tar", "--extract", "--file", str(tar), "--directory", str(dest),
            "--numeric-owner", "--preserve-permissions", owner, "--exclude=./dev/*"]


def extract(tar: Path, dest: Path, log: Path | None = None) -> None:
    if not tar.is_file():
        raise BuildError(f"base root filesystem {tar} does not exist", hint="run: doit base_rootfs")
    dest.mkdir(parents=True, exist_ok=True)
    run.run(extract_argv(tar, dest), log=log, quiet=True)


def extracted_tree(paths: Paths, log: Path | None = None) -> Path:
    """rootfs.tar extracted once (per its sha256) under build/base, for cloning.

    Image stages hard-link-clone it (tree.clone) instead of unpacking the
    tarball every time; nothing ever writes into it after extraction.
    """
    key = manifest(paths)["sha256"][:16]
    tree, done = paths.base_tree(key), paths.base_tree(key).with_suffix(".done")
    if done.is_file() and tree.is_dir():
        return tree
    for old in paths.base_dir.glob("tree-*"):
        if old != tree:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    with atomic_path(tree) as tmp:
        extract(paths.base_rootfs, tmp, log=log)
    done.write_text(f"{manifest(paths)['sha256']}\n")
    return tree


# ----------------------------------------------- kernel modules into a tree


def modules_dir(tree: Path) -> Path:
    """Where lib/modules lives in `tree` (usr/lib/modules on a merged-/usr root)."""
    lib = tree / "lib"
    if lib.is_symlink():
        target = os.readlink(lib)
        if target.startswith("/") or ".." in Path(target).parts:
            raise BuildError(f"{lib} is a symlink leaving the tree ({target})")
        return tree / target / "modules"
    return lib / "modules"


def add_kernel_modules(paths: Paths, tree: Path) -> str:
    """Copy the guest kernel's lib/modules/VERSION (with modules.dep) into `tree`."""
    version = kernel.info(paths)["version"]
    src = paths.kernel_modules / "lib" / "modules" / version
    dest = modules_dir(tree) / version
    if dest.exists():
        shutil.rmtree(dest)
    htree.ensure_dir(dest.parent)
    # build/source point at headers that are not installed: leave them out
    htree.copy(src.resolve(), dest, link=True, what="kernel modules",
               skip=lambda rel, st: rel in ("build", "source") and stat.S_ISLNK(st.st_mode))
    return version


def modules_record(tree: Path, version: str) -> dict:
    """What add_kernel_modules put into `tree` (for verity.json): where, how many,
    how compressed (Debian trixie: .ko.xz, loaded by udev/kmod in the guest)."""
    dest = modules_dir(tree) / version
    suffixes: dict[str, int] = {}
    for full, _rel, st in htree.walk(dest):
        name = os.path.basename(full)
        if ".ko" in name and not stat.S_ISDIR(st.st_mode):
            kind = name[name.index(".ko"):]
            suffixes[kind] = suffixes.get(kind, 0) + 1
    return {"version": version, "path": dest.relative_to(tree).as_posix(),
            "files": dict(sorted(suffixes.items())),
            "has_sev_guest": any(dest.rglob("sev-guest.ko*")),
            "has_tsm": any(dest.rglob("tsm.ko*"))}


def ext4_size(tree_bytes: int) -> int:
    """Image size for an ext4 holding `tree_bytes`: +25% and 64 MiB, 4 KiB aligned."""
    size = int(tree_bytes * 1.25) + (64 << 20)
    return (size + 4095) // 4096 * 4096


def mkfs_ext4_argv(tree: Path, image: Path, uuid: str, size: int, label: str = "hbos-root") -> list[str]:
    """ext4 from a directory: 4 KiB blocks (dm-verity needs them), fixed UUID and hash seed.

    Run with E2FSPROGS_FAKE_TIME=SOURCE_DATE_EPOCH. e2fsprogs 1.47.0's `-d`
    is not bit-reproducible; erofs is the reproducible default.
    """
    return ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree), "-U", uuid,
            "-E", f"hash_seed={uuid},root_owner=0:0", "-L", label, "-m", "0",
            str(image), f"{size // 1024}k"]


SERIAL_LOGIN_TEMPLATE = "guest/serial-autologin.conf.j2"


def serial_login_files() -> dict[str, str]:
    """Drop-in giving the debug disk a root shell on the serial console."""
    return {"etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf":
            templates.render(SERIAL_LOGIN_TEMPLATE, tty="ttyS0")}


def build_image(cfg: Config, paths: Paths) -> None:
    """The base_image stage: base root + kernel modules -> ext4 -> guest/base.qcow2.

    For debugging only (never measured): it boots with `boot=normal root=/dev/vda rw
    rootfstype=ext4` and logs root in on the serial console without a password.
    """
    for prog in ("tar", "mkfs.ext4", "qemu-img"):
        tools.require(prog)
    log = paths.log("base_image")
    paths.guest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.guest_dir, prefix=".base-") as tmpdir:
        tree = Path(tmpdir) / "tree"
        htree.clone(extracted_tree(paths, log=log), tree, log=log)
        add_kernel_modules(paths, tree)
        for rel, text in serial_login_files().items():
            htree.ensure_dir((tree / rel).parent)
            (tree / rel).write_text(text)
            os.chmod(tree / rel, 0o644)
        htree.normalize_mtimes(tree, cfg.source_date_epoch)
        raw = Path(tmpdir) / "base.raw"
        uuid = "6862f5e6-8a3c-4b1e-9d3e-000000000001"  # fixed: debug disk, not measured
        run.run(mkfs_ext4_argv(tree, raw, uuid, ext4_size(htree.size(tree))),
                env={"E2FSPROGS_FAKE_TIME": str(cfg.source_date_epoch)}, log=log)
        with atomic_path(paths.base_image) as tmp:
            run.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp], log=log)
    print(f"base_image: {paths.base_image} (boot with boot=normal root=/dev/vda rw "
          f"rootfstype=ext4)", file=sys.stderr)
