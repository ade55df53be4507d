"""Launcher decisions: measurement agreement, mode, accel, pidfile handling.

No QEMU here: a measurement made by the real measure stage from small files
(the AmdSev OVMF suffix from the vectors measures fine), and a plain Python
process standing in for a running QEMU (its argv names the pidfile, which is
what the launcher checks before it signals anything). The post-start calls go
to a local server answering as the real HyperBEAM does (test_node_http).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import LaunchError
from hbos.launch import plan, qemu, start
from hbos.measure import nodeconfig
from hbos.paths import Paths
from hbos.stages import measure, vmconfig
from hbos.tasks import params
from hbos.util import run as hrun
from tests.unit.launch.test_node_http import PERMANENT, UPDATED, FakeHyperBEAM


def measured_vm(tmp_path: Path, ovmf: Path, snp_nif: bool | None = True):
    """(VmDefinition, measurement.json, Config, Paths, vm-config.toml) that agree: 2 vCPUs,
    a small kernel and initrd, measured with `ovmf`; the content manifest says
    `snp_nif` (None: there is none)."""
    kernel = tmp_path / "vmlinuz"
    initrd = tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel" * 100)
    initrd.write_bytes(b"initrd" * 100)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\nvm: {{vcpu_count: 2}}\n")
    cfg = hconfig.load(overlay=overlay)
    paths = Paths.from_config(cfg)
    vm_config = tmp_path / "vm-config.toml"
    vm_config.write_text(vmconfig.render(cfg, kernel=kernel, initrd=initrd, ovmf=ovmf,
                                         cmdline="console=ttyS0 verity_roothash=ab"))
    out = tmp_path / "measurement.json"
    manifest = None
    if snp_nif is not None:
        manifest = tmp_path / "content-manifest.json"
        manifest.write_text(json.dumps({"source": "docker", "snp_nif": snp_nif}))
    measure.write_measurement(vm_config, out, content_manifest=manifest)
    vm = qemu.VmDefinition.from_vm_config(vmconfig.load(vm_config))
    return vm, out, cfg, paths, vm_config


@pytest.fixture
def measured(tmp_path, amdsev_ovmf):
    """(VmDefinition, measurement.json path, Config, Paths) that agree."""
    vm, out, cfg, paths, _ = measured_vm(tmp_path, amdsev_ovmf)
    return vm, out, cfg, paths


def _record(path: Path) -> dict:
    return json.loads(path.read_text())


def test_agreeing_launch_passes(measured):
    vm, m, *_ = measured
    assert start.launch_mismatches(vm, _record(m)) == []
    assert start.launch_record(vm, m)["vcpus"] == 2


@pytest.mark.parametrize("field,change", [
    ("vCPUs", {"vcpus": 4}),
    ("vcpu_type", {"vcpu_type": "EPYC-Milan"}),
    ("policy", {"guest_policy": 0xB0000}),
    ("guest_features", {"guest_features": 0x21}),
    ("cmdline", {"cmdline": "console=ttyS0 verity_roothash=cd"}),
])
def test_each_vm_field_difference_is_named(measured, field, change):
    vm, m, *_ = measured
    problems = start.launch_mismatches(dataclasses.replace(vm, **change), _record(m))
    assert len(problems) == 1 and problems[0].startswith(f"{field}:"), problems
    with pytest.raises(LaunchError) as err:
        start.launch_record(dataclasses.replace(vm, **change), m)
    assert f"- {field}:" in str(err.value) and "refusing to start" in str(err.value)


@pytest.mark.parametrize("field,attr", [("kernel", "kernel"), ("initrd", "initrd"),
                                        ("firmware", "ovmf")])
def test_each_file_difference_is_named(measured, tmp_path, field, attr):
    vm, m, *_ = measured
    other = tmp_path / f"other-{field}"
    other.write_bytes(getattr(vm, attr).read_bytes() + b"\0")
    problems = start.launch_mismatches(dataclasses.replace(vm, **{attr: other}), _record(m))
    assert len(problems) == 1 and problems[0].startswith(f"{field}: {other} has sha256"), problems


def test_same_file_elsewhere_is_fine(measured, tmp_path):
    """A release directory holds copies: compared by content, not path."""
    vm, m, *_ = measured
    copy = tmp_path / "release-vmlinuz"
    copy.write_bytes(vm.kernel.read_bytes())
    assert start.launch_mismatches(dataclasses.replace(vm, kernel=copy), _record(m)) == []


def test_all_differences_listed_together(measured):
    vm, m, *_ = measured
    bad = dataclasses.replace(vm, vcpus=8, guest_features=0x21, guest_policy=0x70000)
    with pytest.raises(LaunchError) as err:
        start.launch_record(bad, m)
    text = str(err.value)
    for name in ("vCPUs", "guest_features", "policy"):
        assert f"- {name}:" in text


def test_original_inputs_json_shape_accepted(measured):
    """The original tool's inputs.json (Rust enums, no files/cmdline text) works too."""
    vm, m, *_ = measured
    rec = _record(m)
    inputs = {k: rec[k] for k in ("kernel", "initrd", "append", "firmware", "vcpus",
                                  "vcpu_type", "vmm_type", "guest_features", "expected_hash")}
    inputs["vm"] = {"guest_policy": "0x30000"}
    assert rec["vcpu_type"] == 5  # EPYC-v4 as the Rust sev crate numbers it
    assert start.launch_mismatches(vm, inputs) == []
    inputs["vcpus"] = 1
    assert [p.split(":")[0] for p in start.launch_mismatches(vm, inputs)] == ["vCPUs"]


