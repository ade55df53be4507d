"""Which ID block, ID auth and HOST_DATA files a launch passes (base64, as QEMU and libvirt take them).

The launch.id_block / launch.id_auth / launch.host_data files when set, else
this build's own under build/identity/: HOST_DATA always (`doit measure` writes
it), the ID block and ID auth only with identity.enabled (`doit id_block`).
Apart from hbos.measure.idblock (which signs, with cryptography) because
dodo.py needs these paths at graph time, as libvirt_xml's file_dep. Its user
is hbos.launch.libvirt; `doit start` applies the same precedence itself
(hbos.launch.plan.snp_options, over hbos.launch.start.checked_identity).
"""

from __future__ import annotations

from pathlib import Path

from hbos.config import Config
from hbos.paths import Paths


def resolve(cfg: Config, paths: Paths) -> dict[str, Path]:
    """The files a launch passes, by key (id_block, id_auth, host_data); a key without
    one is absent."""
    out: dict[str, Path] = {}
    for key, generated in (("id_block", paths.id_block), ("id_auth", paths.id_auth),
                           ("host_data", paths.host_data)):
        explicit = getattr(cfg.launch, key)
        if explicit:
            out[key] = cfg.path(explicit)
        elif key == "host_data" or cfg.identity.enabled:
            out[key] = generated
    return out
