"""Boot the built guest for real under QEMU TCG (the default trixie kernel).

The guest boots through our initramfs into the dm-verity root, and the test
service in it answers over QEMU user networking (hostfwd). Negative boots: one
flipped byte in guest.img and a wrong root hash on the cmdline. Each serial log
is kept under the test's tmp dir (pytest keeps the last runs' dirs). Every QEMU
started here is killed in a finally block; the launcher proper (hbos/launch/qemu.py)
belongs to another stage, so the command line below is deliberately minimal.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TEST_GUEST_PORT, TEST_MARKER

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOOT_TIMEOUT = 300      # TCG on a shared 2-core box: generous
FAIL_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_argv(*, kernel: Path, initrd: Path, image: Path, hash_tree: Path | None, cmdline: str,
              serial_log: Path, host_port: int, memory_mib: int = 1024) -> list[str]:
    """TCG, direct kernel boot, data disk /dev/vda and hash tree /dev/vdb read-only.

    Without a hash tree, `image` is a qcow2 debug disk, attached with
    snapshot=on (writes go to a temporary overlay, the file is untouched).
    """
    if hash_tree is None:
        disks = ["-drive", f"file={image},if=virtio,format=qcow2,snapshot=on"]
    else:
        disks = ["-drive", f"file={image},if=virtio,format=raw,readonly=on",
                 "-drive", f"file={hash_tree},if=virtio,format=raw,readonly=on"]
    return ["qemu-system-x86_64", "-accel", "tcg", "-m", str(memory_mib), "-smp", "1",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", f"file:{serial_log}",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline, *disks,
            "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{host_port}-:{TEST_GUEST_PORT}"]


class Boot:
    """A running QEMU; always stopped by the `boot` fixture."""

    def __init__(self, argv: list[str], serial_log: Path, port: int):
        self.serial_log, self.port = serial_log, port
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)

    def console(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def get(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/index.html",
                                        timeout=5) as resp:
                return resp.read().decode(errors="replace")
        except (OSError, urllib.error.URLError, ConnectionError):
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        assert self.proc.poll() is not None


@pytest.fixture
def boot(tmp_path):
    started: list[Boot] = []

    def start(guest, *, image: Path | None = None, cmdline: str | None = None,
              debug_disk: bool = False) -> Boot:
        port = free_port()
        log = tmp_path / "serial.log"
        argv = qemu_argv(kernel=guest.vmlinuz, initrd=guest.initrd,
                         image=image or guest.image,
                         hash_tree=None if debug_disk else guest.hash_tree,
                         cmdline=cmdline or guest.cmdline, serial_log=log, host_port=port)
        (tmp_path / "qemu-argv.txt").write_text(" ".join(argv) + "\n")
        b = Boot(argv, log, port)
        started.append(b)
        return b

    try:
        yield start
    finally:
        for b in started:
            b.stop()
        print(f"serial logs kept in {tmp_path}")


def test_guest_boots_into_verity_root_and_serves(guest_build, boot):
    b = boot(guest_build)
    deadline = time.monotonic() + BOOT_TIMEOUT
    answer = None
    while time.monotonic() < deadline and b.proc.poll() is None:
        answer = b.get()
        if answer is not None and TEST_MARKER in answer:
            break
        time.sleep(3)
    console = b.console()
    assert answer is not None and TEST_MARKER in answer, console[-3000:]
    assert "hbos-init: switching to the root filesystem (verity)" in console
    assert "FATAL" not in console
    assert "login:" not in console  # non-debug image: no getty on the serial console


def _wait_for_failure(b, pattern: str) -> tuple[list[str], str]:
    """Poll the service until QEMU exits or `pattern` is on the console (+ grace)."""
    answers: list[str] = []
    deadline = time.monotonic() + FAIL_TIMEOUT
    seen_at = None
    while time.monotonic() < deadline and b.proc.poll() is None:
        got = b.get()
        if got is not None:
            answers.append(got)
        if seen_at is None and pattern in b.console():
            seen_at = time.monotonic()
        if seen_at is not None and time.monotonic() - seen_at > 20:
            break
        time.sleep(2)
    return answers, b.console()


def test_flipped_data_byte_fails_with_verity_error(guest_build, boot, tmp_path):
    image = tmp_path / "guest-corrupt.img"
    shutil.copyfile(guest_build.image, image)
    data = image.read_bytes()
    at = data.find(TEST_MARKER.encode())
    assert at > 0 and data.count(TEST_MARKER.encode()) == 1
    with open(image, "r+b") as fh:
        fh.seek(at + 3)
        fh.write(bytes([data[at + 3] ^ 0x20]))
    del data
    b = boot(guest_build, image=image)
    answers, console = _wait_for_failure(b, "is corrupted")
    assert "device-mapper: verity" in console and "is corrupted" in console, console[-3000:]
    assert not any(TEST_MARKER in a for a in answers)


def test_wrong_root_hash_is_refused(guest_build, boot):
    good = guest_build.roothash
    bad = ("0" if good[0] != "0" else "1") + good[1:]
    b = boot(guest_build, cmdline=guest_build.cmdline.replace(good, bad))
    answers, console = _wait_for_failure(b, "hbos-init: FATAL")
    assert "hbos-init: FATAL" in console, console[-3000:]
    assert f"does not match root hash {bad}" in console
    assert "switching to the root filesystem" not in console
    assert not answers
    b.proc.wait(timeout=60)   # the init powers the VM off by itself


def test_missing_root_hash_is_refused(guest_build, boot):
    cmdline = " ".join(w for w in guest_build.cmdline.split()
                       if not w.startswith("verity_roothash="))
    b = boot(guest_build, cmdline=cmdline)
    b.proc.wait(timeout=FAIL_TIMEOUT)
    assert "hbos-init: FATAL: no verity root hash on the kernel command line" in b.console()


def test_base_image_boots_normal_mode_to_a_serial_root_shell(guest_build, boot):
    guest_build.doit("base_image")
    b = boot(guest_build, image=guest_build.paths.base_image, debug_disk=True,
             cmdline="console=ttyS0 boot=normal root=/dev/vda rw rootfstype=ext4")
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline and b.proc.poll() is None:
        if "root@hbos" in b.console():
            break
        time.sleep(3)
    console = b.console()
    assert "hbos-init: switching to the root filesystem (normal)" in console, console[-3000:]
    assert "Reached target" in console and "FATAL" not in console
    assert "root@hbos" in console   # the debug disk's serial autologin
