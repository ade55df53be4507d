"""The measured guest root: build/verity/guest.img, hash_tree.bin, roothash.txt.

guest root = base rootfs (mmdebstrap tarball) + the guest kernel's modules +
the content tree (build/content/tree) + system files rendered from
templates/guest (network, getty policy), enabled by symlink (never a chroot
systemctl). The tree becomes an erofs (default; `mkfs.erofs -T EPOCH -U UUID`
is reproducible) or an ext4 with 4096-byte blocks, then `veritysetup format`
writes the hash tree with a fixed UUID and a salt derived from the inputs, and
hbos.stages.veritytree checks it (the tree recomputed in-process while format runs,
every hash block and the root hash compared; osbuild runs `veritysetup verify`).
No loop mounts, no root tricks: every tool works on plain files.

dm-verity on-disk format: https://docs.kernel.org/admin-guide/device-mapper/verity.html
(version 1, sha256, 4096-byte data and hash blocks).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from hbos.config import Config
from hbos.errors import BuildError
from hbos.paths import Paths
from hbos.stages import guest_boot, kernel, rootfs, veritytree
from hbos.util import run, templates, tools, tree as htree
from hbos.util.fsutil import sha256_file, write_json

BLOCK = 4096
NAME_MAX = 255      # bytes in one path component (erofs and ext4)
PATH_MAX = 4095

# -------------------------------------------------------------- system files


@dataclass(frozen=True)
class Link:
    """A symlink to create in the root (how systemd units are enabled or masked)."""
    target: str


SYSTEM_DIR = "etc/systemd/system"
NETWORKD = "/lib/systemd/system"
# getty units a non-debug image masks: no login prompt on any console
GETTY_UNITS = ("getty@.service", "serial-getty@.service", "console-getty.service",
               "autovt@.service", "container-getty@.service", "getty-static.service")


def system_files(cfg: Config) -> dict[str, Union[str, Link]]:
    """Root-relative path -> file text or Link, added to every guest root."""
    files: dict[str, Union[str, Link]] = {
        "etc/systemd/network/80-hbos-wired.network": templates.render("guest/80-hbos-wired.network.j2"),
        f"{SYSTEM_DIR}/multi-user.target.wants/systemd-networkd.service":
            Link(f"{NETWORKD}/systemd-networkd.service"),
        f"{SYSTEM_DIR}/sockets.target.wants/systemd-networkd.socket":
            Link(f"{NETWORKD}/systemd-networkd.socket"),
        f"{SYSTEM_DIR}/network-online.target.wants/systemd-networkd-wait-online.service":
            Link(f"{NETWORKD}/systemd-networkd-wait-online.service"),
        "etc/hbos/image.conf": templates.render("guest/hbos-image.conf.j2", debug=cfg.debug,
                                                filesystem=cfg.image.filesystem,
                                                source_date_epoch=cfg.source_date_epoch),
    }
    if cfg.debug:
        files[f"{SYSTEM_DIR}/serial-getty@ttyS0.service.d/autologin.conf"] = \
            templates.render("guest/serial-autologin.conf.j2", tty="ttyS0")
    else:
        for unit in GETTY_UNITS:
            files[f"{SYSTEM_DIR}/{unit}"] = Link("/dev/null")
    # boot time (docs/boot.md): units, generators and drivers the guest never needs
    files.update({rel: Link(target) for rel, target in guest_boot.masks(cfg.debug).items()})
    files.update(guest_boot.text_files())
    return files


def write_system_files(tree: Path, files: dict[str, Union[str, Link]]) -> None:
    for rel, body in sorted(files.items()):
        dest = safe_dest(tree, rel)
        htree.ensure_dir(dest.parent)       # 0755 whatever the umask
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        if isinstance(body, Link):
            dest.symlink_to(body.target)
        else:
            dest.write_text(body)
            dest.chmod(0o644)


# ------------------------------------------------------------ content tree


def check_content_tree(root: Path, name_max: int = NAME_MAX) -> None:
    """Refuse entries an image cannot or must not hold, naming the path."""
    if not root.is_dir():
        raise BuildError(f"content tree {root} does not exist", hint="run: doit content")
    for full, rel, st in htree.walk(root):
        name = os.path.basename(full)
        if len(os.fsencode(name)) > name_max:
            raise BuildError(f"content tree: name longer than {name_max} bytes: {rel}")
        if len(os.fsencode(rel)) + 1 > PATH_MAX:
            raise BuildError(f"content tree: path longer than {PATH_MAX} bytes: {rel}")
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            raise BuildError(f"content tree: {rel} is a device node, fifo or socket",
                             hint="a guest image holds regular files, directories and symlinks")


MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def safe_dest(tree: Path, rel: str) -> Path:
    """tree/rel, following only the merged-/usr top-level links (bin -> usr/bin).

    Any other symlink on the way would let content write outside the tree
    (an absolute link resolves on the build host), so it is refused.
    """
    parts = Path(rel).parts
    if not parts or parts[0] in ("/", "..") or ".." in parts:
        raise BuildError(f"content path {rel!r} leaves the root")
    first = tree / parts[0]
    if parts[0] in MERGED_USR and first.is_symlink():
        target = os.readlink(first)
        if not target.startswith("/") and ".." not in Path(target).parts:
            parts = (*Path(target).parts, *parts[1:])
    cur = tree
    for part in parts[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise BuildError(f"content path {rel} goes through the symlink "
                             f"/{cur.relative_to(tree).as_posix()} of the base root")
    return cur / parts[-1]


def overlay(src: Path, tree: Path) -> int:
    """Lay the content tree over `tree` (owners, modes, symlinks kept); return files.

    Regular files are hard-linked where possible (the content tree is a build
    artifact nobody edits in place; its mtimes are already source_date_epoch),
    copied otherwise.
    """
    count = 0
    for s, rel, st in htree.walk(src):
        d = safe_dest(tree, rel)
        if stat.S_ISDIR(st.st_mode):
            if d.is_symlink() or (d.exists() and not d.is_dir()):
                raise BuildError(f"content directory {rel} would replace a "
                                 f"non-directory of the base root")
            d.mkdir(exist_ok=True)
            os.chmod(d, stat.S_IMODE(st.st_mode))
        else:
            if d.is_symlink() or d.is_file():
                d.unlink()
            elif d.is_dir():
                raise BuildError(f"content file {rel} would replace a directory of the base root")
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)
            else:
                htree.link_or_copy(s, d)
                os.chmod(d, stat.S_IMODE(st.st_mode))
            count += 1
        os.lchown(d, st.st_uid, st.st_gid)
    return count


# ---------------------------------------------------------- inputs -> ids


def derive_ids(inputs: dict) -> dict[str, str]:
    """Salt and UUIDs from the canonical JSON of the inputs (never random).

    Same inputs -> same salt/UUIDs -> same image and root hash; any change
    of an input changes the salt too.
    """
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).digest()

    def sub(label: str) -> bytes:
        return hashlib.sha256(label.encode() + digest).digest()

    return {
        "salt": sub("hbos-verity-salt").hex(),
        "verity_uuid": str(uuidlib.UUID(bytes=sub("hbos-verity-uuid")[:16], version=4)),
        "fs_uuid": str(uuidlib.UUID(bytes=sub("hbos-fs-uuid")[:16], version=4)),
    }


def inputs(cfg: Config, paths: Paths, content_manifest: Path | None) -> dict:
    """Everything the image is made from, by hash (cheap: no image is re-read)."""
    kinfo = kernel.info(paths)
    files = {rel: (f"link:{b.target}" if isinstance(b, Link) else
                   hashlib.sha256(b.encode()).hexdigest()) for rel, b in system_files(cfg).items()}
    return {
        "base_rootfs_sha256": rootfs.manifest(paths)["sha256"],
        "kernel": {"version": kinfo["version"], "deb_sha256": kinfo.get("deb_sha256", "")},
        "content_manifest_sha256": sha256_file(content_manifest) if content_manifest else "",
        "system_files": files,
        "image": cfg.slice("image")["image"],
        "debug": cfg.debug,
        "source_date_epoch": cfg.source_date_epoch,
    }


# ---------------------------------------------------------- command lines


def mkfs_erofs_argv(tree: Path, image: Path, fs_uuid: str, epoch: int,
                    compression: str = "") -> list[str]:
    argv = ["mkfs.erofs", "--quiet", f"-T{epoch}", f"-U{fs_uuid}"]
    if compression:
        argv.append(f"-z{compression}")
    return argv + [str(image), str(tree)]


def veritysetup_format_argv(data: Path, hash_tree: Path, verity_uuid: str, salt: str) -> list[str]:
    return ["veritysetup", "format", str(data), str(hash_tree), "--format=1", "--hash=sha256",
            f"--data-block-size={BLOCK}", f"--hash-block-size={BLOCK}",
            f"--uuid={verity_uuid}", f"--salt={salt}"]


def veritysetup_verify_argv(data: Path, hash_tree: Path, roothash: str) -> list[str]:
    return ["veritysetup", "verify", str(data), str(hash_tree), roothash]


def parse_root_hash(text: str) -> str:
    """The root hash from `veritysetup format` output ("Root hash:  <hex>")."""
    for line in text.splitlines():
        if line.strip().lower().startswith("root hash:"):
            value = line.split(":", 1)[1].strip()
            if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
                return value
    raise BuildError("veritysetup format printed no root hash")


# ------------------------------------------------------------------ stage


class Steps:
    """Wall time of each named step, printed as one line at the end."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.times.items())


