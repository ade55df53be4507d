"""HOST_DATA: the node's configuration, pinned in every attestation report.

SEV-SNP lets the host set 32 bytes of HOST_DATA at launch (SNP_LAUNCH_FINISH);
the PSP copies them into every attestation report. We put there the sha256 of
the node configuration document:

    {"format": "hbos-node-config/1",
     "config_flat_sha256": sha256 of the rendered HyperBEAM config.flat,
     "post_start": the body start POSTs to the node after boot, or null}

The document is rendered by the same functions that render config.flat
(hbos.stages.content.render_config_flat) and the post-start body
(hbos.launch.node_http.post_start_for), never from copies. measurement.json records
the document (`node_configuration`) and its hash (`host_data`, 64 hex), so a
verifier pins the configuration as well as the image. config.flat is also in
the measured image; the post-start body is not, and HOST_DATA is what binds it:
changing it changes HOST_DATA and nothing else.

At launch the post-start body is computed again from the start options; when
its document no longer hashes to the recorded HOST_DATA the SNP launch is
refused (the report would not match what a verifier pins).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

FORMAT = "hbos-node-config/1"


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def host_data(doc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the document (64 hex = 32 bytes)."""
    return hashlib.sha256(canonical(doc)).hexdigest()


def to_b64(hex_value: str) -> str:
    """QEMU's host-data= form: base64 of the 32 bytes."""
    return base64.b64encode(bytes.fromhex(hex_value)).decode()


def document(config_flat: str, post_start: dict[str, Any] | None) -> dict[str, Any]:
    return {"format": FORMAT,
            "config_flat_sha256": hashlib.sha256(config_flat.encode()).hexdigest(),
            "post_start": post_start}


def node_configuration(cfg, record: dict[str, Any], options=None) -> dict[str, Any]:
    """The document for this config and measurement record (start options: the defaults)."""
    from hbos.launch import node_http, start as launch
    from hbos.stages import content
    opts = options if options is not None else launch.StartOptions()
    return document(content.render_config_flat(cfg), node_http.post_start_for(cfg, record, opts))


def measurement_fields(cfg, record: dict[str, Any]) -> dict[str, Any]:
    """measurement.json's node_configuration and host_data for `record`."""
    doc = node_configuration(cfg, record)
    return {"node_configuration": doc, "host_data": host_data(doc)}


def for_launch(cfg, record: dict[str, Any], options) -> tuple[str, str | None]:
    """(host_data hex or "", a problem or None) for starting `record` with `options`.

    The document is measurement.json's, with the post-start body the launcher
    is about to send; a record without host_data gives ("", None).
    """
    from hbos.launch import node_http
    recorded = record.get("host_data")
    doc = record.get("node_configuration")
    if not recorded or not isinstance(doc, dict):
        return "", None
    now = dict(doc, post_start=node_http.post_start_for(cfg, record, options))
    got = host_data(now)
    if got != recorded:
        return got, (f"the node configuration of this start (post-start body) hashes to "
                     f"HOST_DATA {got}, measurement.json pins {recorded}")
    return recorded, None


def write_b64(path, hex_value: str) -> None:
    """The file launch.host_data / libvirt take: base64 of the 32 bytes."""
    from hbos.util.fsutil import write_text
    write_text(path, to_b64(hex_value) + "\n")
