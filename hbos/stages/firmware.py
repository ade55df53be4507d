"""Which OVMF the SNP guest boots (and the measurement uses).

`firmware.ovmf` set in any config layer wins. Otherwise `firmware.source`
picks it: `snp_release` (the OVMF the SNP bundle ships), `path` (needs
firmware.ovmf), or `build` (built from Debian's edk2 source into
build/firmware/OVMF.fd).
"""

from __future__ import annotations

from pathlib import Path

from hbos.config import Config
from hbos.errors import ConfigError
from hbos.paths import Paths
from hbos.stages import snp_bundle


def resolve(cfg: Config, paths: Paths) -> Path:
    """The OVMF file for this config (it may not exist yet if it is built)."""
    fw = cfg.firmware
    if fw.ovmf:
        return cfg.path(fw.ovmf)
    if fw.source == "path":
        raise ConfigError("firmware.source is 'path' but firmware.ovmf is empty")
    if fw.source == "build":
        return paths.built_ovmf
    return snp_bundle.ovmf(paths)


def built_here(cfg: Config) -> bool:
    """True when the firmware task builds the OVMF for this config."""
    return not cfg.firmware.ovmf and cfg.firmware.source == "build"