def test_missing_or_broken_measurement(measured, tmp_path):
    vm, *_ = measured
    with pytest.raises(LaunchError, match="doit measure"):
        start.launch_record(vm, tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LaunchError, match="not valid JSON"):
        start.launch_record(vm, bad)
    bad.write_text('{"kernel": "00"}')
    with pytest.raises(LaunchError, match="unusable"):
        start.launch_record(vm, bad)


# ----------------------------------------------------------------- mode and accel


def test_decide_mode():
    assert plan.decide_mode("auto", True, "")[0] == "snp"
    assert plan.decide_mode("auto", False, "no /dev/sev")[0] == "emulated"
    assert plan.decide_mode("off", True, "")[0] == "emulated"
    assert plan.decide_mode("required", True, "")[0] == "snp"
    with pytest.raises(LaunchError, match="required.*no /dev/sev"):
        plan.decide_mode("required", False, "no /dev/sev")
    # a review (dry run) shows the SNP line the SNP host would run instead of refusing
    mode, why = plan.decide_mode("required", False, "no /dev/sev", review=True)
    assert mode == "snp" and "review only" in why


def test_snp_host_ready_probe(tmp_path):
    ok, why = plan.snp_host_ready(tmp_path)
    assert not ok and "no /dev/sev" in why and "no sev_snp" in why
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/sev").touch()
    (tmp_path / "dev/kvm").touch()
    param = tmp_path / "sys/module/kvm_amd/parameters/sev_snp"
    param.parent.mkdir(parents=True)
    param.write_text("N\n")
    assert plan.snp_host_ready(tmp_path) == (False, "kvm_amd.sev_snp is not enabled")
    param.write_text("Y\n")
    assert plan.snp_host_ready(tmp_path)[0] is True


def test_choose_accel():
    never = lambda: pytest.fail("probe must not run")  # noqa: E731
    assert plan.choose_accel("tcg", "emulated", never)[0] == "tcg"
    assert plan.choose_accel("kvm", "emulated", never)[0] == "kvm"
    assert plan.choose_accel("auto", "snp", never)[0] == "kvm"
    assert plan.choose_accel("auto", "emulated", lambda: (True, "ok"))[0] == "kvm"
    accel, why = plan.choose_accel("auto", "emulated",
                                   lambda: (False, "KVM failed: failed to set MSR 0x10a"))
    assert accel == "tcg" and "MSR 0x10a" in why
    with pytest.raises(LaunchError, match="needs KVM"):
        plan.choose_accel("tcg", "snp", never)


