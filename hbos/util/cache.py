"""A content-addressed cache for the expensive, input-determined artifacts.

Three stages ask it before they work and fill it after: `firmware` (the edk2
OVMF build, minutes), `base_rootfs` (mmdebstrap, minutes) and `kernel_deb` (the
guest kernel package). A clean build directory with the same inputs then
restores their outputs instead of rebuilding them, byte for byte the files the
build wrote (the records beside them too), so every later stage and the
expected launch digest come out the same.

Keys. Each stage describes its inputs as a JSON-able mapping (its config
slice, the exact command line or recipe, the host tool versions it runs); the
key is the sha256 of that mapping as canonical JSON (sorted keys, no spaces),
so the same inputs give the same key on any machine and any change of an input
gives another one. The entry keeps the inputs, so `entry.json` says what it
was built from.

Layout, under `cache_dir` (hbos.util.cache.location; default
$XDG_CACHE_HOME/hbos or ~/.cache/hbos):

    <kind>/<key>/entry.json      kind, key, inputs, {name: {sha256, size}}
    <kind>/<key>/files/<name>    the cached files
    <kind>/.tmp-<key>-<pid>/     an entry being stored (never read)

Store writes the whole entry into a temporary directory beside it and
publishes it with one rename(2), so a crash mid-store leaves only a
temporary directory that no lookup ever reads (the next store of that kind
removes it once its process is gone), never a partial entry. Restore never
trusts an entry: it copies each file to its destination while hashing the
bytes it copies, and checks size and sha256 against entry.json before the
file is renamed into place. A missing, partial or corrupt entry is reported
in one line on stderr, removed, and the stage builds (and stores again).
The cache is an optimisation: when it cannot be read or written, the stage
says so in one line and builds as if there were none.

Why `cache_dir` is not in any stage's declared config (hbos/tasks/table.py). A
stage's declared keys are what reruns it (doit's config_changed); where the
cache lives changes no output, so moving it must not rebuild anything. Like
`build_dir`, it is therefore one of the keys every stage may read without
declaring (_ALWAYS in hbos/config.py), an explicit, documented exception: declaring
it would rerun firmware, base_rootfs and kernel_deb on a mere move of the
cache, the opposite of what a cache is for.

`doit clean` removes targets under build_dir only; no task names anything in
the cache as a target, so clean never touches it. Clear it by removing the
directory (or one `<kind>/<key>` entry).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from hbos.util.fsutil import CHUNK, remove

FORMAT = 1          # of the entry layout; part of every key
ENTRY = "entry.json"
FILES = "files"


def location(value: str, resolve: Callable[[str], Path] | None = None,
             env: dict[str, str] | None = None) -> Path | None:
    """The cache directory for the config value `cache_dir`.

    "auto": $XDG_CACHE_HOME/hbos, or ~/.cache/hbos; "" (or null): no cache;
    anything else a path (relative ones through `resolve`, the config's own
    path resolution).
    """
    environ = os.environ if env is None else env
    if not value:
        return None
    if value == "auto":
        base = environ.get("XDG_CACHE_HOME", "")
        root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
        return root / "hbos"
    return resolve(value) if resolve else Path(value).expanduser().resolve()


def of(cfg: Any) -> "Cache | None":
    """The cache the config names, or None when it is disabled."""
    root = location(cfg.cache_dir, cfg.path)
    return Cache(root) if root is not None else None


def canonical(inputs: Any) -> bytes:
    """The canonical JSON the key hashes (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def key(kind: str, inputs: Any) -> str:
    """sha256 (hex) of the canonical JSON of the kind, the format and the inputs."""
    return hashlib.sha256(canonical({"kind": kind, "format": FORMAT, "inputs": inputs})).hexdigest()


def say(message: str) -> None:
    print(f"cache: {message}", file=sys.stderr, flush=True)


class CorruptEntry(Exception):
    """An entry that is partial or whose files do not match its entry.json."""


class Cache:
    """The cache under `root` (created on first store)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, kind: str, k: str) -> Path:
        return self.root / kind / k

    # ------------------------------------------------------------ restore

    def restore(self, kind: str, k: str, dests: dict[str, Path]) -> bool:
        """Copy the entry's files onto `dests` ({name: path}), each re-checked.

        True when every file was restored. False when there is no entry (or
        the cache cannot be read), and when the entry is corrupt or partial:
        then it is reported in one line and removed. Destinations are written
        atomically (a temporary sibling renamed into place), only after every
        file checked out, so a failed restore leaves them as they were.
        """
        entry = self.entry(kind, k)
        if not entry.is_dir():
            return False
        placed: list[tuple[Path, Path]] = []
        try:
            files = self._manifest(entry, set(dests))
            for name, dest in dests.items():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.cache-{os.getpid()}")
                placed.append((tmp, dest))
                digest, size = _copy_hashing(entry / FILES / name, tmp, sync=False)
                want = files[name]
                if size != want["size"] or digest != want["sha256"]:
                    raise CorruptEntry(f"{name}: sha256 {digest} ({size} bytes), entry.json "
                                       f"says {want['sha256']} ({want['size']} bytes)")
            for tmp, dest in placed:
                os.replace(tmp, dest)
            placed = []
        except CorruptEntry as exc:
            say(f"{kind} entry {k} is corrupt ({exc}); removed it, building instead")
            self._discard(entry)
            return False
        except OSError as exc:
            say(f"cannot restore {kind} {k} from {entry} ({exc.strerror or exc}); building instead")
            return False
        finally:
            for tmp, _ in placed:
                remove(tmp)
        return True

    def _manifest(self, entry: Path, names: set[str]) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((entry / ENTRY).read_text(encoding="utf-8"))
            files = data["files"]
            if not isinstance(files, dict) or set(files) != names:
                raise CorruptEntry(f"holds {sorted(files)}, expected {sorted(names)}")
            for name, info in files.items():
                if not isinstance(info.get("sha256"), str) or not isinstance(info.get("size"), int):
                    raise CorruptEntry(f"{name}: no sha256/size in entry.json")
                if not (entry / FILES / name).is_file():
                    raise CorruptEntry(f"{name}: missing")
            return files
        except FileNotFoundError:
            raise CorruptEntry(f"no {ENTRY}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptEntry(f"unreadable {ENTRY}: {type(exc).__name__}") from None

    def _discard(self, entry: Path) -> None:
        """Remove an entry: first out of sight (rename), then its files."""
        gone = entry.with_name(f".gone-{entry.name}-{os.getpid()}")
        try:
            os.rename(entry, gone)
            remove(gone)
        except OSError as exc:
            say(f"cannot remove {entry} ({exc.strerror or exc})")

    # -------------------------------------------------------------- store

    def store(self, kind: str, k: str, inputs: Any, sources: dict[str, Path]) -> bool:
        """Publish `sources` ({name: file}) as the entry kind/k; True if stored.

        The entry is built in a temporary directory and renamed into place in
        one step. If an entry already exists (another build stored it first),
        it is kept. Any OSError is reported in one line: the build goes on.
        """
        entry = self.entry(kind, k)
        tmp = entry.with_name(f".tmp-{k}-{os.getpid()}")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(entry.parent)
            remove(tmp)
            (tmp / FILES).mkdir(parents=True)
            files = {}
            for name, src in sources.items():
                digest, size = _copy_hashing(src, tmp / FILES / name)
                files[name] = {"sha256": digest, "size": size}
            record = {"kind": kind, "key": k, "format": FORMAT, "inputs": inputs,
                      "files": files, "stored": int(time.time())}
            with open(tmp / ENTRY, "w", encoding="utf-8") as fh:
                json.dump(record, fh, indent=2, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            if entry.exists():
                return False
            os.rename(tmp, entry)
        except OSError as exc:
            if entry.is_dir():   # another build published it between the check and the rename
                return False
            say(f"cannot store {kind} {k} in {self.root} ({exc.strerror or exc}); "
                "the build itself is fine")
            return False
        finally:
            remove(tmp)
        return True

    def entries(self, kind: str) -> Iterator[Path]:
        d = self.root / kind
        if d.is_dir():
            yield from sorted(p for p in d.iterdir() if not p.name.startswith("."))


def _copy_hashing(src: Path, dest: Path, sync: bool = True) -> tuple[str, int]:
    """Copy src to dest; the sha256 and size of the bytes written (on disk before
    the entry is published when `sync`; a restore's targets need not be)."""
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        if sync:
            os.fsync(fout.fileno())
    shutil.copymode(src, dest)
    return h.hexdigest(), size


def _remove_stale(kind_dir: Path) -> None:
    """Temporary entries of killed stores (their process is gone)."""
    for tmp in kind_dir.glob(".*-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            remove(tmp)


def cached(cfg: Any, kind: str, inputs: Callable[[], Any], outputs: dict[str, Path],
           build: Callable[[], Any], stage: str) -> None:
    """Restore `outputs` ({name: path}) from the cache, or build() and store them.

    `inputs` is called once (it may run host tools for their versions); when it
    returns None the inputs are not fully known (e.g. apt named no version) and
    the cache is not used. With the cache disabled this is just build().
    """
    store = of(cfg)
    inputs_ = inputs() if store is not None else None
    if store is None or inputs_ is None:
        build()
        return
    k = key(kind, inputs_)
    if store.restore(kind, k, outputs):
        print(f"{stage}: restored from cache {k[:16]} ({store.entry(kind, k)})",
              file=sys.stderr, flush=True)
        return
    build()
    if store.store(kind, k, inputs_, outputs):
        print(f"{stage}: stored in cache {k[:16]} ({store.entry(kind, k)})",
              file=sys.stderr, flush=True)
