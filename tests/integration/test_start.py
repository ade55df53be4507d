"""The launcher for real: QEMU under TCG boots a guest until its health endpoint answers.

The guest is assembled here from the real default kernel (kernel_build
fixture) and a tiny initramfs: busybox-static as /bin/busybox and an /init
that loads the virtio network modules, configures slirp's address and runs
`busybox httpd` serving /~meta@1.0/info on the forwarded port. The root
"verity image" and "hash tree" are small placeholder files: this guest never
reads them, but the launcher attaches them exactly as for the real one.

Every QEMU started here is killed in the fixture teardown (by pidfile, checked
against /proc), also when a test fails.

When the full local profile can build (images, content, firmware stages),
test_quickstart_local runs `doit start profile=local` end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import LaunchError
from hbos.launch import node_http, plan, qemu, start
from hbos.measure import nodeconfig
from hbos.paths import Paths
from hbos.stages import measure, vmconfig
from tests.conftest import ROOT, doit, kill_qemu, missing_prerequisite

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /modules/$m.ko || echo "init: insmod $m failed"; done
ip link set lo up
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 1; done
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
mkdir -p '/www/~meta@1.0'
# name:sectors:read-only of each virtio disk, so the test can see their order
d=""
for b in /sys/block/vd*; do [ -e "$b" ] && d="$d ${{b##*/}}:$(cat $b/size):$(cat $b/ro)"; done
printf '{{"name":"hbos-launch-test","disks":"%s"}}\n' "${{d# }}" > '/www/~meta@1.0/info'
httpd -p {port} -h /www
echo "init: serving on port {port}"
while true; do sleep 3600; done
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _modules(kernel_root: Path, version: str, names: list[str]) -> list[Path]:
    """The .ko closure of `names`, in load order (modprobe --show-depends)."""
    out: list[Path] = []
    for name in names:
        text = subprocess.run(["modprobe", "-d", str(kernel_root), "-S", version,
                               "--show-depends", name], capture_output=True, text=True,
                              check=True).stdout
        for line in text.splitlines():
            if line.startswith("insmod "):
                p = Path(line.split()[1])
                if p not in out:
                    out.append(p)
    return out


def make_initramfs(dest: Path, kernel_root: Path, port: int) -> Path:
    busybox = shutil.which("busybox")
    if not busybox:
        missing_prerequisite("busybox-static is not installed")
    version = next((kernel_root / "lib" / "modules").iterdir()).name
    tree = dest / "initramfs"
    (tree / "bin").mkdir(parents=True)
    (tree / "modules").mkdir()
    shutil.copy(busybox, tree / "bin" / "busybox")
    mods = _modules(kernel_root, version, ["virtio_pci", "virtio_net", "virtio_blk"])
    from hbos.stages.initramfs import decompress_module, plain_module_name
    for ko in mods:
        # trixie ships .ko.xz, which busybox insmod cannot load: decompress
        decompress_module(ko, tree / "modules" / plain_module_name(ko).name)
    init = tree / "init"
    init.write_text(INIT.format(modules=" ".join(plain_module_name(k).name.removesuffix(".ko")
                                                 for k in mods),
                                port=port))
    init.chmod(0o755)
    out = dest / "initramfs.cpio.gz"
    files = subprocess.run(["find", "."], cwd=tree, capture_output=True, text=True,
                           check=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree,
                          input=files.encode(), capture_output=True, check=True).stdout
    out.write_bytes(subprocess.run(["gzip", "-9n"], input=cpio, capture_output=True,
                                   check=True).stdout)
    return out


class Guest:
    """A build dir with a bootable test guest and its measurement."""

    def __init__(self, root: Path, kernel_build, ovmf: Path) -> None:
        kcfg, kpaths = kernel_build
        self.port = free_port()
        self.build = root / "build"
        self.build.mkdir()
        self.overlay = root / "overlay.yaml"
        self.overlay.write_text(
            f"build_dir: {self.build}\n"
            f"ports: {{hyperbeam: {self.port}}}\n"
            "vm: {memory_mib: 512, vcpu_count: 1}\n"
            "launch: {snp: auto, accel: tcg, host_address: 127.0.0.1, health_timeout: 900,\n"
            "         host_port: 0, forwards: []}\n"
            "post_start: {auto: false}\n")   # busybox httpd serves files only
        self.cfg = hconfig.load(overlay=self.overlay)
        self.paths = Paths.from_config(self.cfg)
        self.initrd = make_initramfs(root, kpaths.kernel_modules, self.port)
        self.image = self.build / "guest.img"
        self.hash_tree = self.build / "hash_tree.bin"
        self.image.write_bytes(b"\0" * 4096)        # 8 sectors: tells the disks apart
        self.hash_tree.write_bytes(b"\0" * 8192)    # 16 sectors
        self.vm_config = self.build / "vm-config.toml"
        text = vmconfig.render(self.cfg, kernel=kpaths.vmlinuz, initrd=self.initrd, ovmf=ovmf,
                               cmdline="console=ttyS0 loglevel=7 panic=-1")
        self.vm_config.write_text(text)
        self.measurement = self.build / "measurement.json"
        measure.write_measurement(self.vm_config, self.measurement)

    def start(self, **options) -> None:
        start.start_vm(self.cfg, self.paths, vm_config=self.vm_config,
                       measurement=self.measurement, image=self.image,
                       hash_tree=self.hash_tree, options=start.StartOptions(**options))

    def doit(self, *args: str, check: bool = True):
        return doit([*args, f"config={self.overlay}"], check=check, timeout=300)

    def kill(self) -> None:
        kill_qemu(self.paths.run_dir)


@pytest.fixture
def guest(tmp_path, kernel_build, amdsev_ovmf):
    if not shutil.which("qemu-system-x86_64"):
        missing_prerequisite("qemu-system-x86_64 is not installed (qemu-system-x86)")
    g = Guest(tmp_path, kernel_build, amdsev_ovmf)
    try:
        yield g
    finally:
        g.kill()


def test_start_healthy_status_stop(guest):
    guest.start()
    files = qemu.RunFiles(guest.paths.run_dir)
    pid = start.running_pid(files)
    assert pid is not None
    ok, why = node_http.probe_health(guest.port)
    assert ok, why
    state = start._state(files)
    assert state["mode"] == "emulated" and state["accel"] == "tcg"
    assert "-accel" in state["argv"] and "tcg" in state["argv"]

    status = guest.doit("status")
    out = status.stdout + status.stderr
    assert f"pid {pid}" in out and "NOT CONFIDENTIAL" in out and "health: OK" in out, out

    with pytest.raises(LaunchError, match="already running"):
        guest.start()
    assert start.running_pid(files) == pid   # the refused start touched nothing

    stop = guest.doit("stop")
    assert f"stopped the VM (pid {pid})" in stop.stdout + stop.stderr
    assert start.running_pid(files) is None
    assert not Path(f"/proc/{pid}").exists() or not start.is_our_qemu(pid, files.pidfile)
    assert "not running" in guest.doit("status").stdout


def test_disk_order_and_data_disk(guest, tmp_path):
    """verity image = /dev/vda, hash tree = /dev/vdb (both read-only), --data-disk = /dev/vdc."""
    data = tmp_path / "data.img"
    data.write_bytes(b"\0" * 12288)                 # 24 sectors
    guest.start(data_disk=data)
    import json
    import urllib.request
    with urllib.request.urlopen(node_http.health_url(guest.port), timeout=10) as resp:
        info = json.loads(resp.read())
    assert info["disks"] == "vda:8:1 vdb:16:1 vdc:24:0"
    start.stop_vm(guest.paths, timeout=3)   # a data disk: ACPI power-down first
    assert start.running_pid(qemu.RunFiles(guest.paths.run_dir)) is None


def test_dead_qemu_reported_with_log_tail(guest):
    guest.start()
    files = qemu.RunFiles(guest.paths.run_dir)
    pid = start.running_pid(files)
    os.kill(pid, signal.SIGKILL)   # a crash, not a stop
    for _ in range(100):
        start._reap(pid)
        if start.running_pid(files) is None:
            break
        time.sleep(0.1)
    status = guest.doit("status", check=False)
    out = status.stdout + status.stderr
    assert status.returncode != 0
    assert "DEAD" in out and "init: serving on port" in out, out
    # a new start notices the stale pidfile and proceeds
    guest.start()
    assert start.running_pid(files) not in (None, pid)
    guest.doit("stop")


def test_tampered_initrd_refused_before_qemu(guest):
    with open(guest.initrd, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(LaunchError) as err:
        guest.start()
    assert "initrd:" in str(err.value) and "measurement.json has" in str(err.value)
    assert not qemu.RunFiles(guest.paths.run_dir).pidfile.exists()


def test_kvm_probe_answers(guest, kernel_build):
    """accel auto's probe gives a verdict in bounded time (on this machine: False, TCG)."""
    facts = plan.host_facts(Path(shutil.which("qemu-system-x86_64")))
    model, _ = qemu.cpu_model("emulated", "EPYC-v4", facts.cpu_models)
    t0 = time.monotonic()
    ok, why = start.kvm_boots_guest(facts, model, kernel_build[1].vmlinuz, guest.build, 20)
    assert time.monotonic() - t0 < 60
    assert isinstance(ok, bool) and why