def test_cbitpos_config_wins(measured):
    *_, cfg, _ = measured
    cfg = dataclasses.replace(cfg, launch=dataclasses.replace(cfg.launch, cbitpos=47))
    assert plan.snp_options(cfg).cbitpos == 47


def test_post_start_config_drops_expected_hash():
    rec = {"kernel": "k", "initrd": "i", "append": "a", "firmware": "f", "vcpus": 1,
           "vcpu_type": 5, "vmm_type": 1, "guest_features": 1, "expected_hash": "e",
           "files": {}}
    body = nodeconfig.post_start_body(rec, (), "http://me:1")
    assert body == {"snp_trusted": [{"kernel": "k", "initrd": "i", "append": "a",
                                     "firmware": "f", "vcpus": 1, "vcpu_type": 5,
                                     "vmm_type": 1, "guest_features": 1}],
                    "self": "http://me:1"}


def test_doit_params_map_to_options():
    names = {p["long"] for p in params.START}
    assert names == {"data-disk", "self", "peer", "no-auto", "dry-run", "mode", "qemu",
                     "allow-no-snp-nif"}
    opts = start.options_from_params("d.qcow2", "http://a", "http://b", True)
    assert opts == start.StartOptions(Path("d.qcow2"), "http://a", "http://b", True)
    opts = start.options_from_params(dry_run=True, mode="snp", qemu="/q")
    assert (opts.dry_run, opts.mode, opts.qemu) == (True, "snp", "/q")
    assert start.options_from_params().data_disk is None
    assert start.options_from_params(allow_no_snp_nif=True).allow_no_snp_nif
    assert not start.options_from_params().allow_no_snp_nif


# ----------------------------------------------------------------- pidfile, twice, dead


@pytest.fixture
def fake_qemu(measured):
    """A live process whose argv names the run dir's pidfile, like our QEMU's."""
    *_, paths = measured
    files = qemu.RunFiles(paths.run_dir)
    files.directory.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             "-pidfile", str(files.pidfile)])
    files.pidfile.write_text(f"{proc.pid}\n")
    for _ in range(100):  # until the exec is done and /proc shows its argv
        if start.is_our_qemu(proc.pid, files.pidfile):
            break
        time.sleep(0.05)
    try:
        yield proc, files
    finally:
        proc.kill()
        proc.wait()


def test_starting_twice_refused(measured, fake_qemu, tmp_path):
    vm, m, cfg, paths = measured
    proc, files = fake_qemu
    with pytest.raises(LaunchError) as err:
        start.start_vm(cfg, paths, vm_config=tmp_path / "vm-config.toml", measurement=m,
                       image=tmp_path / "none.img", hash_tree=tmp_path / "none.bin",
                       options=start.StartOptions())
    assert f"already running (pid {proc.pid}" in str(err.value)
    assert "doit stop" in str(err.value)
    assert proc.poll() is None and files.pidfile.exists()


def test_recycled_pid_is_not_ours(measured):
    *_, paths = measured
    files = qemu.RunFiles(paths.run_dir)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files.directory.mkdir(parents=True)
        files.pidfile.write_text(str(other.pid))
        assert start.running_pid(files) is None
        assert "not running" in start.stop_vm(paths)
        assert other.poll() is None          # never signalled
    finally:
        other.kill()
        other.wait()


def test_status_running_and_stop(fake_qemu, measured):
    *_, paths = measured
    proc, files = fake_qemu
    files.state.write_text(json.dumps({"mode": "emulated", "accel": "tcg", "port": 1}))
    st = start.vm_status(paths)
    assert st.state == "running" and st.pid == proc.pid
    assert "NOT CONFIDENTIAL" in st.describe() and "not answering" in st.describe()
    msg = start.stop_vm(paths, timeout=1)
    assert msg == f"stopped the VM (pid {proc.pid})"
    assert proc.wait(timeout=10) is not None
    assert not files.pidfile.exists()
    assert start.vm_status(paths).state == "stopped"


