"""Docker command lines for the content build, and reading their failures.

Each docker invocation is built by a small pure function (tested exactly);
`build_and_export()` runs them: `docker build` (never editing the Dockerfile:
everything variable is a --build-arg), then `docker create` + `docker cp` +
`docker rm` to take the output without ever starting a container. The
container is removed even when the copy fails.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

from hbos.errors import BuildError, CommandFailed, ToolMissing
from hbos.util import run

# Where the image keeps its output (see resources/content.Dockerfile).
IMAGE_OUT = "/hbos"

NO_ENGINE_ALTERNATIVES = ("set content.source to 'dir' (content.path: a prebuilt tree), "
                          "'tarball' (content.path: a .tar[.gz]) or 'sample' "
                          "(the built-in sample node; profile=local)")


def info_argv() -> list[str]:
    return ["docker", "info", "--format", "{{.ServerVersion}}"]


def buildx_argv() -> list[str]:
    return ["docker", "buildx", "version"]


def build_argv(dockerfile: Path, context: Path, tag: str, target: str,
               build_args: Mapping[str, str], buildkit: bool = True) -> list[str]:
    argv = ["docker", "build", "--file", str(dockerfile), "--tag", tag, "--target", target]
    if buildkit:
        argv.append("--progress=plain")  # step-prefixed output: failing_step() reads it
    else:
        argv.append("--force-rm")  # the legacy builder keeps a failed step's container
    for key in sorted(build_args):
        argv += ["--build-arg", f"{key}={build_args[key]}"]
    return argv + [str(context)]


def create_argv(tag: str, name: str) -> list[str]:
    # The image may be FROM scratch: a command is needed to create (never start) it.
    return ["docker", "create", "--name", name, tag, "/hbos-content"]


def cp_argv(name: str, dest: Path) -> list[str]:
    return ["docker", "cp", f"{name}:{IMAGE_OUT}/.", str(dest)]


def rm_argv(name: str) -> list[str]:
    return ["docker", "rm", "--force", name]


def container_name() -> str:
    return f"hbos-content-{os.getpid()}"


def has_buildkit(log: Path | None = None) -> bool:
    """Whether the client has buildx (BuildKit). Docker >= 23 without it refuses
    DOCKER_BUILDKIT=1, so the legacy builder is used instead."""
    try:
        proc = run.run(buildx_argv(), log=log, quiet=True, check=False, timeout=60)
    except (ToolMissing, CommandFailed):
        return False
    return proc.returncode == 0


def require_engine(log: Path | None = None) -> str:
    """The engine's version, or BuildError in one line naming the alternatives."""
    try:
        proc = run.run(info_argv(), log=log, quiet=True, check=False, timeout=60)
    except ToolMissing:
        raise BuildError(f"content.source is 'docker' but the docker client is not "
                         f"installed; {NO_ENGINE_ALTERNATIVES}") from None
    except CommandFailed:
        proc = None
    if proc is None or proc.returncode != 0:
        raise BuildError(f"content.source is 'docker' but no Docker engine is reachable "
                         f"(docker info failed); {NO_ENGINE_ALTERNATIVES}")
    return proc.stdout.decode(errors="replace").strip()


# BuildKit plain progress: every line of a step starts with "#<n> ".
_STEP = re.compile(r"^#(\d+) ")
# Legacy builder: "Step 7/20 : RUN ...", its output, then the failure.
_LEGACY_STEP = re.compile(r"^Step \d+/\d+ : ")


def failing_step(output: str, lines: int = 30) -> str:
    """The failing step's title and the tail of its own output.

    With --progress=plain a failed step ends with "#N ERROR: ..." and its
    output lines all start with "#N ". Falls back to the last lines of the
    whole output (legacy builder, or an error before any step ran).
    """
    text = output.splitlines()
    failed = None
    for line in text:
        m = _STEP.match(line)
        if m and line[m.end():].startswith("ERROR"):
            failed = m.group(1)
    if failed is None:
        starts = [i for i, line in enumerate(text) if _LEGACY_STEP.match(line)]
        if starts:
            title, body = text[starts[-1]], text[starts[-1] + 1:]
            return "\n".join([f"step {title[len('Step '):]}", *body[-lines:]])
        return run.tail(output, lines)
    mine = [ln for ln in text if ln.startswith(f"#{failed} ")]
    title = mine[0][len(f"#{failed} "):] if mine else f"step #{failed}"
    body = [ln[len(f"#{failed} "):] for ln in mine[1:]]
    summary = [ln for ln in text if ln.startswith("ERROR: ") or ln.startswith("error: ")]
    return "\n".join([f"step {title}", *body[-lines:], *summary[-3:]])


def build(dockerfile: Path, context: Path, tag: str, target: str,
          build_args: Mapping[str, str], log: Path | None = None,
          buildkit: bool = True) -> None:
    env = {"DOCKER_BUILDKIT": "1" if buildkit else "0"}
    try:
        run.run(build_argv(dockerfile, context, tag, target, build_args, buildkit),
                env=env, log=log)
    except CommandFailed as exc:
        where = f" (full output in {log})" if log else ""
        raise BuildError(f"docker build failed{where}:\n{failing_step(exc.output)}") from None


def export(tag: str, dest: Path, log: Path | None = None) -> None:
    """Copy the image's /hbos into dest: create (never start), cp, always rm."""
    name = container_name()
    try:
        run.run(create_argv(tag, name), log=log)
        run.run(cp_argv(name, dest), log=log)
    except CommandFailed as exc:
        raise BuildError(f"taking {IMAGE_OUT} out of the image {tag} failed "
                         f"({exc.message}):\n{run.tail(exc.output, 5)}",
                         hint=f"the Dockerfile's target must hold {IMAGE_OUT}/tree "
                              f"and {IMAGE_OUT}/refs") from None
    finally:
        try:
            run.run(rm_argv(name), log=log, check=False)
        except (CommandFailed, ToolMissing):
            pass


def build_and_export(dockerfile: Path, context: Path, tag: str, target: str,
                     build_args: Mapping[str, str], dest: Path,
                     log: Path | None = None) -> None:
    build(dockerfile, context, tag, target, build_args, log=log, buildkit=has_buildkit(log))
    export(tag, dest, log=log)
