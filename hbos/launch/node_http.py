"""How the host reaches the node: port forwards and the HTTP calls (health, the
post-start POST and its follow-ups).

The forwards are pure functions of config.yaml and the guest's mode; the
post-start body itself is rendered by hbos.measure.nodeconfig (HOST_DATA hashes
it). The HTTP calls go to this host's forwarded port, never through a proxy.

Forwards (hb-os launch.sh: `hostfwd=tcp:0.0.0.0:${HB_PORT}-:10000` with
HB_PORT=80, and `hostfwd=tcp:0.0.0.0:8734-:8734`):
- launch.host_port (default 80; 0 = the same as ports.hyperbeam) -> the node's
  HTTP port ports.hyperbeam (config.flat `port:`);
- launch.forwards: more "HOST:GUEST" or "ADDRESS:HOST:GUEST" entries;
- ssh (debug images only) -> 22, always on 127.0.0.1.
The address is launch.host_address when set, else 0.0.0.0 for an SEV-SNP
guest and 127.0.0.1 for an emulated (NOT CONFIDENTIAL) one.

Post-start (hb-os scripts/post_start.py): one POST /~meta@1.0/info with the
body, then, as hb-os does after its POST, the calls `follow_up_calls` lists for
the keys the body holds (router registration, green-zone join/become,
green-zone init); their failures are reported, not fatal (hb-os prints a
warning and goes on). The volume calls (volume_key, encrypted with the node's
public key) are not made.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from hbos.errors import LaunchError
from hbos.launch import qemu
from hbos.measure import nodeconfig

HEALTH_PATH = "/~meta@1.0/info"


# ----------------------------------------------------------------- port forwards


def host_address(cfg, mode: str) -> str:
    """Where the forwards listen: the configured address, else by the guest's mode."""
    if cfg.launch.host_address:
        return cfg.launch.host_address
    return "0.0.0.0" if mode == "snp" else "127.0.0.1"


def parse_forward(entry: str, address: str) -> qemu.Forward:
    """"HOST:GUEST" or "ADDRESS:HOST:GUEST" (validated by hbos.config)."""
    parts = entry.split(":")
    if len(parts) == 3:
        return qemu.Forward(int(parts[1]), int(parts[2]), parts[0])
    return qemu.Forward(int(parts[0]), int(parts[1]), address)


def forwards(cfg, mode: str, debug: bool) -> tuple[qemu.Forward, ...]:
    address = host_address(cfg, mode)
    out = [qemu.Forward(nodeconfig.host_port(cfg), cfg.ports.hyperbeam, address)]
    out += [parse_forward(e, address) for e in cfg.launch.forwards]
    if debug:
        # ssh only exists in debug images, and is only reachable from this host.
        out.append(qemu.Forward(cfg.ports.ssh, 22, "127.0.0.1"))
    return tuple(out)


def unbindable(fwds: tuple[qemu.Forward, ...], euid: int, unprivileged_start: int
               ) -> list[qemu.Forward]:
    """Forwards whose host port this user cannot bind (net.ipv4.ip_unprivileged_port_start)."""
    if euid == 0:
        return []
    return [f for f in fwds if f.host_port < unprivileged_start]


def unprivileged_port_start(path: str = "/proc/sys/net/ipv4/ip_unprivileged_port_start") -> int:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 1024


# ----------------------------------------------------------------- post-start follow-ups


def follow_up_calls(body: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(path, headers) of the GETs hb-os's post_start.py makes after its POST, in
    its order, for the keys `body` holds (scripts/node_api.py)."""
    calls: list[tuple[str, dict[str, str]]] = []
    if "router_peer_location" in body:
        calls.append(("/~router@1.0/register", {}))
    if "green_zone_peer_location" in body:
        peer = {"peer-location": str(body["green_zone_peer_location"]),
                "peer-id": str(body.get("green_zone_peer_id", ""))}
        adopt = body.get("green_zone_adopt_config", True)
        calls.append(("/~greenzone@1.0/join",
                      {**peer, "adopt-config": str(adopt).lower()}))
        calls.append(("/~greenzone@1.0/become", peer))
    if "green_zone_required_config" in body:
        calls.append(("/~greenzone@1.0/init", {}))
    return calls


# ----------------------------------------------------------------- HTTP to the node


# The node is on this host's forwarded port: never through an http_proxy.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health_url(port: int) -> str:
    return f"http://127.0.0.1:{port}{HEALTH_PATH}"


def probe_health(port: int, timeout: float = 3.0) -> tuple[bool, str]:
    """One GET of the health endpoint: (HTTP 200?, what happened in words)."""
    try:
        with _LOCAL.open(health_url(port), timeout=timeout) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        # slirp accepts the host side before the guest listens: a timeout is "no answer"
        return False, "no answer" if isinstance(reason, TimeoutError) or \
            "timed out" in str(reason) else str(reason)


def send_post_start(port: int, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(health_url(port), data=json.dumps(body).encode(),
                                 method="POST",
                                 headers={"Content-Type": "application/json",
                                          "codec-device": "json@1.0"})
    try:
        with _LOCAL.open(req, timeout=30) as resp:
            reply: dict[str, Any] = json.loads(resp.read() or b"{}")
            return reply
    except urllib.error.HTTPError as exc:
        raise LaunchError(f"the node refused the post-start configuration: HTTP {exc.code} "
                          f"{exc.read()[:200].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LaunchError(f"sending the post-start configuration failed: {exc}") from None


def follow_up(port: int, path: str, headers: dict[str, str]) -> str:
    """One post-start follow-up GET; its status in words (never fatal, as hb-os)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with _LOCAL.open(req, timeout=60) as resp:
            return f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.read()[:200].decode(errors='replace')} (warning)"
    except (urllib.error.URLError, OSError) as exc:
        return f"failed: {exc} (warning)"