def test_dead_qemu_reported_with_log_tail(measured):
    *_, paths = measured
    files = qemu.RunFiles(paths.run_dir)
    files.directory.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    files.pidfile.write_text(str(gone.pid))
    files.console.write_text("[    1.0] booting\n[    9.9] Kernel panic - not syncing: boom\n")
    files.qemu_log.write_text("qemu-system-x86_64: terminating on signal 9\n")
    st = start.vm_status(paths)
    assert st.state == "dead" and st.pid == gone.pid
    assert "Kernel panic - not syncing: boom" in st.describe()
    assert "terminating on signal 9" in st.describe()
    with pytest.raises(LaunchError, match="died"):
        start.print_status(paths)


# ----------------------------------------------------------------- the SNP path (no SNP here)


class _Spawned(Exception):
    pass


def test_snp_start_runs_the_snp_command_line(measured, tmp_path, monkeypatch):
    """With an SNP-ready host (simulated: none exists here) start_vm launches the
    sev-snp-guest command line with KVM, the configured C-bit and the measured OVMF."""
    vm, m, cfg, paths = measured
    cfg = dataclasses.replace(cfg, launch=dataclasses.replace(
        cfg.launch, snp="required", cbitpos=51, qemu=sys.executable))
    image, tree = tmp_path / "guest.img", tmp_path / "hash_tree.bin"
    image.write_bytes(b"\0" * 4096)
    tree.write_bytes(b"\0" * 4096)
    seen: dict = {}
    monkeypatch.setattr(plan, "snp_host_ready", lambda: (True, "SEV-SNP host"))
    monkeypatch.setattr(plan, "host_facts", lambda q: qemu.HostFacts(
        q, (9, 2, 0), frozenset({"EPYC-v4"})))

    def spawn(argv, **how):
        seen["argv"], seen["how"] = argv, how
        raise _Spawned()
    monkeypatch.setattr(hrun, "spawn", spawn)
    with pytest.raises(_Spawned):
        start.start_vm(cfg, paths, vm_config=tmp_path / "vm-config.toml", measurement=m,
                       image=image, hash_tree=tree, options=start.StartOptions())
    argv = seen["argv"]
    assert seen["how"] == {"log": qemu.RunFiles(paths.run_dir).qemu_log, "detach": True}
    assert argv[0] == sys.executable
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert "confidential-guest-support=sev0" in argv[argv.index("-machine") + 1]
    assert ("sev-snp-guest,id=sev0,policy=0x30000,cbitpos=51,reduced-phys-bits=1,"
            "kernel-hashes=on") in argv
    assert argv[argv.index("-bios") + 1] == str(vm.ovmf)
    assert argv[argv.index("-smp") + 1] == "2"


def test_start_runs_exactly_the_line_its_dry_run_prints(measured, tmp_path, monkeypatch, capsys):
    """start and start --dry-run share hbos.launch.plan.plan: with the same inputs
    the argv start spawns is the `qemu:` line the dry run prints; only start
    probes KVM for launch.accel: auto (here the probe says no, so TCG)."""
    vm, m, cfg, paths = measured
    cfg = dataclasses.replace(cfg, launch=dataclasses.replace(
        cfg.launch, snp="off", accel="auto", host_port=18080, qemu=sys.executable))
    image, tree = tmp_path / "guest.img", tmp_path / "hash_tree.bin"
    image.write_bytes(b"\0" * 4096)
    tree.write_bytes(b"\0" * 4096)
    monkeypatch.setattr(plan, "host_facts", lambda q: qemu.HostFacts(
        q, (10, 0, 2), frozenset({"EPYC-v4"})))
    monkeypatch.setattr(plan, "kvm_opens", lambda: (False, "/dev/kvm unusable (test)"))
    probed: list = []

    def probe(facts, model, kernel, workdir, timeout):
        probed.append(model)
        return False, "KVM failed: test"
    monkeypatch.setattr(start, "cached_kvm_boots_guest", probe)
    seen: dict = {}

    def spawn(argv, **how):
        seen["argv"], seen["how"] = argv, how
        raise _Spawned()
    monkeypatch.setattr(hrun, "spawn", spawn)
    kwargs = dict(vm_config=tmp_path / "vm-config.toml", measurement=m, image=image,
                  hash_tree=tree)
    start.start_vm(cfg, paths, options=start.StartOptions(dry_run=True), **kwargs)
    assert probed == []   # a dry run boots nothing
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("qemu: ")]
    with pytest.raises(_Spawned):
        start.start_vm(cfg, paths, options=start.StartOptions(), **kwargs)
    assert probed == ["EPYC-v4"]
    assert printed == [f"qemu: {hrun.quote(seen['argv'])}"]
    assert seen["argv"][seen["argv"].index("-accel") + 1] == "tcg"


