#!/usr/bin/python3
"""A tiny stand-in for a HyperBEAM node, for machines without Docker or network.

It runs in the guest under Debian's python3-minimal, whose standard library
has no http.server, socketserver or json: so this file speaks HTTP/1.1 over a
plain socket and carries its own small JSON encoder and decoder. Only modules
shipped by libpython3.11-minimal are imported (a unit test checks that).

Endpoints (the paths HyperBEAM's meta device answers, so the launcher's health
check and post-start configuration work unchanged):

  GET  /~meta@1.0/info        200, JSON: {"name", "build", "address", "port",
                              "started", "config": {...accepted configuration}}
  GET  /~meta@1.0/info/KEY    200, the value of KEY (text for strings, else
                              JSON), looking in the node fields, then config;
                              404 if absent. (KEY=address is what the original
                              tool's post-start asked for.)
  POST /~meta@1.0/info        the post-start node configuration: a JSON object
                              body (header `codec-device: json@1.0` optional,
                              any other codec is 415). Its keys are merged into
                              the in-memory configuration (later posts win per
                              key); 200 {"ok": true, "config": {...}}.
                              Non-JSON or non-object body: 400.

Nothing is written to disk; the configuration lives only in memory. One
request per connection (Connection: close); bodies need Content-Length (up to
1 MiB; `Expect: 100-continue` is honoured, chunked bodies get 411).

    sample_node.py --host 0.0.0.0 --port 10000 --build hbos-sample-<hash>
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import sys
import threading
import time

NAME = "hbos-sample-node"
INFO = "/~meta@1.0/info"
MAX_BODY = 1 << 20

# ----------------------------------------------------------------- JSON (RFC 8259)

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
            "\r": "\\r", "\t": "\\t"}


def _dump_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def dumps(value) -> str:
    """Compact JSON text of dict/list/str/int/float/bool/None (keys sorted)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("NaN and infinity are not JSON")
        return repr(value)
    if isinstance(value, str):
        return _dump_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(_dump_str(str(k)) + ":" + dumps(value[k])
                              for k in sorted(value, key=str)) + "}"
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class JSONError(ValueError):
    pass


class _Parser:
    WS = " \t\n\r"

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def fail(self, what: str):
        raise JSONError(f"{what} at offset {self.i}")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in self.WS:
            self.i += 1

    def value(self, depth: int = 0):
        if depth > 100:
            self.fail("nesting too deep")
        self.ws()
        if self.i >= len(self.s):
            self.fail("unexpected end")
        ch = self.s[self.i]
        if ch == "{":
            return self.obj(depth)
        if ch == "[":
            return self.arr(depth)
        if ch == '"':
            return self.string()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return val
        return self.number()

    def obj(self, depth: int) -> dict:
        self.i += 1
        out: dict = {}
        self.ws()
        if self.s.startswith("}", self.i):
            self.i += 1
            return out
        while True:
            self.ws()
            if not self.s.startswith('"', self.i):
                self.fail("expected a string key")
            key = self.string()
            self.ws()
            if not self.s.startswith(":", self.i):
                self.fail("expected ':'")
            self.i += 1
            out[key] = self.value(depth + 1)
            self.ws()
            if self.s.startswith(",", self.i):
                self.i += 1
            elif self.s.startswith("}", self.i):
                self.i += 1
                return out
            else:
                self.fail("expected ',' or '}'")

    def arr(self, depth: int) -> list:
        self.i += 1
        out: list = []
        self.ws()
        if self.s.startswith("]", self.i):
            self.i += 1
            return out
        while True:
            out.append(self.value(depth + 1))
            self.ws()
            if self.s.startswith(",", self.i):
                self.i += 1
            elif self.s.startswith("]", self.i):
                self.i += 1
                return out
            else:
                self.fail("expected ',' or ']'")

    def string(self) -> str:
        self.i += 1
        out = []
        while True:
            if self.i >= len(self.s):
                self.fail("unterminated string")
            ch = self.s[self.i]
            if ch == '"':
                self.i += 1
                return "".join(out)
            if ch == "\\":
                esc = self.s[self.i + 1:self.i + 2]
                simple = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f",
                          "n": "\n", "r": "\r", "t": "\t"}
                if esc in simple:
                    out.append(simple[esc])
                    self.i += 2
                elif esc == "u":
                    code = self._hex4(self.i + 2)
                    self.i += 6
                    if 0xD800 <= code < 0xDC00 and self.s.startswith("\\u", self.i):
                        low = self._hex4(self.i + 2)
                        if 0xDC00 <= low < 0xE000:
                            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                            self.i += 6
                    out.append(chr(code))
                else:
                    self.fail("bad escape")
            elif ord(ch) < 0x20:
                self.fail("control character in string")
            else:
                out.append(ch)
                self.i += 1

    def _hex4(self, at: int) -> int:
        digits = self.s[at:at + 4]
        if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            self.fail("bad \\u escape")
        return int(digits, 16)

    def number(self):
        start = self.i
        s = self.s
        if s.startswith("-", self.i):
            self.i += 1
        if s.startswith("0", self.i):
            self.i += 1
        elif self.i < len(s) and s[self.i] in "123456789":
            while self.i < len(s) and s[self.i].isdigit():
                self.i += 1
        else:
            self.fail("unexpected character")
        is_float = False
        if s.startswith(".", self.i):
            is_float = True
            self.i += 1
            if not (self.i < len(s) and s[self.i].isdigit()):
                self.fail("digit expected")
            while self.i < len(s) and s[self.i].isdigit():
                self.i += 1
        if self.i < len(s) and s[self.i] in "eE":
            is_float = True
            self.i += 1
            if self.i < len(s) and s[self.i] in "+-":
                self.i += 1
            if not (self.i < len(s) and s[self.i].isdigit()):
                self.fail("digit expected")
            while self.i < len(s) and s[self.i].isdigit():
                self.i += 1
        text = s[start:self.i]
        return float(text) if is_float else int(text)


