"""hbos/util/chroot.py: the command lines (run_in_argv, mmdebstrap_argv) and when a
build root is reused. The shell script run_in_argv builds runs for real with
`mount` and `chroot` stand-ins on PATH (no namespaces, no root needed): what
they receive is what the real ones would."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hbos.util import chroot

# argv as one line per argument, then exec the rest (chroot ROOT CMD...: run CMD here)
RECORD = """#!/bin/sh
for a in "$@"; do printf '%s\\n' "$a"; done > "$STUB_LOG/{name}"
{tail}
"""


def stubs(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    for name, tail in (("mount", "exit 0"), ("chroot", 'shift; exec "$@"')):
        (bin_dir / name).write_text(RECORD.format(name=name, tail=tail))
        os.chmod(bin_dir / name, 0o755)
    return bin_dir


def run_script(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """The part after `unshare ... --`: `sh -c SCRIPT`, with the stand-ins first on PATH."""
    assert argv[:3] == ["unshare", "--mount", "--fork"]
    inner = argv[argv.index("sh"):]
    assert inner[:2] == ["sh", "-c"] and len(inner) == 3
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    env = {"PATH": f"{stubs(tmp_path)}:/usr/bin:/bin", "STUB_LOG": str(logs),
           "LEAK": "from the host"}
    return subprocess.run(inner, env=env, cwd=tmp_path, capture_output=True, text=True,
                          check=False)


def logged(tmp_path: Path, name: str) -> list[str]:
    return (tmp_path / "logs" / name).read_text().splitlines()


def test_no_network_unless_asked():
    root = Path("/r")
    assert chroot.run_in_argv(root, ["true"])[:4] == ["unshare", "--mount", "--fork", "--net"]
    assert "--net" not in chroot.run_in_argv(root, ["true"], network=True)
    assert chroot.run_in_argv(root, ["true"], network=True)[:4] == [
        "unshare", "--mount", "--fork", "sh"]


def test_runs_env_i_with_exactly_the_given_env_inside_the_root(tmp_path):
    root = tmp_path / "a root"          # spaces: every path goes through the shell twice
    env = {"HOME": "/build/home", "SOURCE_DATE_EPOCH": "1704067200",
           "MSG": "a b 'c' \"d\" $HOME `x`"}
    argv = chroot.run_in_argv(root, ["/usr/bin/env"], env=env)
    proc = run_script(tmp_path, argv)
    assert proc.returncode == 0, proc.stderr
    # nothing of the host's environment (LEAK, PATH, STUB_LOG), the values verbatim
    assert sorted(proc.stdout.splitlines()) == sorted(f"{k}={v}" for k, v in env.items())
    # /proc and /dev mounted inside the root, for this command only
    assert logged(tmp_path, "mount") == ["--rbind", "/dev", str(root / "dev")]
    # (the stand-in logs its last call; the first was `mount -t proc proc ROOT/proc`)
    assert f"mount -t proc proc '{root / 'proc'}'" in argv[-1]
    chrooted = logged(tmp_path, "chroot")
    assert chrooted[:3] == [str(root), "/bin/sh", "-c"]
    assert chrooted[3].startswith("cd / && exec env -i ")


def test_the_command_runs_in_the_given_directory(tmp_path):
    cwd = tmp_path / "work dir; touch pwned"
    cwd.mkdir()
    proc = run_script(tmp_path, chroot.run_in_argv(tmp_path / "r", ["/bin/pwd"], cwd=str(cwd)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{cwd}\n"
    assert not (tmp_path / "pwned").exists()   # the shell ran no part of the path


def test_the_argv_reaches_the_command_unchanged(tmp_path):
    out = tmp_path / "args"
    tricky = ["a b", "'q'", '"dq"', "$HOME", "`id`", "x;y", "", "*"]
    argv = chroot.run_in_argv(tmp_path / "r", ["/bin/sh", "-c", 'printf "%s\\n" "$@" > ' +
                                               f"'{out}'", "sh", *tricky])
    proc = run_script(tmp_path, argv)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().split("\n")[:-1] == tricky
    assert not (tmp_path / "r").exists()   # the stand-in chroot changed no root


def test_mmdebstrap_argv():
    argv = chroot.mmdebstrap_argv("trixie", "http://deb.example/debian",
                                  ["rebar3", "cmake", "erlang-nox"], Path("/b/root tmp"))
    assert argv[0] == "mmdebstrap"
    assert "--variant=apt" in argv and "--mode=root" in argv
    assert "--include=cmake,erlang-nox,rebar3" in argv
    assert argv[-3:] == ["trixie", "/b/root tmp", "http://deb.example/debian"]
    assert all(a.startswith("--") for a in argv[1:-3])


WANT = chroot.wanted("trixie", "http://deb.example/debian", ["rebar3", "cmake"])


def make_root(tmp_path: Path, record: object, usr_bin: bool = True) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    if usr_bin:
        (root / "usr" / "bin").mkdir(parents=True)
    if record is not None:
        chroot.record_path(root).write_text(record if isinstance(record, str)
                                            else json.dumps(record))
    return root


def test_a_root_matching_its_record_is_reused(tmp_path):
    root = make_root(tmp_path, {**WANT, "installed": {"rebar3": "3.24"}})
    assert chroot.record_path(root) == tmp_path / "root.json"
    assert chroot.reusable(root, WANT)
    # the package order does not matter
    assert chroot.reusable(root, chroot.wanted("trixie", "http://deb.example/debian",
                                               ["cmake", "rebar3"]))


@pytest.mark.parametrize("change", [
    {"suite": "bookworm"}, {"mirror": "http://other.example/debian"},
    {"packages": ["cmake"]}, {"packages": ["cmake", "rebar3", "git"]}])
def test_a_root_with_another_record_is_not_reused(tmp_path, change):
    root = make_root(tmp_path, {**WANT, **change})
    assert not chroot.reusable(root, WANT)


@pytest.mark.parametrize("record, usr_bin", [
    (None, True), ("{not json", True), ("[1, 2]", True), (WANT, False)])
def test_a_root_without_a_record_or_usr_bin_is_not_reused(tmp_path, record, usr_bin):
    assert not chroot.reusable(make_root(tmp_path, record, usr_bin), WANT)
