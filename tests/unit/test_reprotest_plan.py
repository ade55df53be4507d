"""tests/support/reprotest.py: the exact command line and environment of build B, run for
real on a tiny command, and the reproducibility tests are collected (the firmware
one runs only under CI=true or HBOS_REPRO_FIRMWARE=1: a second edk2 build)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, missing_prerequisite
from tests.support import reprotest


def test_prefix_is_exact(tmp_path):
    v = reprotest.variation(tmp_path)
    assert v.prefix() == [
        "unshare", "--uts", "sh", "-c",
        'hostname "$1" && domainname "$2" && umask "$3" && shift 3 && exec "$@"',
        "sh", "hbos-reprotest-b", "reprotest.invalid", "0077",
        "setarch", "x86_64", "--uname-2.6", "-R",
        "taskset", "-c", "0",
        "faketime", "-m", "-f", "+398d"]


def test_environment_changes_what_reprotest_varies(tmp_path):
    v = reprotest.variation(tmp_path)
    env = v.environ({"PATH": "/usr/bin:/bin", "HOME": "/root", "KEEP": "1"})
    assert env["KEEP"] == "1"
    assert env["PATH"] == f"{tmp_path / 'extra-bin'}:/usr/bin:/bin"
    assert env["HOME"] == str(tmp_path / "home-b") and (tmp_path / "home-b").is_dir()
    assert (env["TZ"], env["LANG"], env["LC_ALL"], env["USER"], env["LOGNAME"]) == (
        "GMT-14", "fr_CH.UTF-8", "fr_CH.UTF-8", "hbos-reprotest", "hbos-reprotest")
    assert env["CAPTURE_ENVIRONMENT"] and env["NO_FAKE_STAT"] == "1"


def test_build_overlay_gives_each_build_its_own_dir(tmp_path):
    overlay = reprotest.build_overlay(tmp_path / "b", kernel_deb=Path("/k.deb"),
                                      ovmf=Path("/o.fd"), content=Path("/c"), extra="debug: false\n")
    assert overlay == tmp_path / "b" / "overlay.yaml"
    assert overlay.read_text() == (f"build_dir: {tmp_path / 'b' / 'build'}\n"
                                   "cache_dir: ''\n"
                                   "kernel: {source: deb, deb: /k.deb}\n"
                                   "firmware: {ovmf: /o.fd}\n"
                                   "content: {source: dir, path: /c}\n"
                                   "debug: false\n")
    assert reprotest.build_overlay(tmp_path / "fw").read_text() == \
        f"build_dir: {tmp_path / 'fw' / 'build'}\ncache_dir: ''\n"


def test_the_prefix_really_varies_what_it_says(tmp_path):
    if reprotest.missing_tools():
        missing_prerequisite(f"reprotest variations need {reprotest.missing_tools()}")
    if not reprotest.can_unshare_uts():
        missing_prerequisite("`unshare --uts` is not permitted (needs root)")
    v = reprotest.variation(tmp_path)
    script = ('hostname; domainname; umask; uname -r; nproc; echo "$TZ $HOME"; '
              'python3 -c "import time; print(int(time.time()))"')
    out = subprocess.run(v.prefix() + ["sh", "-c", script], env=v.environ(dict(os.environ)),
                         capture_output=True, text=True, check=True).stdout.split("\n")
    host, domain, umask, release, cpus, tz_home, now = out[:7]
    assert (host, domain, umask, cpus) == ("hbos-reprotest-b", "reprotest.invalid", "0077", "1")
    assert release.startswith("2.6.")
    assert tz_home == f"GMT-14 {tmp_path / 'home-b'}"
    import time
    assert int(now) - time.time() > 397 * 86400          # libfaketime: 398 days later


def test_reproducibility_tests_are_collected():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "tests/integration/test_reprotest.py",
                           "tests/integration/test_firmware.py"],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HBOS_REPRO_FIRMWARE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for test in ("tests/integration/test_reprotest.py::test_guest_is_bit_identical_under_variations",
                 "tests/integration/test_firmware.py::test_firmware_is_reproducible_under_variations"):
        assert test in proc.stdout


def test_disorderfs_argv_is_exact():
    assert reprotest.disorderfs_argv(Path("/b"), Path("/m")) == [
        "disorderfs", "--shuffle-dirents=yes", "--multi-user=yes", "--quiet", "/b", "/m"]