def test_post_start_config_accepted_by_sample_node(tmp_path):
    """The post-start body as the sample node (tools/sample_node) receives it."""
    node = ROOT / "tools" / "sample_node" / "sample_node.py"
    if not node.is_file():
        pytest.skip("tools/sample_node is not there yet")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(node), "--host", "127.0.0.1", "--port",
                             str(port), "--build", "t"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if node_http.probe_health(port)[0]:
                break
            time.sleep(0.1)
        record = {"kernel": "aa" * 32, "initrd": "bb" * 32, "append": "cc" * 32,
                  "firmware": "dd" * 48, "vcpus": 1, "vcpu_type": 5, "vmm_type": 1,
                  "guest_features": 1, "expected_hash": "ee" * 48}
        body = nodeconfig.post_start_body(record, (), "http://node.example:10000",
                                         "http://peer.example:10000")
        reply = json.loads(node_http.send_post_start(port, body).body)
        assert reply["config"]["snp_trusted"][0]["kernel"] == "aa" * 32
        assert "expected_hash" not in reply["config"]["snp_trusted"][0]
        assert reply["config"]["peer"] == "http://peer.example:10000"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(os.environ.get("CI") != "true" and os.environ.get("HBOS_QUICKSTART") != "1",
                    reason="cold-builds the whole local profile (tens of minutes): runs under "
                           "CI=true or HBOS_QUICKSTART=1")