def assemble(cfg: Config, paths: Paths, tree: Path, content_tree: Path | None,
             log: Path | None = None, steps: Steps | None = None) -> dict:
    """Build the guest root tree in `tree` (which must not exist); return what
    went where of the kernel's modules (rootfs.modules_record)."""
    step = steps or Steps()
    base = step("extract", rootfs.extracted_tree, paths, log=log)
    step("clone", htree.clone, base, tree, log=log)
    version = step("modules", rootfs.add_kernel_modules, paths, tree)
    modules = rootfs.modules_record(tree, version)
    if content_tree is not None:
        step("content", overlay, content_tree, tree)
    write_system_files(tree, system_files(cfg))
    if cfg.image.filesystem != "erofs":
        # `mkfs.erofs -T EPOCH` gives every inode that time itself (erofs-utils:
        # "set all files to the given UNIX timestamp"); mkfs.ext4 -d copies mtimes
        step("mtimes", htree.normalize_mtimes, tree, cfg.source_date_epoch)
    return modules


def make_filesystem(cfg: Config, tree: Path, image: Path, fs_uuid: str,
                    log: Path | None = None) -> None:
    if cfg.image.filesystem == "erofs":
        tools.require("mkfs.erofs")
        run.run(mkfs_erofs_argv(tree, image, fs_uuid, cfg.source_date_epoch,
                                cfg.image.erofs_compression), log=log)
    else:
        tools.require("mkfs.ext4")
        size = rootfs.ext4_size(htree.size(tree))
        run.run(rootfs.mkfs_ext4_argv(tree, image, fs_uuid, size),
                env={"E2FSPROGS_FAKE_TIME": str(cfg.source_date_epoch)}, log=log)
    size = image.stat().st_size
    if size % BLOCK:
        # dm-verity maps whole data blocks: pad to a block boundary
        with open(image, "r+b") as fh:
            fh.truncate(size + BLOCK - size % BLOCK)


