"""start_release: start the installed release through the launcher.

    build/releases/current -> <dir>    the release download_release installed

The release is re-checked cheaply first (hbos.release.verify with full=False:
every size, every hash but the disk images', which dm-verity checks block by
block at run time, and the launch digest, against release.launch_digest when
pinned), and its signer against release.trusted_keys when set. The launcher
(hbos.launch.start.start_vm) then runs the same consistency checks as `start`,
with the release's own VM definition, measurement, image and hash tree, ID
block when it ships one, and the guest ports it was built with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import hbos.launch.start  # called as hbos.launch.start.start_vm, so a test may swap the module
from hbos.errors import ReleaseError
from hbos.release import layout, provenance, verify


def with_release_ports(cfg, manifest: layout.Manifest):
    """cfg with the guest ports the release was built with."""
    known = {f.name for f in dataclasses.fields(cfg.ports)}
    ports = {k: v for k, v in manifest.ports if k in known}
    changed = {k: v for k, v in ports.items() if getattr(cfg.ports, k) != v}
    if not changed:
        return cfg
    print("start_release: using the release's ports "
          + ", ".join(f"{k} {v}" for k, v in sorted(changed.items())))
    return dataclasses.replace(cfg, ports=dataclasses.replace(cfg.ports, **changed))


def installed(paths) -> Path:
    """The installed release's directory (the `current` symlink, resolved once)."""
    current = paths.current_release
    if not current.exists():
        raise ReleaseError(f"no release installed at {current}",
                           hint="run: doit download_release --url URL --sha256 HEX")
    return current.resolve()


def start_release(cfg, paths, options) -> Any:
    """Re-check the installed release, then start it through the launcher."""
    root = installed(paths)
    manifest = verify.verify_release(root, pinned_digest=cfg.release.launch_digest, full=False)
    if cfg.release.trusted_keys:
        provenance.check_trusted(root, provenance.trusted_keys(cfg))
    print(f"start_release: {manifest.name} from {root}, expected launch digest "
          f"{manifest.launch_digest}")
    cfg = with_release_ports(cfg, manifest)
    return hbos.launch.start.start_vm(cfg, paths, vm_config=root / layout.VM_CONFIG,
                                      measurement=root / layout.MEASUREMENT, image=root / layout.IMAGE,
                                      hash_tree=root / layout.HASH_TREE, options=options,
                                      identity_dir=root if (root / layout.ID_BLOCK).exists() else None)