def test_snp_required_refuses_on_this_kind_of_host(measured, tmp_path, monkeypatch):
    vm, m, cfg, paths = measured
    cfg = dataclasses.replace(cfg, launch=dataclasses.replace(cfg.launch, snp="required"))
    image = tmp_path / "guest.img"
    image.write_bytes(b"\0" * 4096)
    monkeypatch.setattr(plan, "snp_host_ready", lambda: (False, "no /dev/sev"))
    with pytest.raises(LaunchError, match="'required'.*no /dev/sev"):
        start.start_vm(cfg, paths, vm_config=tmp_path / "vm-config.toml", measurement=m,
                       image=image, hash_tree=image, options=start.StartOptions())


# ----------------------------------------------------------------- HyperBEAM's SNP NIF


def test_snp_nif_note_decides():
    with_nif, without = {"snp_nif": True}, {"snp_nif": False}
    for mode in ("snp", "emulated"):
        assert start.snp_nif_note(with_nif, mode, False) is None
    with pytest.raises(LaunchError) as err:
        start.snp_nif_note(without, "snp", False)
    text = str(err.value)
    assert "no SNP NIF (dev_snp_nif" in text and "cannot produce attestation reports" in text
    assert "--allow-no-snp-nif" in text and "launch.allow_no_snp_nif: true" in text
    assert "crates vendor directory" in text
    with pytest.raises(LaunchError):
        start.snp_nif_note({}, "snp", False)               # an older measurement: no NIF
    with pytest.raises(LaunchError):
        start.snp_nif_note({"snp_nif": "true"}, "snp", False)   # only a JSON true counts
    assert start.snp_nif_note(without, "snp", True).startswith("WARNING: ")
    assert "start refuses SEV-SNP" in start.snp_nif_note(without, "snp", False, review=True)
    assert start.snp_nif_note(without, "emulated", False).startswith("note: ")


def _snp_host(monkeypatch):
    monkeypatch.setattr(plan, "snp_host_ready", lambda: (True, "SEV-SNP host"))
    monkeypatch.setattr(plan, "host_facts", lambda q: qemu.HostFacts(
        q, (9, 2, 0), frozenset({"EPYC-v4"})))


def _disks(tmp_path):
    image, tree = tmp_path / "guest.img", tmp_path / "hash_tree.bin"
    image.write_bytes(b"\0" * 4096)
    tree.write_bytes(b"\0" * 4096)
    return dict(image=image, hash_tree=tree)


@pytest.fixture
def measured_no_nif(tmp_path, amdsev_ovmf):
    """A measured VM whose content manifest has no snp_nif (an older manifest)."""
    vm, out, cfg, paths, vm_config = measured_vm(tmp_path, amdsev_ovmf, snp_nif=None)
    assert _record(out)["snp_nif"] is False
    cfg = dataclasses.replace(cfg, launch=dataclasses.replace(
        cfg.launch, cbitpos=51, qemu=sys.executable))
    return cfg, paths, dict(vm_config=vm_config, measurement=out, **_disks(tmp_path))


def _spawn_raises(monkeypatch) -> list:
    spawned: list = []

    def spawn(argv, **how):
        spawned.append(argv)
        raise _Spawned()
    monkeypatch.setattr(hrun, "spawn", spawn)
    return spawned


