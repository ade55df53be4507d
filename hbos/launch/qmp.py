"""A minimal QMP client: one command per connection (QEMU docs/interop/qmp-spec).

The launcher (hbos.launch.start) uses it to wait for QEMU's main loop, to ask for its
run state, and to stop the VM (system_powerdown, quit).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from hbos.errors import LaunchError


def command(sock_path: Path, name: str, arguments: dict[str, Any] | None = None,
            timeout: float = 5.0) -> Any:
    """Greeting, capabilities negotiation, then `name`; returns its "return" value."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        reader = s.makefile("rb")

        def response() -> dict[str, Any]:
            while True:
                line = reader.readline()
                if not line:
                    raise LaunchError(f"QMP {sock_path}: connection closed")
                msg = json.loads(line)
                if "return" in msg or "error" in msg:
                    return msg

        greeting = json.loads(reader.readline() or b"{}")
        if "QMP" not in greeting:
            raise LaunchError(f"QMP {sock_path}: unexpected greeting {greeting!r}")
        s.sendall(b'{"execute": "qmp_capabilities"}\n')
        response()
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        s.sendall(json.dumps(msg).encode() + b"\n")
        reply = response()
        if "error" in reply:
            raise LaunchError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
        return reply["return"]
