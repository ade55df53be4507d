"""The launch identity files a launch passes (ID block, ID auth, HOST_DATA).

Kept apart from hbos.measure.idblock (which signs, with cryptography) because dodo.py
needs these paths at graph time, as libvirt_xml's file_dep.
"""

from __future__ import annotations

from pathlib import Path


def launch_files(cfg, paths) -> dict[str, Path | None]:
    """The base64 files a launch passes as id-block / id-auth / host-data (e.g. into a
    libvirt domain): the launch.* files when set, else this build's (ID block and auth
    only with identity.enabled; HOST_DATA always, from measure)."""
    out: dict[str, Path | None] = {}
    for key, generated in (("id_block", paths.id_block), ("id_auth", paths.id_auth),
                           ("host_data", paths.host_data)):
        explicit = getattr(cfg.launch, key)
        if explicit:
            out[key] = cfg.path(explicit)
        elif key == "host_data" or cfg.identity.enabled:
            out[key] = generated
        else:
            out[key] = None
    return out