def test_quickstart_local(tmp_path):
    """`doit start profile=local` from an empty build dir, then status and stop."""
    listing = doit(["list", "profile=local"], check=False).stdout
    needed = ("verity", "initramfs", "base_rootfs", "firmware", "content")
    absent = [t for t in needed if not any(ln.split()[:1] == [t] for ln in listing.splitlines())]
    if absent:
        pytest.skip(f"stages not in the graph yet: {', '.join(absent)}")
    port = free_port()
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\nports: {{hyperbeam: {port}}}\n"
                       "launch: {host_address: 127.0.0.1, health_timeout: 1500}\n")
    cfg = hconfig.load(overlay=overlay, profile="local")
    files = qemu.RunFiles(Paths.from_config(cfg).run_dir)
    try:
        doit(["start", "profile=local", f"config={overlay}", "--self",
              f"http://127.0.0.1:{port}"], timeout=5400)
        # the guest's HyperBEAM answered (under TCG a GET of its 25 KB info page
        # takes ~9 s), and took the default post-start
        assert node_http.probe_health(port, timeout=120)[0]
        operator = node_http.call(port, "/~meta@1.0/info/operator", headers={}, timeout=120)
        assert operator.status == 200 and operator.body.strip() == b"trustless", \
            operator.describe()
        refused = node_http.send_post_start(port, {"operator": "unclaimed"}, timeout=120)
        assert refused.status is not None and 400 <= refused.status < 500, refused.describe()
        assert b"permanent" in refused.body, refused.describe()
        out = doit(["status", "profile=local", f"config={overlay}"])
        assert "health: OK" in out.stdout
        doit(["stop", "profile=local", f"config={overlay}"])
        assert start.running_pid(files) is None
    finally:
        pid = start.read_pid(files.pidfile)
        if pid is not None and start.is_our_qemu(pid, files.pidfile):
            os.kill(pid, signal.SIGKILL)
