"""The HTTP calls to the node, against a local server that answers as the real
HyperBEAM does (release 3635c5e6, edge 2025-06-14, as observed):

- POST /~meta@1.0/info (`codec-device: json@1.0`, JSON body): 200, no
  content-type, the plain text `Node message updated. History: 1updates.`; any
  later POST: 400 `The node message of this machine is already permanent. It
  cannot be changed.`
- GET /~meta@1.0/info: 200, content-type text/html, ~70 signed headers, a
  25 KB HTML page, slow under load (3.7 s seen under TCG).

`FakeHyperBEAM` is also what tests/unit/launch/test_start.py starts a VM
against (its post-start seam).
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from typing import Any

import pytest

from hbos.launch import node_http

UPDATED = b"Node message updated. History: 1updates."
PERMANENT = b"The node message of this machine is already permanent. It cannot be changed."
INFO_PAGE = (b"<!DOCTYPE html><html><head><title>HyperBEAM</title></head><body>"
             + b"<p>" + b"x" * 25_000 + b"</p></body></html>")


class FakeHyperBEAM:
    """A local HTTP server answering as the real node does (see the module docstring).

    post: "hyperbeam" (200 then 400, as the real node), "close" (reads the
    request and closes the connection without answering), "hang" (answers
    after `hang` seconds), or an int status answered with `post_body`.
    health: the health page's status; get_delay: seconds before its status
    line; body_delay: seconds between its headers and its body. follow: path -> (status, body)
    for the follow-up GETs (others: 404)."""

    def __init__(self, *, post: str | int = "hyperbeam", post_body: bytes = b"",
                 health: int = 200, get_delay: float = 0.0, body_delay: float = 0.0,
                 hang: float = 3.0,
                 follow: dict[str, tuple[int, bytes]] | None = None) -> None:
        self.post, self.post_body, self.hang = post, post_body, hang
        self.health, self.get_delay, self.body_delay = health, get_delay, body_delay
        self.follow = follow or {}
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.gets: list[tuple[str, dict[str, str]]] = []
        self.permanent = False
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # cowboy's

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                        delay: float = 0.0) -> None:
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.flush()
                    if delay:
                        time.sleep(delay)
                    self.wfile.write(body)
                except OSError:
                    pass   # the client gave up

            def do_GET(self) -> None:
                fake.gets.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path == node_http.HEALTH_PATH:
                    time.sleep(fake.get_delay)
                    signed = {f"x-hb-signed-{i}": "a" * 40 for i in range(68)}
                    self._answer(fake.health, INFO_PAGE,
                                 {"content-type": "text/html", "signature": "sig-1=:abc:",
                                  **signed}, delay=fake.body_delay)
                    return
                status, body = fake.follow.get(self.path, (404, b"not found"))
                self._answer(status, body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                fake.posts.append(({k.lower(): v for k, v in self.headers.items()},
                                   self.rfile.read(length)))
                if fake.post == "hyperbeam":
                    if fake.permanent:
                        self._answer(400, PERMANENT)
                    else:
                        fake.permanent = True
                        self._answer(200, UPDATED)   # no content-type, as the real node
                elif fake.post == "close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fake.post == "hang":
                    time.sleep(fake.hang)
                    self._answer(200, UPDATED)
                else:
                    self._answer(int(fake.post), fake.post_body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> FakeHyperBEAM:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BODY = {"operator": "trustless", "initialized": "permanent", "snp_trusted": [{"vcpus": 1}]}


# ----------------------------------------------------------------- the POST


def test_post_start_plain_text_200_is_accepted_and_shown():
    with FakeHyperBEAM() as node:
        got = node_http.send_post_start(node.port, BODY)
    assert got.ok and got.state == "ok" and got.status == 200
    assert got.body == UPDATED
    assert got.describe() == "HTTP 200: Node message updated. History: 1updates."
    headers, sent = node.posts[0]
    assert headers["codec-device"] == "json@1.0" and json.loads(sent) == BODY


def test_second_post_is_a_refusal_with_the_nodes_words():
    with FakeHyperBEAM() as node:
        assert node_http.send_post_start(node.port, BODY).ok
        got = node_http.send_post_start(node.port, BODY)
    assert got.state == "refused" and got.status == 400
    assert got.describe() == f"HTTP 400: {PERMANENT.decode()}"


@pytest.mark.parametrize("status", [201, 202, 204])
def test_any_2xx_is_success(status):
    with FakeHyperBEAM(post=status, post_body=b"" if status == 204 else b"ok") as node:
        got = node_http.send_post_start(node.port, BODY)
    assert got.ok and got.status == status


def test_5xx_leaves_the_post_in_doubt():
    with FakeHyperBEAM(post=500, post_body=b"badmatch") as node:
        got = node_http.send_post_start(node.port, BODY)
    assert got.state == "unknown" and got.describe() == "HTTP 500: badmatch"


def test_3xx_is_not_followed():
    """A redirected POST would come back as a GET of the new place: not success."""
    with FakeHyperBEAM(post=302) as node:
        got = node_http.send_post_start(node.port, BODY)
    assert got.state == "refused" and got.status == 302
    assert [p for p, _ in node.gets] == []


def test_post_timeout_and_closed_connection_are_in_doubt():
    with FakeHyperBEAM(post="hang", hang=2.0) as node:
        got = node_http.send_post_start(node.port, BODY, timeout=0.3)
    assert got.state == "unknown" and got.status is None
    assert "no answer" in got.describe() and "may have reached the node" in got.describe()
    with FakeHyperBEAM(post="close") as node:
        got = node_http.send_post_start(node.port, BODY)
    assert got.state == "unknown" and "may have reached the node" in got.describe()


def test_nothing_listening_is_a_refusal_nothing_sent():
    got = node_http.send_post_start(unused_port(), BODY)
    assert got.state == "refused" and got.status is None
    assert "nothing was sent" in got.describe()


def test_large_body_is_read_bounded_and_shown_bounded():
    big = ("é" * 50_000).encode() + b"\x1b[31m"   # 100 KB of two-byte characters
    with FakeHyperBEAM(post=400, post_body=big) as node:
        got = node_http.send_post_start(node.port, BODY)
    assert len(got.body) == node_http.READ_BYTES and got.length == len(big)
    shown = got.shown()
    assert shown.startswith("é" * 1000)
    assert shown.endswith(f" [... {len(big) - node_http.SHOW_BYTES} more bytes not shown]")
    assert len(shown) < node_http.SHOW_BYTES + 60


def test_shown_replaces_bad_bytes_and_control_characters():
    out = node_http.Outcome("ok", 200, b"ok\xff\x1b[2J\x07 done\n", None)
    assert out.shown() == "ok\ufffd\ufffd[2J\ufffd done\n"
    # no Content-Length and more than READ_BYTES read: the cut is a lower bound
    out = node_http.Outcome("ok", 200, b"a" * node_http.READ_BYTES, None)
    assert out.shown().endswith(f"[... more than {node_http.READ_BYTES - node_http.SHOW_BYTES} "
                                "more bytes not shown]")


# ----------------------------------------------------------------- follow-ups


def test_follow_up_2xx_ok_other_failure():
    follow = {"/~router@1.0/register": (200, b"registered"),
              "/~greenzone@1.0/init": (500, b"no green zone")}
    with FakeHyperBEAM(follow=follow) as node:
        ok = node_http.follow_up(node.port, "/~router@1.0/register", {"peer-id": "p"})
        bad = node_http.follow_up(node.port, "/~greenzone@1.0/init", {})
        missing = node_http.follow_up(node.port, "/~greenzone@1.0/join", {})
    assert ok.ok and ok.describe() == "HTTP 200: registered"
    assert node.gets[0][0] == "/~router@1.0/register" and node.gets[0][1]["peer-id"] == "p"
    assert not bad.ok and bad.describe() == "HTTP 500: no green zone"
    assert not missing.ok and missing.describe() == "HTTP 404: not found"


# ----------------------------------------------------------------- health


def test_health_is_a_200_html_page_with_many_headers():
    with FakeHyperBEAM() as node:
        assert node_http.probe_health(node.port) == (True, "HTTP 200")


def test_health_timeout_fits_the_real_node():
    """One GET took 3.7 s under TCG: a probe waits longer than that."""
    assert node_http.HEALTH_PROBE_TIMEOUT >= 10
    assert node_http.probe_health.__defaults__ == (node_http.HEALTH_PROBE_TIMEOUT,)


def test_slow_status_line_is_healthy_within_the_probe_timeout():
    with FakeHyperBEAM(get_delay=1.0) as node:
        assert node_http.probe_health(node.port, timeout=3.0) == (True, "HTTP 200")
        assert node_http.probe_health(node.port, timeout=0.3) == (False, "no answer")


def test_health_does_not_wait_for_the_body():
    with FakeHyperBEAM(body_delay=3.0) as node:
        began = time.monotonic()
        assert node_http.probe_health(node.port, timeout=1.0) == (True, "HTTP 200")
    assert time.monotonic() - began < 2.0


def test_health_not_200_or_nothing_listening():
    with FakeHyperBEAM(health=503) as node:
        assert node_http.probe_health(node.port) == (False, "HTTP 503")
    ok, why = node_http.probe_health(unused_port())
    assert not ok and "refused" in why.lower()
