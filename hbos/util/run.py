"""The one place that runs or starts commands.

`run()` prints `+ argv` (shell-quoted), captures combined output, appends it to
a log file when one is given, and turns a failure into CommandFailed carrying
the tail of the output. A missing program becomes ToolMissing naming its Debian
package. `spawn()` starts a long-running process (QEMU) the same way, without
waiting: it prints and logs the command, and returns the Popen.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from hbos.errors import CommandFailed, ToolMissing
from hbos.util import tools

TAIL_LINES = 25


def quote(argv: Sequence[str | os.PathLike]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(argv: Sequence[str | os.PathLike], *, cwd: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None, input: bytes | None = None,
        log: Path | None = None, quiet: bool = False,
        check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run argv; return the CompletedProcess (stdout and stderr as bytes).

    env entries are added to the current environment. With log, the command
    and its output are appended there instead of being echoed.
    """
    args = [str(a) for a in argv]
    line = f"+ {quote(args)}"
    if not quiet:
        print(line, file=sys.stderr, flush=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(args, cwd=cwd, env=full_env, input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
    except FileNotFoundError as exc:
        if cwd is not None and not Path(cwd).is_dir():
            raise CommandFailed(f"working directory {cwd} does not exist") from exc
        raise ToolMissing(f"required program '{args[0]}' is not installed",
                          hint=f"install it with: apt-get install "
                               f"{tools.package_for(Path(args[0]).name)}") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"'{args[0]}' timed out after {timeout} s",
                            output=(exc.output or b"").decode(errors="replace")) from exc
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{line}\n{output}")
    if check and proc.returncode != 0:
        where = f" (full output in {log})" if log is not None else ""
        raise CommandFailed(
            f"'{Path(args[0]).name}' failed with exit status {proc.returncode}{where}:\n"
            f"{tail(output)}", output=output, returncode=proc.returncode)
    return proc


def output(argv: Sequence[str | os.PathLike], **kwargs) -> str:
    """run() quietly and return stdout as text."""
    kwargs.setdefault("quiet", True)
    return run(argv, **kwargs).stdout.decode(errors="replace")


def spawn(argv: Sequence[str | os.PathLike], *, log: Path | None = None, quiet: bool = False,
          detach: bool = False) -> subprocess.Popen:
    """Start argv and return at once; stdin is /dev/null.

    With log, the command line and then the process's stdout and stderr are
    appended there; without, its combined output is a pipe (proc.stdout).
    detach: its own session, so it outlives this process and ignores the
    terminal's Ctrl-C (QEMU, which doit must not take down with it).
    """
    args = [str(a) for a in argv]
    line = f"+ {quote(args)}"
    if not quiet:
        print(line, file=sys.stderr, flush=True)
    try:
        if log is None:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=detach,
                                    close_fds=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            fh.write(f"{line}\n".encode())
            fh.flush()
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=detach,
                                    close_fds=True)
    except FileNotFoundError as exc:
        raise ToolMissing(f"required program '{args[0]}' is not installed",
                          hint=f"install it with: apt-get install "
                               f"{tools.package_for(Path(args[0]).name)}") from exc