def loads(text: str):
    """Parse JSON text (strict: one value, nothing after it)."""
    p = _Parser(text)
    value = p.value()
    p.ws()
    if p.i != len(text):
        p.fail("extra data")
    return value


# ----------------------------------------------------------------- node


class Node:
    """The node's state: fixed identity plus the configuration posted to it."""

    def __init__(self, build: str, port: int) -> None:
        self.build = build
        self.port = port
        self.started = int(time.time())
        # A fresh random id per start, like a wallet address; never stored.
        self.address = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        self.config: dict = {}
        self.lock = threading.Lock()

    def info(self) -> dict:
        with self.lock:
            return {"name": NAME, "build": self.build, "address": self.address,
                    "port": self.port, "started": self.started, "config": dict(self.config)}

    def configure(self, update: dict) -> dict:
        with self.lock:
            self.config.update(update)
            return dict(self.config)


def route(node: Node, method: str, path: str, headers: dict, body: bytes):
    """(status, content_type, body_text) for one request."""
    path = path.split("?", 1)[0]
    if path == INFO and method in ("GET", "HEAD"):
        return 200, "application/json", dumps(node.info())
    if path.startswith(INFO + "/") and method in ("GET", "HEAD"):
        key = path[len(INFO) + 1:]
        info = node.info()
        if key in info and key != "config":
            value = info[key]
        elif key in info["config"]:
            value = info["config"][key]
        else:
            return 404, "application/json", dumps({"error": f"no such key: {key}"})
        if isinstance(value, str):
            return 200, "text/plain; charset=utf-8", value
        return 200, "application/json", dumps(value)
    if path == INFO and method == "POST":
        codec = headers.get("codec-device", "json@1.0")
        if codec != "json@1.0":
            return 415, "application/json", dumps({"error": f"unsupported codec {codec}; "
                                                   f"send json@1.0"})
        try:
            update = loads(body.decode("utf-8"))
        except (UnicodeDecodeError, JSONError) as exc:
            return 400, "application/json", dumps({"error": f"body is not JSON: {exc}"})
        if not isinstance(update, dict):
            return 400, "application/json", dumps({"error": "body must be a JSON object"})
        return 200, "application/json", dumps({"ok": True, "config": node.configure(update)})
    if path == INFO or path.startswith(INFO + "/"):
        return 405, "application/json", dumps({"error": f"method {method} not allowed"})
    return 404, "application/json", dumps({"error": f"not found: {path}"})


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
           415: "Unsupported Media Type"}


class LengthRequired(ValueError):
    pass


def _read_request(conn: socket.socket):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > 65536:
            raise ValueError("headers too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    method, path, _version = parts
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise LengthRequired("chunked request bodies are not supported; send Content-Length")
    length = int(headers.get("content-length", "0") or 0)
    if length < 0 or length > MAX_BODY:
        raise OverflowError("body too large")
    body = rest
    if len(body) < length and headers.get("expect", "").lower() == "100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    while len(body) < length:
        chunk = conn.recv(min(65536, length - len(body)))
        if not chunk:
            break
        body += chunk
    return method, path, headers, body[:length]


def _respond(conn: socket.socket, status: int, ctype: str, text: str, head: bool) -> None:
    payload = text.encode("utf-8")
    header = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
              f"Content-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n"
              f"Server: {NAME}\r\nConnection: close\r\n\r\n")
    conn.sendall(header.encode("latin-1") + (b"" if head else payload))


def handle(node: Node, conn: socket.socket, peer) -> None:
    with conn:
        conn.settimeout(30)
        try:
            req = _read_request(conn)
            if req is None:
                return
            method, path, headers, body = req
            status, ctype, text = route(node, method, path, headers, body)
            _respond(conn, status, ctype, text, method == "HEAD")
            print(f"{peer[0]} {method} {path} {status}", flush=True)
        except OverflowError:
            _respond(conn, 413, "application/json", dumps({"error": "body too large"}), False)
        except LengthRequired as exc:
            _respond(conn, 411, "application/json", dumps({"error": str(exc)}), False)
        except (ValueError, UnicodeDecodeError):
            _respond(conn, 400, "application/json", dumps({"error": "bad request"}), False)
        except socket.timeout:
            try:
                _respond(conn, 408, "application/json", dumps({"error": "timeout"}), False)
            except OSError:
                pass
        except OSError:
            pass


def serve(host: str, port: int, build: str) -> None:
    node = Node(build, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{NAME} {build} listening on {host}:{port}", flush=True)
    try:
        while True:
            conn, peer = sock.accept()
            threading.Thread(target=handle, args=(node, conn, peer), daemon=True).start()
    finally:
        sock.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="HyperBEAM OS sample node")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=10000)
    ap.add_argument("--build", default="unknown", help="build name reported by the info endpoint")
    args = ap.parse_args(argv)
    try:
        serve(args.host, args.port, args.build)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
