"""A recording stand-in for the `docker` client (there is no engine here).

`install(bin_dir, log)` writes an executable `docker` into bin_dir; put bin_dir
first on PATH. Every invocation appends its argv as one JSON line to `log`.
Behaviour is chosen by environment variables:

- DOCKER_STUB_INFO=fail     `docker info` fails like a client without engine
- DOCKER_STUB_BUILDX=missing `docker buildx version` fails (no BuildKit plugin)
- DOCKER_STUB_BUILD=fail    `docker build` prints BuildKit plain progress of a
                            failing RUN step and exits 1
- DOCKER_STUB_CP=fail       `docker cp` fails
- otherwise `docker build` remembers its --build-arg values (beside the log)
  and `docker cp NAME:/hbos/. DEST` writes a small content tree in the
  image's output layout (tree/ + refs/), whose files name the commits built.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

FAILED_BUILD_OUTPUT = """\
#0 building with "default" instance using docker driver
#1 [internal] load build definition from content.Dockerfile
#1 transferring dockerfile: 3.21kB done
#1 DONE 0.0s
#9 [cu 2/3] RUN test -n "$AO_REPO" && git init -q /build/ao
#9 0.301 npm warn deprecated inflight@1.0.6
#12 [hyperbeam 7/8] RUN cd /build/HyperBEAM  && rebar3 as "$HB_PROFILE" release
#12 0.412 ===> Verifying dependencies...
#9 DONE 3.1s
#12 3.201 ===> Compiling hb
#12 4.100 src/hb_opts.erl:42: syntax error before: '}'
#12 4.101 ===> Compilation failed
#12 ERROR: process "/bin/sh -c cd /build/HyperBEAM && rebar3 as \\"$HB_PROFILE\\" release" did not complete successfully: exit code: 1
------
 > [hyperbeam 7/8] RUN cd /build/HyperBEAM && rebar3 as "$HB_PROFILE" release:
------
ERROR: failed to solve: process "/bin/sh -c cd /build/HyperBEAM && rebar3 as \\"$HB_PROFILE\\" release" did not complete successfully: exit code: 1
"""

FAILED_LEGACY_OUTPUT = """\
DEPRECATED: The legacy builder is deprecated and will be removed in a future release.
Sending build context to Docker daemon  9.216kB
Step 1/30 : ARG OTP_VERSION=27
Step 14/30 : RUN cd /build/HyperBEAM  && rebar3 as "$HB_PROFILE" release
 ---> Running in 5d1c2b3a4f00
===> Verifying dependencies...
src/hb_opts.erl:42: syntax error before: '}'
The command '/bin/sh -c cd /build/HyperBEAM && rebar3 as "$HB_PROFILE" release' returned a non-zero code: 1
"""

SCRIPT = r'''#!{python}
import json, os, sys
from pathlib import Path
LOG = Path({log!r})
STATE = LOG.with_suffix(".build-args.json")
OUT = {failed!r}
LEGACY = {legacy!r}
argv = sys.argv[1:]
with open(LOG, "a") as fh:
    fh.write(json.dumps(["docker", *argv]) + "\n")
cmd = argv[0] if argv else ""
if cmd == "info":
    if os.environ.get("DOCKER_STUB_INFO") == "fail":
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
              "Is the docker daemon running?", file=sys.stderr)
        sys.exit(1)
    print("24.0.7")
elif cmd == "buildx":
    if os.environ.get("DOCKER_STUB_BUILDX") == "missing":
        print("docker: unknown command: docker buildx", file=sys.stderr)
        sys.exit(1)
    print("github.com/docker/buildx v0.12.1")
elif cmd == "build":
    if os.environ.get("DOCKER_STUB_BUILD") == "fail":
        sys.stderr.write(OUT if "--progress=plain" in argv else LEGACY)
        sys.exit(1)
    args = {{}}
    for i, a in enumerate(argv):
        if a == "--build-arg":
            k, _, v = argv[i + 1].partition("=")
            args[k] = v
    STATE.write_text(json.dumps(args))
    print("#15 exporting to image\n#15 DONE 0.1s")
elif cmd == "create":
    print("0123456789ab")
elif cmd == "cp":
    if os.environ.get("DOCKER_STUB_CP") == "fail":
        print("Error response from daemon: Could not find the file /hbos in container",
              file=sys.stderr)
        sys.exit(1)
    args = json.loads(STATE.read_text())
    dest = Path(argv[-1])
    tree = dest / "tree"
    hb = tree / "opt/hyperbeam/bin/hb"
    hb.parent.mkdir(parents=True)
    hb.write_text("#!/bin/sh\necho hb " + args["HB_COMMIT"] + "\n")
    hb.chmod(0o755)
    (dest / "refs").mkdir()
    (dest / "refs/hyperbeam").write_text(args["HB_COMMIT"] + "\n")
    if "AO_COMMIT" in args:
        cu = tree / "opt/cu/src"
        cu.mkdir(parents=True)
        (cu / "app.js").write_text("// cu " + args["AO_COMMIT"] + "\n")
        (tree / "opt/cu/package.json").write_text('{{"name": "@permaweb/ao-cu"}}\n')
        node = tree / "opt/node/bin/node"
        node.parent.mkdir(parents=True)
        node.write_text("#!/bin/sh\n")
        node.chmod(0o755)
        (dest / "refs/ao").write_text(args["AO_COMMIT"] + "\n")
elif cmd == "rm":
    pass
else:
    print("docker stub: unexpected command " + " ".join(argv), file=sys.stderr)
    sys.exit(2)
'''


def install(bin_dir: Path, log: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / "docker"
    stub.write_text(SCRIPT.format(python=sys.executable, log=str(log), failed=FAILED_BUILD_OUTPUT,
                                  legacy=FAILED_LEGACY_OUTPUT))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return stub


def calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def env_with(bin_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
