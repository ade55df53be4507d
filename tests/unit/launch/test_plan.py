"""`doit start --dry-run`: the decisions and the exact QEMU line, nothing started.

The QEMU's version and CPU list are the only host facts stood in for (as in
test_launch's SNP test); the argv is the real hbos.launch.qemu.command_line output,
compared whole against a golden text. The same line is run by trixie's real
QEMU 10 in tests/integration/test_qemu10.py.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from hbos.errors import BuildError, LaunchError
from hbos.launch import plan, qemu, start
from hbos.stages import snp_bundle
from hbos.util import tools
from tests.conftest import config_in
from tests.unit.launch.test_start import measured_vm

GOLDEN_SNP = """\
mode: snp (requested; this host cannot run it (no /dev/sev): review only)
accel: kvm (SEV-SNP needs KVM)
qemu-binary: {qemu} 10.0.2 (--qemu, upstream SNP syntax)
firmware: {ovmf} (measured)
note: C-bit position 51 (default 51: no launch.cbitpos and this CPU reports no SEV C-bit)
qemu: {qemu} -name hbos-guest -machine q35,vmport=off,confidential-guest-support=sev0,\
memory-backend=ram1 -accel kvm -cpu EPYC-v4 -smp 2 -m 16384M \
-object memory-backend-memfd,id=ram1,size=16384M \
-object sev-snp-guest,id=sev0,policy=0x30000,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on \
-bios {ovmf} -kernel {t}/vmlinuz -initrd {t}/initrd.img \
-append 'console=ttyS0 verity_roothash=ab' -no-reboot -nodefaults -display none \
-drive file={t}/guest.img,if=none,id=disk0,format=raw,readonly=on \
-device virtio-blk-pci,drive=disk0,disable-legacy=on,iommu_platform=true \
-drive file={t}/hash_tree.bin,if=none,id=disk1,format=raw,readonly=on \
-device virtio-blk-pci,drive=disk1,disable-legacy=on,iommu_platform=true \
-netdev user,id=net0,hostfwd=tcp:0.0.0.0:80-:10000,hostfwd=tcp:0.0.0.0:8734-:8734 \
-device virtio-net-pci,netdev=net0,disable-legacy=on,iommu_platform=true,romfile= \
-qmp unix:{t}/build/run/qmp.sock,server=on,wait=off -serial file:{t}/build/run/console.log \
-pidfile {t}/build/run/qemu.pid"""


@pytest.fixture
def measured(tmp_path, amdsev_ovmf):
    _, m, cfg, paths, vm_config = measured_vm(tmp_path, amdsev_ovmf)
    for name in ("guest.img", "hash_tree.bin"):
        (tmp_path / name).write_bytes(b"\0" * 4096)
    return cfg, paths, vm_config, m


@pytest.fixture
def no_snp_host(monkeypatch):
    monkeypatch.setattr(plan, "snp_host_ready", lambda: (False, "no /dev/sev"))
    monkeypatch.setattr(plan, "host_cbitpos", lambda: None)
    monkeypatch.setattr(plan, "host_facts", lambda q: qemu.HostFacts(
        Path(q), (10, 0, 2), frozenset({"EPYC-v4", "EPYC-v3", "qemu64"})))


def _dry_run(cfg, paths, vm_config, m, tmp_path, **opts):
    start.start_vm(cfg, paths, vm_config=vm_config, measurement=m,
                   image=tmp_path / "guest.img", hash_tree=tmp_path / "hash_tree.bin",
                   options=start.options_from_params(dry_run=True, **opts))


def test_dry_run_snp_golden(measured, no_snp_host, tmp_path, capsys, amdsev_ovmf):
    cfg, paths, vm_config, m = measured
    _dry_run(cfg, paths, vm_config, m, tmp_path, mode="snp", qemu=sys.executable)
    out = capsys.readouterr().out
    assert out.rstrip("\n") == GOLDEN_SNP.format(qemu=Path(sys.executable).resolve(),
                                                 ovmf=amdsev_ovmf, t=tmp_path)
    assert not paths.run_dir.exists()          # nothing started, nothing written


def test_dry_run_qemu_line_is_one_shell_line(measured, no_snp_host, tmp_path, capsys):
    import shlex
    cfg, paths, vm_config, m = measured
    _dry_run(cfg, paths, vm_config, m, tmp_path, mode="snp", qemu=sys.executable)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("qemu: ")]
    assert len(lines) == 1
    argv = shlex.split(lines[0][len("qemu: "):])
    assert argv[argv.index("-append") + 1] == "console=ttyS0 verity_roothash=ab"


def test_dry_run_cbitpos_from_config(measured, no_snp_host, tmp_path, capsys):
    cfg, paths, vm_config, m = measured
    cfg = dataclasses.replace(cfg, launch=dataclasses.replace(cfg.launch, cbitpos=47))
    _dry_run(cfg, paths, vm_config, m, tmp_path, mode="snp", qemu=sys.executable)
    out = capsys.readouterr().out
    assert "note: C-bit position 47 (launch.cbitpos)" in out and "cbitpos=47," in out


def test_dry_run_emulated_default_firmware_and_no_probe(measured, no_snp_host, tmp_path,
                                                        capsys, monkeypatch):
    cfg, paths, vm_config, m = measured
    monkeypatch.setattr(start, "kvm_boots_guest", lambda *a: pytest.fail("a dry run probed KVM"))
    _dry_run(cfg, paths, vm_config, m, tmp_path, qemu=sys.executable)
    out = capsys.readouterr().out
    assert out.startswith("mode: emulated (this host cannot run SEV-SNP (no /dev/sev))")
    assert "NOT CONFIDENTIAL" in out and "firmware: QEMU's default firmware" in out
    qline = [ln for ln in out.splitlines() if ln.startswith("qemu: ")][0]
    assert "sev-snp-guest" not in qline and "-bios" not in qline


def test_dry_run_old_qemu_says_amd_fork_and_missing_model(measured, tmp_path, capsys,
                                                          monkeypatch):
    cfg, paths, vm_config, m = measured
    monkeypatch.setattr(plan, "snp_host_ready", lambda: (False, "no /dev/sev"))
    monkeypatch.setattr(plan, "host_cbitpos", lambda: None)
    monkeypatch.setattr(plan, "host_facts", lambda q: qemu.HostFacts(
        Path(q), (7, 2, 0), frozenset({"EPYC-v3", "qemu64"})))
    _dry_run(cfg, paths, vm_config, m, tmp_path, mode="snp", qemu=sys.executable)
    out = capsys.readouterr().out
    assert "no CPU model EPYC-v4" in out and "AMD-fork SNP syntax" in out
    assert "memory-encryption=sev0" in out and "-cpu EPYC-v4" in out


def test_mode_setting():
    assert plan.mode_setting("auto", "") == "auto"
    assert plan.mode_setting("auto", "snp") == "required"
    assert plan.mode_setting("required", "emulated") == "off"
    with pytest.raises(LaunchError, match="--mode 'spn'"):
        plan.mode_setting("auto", "spn")


def test_mode_snp_without_dry_run_is_required(measured, no_snp_host, tmp_path):
    cfg, paths, vm_config, m = measured
    with pytest.raises(LaunchError, match="'required'.*no /dev/sev"):
        start.start_vm(cfg, paths, vm_config=vm_config, measurement=m,
                       image=tmp_path / "guest.img", hash_tree=tmp_path / "hash_tree.bin",
                       options=start.options_from_params(mode="snp"))


def test_dry_run_missing_qemu_is_one_clean_error(measured, no_snp_host, tmp_path):
    cfg, paths, vm_config, m = measured
    with pytest.raises(LaunchError, match="--qemu .*nope does not exist"):
        _dry_run(cfg, paths, vm_config, m, tmp_path, qemu=str(tmp_path / "nope"))


def test_modprobe_cpuid_when_missing_and_root(tmp_path, capsys):
    dev = tmp_path / "cpu/0/cpuid"
    calls = []

    def runner(argv):
        calls.append(argv)
        dev.parent.mkdir(parents=True)
        dev.write_bytes(b"")
    assert plan.load_cpuid_driver(dev, euid=0, runner=runner) is True
    assert calls == [["modprobe", "cpuid"]]
    assert f"{dev} is missing: modprobe cpuid" in capsys.readouterr().err
    # present: nothing runs; not root: nothing runs
    assert plan.load_cpuid_driver(dev, euid=0, runner=pytest.fail) is True
    assert plan.load_cpuid_driver(tmp_path / "none", euid=1000, runner=pytest.fail) is False


def test_start_with_missing_qemu_is_one_clean_error(measured, no_snp_host, tmp_path):
    cfg, paths, vm_config, m = measured
    with pytest.raises(LaunchError, match="--qemu .*nope does not exist"):
        start.start_vm(cfg, paths, vm_config=vm_config, measurement=m,
                       image=tmp_path / "guest.img", hash_tree=tmp_path / "hash_tree.bin",
                       options=start.options_from_params(qemu=str(tmp_path / "nope")))


# ----------------------------------------------------------------- which QEMU (find_qemu)


def test_find_qemu_without_bundle_is_the_one_on_path(tmp_path, monkeypatch):
    cfg, paths = config_in(tmp_path)
    monkeypatch.setattr(tools, "find", lambda p: "/usr/bin/" + p)
    assert plan.find_qemu(cfg, paths) == (Path("/usr/bin/qemu-system-x86_64"), "PATH")
    monkeypatch.setattr(tools, "find", lambda p: None)
    assert plan.find_qemu(cfg, paths) == (None, "qemu-system-x86_64 not on PATH")


def test_find_qemu_launch_qemu_wins(tmp_path, monkeypatch):
    cfg, paths = config_in(tmp_path, f"launch:\n  qemu: {sys.executable}\n")
    monkeypatch.setattr(snp_bundle, "configured", lambda c: pytest.fail("launch.qemu wins"))
    assert plan.find_qemu(cfg, paths) == (Path(sys.executable), "launch.qemu")
    cfg, paths = config_in(tmp_path, f"launch:\n  qemu: {tmp_path / 'nope'}\n")
    found, why = plan.find_qemu(cfg, paths)
    assert found is None and why == f"launch.qemu {tmp_path / 'nope'} does not exist"


def test_find_qemu_bundle(tmp_path, monkeypatch):
    cfg, paths = config_in(tmp_path)
    monkeypatch.setattr(snp_bundle, "configured", lambda c: True)
    monkeypatch.setattr(snp_bundle, "qemu", lambda p: Path("/b/usr/local/bin/qemu-system-x86_64"))
    assert plan.find_qemu(cfg, paths) == (Path("/b/usr/local/bin/qemu-system-x86_64"),
                                          "SNP bundle")

    def unpacked_without_qemu(p):
        raise BuildError("the SNP bundle has no QEMU")
    monkeypatch.setattr(snp_bundle, "qemu", unpacked_without_qemu)
    assert plan.find_qemu(cfg, paths) == (None, "the SNP bundle has no QEMU")
