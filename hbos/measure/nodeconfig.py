"""The node configuration document and HOST_DATA, which pins it in every attestation report.

SEV-SNP lets the host set 32 bytes of HOST_DATA at launch (SNP_LAUNCH_FINISH);
the PSP copies them into every attestation report. We put there the sha256 of
the node configuration document:

    {"format": "hbos-node-config/1",
     "config_flat_sha256": sha256 of the rendered HyperBEAM config.flat,
     "post_start": the body start POSTs to the node after boot, or null}

Both parts are rendered here and nowhere else: config.flat (which the content
stage writes into the guest tree) and the post-start body (which
hbos.launch.start sends). measurement.json records the document
(`node_configuration`) and its hash (`host_data`, 64 hex), so a verifier pins
the configuration as well as the image. config.flat is also in the measured
image; the post-start body is not, and HOST_DATA is what binds it: changing it
changes HOST_DATA and nothing else.

The post-start body (hb-os scripts/post_start.py with config/server.jsonc):
post_start.settings (default operator: trustless, initialized: permanent),
snp_trusted = [the measurement inputs without expected_hash], self (--self,
else post_start.self_url, else http://localhost:<host port>, hb-os's default
http://localhost:80) and peer when given; a settings value "$SELF" or "$PEER"
becomes that URL (hb-os's placeholders; $SELF_ID/$PEER_ID are not supported).
None is sent with post_start.auto false or --no-auto. measure records the
document for the default start options (MEASURED); a start computes its body
once, and an SNP start whose body does not hash to the recorded HOST_DATA is
refused (`for_launch`: the report would not match what a verifier pins).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hbos.util import templates
from hbos.util.fsutil import write_text

FORMAT = "hbos-node-config/1"

TRUSTED_KEYS = ("kernel", "initrd", "append", "firmware", "vcpus", "vcpu_type", "vmm_type",
                "guest_features")


@dataclass(frozen=True)
class PostStartOptions:
    """The start options the post-start body (and so HOST_DATA) depends on."""
    self_url: str = ""              # --self: this node's URL as peers reach it
    peer_url: str = ""              # --peer: a peer node's URL
    no_auto: bool = False           # --no-auto: send no post-start body


MEASURED = PostStartOptions()       # what measure assumes: a plain `doit start`


# ----------------------------------------------------------------- config.flat


def render_config_flat(cfg) -> str:
    """HyperBEAM's config.flat: a pure function of config.yaml (it is measured,
    and written into the source tree before `rebar3 release`)."""
    return templates.render("config.flat.j2", port=cfg.ports.hyperbeam,
                            operator=cfg.content.hyperbeam_operator,
                            lines=list(cfg.content.hyperbeam_config))


# ----------------------------------------------------------------- the post-start body


def host_port(cfg) -> int:
    """The host port that reaches the node's HTTP port (launch.host_port; 0: the node's own)."""
    return cfg.launch.host_port or cfg.ports.hyperbeam


def self_url(cfg, given: str = "") -> str:
    return given or cfg.post_start.self_url or f"http://localhost:{host_port(cfg)}"


def setting_value(text: str) -> Any:
    """A post_start.settings value: integers and true/false as such, else text."""
    text = text.strip()
    if re.match(r"^-?[0-9]+$", text):
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def settings(lines: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in lines:
        key, _, value = line.partition(": ")
        out[key.strip()] = setting_value(value)
    return out


def snp_trusted(record: dict[str, Any]) -> dict[str, Any]:
    """The measurement inputs a node should trust, without expected_hash (a verifier
    recomputes it)."""
    return {k: record[k] for k in TRUSTED_KEYS if k in record}


def post_start_body(record: dict[str, Any], lines: tuple[str, ...], self_url: str,
                    peer_url: str = "") -> dict[str, Any]:
    """The post-start node message (a pure function: HOST_DATA hashes it)."""
    places = {"$SELF": self_url, "$PEER": peer_url}
    body: dict[str, Any] = {k: places.get(v, v) if isinstance(v, str) else v
                            for k, v in settings(lines).items()}
    body["snp_trusted"] = [snp_trusted(record)]
    body["self"] = self_url
    if peer_url:
        body["peer"] = peer_url
    return body


def post_start_for(cfg, record: dict[str, Any], options: PostStartOptions = MEASURED
                   ) -> dict[str, Any] | None:
    """The body start sends after boot, or None when it sends none (post_start.auto
    false or --no-auto; HOST_DATA then covers what the guest needs)."""
    if not cfg.post_start.auto or options.no_auto:
        return None
    return post_start_body(record, cfg.post_start.settings, self_url(cfg, options.self_url),
                           options.peer_url)


# ----------------------------------------------------------------- the document and HOST_DATA


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


def node_configuration(cfg, record: dict[str, Any], options: PostStartOptions = MEASURED
                       ) -> dict[str, Any]:
    """The document for this config and measurement record, started with `options`."""
    return document(render_config_flat(cfg), post_start_for(cfg, record, options))


def measurement_fields(cfg, record: dict[str, Any]) -> dict[str, Any]:
    """measurement.json's node_configuration and host_data for `record` (as MEASURED)."""
    doc = node_configuration(cfg, record)
    return {"node_configuration": doc, "host_data": host_data(doc)}


def for_launch(record: dict[str, Any], post_start: dict[str, Any] | None) -> tuple[str, str | None]:
    """(host_data hex or "", a problem or None) for starting `record` and sending `post_start`.

    The document is measurement.json's with the post-start body the launcher is
    about to send; a record without host_data gives ("", None).
    """
    recorded = record.get("host_data")
    doc = record.get("node_configuration")
    if not recorded or not isinstance(doc, dict):
        return "", None
    got = host_data(dict(doc, post_start=post_start))
    if got != recorded:
        return got, (f"the node configuration of this start (post-start body) hashes to "
                     f"HOST_DATA {got}, measurement.json pins {recorded}")
    return recorded, None


def write_b64(path: Path, hex_value: str) -> None:
    """The file a launch passes as host-data (QEMU, libvirt): base64 of the 32 bytes."""
    write_text(path, to_b64(hex_value) + "\n")
