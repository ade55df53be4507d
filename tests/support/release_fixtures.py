"""A small synthetic build for release tests.

Image, hash tree, kernel and initrd are seeded pseudo-random bytes (a release
only hashes and ships them); the firmware is a copy of the real AmdSev OVMF
suffix from the vectors (the `amdsev_ovmf` fixture), so the launch digest is
real; vm-config.toml and measurement.json come from the real stages.
"""

from __future__ import annotations

import io
import random
import shutil
import tarfile
from pathlib import Path

from hbos import config as hconfig
from hbos.paths import Paths
from hbos.release import layout
from hbos.stages import vmconfig
from hbos.stages.measure import write_measurement


def make_build(root: Path, ovmf: Path, *, seed: int = 1, extra_yaml: str = ""):
    """(cfg, paths) of a build dir under `root` holding every release input."""
    root.mkdir(parents=True, exist_ok=True)
    fw = root / "fw" / "OVMF.fd"
    fw.parent.mkdir(exist_ok=True)
    shutil.copyfile(ovmf, fw)  # never link the vector: tests alter release files
    overlay = root / "overlay.yaml"
    overlay.write_text(f"build_dir: {root / 'build'}\nfirmware: {{ovmf: {fw}}}\n"
                       "release: {retries: 2, backoff_ms: 10, connect_timeout: 5, "
                       "read_timeout: 5}\n" + extra_yaml)
    cfg = hconfig.load(overlay=overlay)
    paths = Paths.from_config(cfg)
    rnd = random.Random(seed)
    for path, size in ((paths.verity_image, 1 << 20), (paths.hash_tree, 12288),
                       (paths.vmlinuz, 200_000), (vmconfig.initrd_path(cfg, paths), 50_000)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rnd.randbytes(size))
    paths.roothash.write_text(rnd.randbytes(32).hex() + "\n")
    vmconfig.write(cfg, paths, ovmf=fw, roothash_file=paths.roothash)
    write_measurement(paths.vm_config, paths.measurement, source_date_epoch=cfg.source_date_epoch)
    return cfg, paths


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flip one byte, replacing the file (never writing through a hardlink)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.unlink()
    path.write_bytes(bytes(data))


def tar_of(root: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = (),
           skip: tuple[str, ...] = ()) -> bytes:
    """An uncompressed tar of a release dir's files plus hand-made members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in (*layout.PAYLOAD, layout.MANIFEST):
            if name in skip:
                continue
            tar.add(root / name, arcname=name)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, *, type=tarfile.REGTYPE, linkname: str = "",
           data: bytes | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    info.size = len(data) if data is not None else 0
    info.mode = 0o644
    return info, data


def snapshot(root: Path, *, exclude: tuple[Path, ...] = ()) -> dict[str, tuple[str, int]]:
    """Every path under root (not under `exclude`) -> (kind, size)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if any(p == e or e in p.parents for e in exclude):
            continue
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        out[str(p.relative_to(root))] = (kind, p.lstat().st_size if kind == "file" else 0)
    return out
