"""How the host reaches the node: port forwards and the post-start body.

Pure functions of config.yaml and measurement.json (issue 15 hashes the
post-start body, so it must be rendered here and nowhere else).

Forwards (hb-os launch.sh: `hostfwd=tcp:0.0.0.0:${HB_PORT}-:10000` with
HB_PORT=80, and `hostfwd=tcp:0.0.0.0:8734-:8734`):
- launch.host_port (default 80; 0 = the same as ports.hyperbeam) -> the node's
  HTTP port ports.hyperbeam (config.flat `port:`);
- launch.forwards: more "HOST:GUEST" or "ADDRESS:HOST:GUEST" entries;
- ssh (debug images only) -> 22, always on 127.0.0.1.
The address is launch.host_address when set, else 0.0.0.0 for an SEV-SNP
guest and 127.0.0.1 for an emulated (NOT CONFIDENTIAL) one.

Post-start (hb-os scripts/post_start.py with config/server.jsonc): one POST
/~meta@1.0/info with post_start.settings (default operator: trustless,
initialized: permanent), snp_trusted = [the measurement inputs without
expected_hash], self (--self, else post_start.self_url, else
http://localhost:<host port>, hb-os's default http://localhost:80) and peer
when given.
"""

from __future__ import annotations

import re
from typing import Any

from hbos import qemu

TRUSTED_KEYS = ("kernel", "initrd", "append", "firmware", "vcpus", "vcpu_type", "vmm_type",
                "guest_features")


def host_address(cfg, mode: str) -> str:
    """Where the forwards listen: the configured address, else by the guest's mode."""
    if cfg.launch.host_address:
        return cfg.launch.host_address
    return "0.0.0.0" if mode == "snp" else "127.0.0.1"


def host_port(cfg) -> int:
    """The host port that reaches the node's HTTP port."""
    return cfg.launch.host_port or cfg.ports.hyperbeam


def parse_forward(entry: str, address: str) -> qemu.Forward:
    """"HOST:GUEST" or "ADDRESS:HOST:GUEST" (validated by hbos.config)."""
    parts = entry.split(":")
    if len(parts) == 3:
        return qemu.Forward(int(parts[1]), int(parts[2]), parts[0])
    return qemu.Forward(int(parts[0]), int(parts[1]), address)


def forwards(cfg, mode: str, debug: bool) -> tuple[qemu.Forward, ...]:
    address = host_address(cfg, mode)
    out = [qemu.Forward(host_port(cfg), cfg.ports.hyperbeam, address)]
    out += [parse_forward(e, address) for e in cfg.launch.forwards]
    if debug:
        # ssh only exists in debug images, and is only reachable from this host.
        out.append(qemu.Forward(cfg.ports.ssh, 22, "127.0.0.1"))
    return tuple(out)


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
    """The post-start node message (a pure function: HOST_DATA may hash it)."""
    body: dict[str, Any] = settings(lines)
    body["snp_trusted"] = [snp_trusted(record)]
    body["self"] = self_url
    if peer_url:
        body["peer"] = peer_url
    return body