def test_snp_start_without_nif_refused_before_anything_runs(measured_no_nif, monkeypatch):
    cfg, paths, kwargs = measured_no_nif
    _snp_host(monkeypatch)
    monkeypatch.setattr(plan, "load_cpuid_driver", lambda *a: pytest.fail("went past the mode"))
    spawned = _spawn_raises(monkeypatch)
    for mode in ("", "snp"):     # launch.snp: auto on an SNP host, and --mode snp
        with pytest.raises(LaunchError, match="refusing to start SEV-SNP.*no SNP NIF") as err:
            start.start_vm(cfg, paths, options=start.StartOptions(mode=mode), **kwargs)
        assert "--allow-no-snp-nif" in str(err.value)
    assert spawned == []


@pytest.mark.parametrize("how", ["flag", "config"])
def test_snp_start_without_nif_allowed(measured_no_nif, monkeypatch, capsys, how):
    cfg, paths, kwargs = measured_no_nif
    _snp_host(monkeypatch)
    spawned = _spawn_raises(monkeypatch)
    options = start.StartOptions(allow_no_snp_nif=how == "flag")
    if how == "config":
        cfg = dataclasses.replace(cfg, launch=dataclasses.replace(cfg.launch, allow_no_snp_nif=True))
    with pytest.raises(_Spawned):
        start.start_vm(cfg, paths, options=options, **kwargs)
    assert "sev-snp-guest" in " ".join(spawned[0])
    assert "start: WARNING: the image's HyperBEAM has no SNP NIF" in capsys.readouterr().err


def test_emulated_start_without_nif_goes_ahead_with_a_note(measured_no_nif, monkeypatch, capsys):
    cfg, paths, kwargs = measured_no_nif
    _snp_host(monkeypatch)     # even on an SNP host: --mode emulated
    monkeypatch.setattr(start, "cached_kvm_boots_guest", lambda *a: (False, "KVM: test"))
    spawned = _spawn_raises(monkeypatch)
    with pytest.raises(_Spawned):
        start.start_vm(cfg, paths, options=start.StartOptions(mode="emulated"), **kwargs)
    assert "sev-snp-guest" not in " ".join(spawned[0])
    err = capsys.readouterr().err
    assert err.count("no SNP NIF") == 1 and "start: note: the image's HyperBEAM" in err


def test_dry_run_snp_without_nif_notes_the_refusal(measured_no_nif, monkeypatch, capsys):
    cfg, paths, kwargs = measured_no_nif
    monkeypatch.setattr(plan, "snp_host_ready", lambda: (False, "no /dev/sev"))
    monkeypatch.setattr(plan, "host_facts", lambda q: qemu.HostFacts(
        q, (9, 2, 0), frozenset({"EPYC-v4"})))
    start.start_vm(cfg, paths, options=start.StartOptions(dry_run=True, mode="snp"), **kwargs)
    out = capsys.readouterr().out
    assert "note: the image's HyperBEAM has no SNP NIF" in out
    assert "start refuses SEV-SNP without --allow-no-snp-nif" in out


def test_snp_start_with_nif_says_nothing_of_it(measured, tmp_path, monkeypatch, capsys):
    vm, m, cfg, paths = measured
    cfg = dataclasses.replace(cfg, launch=dataclasses.replace(cfg.launch, cbitpos=51,
                                                              qemu=sys.executable))
    _snp_host(monkeypatch)
    _spawn_raises(monkeypatch)
    with pytest.raises(_Spawned):
        start.start_vm(cfg, paths, vm_config=tmp_path / "vm-config.toml", measurement=m,
                       options=start.StartOptions(), **_disks(tmp_path))
    assert "SNP NIF" not in capsys.readouterr().err


# ----------------------------------------------------------------- post-start against HyperBEAM


