"""The VM definition (build/guest/vm-config.toml): what is launched and measured."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from hbos import __version__
from hbos.config import Config
from hbos.errors import BuildError, HbosError
from hbos.paths import Paths
from hbos.util import limits, templates
from hbos.util.fsutil import write_text


def initrd_path(cfg: Config, paths: Paths) -> Path:
    """The initrd that is booted: a configured prebuilt one, or the built one."""
    return cfg.path(cfg.initramfs.path) if cfg.initramfs.path else paths.initramfs


def kernel_cmdline(cfg: Config, roothash: str | None = None, disk: str = "/dev/vda",
                   hash_disk: str = "/dev/vdb") -> str:
    """The guest cmdline: config's base plus the verity root arguments."""
    parts = [cfg.cmdline.strip()]
    if roothash:
        parts.append(f"boot=verity verity_disk={disk} verity_hashtree={hash_disk} "
                     f"verity_roothash={roothash}")
    if cfg.debug:
        parts.append("hbos.debug=1")
    return " ".join(p for p in parts if p)


def render(cfg: Config, *, kernel: Path, initrd: Path, ovmf: Path, cmdline: str) -> str:
    text = templates.render("vm-config.toml.j2", vm=cfg.vm, debug=cfg.debug,
                            tool_version=__version__, ovmf_file=str(ovmf),
                            kernel_file=str(kernel), initrd_file=str(initrd),
                            kernel_cmdline=cmdline)
    tomllib.loads(text)  # must parse, or the template is broken
    return text


def write(cfg: Config, paths: Paths, *, ovmf: Path, roothash_file: Path | None = None) -> None:
    roothash = roothash_file.read_text().strip() if roothash_file else None
    text = render(cfg, kernel=paths.vmlinuz, initrd=initrd_path(cfg, paths), ovmf=ovmf,
                  cmdline=kernel_cmdline(cfg, roothash))
    write_text(paths.vm_config, text)


# vm-config.toml's keys and their types (ints with the shared hbos.util.limits ranges).
FIELDS: dict[str, type | limits.Range] = {
    "host_cpu_family": str, "vcpu_count": limits.VCPUS, "vcpu_type": str, "vmm_type": str,
    "memory_mib": limits.MEMORY_MIB, "ovmf_file": str, "guest_features": limits.GUEST_FEATURES,
    "kernel_file": str, "initrd_file": str, "kernel_cmdline": str,
    "platform_info": limits.U64, "guest_policy": limits.U64, "family_id": str, "image_id": str,
    "debug": bool, "min_commited_tcb": dict,
}


def parse(path: Path, error: type[HbosError] = BuildError) -> dict[str, Any]:
    """Read a vm-config.toml (bounded, UTF-8, TOML) and check every known key's type."""
    data = limits.load_toml(path, limits.VM_CONFIG_BYTES, "VM definition", error)
    for key, kind in FIELDS.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(kind, limits.Range):
            limits.check_range(kind, value, key, str(path), error)
        elif not isinstance(value, kind):
            raise error(f"{path}: {key}: expected {_TYPE_NAMES[kind]}, got {value!r:.60}")
    return data


_TYPE_NAMES = {str: "a string", bool: "true or false", dict: "a table"}


def load(path: Path) -> dict[str, Any]:
    """Parse a vm-config.toml; relative file paths resolve against its directory."""
    if not path.exists() and not path.is_symlink():
        raise BuildError(f"VM definition {path} does not exist", hint="run: doit vm_config")
    data = parse(path)
    for key in ("ovmf_file", "kernel_file", "initrd_file"):
        if key in data and data[key] and not Path(data[key]).is_absolute():
            data[key] = str((path.parent / data[key]).resolve())
    return data


def vm_fields(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg.vm)
