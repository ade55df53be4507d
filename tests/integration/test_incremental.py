"""Incremental behaviour of the graph on a test project in a temp dir.

Real kernel .deb, real doit runs over the whole local-profile graph (the
base root comes from the session cache): a second run executes nothing; a
cmdline change re-runs only vm_config and measure; a new kernel .deb re-runs
kernel and what holds its files (initramfs, verity), vm_config and measure; a
stage killed mid-write is re-run, never trusted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, doit

pytestmark = [pytest.mark.integration]


def executed(proc) -> set[str]:
    out = proc.stdout + proc.stderr
    return set(re.findall(r"^\.  (\S+)", out, re.M))


def uptodate(proc) -> set[str]:
    out = proc.stdout + proc.stderr
    return set(re.findall(r"^-- (\S+)", out, re.M))


@pytest.fixture
def project(tmp_path, kernel_deb, amdsev_ovmf, base_rootfs_cache):
    """A local-profile project in tmp_path: real kernel, cached base root, small content."""
    from tests.conftest import GuestBuild, link_base_rootfs, write_test_content
    deb = tmp_path / "kernel.deb"
    shutil.copyfile(kernel_deb, deb)
    content = write_test_content(tmp_path / "content")
    over = tmp_path / "over.yaml"

    def write(cmdline="console=ttyS0 loglevel=7"):
        over.write_text(f"build_dir: {tmp_path / 'build'}\n"
                        f"cmdline: '{cmdline}'\n"
                        f"kernel: {{source: deb, deb: {deb}}}\n"
                        f"content: {{source: dir, path: {content}}}\n"
                        f"firmware: {{ovmf: {amdsev_ovmf}}}\n")
    write()
    link_base_rootfs(base_rootfs_cache, GuestBuild(tmp_path, over).paths)
    return {"tmp": tmp_path, "deb": deb, "over": over, "write": write,
            "build": tmp_path / "build"}


def run_measure(project, **kw):
    return doit(["measure", "profile=local", f"config={project['over']}"], **kw)


def repack_with_other_kernel(src: Path, dest: Path, work: Path) -> None:
    """A different but valid kernel .deb: same package, one byte appended to vmlinuz."""
    tree = work / "tree"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-R", str(src), str(tree)], check=True)
    vmlinuz = next((tree / "boot").glob("vmlinuz-*"))
    with open(vmlinuz, "ab") as fh:
        fh.write(b"\0")
    subprocess.run(["dpkg-deb", "-Zgzip", "-z1", "--build", str(tree), str(dest)], check=True,
                   capture_output=True)


def test_incremental_rebuilds(project):
    first = run_measure(project)
    assert {"kernel", "initramfs", "content", "verity", "vm_config", "measure"} <= executed(first)
    measurement = project["build"] / "measurement.json"
    assert measurement.is_file()

    second = run_measure(project)
    assert executed(second) == set(), second.stdout
    assert {"kernel", "vm_config", "measure"} <= uptodate(second)

    project["write"](cmdline="console=ttyS0 loglevel=4")
    third = run_measure(project)
    assert executed(third) == {"vm_config", "measure"}, third.stdout

    other = project["tmp"] / "other.deb"
    repack_with_other_kernel(project["deb"], other, project["tmp"] / "repack")
    os.replace(other, project["deb"])
    fourth = run_measure(project)
    # the kernel's modules go into the initramfs and the root image too
    assert executed(fourth) == {"kernel", "initramfs", "verity", "vm_config", "measure"}, \
        fourth.stdout


def test_killed_stage_is_rerun_not_trusted(project, kernel_deb):
    run_measure(project)
    vmlinuz = project["build"] / "kernel" / "vmlinuz"
    good = vmlinuz.read_bytes()
    # A new kernel package, then a build killed while the kernel stage writes.
    repack_with_other_kernel(project["deb"], project["tmp"] / "other.deb", project["tmp"] / "rp")
    os.replace(project["tmp"] / "other.deb", project["deb"])
    proc = subprocess.Popen([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), "measure",
                             "profile=local", f"config={project['over']}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    kernel_dir = project["build"] / "kernel"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if any(p.name.startswith(".root.tmp-") for p in kernel_dir.iterdir()):
                break
            if proc.poll() is not None:
                pytest.fail("doit finished before it could be interrupted")
            time.sleep(0.01)
        else:
            pytest.fail("kernel stage never started writing")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The old target is intact (atomic rename), never half-written...
    assert vmlinuz.read_bytes() == good
    # ...and the rerun does the interrupted work instead of trusting it.
    rerun = run_measure(project)
    assert "kernel" in executed(rerun), rerun.stdout
    assert vmlinuz.read_bytes() == good + b"\0"
    assert not [p for p in kernel_dir.iterdir() if ".tmp-" in p.name]
