"""Debian trixie's real QEMU 10 against the launcher's command lines (issue 12).

QEMU 10 runs from a cached trixie root (tests/support/trixie_root.py: mmdebstrap,
chroot in a private mount namespace with the build dir bind-mounted at the
same path), through a wrapper script passed as `--qemu`, so the launcher gets
the version, the CPU list and the syntax from the real binary.

(a) The exact SEV-SNP line `doit start --dry-run --mode snp` prints, with the
    guest's real kernel, initrd and the AmdSev OVMF: QEMU 10 parses all of it
    (options, sev-snp-guest properties, memfd backend) and stops only where KVM
    is asked for an SNP VM. One misspelled sev-snp-guest property instead fails
    at parsing, so the two outcomes are told apart. The 4 KiB OVMF vector is
    enough: QEMU creates the sev-snp-guest object and initialises the
    accelerator (where KVM refuses) before it loads the firmware.
(b) The local image booted by QEMU 10 under TCG with `-cpu EPYC-v4` (the
    measured model, which bookworm's QEMU 7.2 lacks) until the node is healthy.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess

import pytest

from hbos.launch import node_http, qemu
from tests.conftest import GuestBuild, doit, kill_qemu, link_base_rootfs, write_overlay
from tests.support.trixie_root import run as chroot_run, trixie_root, wrapper  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

KVM_REFUSES_SNP = "vm-type SEV-SNP not supported by KVM"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_guest(base_rootfs_cache, kernel_deb, amdsev_ovmf, tmp_path_factory) -> GuestBuild:
    """The local profile's image (its own content, the default trixie kernel), built
    by the real graph with the cached base root, its node on a free port."""
    root = tmp_path_factory.mktemp("qemu10-guest")
    overlay = write_overlay(root / "overlay.yaml", (
        f"build_dir: {root / 'build'}\n"
        f"kernel: {{source: deb, deb: {kernel_deb}}}\n"
        f"firmware: {{ovmf: {amdsev_ovmf}}}\n"
        f"ports: {{hyperbeam: {_free_port()}}}\n"
        "launch: {host_address: 127.0.0.1, health_timeout: 1500}\n"))
    guest = GuestBuild(root, overlay)
    link_base_rootfs(base_rootfs_cache, guest.paths)
    guest.doit("measure")
    return guest


@pytest.fixture(scope="module")
def qemu10(trixie_root, local_guest, amdsev_ovmf, tmp_path_factory):  # noqa: F811 (fixture)
    """A qemu-system-x86_64 wrapper running trixie's QEMU 10 with the guest's
    build dir and the firmware vector visible at their own paths."""
    out = tmp_path_factory.mktemp("qemu10") / "qemu-system-x86_64"
    return wrapper(trixie_root, [local_guest.dir, amdsev_ovmf.parent], out)


def _snp_line(guest, qemu10, *extra: str) -> list[str]:
    proc = guest.doit("start", "--dry-run", "--mode", "snp", "--qemu", str(qemu10), *extra)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("qemu: ")]
    assert len(lines) == 1, proc.stdout
    assert "mode: snp" in proc.stdout and "upstream SNP syntax" in proc.stdout, proc.stdout
    return shlex.split(lines[0][len("qemu: "):])


def _run(argv: list[str], run_dir) -> subprocess.CompletedProcess:
    run_dir.mkdir(parents=True, exist_ok=True)   # start_vm creates it before QEMU runs
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        kill_qemu(run_dir)


def test_snp_line_parses_up_to_kvm(local_guest, qemu10, amdsev_ovmf):
    argv = _snp_line(local_guest, qemu10)
    assert argv[0] == str(qemu10)
    obj = next(a for a in argv if a.startswith("sev-snp-guest,"))
    assert obj.startswith("sev-snp-guest,id=sev0,") and "kernel-hashes=on" in obj
    assert argv[argv.index("-cpu") + 1] == "EPYC-v4"
    assert argv[argv.index("-bios") + 1] == str(amdsev_ovmf)
    assert argv[argv.index("-kernel") + 1] == str(local_guest.vmlinuz)
    assert argv[argv.index("-initrd") + 1] == str(local_guest.initrd)
    proc = _run(argv, local_guest.paths.run_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert KVM_REFUSES_SNP in out, out


def test_snp_line_with_id_block_auth_and_host_data_parses_up_to_kvm(local_guest, qemu10):
    """launch.id_block / id_auth / host_data (base64 files of 96, 4096 and 32 bytes):
    QEMU 10 decodes and size-checks them when it creates sev-snp-guest, so a line
    that reaches KVM's refusal carried well-formed values (with author-key-enabled)."""
    import base64
    d = local_guest.dir
    for name, size in (("id_block", 96), ("id_auth", 4096), ("host_data", 32)):
        (d / f"{name}.b64").write_text(base64.b64encode((bytes(range(256)) * 16)[:size]).decode())
    overlay = write_overlay(d / "id-block.yaml", local_guest.overlay.read_text().replace(
        "launch: {", f"launch: {{id_block: {d / 'id_block.b64'}, id_auth: {d / 'id_auth.b64'}, "
                     f"host_data: {d / 'host_data.b64'}, "))
    proc = doit(["start", "--dry-run", "--mode", "snp", "--qemu", str(qemu10), "profile=local",
                 f"config={overlay}"])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("qemu: ")][0]
    argv = shlex.split(line[len("qemu: "):])
    obj = next(a for a in argv if a.startswith("sev-snp-guest,"))
    assert "id-block=" in obj and "id-auth=" in obj and "author-key-enabled=on" in obj
    assert "host-data=" in obj
    proc = _run(argv, local_guest.paths.run_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and KVM_REFUSES_SNP in out, out
    # one byte short: QEMU refuses the ID block itself, before KVM
    short = obj.replace(obj.split("id-block=")[1].split(",")[0],
                        base64.b64encode(bytes(95)).decode())
    argv[argv.index(obj)] = short
    proc = _run(argv, local_guest.paths.run_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and KVM_REFUSES_SNP not in out, out
    assert "parameter length of 95 not equal to 96" in out, out


def test_misspelled_snp_option_fails_at_parsing(local_guest, qemu10):
    argv = _snp_line(local_guest, qemu10)
    i = next(i for i, a in enumerate(argv) if a.startswith("sev-snp-guest,"))
    argv[i] = argv[i].replace("kernel-hashes=on", "kernel-hashs=on")
    proc = _run(argv, local_guest.paths.run_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "kernel-hashs" in out and KVM_REFUSES_SNP not in out, out


def test_emulated_boot_with_epyc_v4_reaches_healthy(local_guest, qemu10):
    """`doit start --qemu QEMU10` on the local-profile image: TCG, -cpu EPYC-v4."""
    run = qemu.RunFiles(local_guest.paths.run_dir)
    port = local_guest.cfg.ports.hyperbeam
    # TCG at once: KVM fails on this machine, and its probe only costs time
    tcg = write_overlay(local_guest.dir / "tcg.yaml", local_guest.overlay.read_text().replace(
        "launch: {", "launch: {accel: tcg, "))
    try:
        proc = doit(["start", "--qemu", str(qemu10), "--mode", "emulated", "profile=local",
                     f"config={tcg}"], check=False, timeout=2000)
        state = json.loads(run.state.read_text()) if run.state.is_file() else {}
        argv = state.get("argv", [])
        assert argv and argv[argv.index("-cpu") + 1] == "EPYC-v4", proc.stderr[-3000:]
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"QEMU {qemu10} 10." in proc.stderr
        assert node_http.probe_health(port)[0]
    finally:
        kill_qemu(run.directory)
