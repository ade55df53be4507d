"""check_host against fake host trees (no real /proc, /sys, /dev or QEMU).

Fixture trees are built by `fake_host()` below in a tmp dir:
- proc/sys/kernel/osrelease, proc/cpuinfo (vendor_id + flags lines),
- sys/module/kvm_amd/parameters/<name> ("Y"/"N"), omitted when kvm_amd is not loaded,
- dev/kvm, dev/sev as plain files (presence only; the ioctls are injected via Probes),
- dev/kmsg in /dev/kmsg record format ("6,SEQ,TS,-;message").
Kernel log lines are the ones real SNP hosts print (AMDESE/AMDSEV issues #137, #189,
#197, #246); THIS_MACHINE_FLAGS is this build machine's /proc/cpuinfo flags line
(an EPYC guest of a KVM hypervisor: no SEV flags), copied on 2026-11-26.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hbos.host import check
from hbos.host.check import FAIL, PASS, UNKNOWN, KvmStatus, Probes, SevStatus
from hbos.launch import plan

BASE_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush "
              "mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc "
              "rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf rapl pni pclmulqdq monitor "
              "ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand "
              "lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw "
              "ibs skinit wdt tce topoext perfctr_core perfctr_nb bpext perfctr_llc mwaitx cpb "
              "cat_l3 cdp_l3 hw_pstate ssbd mba ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep "
              "bmi2 erms invpcid cqm rdt_a rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec "
              "xgetbv1 xsaves npt lbrv svm_lock nrip_save tsc_scale vmcb_clean flushbyasid "
              "decodeassists pausefilter pfthreshold v_vmsave_vmload vgif v_spec_ctrl umip pku "
              "ospke vaes vpclmulqdq rdpid overflow_recov succor smca")
THIS_MACHINE_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr "
    "sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl "
    "xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid "
    "sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor "
    "lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs "
    "ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap "
    "clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr wbnoinvd arat umip "
    "pku ospke vaes vpclmulqdq rdpid fsrm")

QEMU_SNP_OBJECTS = "List of user creatable objects:\n  iothread\n  sev-guest\n  sev-snp-guest\n"
QEMU_DEBIAN_OBJECTS = "List of user creatable objects:\n  iothread\n  secret\n  sev-guest\n"


def fake_host(root: Path, *, release: str, flags: str, kvm_amd: dict[str, str] | None,
              devices: tuple[str, ...] = ("kvm", "sev"), log: list[str] = ()) -> Path:
    """A fake host tree under `root` (see the module docstring)."""
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(release + "\n")
    (root / "proc/cpuinfo").write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7443P 24-Core "
        f"Processor\nflags\t\t: {flags}\n\n")
    (root / "sys/module/kvm/parameters").mkdir(parents=True)
    if kvm_amd is not None:
        params = root / "sys/module/kvm_amd/parameters"
        params.mkdir(parents=True)
        for name, value in kvm_amd.items():
            (params / name).write_text(value + "\n")
    (root / "dev").mkdir()
    for dev in devices:
        (root / "dev" / dev).write_text("")
    records = [f"6,{i},{1000 * (i + 1)},-;{line}" for i, line in enumerate(log)]
    (root / "dev/kmsg").write_text("".join(r + "\n" for r in records))
    return root


READY_LOG = [
    "Linux version 6.9.0-rc7-snp-host-05b10142ac6a (root@build) #1 SMP",
    "SEV-SNP: RMP table physical range [0x0000000035600000 - 0x0000000075bfffff]",
    "ccp 0000:23:00.1: sev enabled",
    "ccp 0000:23:00.1: SEV API:1.55 build:21",
    "ccp 0000:23:00.1: SEV-SNP API:1.55 build:21",
    "kvm_amd: SEV enabled (ASIDs 100 - 509)",
    "kvm_amd: SEV-ES enabled (ASIDs 1 - 99)",
    "kvm_amd: SEV-SNP enabled (ASIDs 1 - 99)",
]


def ok_kvm(_dev: Path) -> KvmStatus:
    return KvmStatus(api_version=12, vm_types=0x1D)


def probes(kvm=ok_kvm, sev=lambda _dev: SevStatus(), objects=QEMU_SNP_OBJECTS) -> Probes:
    return Probes(kvm=kvm, sev=sev, qemu_objects=lambda _q: objects)


def verdicts(checks) -> dict[str, str]:
    return {c.name: c.verdict for c in checks}


QEMU = Path("/opt/snp-release/usr/local/bin/qemu-system-x86_64")


def ready_host(tmp_path, **params):
    kvm_amd = {"sev": "Y", "sev_es": "Y", "sev_snp": "Y", "debug_swap": "N", **params}
    return fake_host(tmp_path, release="6.9.0-rc7-snp-host-05b10142ac6a",
                     flags=BASE_FLAGS + " sme sev sev_es sev_snp", kvm_amd=kvm_amd, log=READY_LOG)


def test_ready_host_passes_everything(tmp_path):
    root = ready_host(tmp_path)
    snp = SevStatus(api=(1, 55), build=21, state=1, rmp_initialized=True)
    checks = check.run_checks(root, guest_features=0x1, qemu=QEMU, qemu_why="SNP bundle",
                              probes=probes(sev=lambda _d: snp))
    assert verdicts(checks) == {
        "kernel": PASS, "CPU SEV flags": PASS, "kvm_amd.sev": PASS, "kvm_amd.sev_es": PASS,
        "kvm_amd.sev_snp": PASS, "/dev/kvm": PASS, "/dev/sev": PASS, "SNP firmware": PASS,
        "RMP table": PASS, "QEMU sev-snp-guest": PASS, "guest_features": PASS, "BIOS": PASS}
    assert check.ready(checks)
    by = {c.name: c for c in checks}
    assert by["SNP firmware"].detail == "SNP API 1.55 build 21 (SNP_PLATFORM_STATUS)"
    assert "[0x0000000035600000 - 0x0000000075bfffff]" in by["RMP table"].detail
    assert "SNP VM type: yes" in by["/dev/kvm"].detail
    assert "can run SEV-SNP guests" in check.table(checks)


def test_firmware_and_rmp_from_dmesg_when_dev_sev_gives_no_status(tmp_path):
    root = ready_host(tmp_path)
    checks = check.run_checks(root, qemu=QEMU, probes=probes(
        sev=lambda _d: SevStatus(snp_error=None)))
    by = {c.name: c for c in checks}
    assert (by["SNP firmware"].verdict, by["SNP firmware"].detail) == (
        PASS, "SNP API 1.55 build 21 (dmesg)")
    assert (by["RMP table"].verdict, by["RMP table"].detail) == (
        PASS, "physical range [0x0000000035600000 - 0x0000000075bfffff] (dmesg)")


def test_old_snp_firmware_fails(tmp_path):
    root = ready_host(tmp_path)
    checks = check.run_checks(root, qemu=QEMU, probes=probes(
        sev=lambda _d: SevStatus(api=(1, 49), build=3, rmp_initialized=True)))
    fw = {c.name: c for c in checks}["SNP firmware"]
    assert fw.verdict == FAIL and "1.49 build 3" in fw.detail and "1.51" in fw.fix


def legacy_kvm(_dev: Path) -> KvmStatus:
    """An SNP host kernel without KVM_CAP_VM_TYPES (no KVM_SEV_INIT2)."""
    return KvmStatus(api_version=12, vm_types=0)


def test_debug_swap_mismatch_names_exact_guest_features(tmp_path):
    root = ready_host(tmp_path, debug_swap="Y")
    checks = check.run_checks(root, guest_features=0x1, qemu=QEMU, probes=probes(kvm=legacy_kvm))
    gf = {c.name: c for c in checks}["guest_features"]
    assert gf.verdict == FAIL
    assert "set vm.guest_features: 0x21" in gf.fix
    assert not check.ready(checks)
    # configured to match: passes
    ok = check.run_checks(root, guest_features=0x21, qemu=QEMU, probes=probes(kvm=legacy_kvm))
    assert {c.name: c.verdict for c in ok}["guest_features"] == PASS
    # configured 0x21 on a host without debug_swap: the fix says 0x1
    root2 = ready_host(tmp_path / "b")
    bad = check.run_checks(root2, guest_features=0x21, qemu=QEMU, probes=probes(kvm=legacy_kvm))
    assert "set vm.guest_features: 0x1 " in {c.name: c for c in bad}["guest_features"].fix


def test_debug_swap_ignored_when_kvm_offers_init2(tmp_path):
    """With the SNP VM type (KVM_SEV_INIT2) the VMM, not kvm_amd.debug_swap, picks features."""
    root = ready_host(tmp_path, debug_swap="Y")
    checks = check.run_checks(root, guest_features=0x1, qemu=QEMU, probes=probes(kvm=ok_kvm))
    gf = {c.name: c for c in checks}["guest_features"]
    assert gf.verdict == PASS and "KVM_SEV_INIT2" in gf.detail
    odd = check.run_checks(root, guest_features=0x21, qemu=QEMU, probes=probes(kvm=ok_kvm))
    assert {c.name: c.verdict for c in odd}["guest_features"] == UNKNOWN


def test_snp_disabled_in_bios(tmp_path):
    root = fake_host(
        tmp_path, release="6.11.0-snp-host-85ef1ac03941",
        flags=BASE_FLAGS + " sme sev sev_es",
        kvm_amd={"sev": "Y", "sev_es": "Y", "sev_snp": "N", "debug_swap": "N"},
        log=["SEV-SNP: Memory for the RMP table has not been reserved by BIOS",
             "ccp 0000:42:00.1: sev enabled",
             "ccp 0000:42:00.1: SEV API:1.55 build:21",
             "kvm_amd: SEV enabled (ASIDs 100 - 509)",
             "kvm_amd: SEV-ES enabled (ASIDs 1 - 99)"])
    sev = SevStatus(snp_error="SNP_PLATFORM_STATUS failed: Input/output error "
                              "(firmware error 0x3)")
    checks = check.run_checks(root, qemu=QEMU, probes=probes(sev=lambda _d: sev))
    assert verdicts(checks) == {
        "kernel": PASS, "CPU SEV flags": FAIL, "kvm_amd.sev": PASS, "kvm_amd.sev_es": PASS,
        "kvm_amd.sev_snp": FAIL, "/dev/kvm": PASS, "/dev/sev": PASS, "SNP firmware": FAIL,
        "RMP table": FAIL, "QEMU sev-snp-guest": PASS, "guest_features": PASS, "BIOS": FAIL}
    by = {c.name: c for c in checks}
    assert by["CPU SEV flags"].detail == "missing sev_snp (present: sev sev_es)"
    assert "see the BIOS row" in by["CPU SEV flags"].fix
    bios = by["BIOS"]
    assert "RMP table not reserved by BIOS" in bios.detail and "kvm_amd.sev_snp=N" in bios.detail
    for setting in ("SMEE", "SEV-SNP", "SNP Memory Coverage", "minimum SEV non-ES ASID"):
        assert setting in bios.fix
    assert "not been reserved by BIOS" in by["RMP table"].detail
    assert not check.ready(checks)


def test_host_without_snp_kernel(tmp_path):
    root = fake_host(
        tmp_path, release="6.1.0-27-amd64", flags=BASE_FLAGS + " sme sev sev_es sev_snp",
        kvm_amd={"sev": "Y", "sev_es": "Y"},
        log=["ccp 0000:23:00.1: sev enabled", "ccp 0000:23:00.1: SEV API:1.55 build:21",
             "SEV supported: 410 ASIDs", "SEV-ES supported: 99 ASIDs"])
    sev = SevStatus(snp_error="SNP_PLATFORM_STATUS failed: Invalid argument "
                              "(firmware error 0x0)")
    checks = check.run_checks(root, qemu=Path("/usr/bin/qemu-system-x86_64"), qemu_why="PATH",
                              probes=probes(sev=lambda _d: sev, objects=QEMU_DEBIAN_OBJECTS))
    assert verdicts(checks) == {
        "kernel": FAIL, "CPU SEV flags": PASS, "kvm_amd.sev": PASS, "kvm_amd.sev_es": PASS,
        "kvm_amd.sev_snp": FAIL, "/dev/kvm": PASS, "/dev/sev": PASS, "SNP firmware": FAIL,
        "RMP table": UNKNOWN, "QEMU sev-snp-guest": FAIL, "guest_features": PASS,
        "BIOS": PASS}
    by = {c.name: c for c in checks}
    assert "doit setup_host" in by["kernel"].fix
    assert by["kvm_amd.sev_snp"].detail == "parameter absent: this kernel's KVM has no SNP support"
    assert "SEV API 1.55 build 21" in by["SNP firmware"].detail
    assert by["QEMU sev-snp-guest"].detail == \
        "/usr/bin/qemu-system-x86_64 (PATH) has sev-guest only"


def test_this_machine(tmp_path):
    """An EPYC VM: no SEV flags, no kvm_amd, /dev/kvm present but QEMU cannot start a vCPU."""
    root = fake_host(tmp_path, release="6.18.44-fc-v782", flags=THIS_MACHINE_FLAGS,
                     kvm_amd=None, devices=("kvm",),
                     log=["Hypervisor detected: KVM", "kvm-guest: PV spinlocks enabled"])
    refused = KvmStatus(error="KVM refuses MSR 0x10a (IA32_ARCH_CAPABILITIES) on a new vCPU, "
                              "so QEMU aborts at start", api_version=12, vm_types=0x1)
    seen: list[Path] = []

    def kvm(dev: Path) -> KvmStatus:
        seen.append(dev)
        return refused

    checks = check.run_checks(root, qemu=Path("/usr/bin/qemu-system-x86_64"), qemu_why="PATH",
                              probes=probes(kvm=kvm, objects=QEMU_DEBIAN_OBJECTS))
    assert verdicts(checks) == {
        "kernel": PASS, "CPU SEV flags": FAIL, "kvm_amd.sev": FAIL, "kvm_amd.sev_es": FAIL,
        "kvm_amd.sev_snp": FAIL, "/dev/kvm": FAIL, "/dev/sev": FAIL, "SNP firmware": UNKNOWN,
        "RMP table": UNKNOWN, "QEMU sev-snp-guest": FAIL, "guest_features": UNKNOWN,
        "BIOS": UNKNOWN}
    assert seen == [root / "dev/kvm"]      # the probe got the fake root's device
    by = {c.name: c for c in checks}
    assert "virtual machine" in by["CPU SEV flags"].fix
    assert by["/dev/kvm"].detail.startswith("present but unusable: KVM refuses MSR 0x10a")
    assert "cannot run SEV-SNP guests (7 failed" in check.table(checks)


def test_real_probes_on_a_fake_tree_do_not_touch_devices(tmp_path):
    """The default probes on fake (regular-file) devices report, never ioctl the real ones."""
    root = fake_host(tmp_path, release="6.11.0", flags=BASE_FLAGS, kvm_amd=None)
    assert check.probe_kvm(root / "dev/kvm") == KvmStatus(
        error=f"{root / 'dev/kvm'} is not a character device")
    assert check.probe_sev(root / "dev/sev").error == f"{root / 'dev/sev'} is not a character device"
    assert check.probe_kvm(root / "dev/nothing").error.startswith("cannot open")


def test_kernel_log_parsing_variants():
    old = check.parse_kernel_log(
        "SEV-SNP: RMP table physical address 0x0000000015e00000 - 0x00000000566fffff\n"
        "ccp 0000:26:00.1: SEV API:1.52 build:4\nccp 0000:26:00.1: SEV-SNP API:1.52 build:4\n"
        "kvm_amd: SEV-ES and SEV-SNP supported: 99 ASIDs\n")
    assert old.sev_api == (1, 52, 4) and old.snp_api == (1, 52, 4)
    assert old.rmp_range == "0x0000000015e00000 - 0x00000000566fffff"
    assert old.snp_asids == "99"
    failed = check.parse_kernel_log("ccp 0000:42:00.1: SEV-SNP: failed to INIT rc -5, error 0x3\n"
                                    "ccp 0000:42:00.1: SEV API:1.55 build:7\n")
    assert failed.snp_api is None and failed.sev_api == (1, 55, 7)
    assert failed.snp_init_failed == "SEV-SNP: failed to INIT rc -5, error 0x3"


def test_parse_snp_status_struct():
    # api 1.55, state 1 (INIT), is_rmp_initialized bit set, build 21, then the rest zeroed
    raw = bytes([1, 55, 1, 1]) + (21).to_bytes(4, "little") + bytes(24)
    assert check.parse_snp_status(raw) == SevStatus(api=(1, 55), build=21, state=1,
                                                    rmp_initialized=True)


def test_expected_guest_features():
    assert check.expected_guest_features(0x1, {"debug_swap": True}) == 0x21
    assert check.expected_guest_features(0x21, {"debug_swap": False}) == 0x1
    assert check.expected_guest_features(0x1, {}) == 0x1


def test_cli_json_and_exit_status(tmp_path, capsys, monkeypatch):
    from hbos import cli
    monkeypatch.setattr(plan, "find_qemu", lambda c, p: (QEMU, "SNP bundle"))
    monkeypatch.setattr(check, "qemu_object_help", lambda q: QEMU_SNP_OBJECTS)
    root = fake_host(tmp_path, release="6.18.44-fc-v782", flags=THIS_MACHINE_FLAGS, kvm_amd=None,
                     devices=())
    rc = cli.main(["check-host", "--root", str(root), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["ready"] is False
    names = {c["name"]: c["verdict"] for c in out["checks"]}
    assert names["/dev/kvm"] == FAIL and names["CPU SEV flags"] == FAIL
    assert names["QEMU sev-snp-guest"] == PASS       # the patched runner was used
    assert cli.main(["check-host", "--root", str(root)]) == 1
    assert "fix: this is a virtual machine" in capsys.readouterr().out


def test_check_host_raises_host_error(tmp_path, monkeypatch):
    from hbos import config as hconfig
    from hbos.errors import HostError
    from hbos.paths import Paths
    root = fake_host(tmp_path / "root", release="6.1.0", flags=THIS_MACHINE_FLAGS, kvm_amd=None,
                     devices=())
    overlay = tmp_path / "o.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\n")
    cfg = hconfig.load(overlay=overlay)
    monkeypatch.setattr(plan, "find_qemu", lambda c, p: (None, "none"))
    with pytest.raises(HostError):
        check.check_host(cfg, Paths.from_config(cfg), root=root)
