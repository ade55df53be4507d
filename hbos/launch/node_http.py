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
green-zone init). The volume calls (volume_key, encrypted with the node's
public key) are not made.

The answers are what the real HyperBEAM sends, not what a test node might: any
2xx is success and its body is shown (bounded), never parsed (the POST's 200
is plain text without a content type, "Node message updated. History:
1updates."; a second POST gets 400 "... already permanent ..."). Every call
returns an `Outcome` that says whether the node may have done what was asked
("unknown": a timeout or reset after sending, a 5xx): hbos.launch.start never
stops a VM whose node may hold its configuration. Bodies are read up to
READ_BYTES; health reads none.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

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

# The real HyperBEAM (edge 2025-06) answers GET /~meta@1.0/info with HTTP 200,
# content-type text/html, ~70 signed headers and a 25 KB page; under TCG one such
# GET took 3.7 s. Health is its status line alone: no body is read.
# seconds one health probe may take: the real HyperBEAM signs ~70 headers and
# renders a 25 KB page for this GET, measured at 9.2 s under TCG (1 vCPU)
HEALTH_PROBE_TIMEOUT = 20.0
POST_TIMEOUT = 60.0           # seconds without progress on the post-start POST
FOLLOW_UP_TIMEOUT = 60.0      # ... and on each follow-up GET
READ_BYTES = 64 << 10         # the most of an answer's body ever read
SHOW_BYTES = 2000             # the most of it shown to the user

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")   # all but tab and newline


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is the node's answer, not a place to go (a redirected POST would
    come back as a GET): urllib then raises it as an HTTPError."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


# The node is on this host's forwarded port: never through an http_proxy.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def health_url(port: int) -> str:
    return f"http://127.0.0.1:{port}{HEALTH_PATH}"


def _no_answer(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    # slirp accepts the host side before the guest listens: a timeout is "no answer"
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "no answer"
    return str(reason) or type(reason).__name__


def probe_health(port: int, timeout: float = HEALTH_PROBE_TIMEOUT) -> tuple[bool, str]:
    """One GET of the health endpoint: (HTTP 200?, what happened in words).

    Healthy is HTTP 200, whatever the content type; the body (the real node's
    is a 25 KB HTML page) is not read, so its size and pace do not matter."""
    try:
        with _LOCAL.open(health_url(port), timeout=timeout) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        exc.close()
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        return False, _no_answer(exc)


State = Literal["ok", "refused", "unknown"]


@dataclass(frozen=True)
class Outcome:
    """What one post-start call came to.

    state: "ok" (a 2xx answer); "refused" (the node answered otherwise, 5xx
    apart, or nothing reached it: whatever the call asked was not done);
    "unknown" (the request may have reached the node but no clear answer came
    back: a timeout, a reset or closed connection, a 5xx: it may have been done).
    body: the answer's first READ_BYTES, never parsed (the real node's POST
    answer is plain text without a content type); length: its full size when
    the node said (Content-Length)."""
    state: State
    status: int | None = None
    body: bytes = b""
    length: int | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def shown(self, limit: int = SHOW_BYTES) -> str:
        """The body for the user: its first `limit` bytes as text (undecodable
        bytes and control characters replaced), then how many bytes were cut."""
        text = _CONTROL.sub("\ufffd", self.body[:limit].decode("utf-8", errors="replace"))
        total = self.length if self.length is not None and self.length >= len(self.body) \
            else len(self.body)
        cut = total - min(len(self.body), limit)
        if cut <= 0:
            return text
        more = "more than " if self.length is None and len(self.body) >= READ_BYTES else ""
        return f"{text} [... {more}{cut} more bytes not shown]"

    def describe(self) -> str:
        """In words: `HTTP 200: <body>`, or why there is no answer."""
        if self.status is None:
            return self.error
        body = self.shown().strip()
        return f"HTTP {self.status}: {body}" if body else f"HTTP {self.status} (empty body)"


def _read_bounded(resp) -> tuple[bytes, int | None]:
    """At most READ_BYTES of an answer's body, and its Content-Length if given."""
    try:
        length: int | None = int(resp.headers.get("Content-Length", ""))
    except (TypeError, ValueError):
        length = None
    try:
        body = resp.read(READ_BYTES)
    except (OSError, http.client.HTTPException):
        body = b""   # the status line and headers are the answer; the body was lost
    return body, length


def _answered(status: int, body: bytes, length: int | None) -> Outcome:
    if 200 <= status < 300:
        state: State = "ok"
    elif status >= 500:
        state = "unknown"    # the node failed while handling it: maybe after applying it
    else:
        state = "refused"
    return Outcome(state, status, body, length)


def call(port: int, path: str, *, headers: dict[str, str], timeout: float,
         data: bytes | None = None) -> Outcome:
    """One request to the node (POST with `data`, else GET); never raises for
    what the network or the node does."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 method="POST" if data is not None else "GET",
                                 headers=headers)
    try:
        with _LOCAL.open(req, timeout=timeout) as resp:
            return _answered(resp.status, *_read_bounded(resp))
    except urllib.error.HTTPError as exc:
        with exc:
            return _answered(exc.code, *_read_bounded(exc))
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            return Outcome("refused", error=f"no connection ({reason.strerror or reason}): "
                                            "nothing was sent")
        return Outcome("unknown", error=f"no answer ({_no_answer(exc)}): the request may "
                                        "have reached the node")


def send_post_start(port: int, body: dict[str, Any], timeout: float = POST_TIMEOUT) -> Outcome:
    """POST the post-start configuration (hb-os: `codec-device: json@1.0`, a
    JSON body). HyperBEAM answers 200 with plain text ("Node message updated.
    History: 1updates."); once the node message is permanent, 400."""
    return call(port, HEALTH_PATH, data=json.dumps(body).encode(), timeout=timeout,
                headers={"Content-Type": "application/json", "codec-device": "json@1.0"})


def follow_up(port: int, path: str, headers: dict[str, str],
              timeout: float = FOLLOW_UP_TIMEOUT) -> Outcome:
    """One post-start follow-up GET (router registration, green zone)."""
    return call(port, path, headers=headers, timeout=timeout)