def format_hash_tree(data: Path, hash_tree: Path, ids: dict[str, str],
                     log: Path | None = None, steps: Steps | None = None) -> str:
    """veritysetup format, checked; return the root hash.

    The check is hbos.stages.veritytree: the hash tree computed in-process, in a thread
    that runs while veritysetup format does (both read the data mkfs just wrote),
    then compared block by block with the hash file and with the printed root
    hash. It replaces a `veritysetup verify` after format (a second pass over
    the data; issue 16 item 11)."""
    step = steps or Steps()
    tools.require("veritysetup")
    hash_tree.touch()
    salt = bytes.fromhex(ids["salt"])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verity-check") as pool:
        expected = pool.submit(veritytree.compute, data, salt, BLOCK)
        proc = step("format", run.run,
                    veritysetup_format_argv(data, hash_tree, ids["verity_uuid"], ids["salt"]),
                    log=log)
        roothash = parse_root_hash(proc.stdout.decode(errors="replace"))
        tree = step("verify", expected.result)
    step("verify", veritytree.check, tree, hash_tree, roothash, salt, ids["verity_uuid"], BLOCK)
    return roothash


def build(cfg: Config, paths: Paths, content_tree: Path | None = None,
          content_manifest: Path | None = None) -> str:
    """The verity stage. Content defaults to build/content/{tree,manifest.json}."""
    if content_tree is None:
        content_tree, content_manifest = paths.content_tree, paths.content_manifest
        if not content_manifest.is_file():
            raise BuildError(f"no guest content ({content_manifest} is missing)",
                             hint="run: doit content")
    check_content_tree(content_tree)
    log = paths.log("verity")
    ins = inputs(cfg, paths, content_manifest)
    ids = derive_ids(ins)
    out = paths.verity_dir
    out.mkdir(parents=True, exist_ok=True)
    step = Steps()
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmpdir:
        tmp = Path(tmpdir)
        tree = tmp / "tree"
        modules = assemble(cfg, paths, tree, content_tree, log=log, steps=step)
        image, hashes = tmp / "guest.img", tmp / "hash_tree.bin"
        step("mkfs", make_filesystem, cfg, tree, image, ids["fs_uuid"], log=log)
        # removing the tree is metadata I/O, hashing is CPU: overlap them
        cleanup = threading.Thread(target=shutil.rmtree, args=(tree,), kwargs={"ignore_errors": True})
        cleanup.start()
        try:
            roothash = format_hash_tree(image, hashes, ids, log=log, steps=step)
        finally:
            step("cleanup (after verify)", cleanup.join)
        record: dict[str, Any]
        record = {"roothash": roothash, **ids, "inputs": ins,
                  "filesystem": cfg.image.filesystem,
                  "kernel_modules": {**modules, "note": "the kernel's full module tree as "
                                     "the .deb ships it; udev/kmod load from it (sev-guest, "
                                     "tsm_report); the boot modules are also in the initramfs, "
                                     "decompressed (initramfs.json module_sources)"},
                  "data_size": image.stat().st_size, "hash_tree_size": hashes.stat().st_size}
        # roothash.txt is written last: it is what vm_config depends on
        os.replace(image, paths.verity_image)
        os.replace(hashes, paths.hash_tree)
        write_json(paths.verity_manifest, record)
        (tmp / "roothash.txt").write_text(roothash + "\n")
        os.replace(tmp / "roothash.txt", paths.roothash)
    print(f"verity: {paths.verity_image} ({record['data_size'] >> 20} MiB, "
          f"{cfg.image.filesystem}) root hash {roothash}", file=sys.stderr)
    print(f"verity: {step.summary()}", file=sys.stderr)
    return roothash


def read_roothash(paths: Paths) -> str:
    try:
        return paths.roothash.read_text().strip()
    except FileNotFoundError:
        raise BuildError("no verity root hash yet", hint="run: doit verity") from None