@pytest.fixture
def launched(measured, tmp_path, monkeypatch):
    """start_vm up to the real post-start calls: an emulated plan, a Python process
    standing in for QEMU (its argv names the pidfile, so start may signal it) and
    QMP taken as answering; `launched(node, settings)` starts against `node`."""
    vm, m, cfg, paths = measured
    files = qemu.RunFiles(paths.run_dir)
    monkeypatch.setattr(plan, "host_facts", lambda q: qemu.HostFacts(
        q, (10, 0, 2), frozenset({"EPYC-v4"})))
    monkeypatch.setattr(start, "_wait_qmp", lambda proc, files, timeout: "running")
    procs: list[subprocess.Popen] = []

    def spawn(argv, **how):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                 "-pidfile", str(files.pidfile)])
        files.pidfile.write_text(f"{proc.pid}\n")
        for _ in range(100):
            if start.is_our_qemu(proc.pid, files.pidfile):
                break
            time.sleep(0.05)
        procs.append(proc)
        return proc
    monkeypatch.setattr(hrun, "spawn", spawn)

    def run(node: FakeHyperBEAM, settings: tuple[str, ...] = ()) -> subprocess.Popen:
        c = dataclasses.replace(
            cfg, launch=dataclasses.replace(cfg.launch, snp="off", accel="tcg", qemu=sys.executable,
                                            host_port=node.port, forwards=(), health_timeout=30),
            post_start=dataclasses.replace(cfg.post_start,
                                           settings=cfg.post_start.settings + settings))
        try:
            start.start_vm(c, paths, vm_config=tmp_path / "vm-config.toml", measurement=m,
                           options=start.StartOptions(), **_disks(tmp_path))
        finally:
            assert len(procs) == 1
        return procs[0]
    yield run, files, paths
    for proc in procs:
        proc.kill()
        proc.wait()


ROUTER = ("router_peer_location: http://peer.example:10000",)


def test_post_start_accepted_as_the_real_node_answers(launched, capsys):
    run, files, _ = launched
    with FakeHyperBEAM(follow={"/~router@1.0/register": (200, b"ok")}) as node:
        proc = run(node, ROUTER)
    assert proc.poll() is None and files.pidfile.exists()
    err = capsys.readouterr().err
    assert f"post-start configuration accepted: HTTP 200: {UPDATED.decode()}" in err
    assert "post-start GET /~router@1.0/register: HTTP 200: ok" in err
    assert "VM running" in err
    assert len(node.posts) == 1


def test_follow_up_failure_after_acceptance_leaves_the_vm_running(launched, capsys):
    run, files, paths = launched
    with FakeHyperBEAM(follow={"/~router@1.0/register": (500, b"no route")}) as node:
        with pytest.raises(LaunchError) as err:
            run(node, ROUTER)
    text = str(err.value)
    assert "the VM is left running" in text and "doit stop" in text
    assert "post-start GET /~router@1.0/register: HTTP 500: no route" in text
    pid = start.read_pid(files.pidfile)
    assert pid is not None and start.is_our_qemu(pid, files.pidfile)   # not killed
    assert "VM running" in capsys.readouterr().err
    assert start.stop_vm(paths, timeout=1) == f"stopped the VM (pid {pid})"   # doit stop


def test_post_in_doubt_leaves_the_vm_running(launched):
    run, files, _ = launched
    with FakeHyperBEAM(post="close") as node:
        with pytest.raises(LaunchError) as err:
            run(node, ROUTER)
    text = str(err.value)
    assert "the VM is left running" in text and "may have applied it" in text
    assert [p for p, _ in node.gets if p != "/~meta@1.0/info"] == []   # no follow-ups
    pid = start.read_pid(files.pidfile)
    assert pid is not None and start.is_our_qemu(pid, files.pidfile)


def test_post_refused_before_acceptance_stops_the_vm(launched):
    run, files, _ = launched
    with FakeHyperBEAM() as node:
        node.permanent = True      # the node answers 400, as to a second POST
        with pytest.raises(LaunchError) as err:
            run(node)
    text = str(err.value)
    assert f"HTTP 400: {PERMANENT.decode()}" in text and "the VM was stopped" in text
    assert not files.pidfile.exists()
