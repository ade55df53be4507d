"""Start, stop and query the guest VM.

`start_vm` launches exactly the VM that was measured, or refuses:

1. refuse when a QEMU started from this run directory is still alive;
2. load the VM definition and compare it with measurement.json (kernel,
   initrd, firmware, cmdline, vCPUs, vcpu_type, policy, guest_features): any
   difference refuses to start and names the field;
3. render the post-start body once (hbos.measure.nodeconfig): HOST_DATA hashes
   it, so `checked_identity` (which the plan calls once the mode is known)
   checks it against measurement.json's HOST_DATA (an SNP start that differs
   is refused) along with the ID block, and step 6 sends that same body;
4. decide with hbos.launch.plan (the code `--dry-run` prints): the mode
   (SEV-SNP when the host can, `launch.snp: auto`; emulated otherwise, with a
   NOT CONFIDENTIAL banner; `required` refuses, `off` never tries), the
   accelerator (SNP: KVM; emulated: `launch.accel`, where auto probes KVM here
   with a throwaway guest and falls back to TCG), QEMU, firmware and argv;
5. run QEMU detached through hbos.util.run.spawn (own session, pidfile, QMP
   socket, serial console to a log file, all under Paths.run_dir), wait until
   QMP answers, then poll the node's health endpoint (hbos.launch.node_http)
   with visible progress;
6. POST the post-start body unless post_start.auto is false or --no-auto is
   given, then its follow-up calls (hbos.launch.node_http). Any 2xx is
   success (its body is shown, bounded). Until the POST, every failure stops
   the VM; a definite refusal of the POST (3xx/4xx, nothing sent) does too;
   once the node may hold its configuration (accepted, or no clear answer:
   HyperBEAM makes it permanent), nothing stops the VM: what fails after is
   printed and start ends with an error saying the VM is left running
   (`doit stop` stops it).

An SEV-SNP start of an image whose HyperBEAM lacks its SNP NIF (dev_snp_nif;
measurement.json `snp_nif`, from the content manifest) is refused at the mode
decision unless --allow-no-snp-nif or launch.allow_no_snp_nif; an emulated one
notes it; a dry run shows it as a note.

`stop_vm` and `vm_status` use the pidfile (checked against /proc so a
recycled pid is never signalled) and QMP (hbos.launch.qmp).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hbos.config import Config
from hbos.errors import HbosError, LaunchError
from hbos.launch import node_http, plan as launch_plan, qemu, qmp
from hbos.measure import digest, idblock, nodeconfig
from hbos.paths import Paths
from hbos.stages import vmconfig
from hbos.util import limits, run
from hbos.util.fsutil import sha256_file, write_json

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")   # colour codes in systemd's console output
QMP_START_TIMEOUT = 60.0     # seconds for QEMU to answer QMP after exec (2 busy cores)
PROGRESS_EVERY = 15.0        # seconds between "still waiting" lines
HEALTH_POLL_EVERY = 0.5      # seconds between health probes (docs/boot.md)
TAIL = 20


@dataclass(frozen=True)
class StartOptions:
    """The original tool's `start` options."""
    data_disk: Path | None = None   # --data-disk: a writable disk, /dev/vdc in the guest
    self_url: str = ""              # --self: this node's URL as peers reach it
    peer_url: str = ""              # --peer: a peer node's URL
    no_auto: bool = False           # --no-auto: skip the post-start configuration
    dry_run: bool = False           # --dry-run: print the decisions and the QEMU line only
    mode: str = ""                  # --mode auto|snp|emulated (default: launch.snp)
    qemu: str = ""                  # --qemu PATH (default: launch.qemu, the SNP bundle's in SNP mode, PATH)
    allow_no_snp_nif: bool = False  # --allow-no-snp-nif: SEV-SNP even without HyperBEAM's SNP NIF

    @property
    def post_start(self) -> nodeconfig.PostStartOptions:
        """The options the post-start body (and so HOST_DATA) depends on."""
        return nodeconfig.PostStartOptions(self.self_url, self.peer_url, self.no_auto)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------- measurement check


def _field(name: str, launched: Any, measured: Any) -> str | None:
    if launched == measured:
        return None
    return f"{name}: the launch has {launched!r}, measurement.json has {measured!r}"


def launch_mismatches(vm: qemu.VmDefinition, record: dict[str, Any],
                      hasher: Callable[[Path], str] = sha256_file) -> list[str]:
    """Every way the VM about to launch differs from measurement.json.

    Files are compared by sha256 of what will be booted (paths may differ, e.g.
    in a release directory); the cmdline by its text when the record has it and
    always by the sha256 the measurement used.
    """
    try:
        inputs, fw_launch_hash = digest.parse_inputs(record, "measurement.json")
    except HbosError as exc:
        raise LaunchError(f"measurement.json is unusable: {exc.message}") from None
    files = record.get("files") or {}
    out: list[str] = []
    for name, path, measured in (("kernel", vm.kernel, inputs.kernel_sha256),
                                 ("initrd", vm.initrd, inputs.initrd_sha256)):
        if not path.is_file():
            out.append(f"{name}: {path} does not exist")
            continue
        got = hasher(path)
        if got != measured:
            out.append(f"{name}: {path} has sha256 {got}, measurement.json has {measured}")
    fw_sha = (files.get("firmware") or {}).get("sha256")
    if not vm.ovmf.is_file():
        out.append(f"firmware: {vm.ovmf} does not exist")
    elif fw_sha:
        got = hasher(vm.ovmf)
        if got != fw_sha:
            out.append(f"firmware: {vm.ovmf} has sha256 {got}, measurement.json has {fw_sha}")
    elif fw_launch_hash:
        got = digest.Firmware(vm.ovmf).launch_hash
        if got != fw_launch_hash:
            out.append(f"firmware: {vm.ovmf} measures {got}, measurement.json has "
                       f"{fw_launch_hash}")
    if "cmdline" in record and record["cmdline"] != vm.cmdline:
        out.append(f"cmdline: the launch has {vm.cmdline!r}, measurement.json has "
                   f"{record['cmdline']!r}")
    elif digest.cmdline_sha256(vm.cmdline) != inputs.cmdline_sha256:
        out.append(f"cmdline: sha256 of {vm.cmdline!r} is not measurement.json's append "
                   f"{inputs.cmdline_sha256}")
    for problem in (_field("vCPUs", vm.vcpus, inputs.vcpus),
                    _field("vcpu_type", vm.vcpu_type, inputs.vcpu_type),
                    _field("guest_features", hex(vm.guest_features),
                           hex(inputs.guest_features))):
        if problem:
            out.append(problem)
    policy = (record.get("vm") or {}).get("guest_policy")
    if policy is None:
        out.append("policy: measurement.json records no vm.guest_policy")
    elif int(str(policy), 0) != vm.guest_policy:
        out.append(_field("policy", hex(vm.guest_policy), hex(int(str(policy), 0))) or "")
    return out


def launch_record(vm: qemu.VmDefinition, measurement: Path) -> dict[str, Any]:
    """measurement.json's record, when it describes exactly this VM; else refuse."""
    if not measurement.exists():
        raise LaunchError(f"measurement {measurement} does not exist", hint="run: doit measure")
    record = limits.load_json(measurement, limits.INPUTS_BYTES, "measurement", LaunchError)
    if not isinstance(record, dict):
        raise LaunchError(f"{measurement}: expected a JSON object")
    problems = launch_mismatches(vm, record)
    if problems:
        raise LaunchError(
            "refusing to start: the VM differs from its measurement "
            f"({measurement}):\n  - " + "\n  - ".join(problems),
            hint="rebuild so both agree: doit measure (never edit one of them by hand)")
    return record


# ----------------------------------------------------------------- KVM probe


def kvm_boots_guest(facts: qemu.HostFacts, cpu: str, kernel: Path, workdir: Path,
                    timeout: float) -> tuple[bool, str]:
    """Does a KVM guest get as far as printing its kernel banner?"""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        return False, f"/dev/kvm unusable ({exc.strerror})"
    serial = workdir / "kvm-probe.log"
    serial.unlink(missing_ok=True)
    proc = run.spawn(qemu.kvm_probe_command(facts.qemu, cpu, kernel, serial), quiet=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if serial.is_file() and b"Linux version" in serial.read_bytes():
                return True, "KVM boots a kernel"
            if proc.poll() is not None:
                out = (proc.stdout.read() if proc.stdout else b"").decode(errors="replace")
                errors = [ln for ln in out.splitlines() if "warning" not in ln]
                return False, "KVM failed: " + (run.tail("\n".join(errors), 2) or
                                                f"QEMU exited {proc.returncode}")
            time.sleep(0.2)
        return False, f"a KVM guest printed nothing in {timeout:.0f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def cached_kvm_boots_guest(facts: qemu.HostFacts, cpu: str, kernel: Path, workdir: Path,
                           timeout: float) -> tuple[bool, str]:
    """kvm_boots_guest, remembered per (QEMU binary, CPU model, host kernel) in the run dir,
    so a host where KVM is broken pays the probe's timeout once, not every start."""
    try:
        st = facts.qemu.stat()
    except OSError:
        return kvm_boots_guest(facts, cpu, kernel, workdir, timeout)
    key = f"{facts.qemu}:{st.st_mtime_ns}:{cpu}:{os.uname().release}"
    cache = workdir / "kvm-probe.json"
    try:
        known = json.loads(cache.read_text())
        if known.get("key") == key:
            return bool(known["ok"]), f"{known['why']} (probed earlier; delete {cache} to retry)"
    except (OSError, ValueError, KeyError):
        pass
    ok, why = kvm_boots_guest(facts, cpu, kernel, workdir, timeout)
    write_json(cache, {"key": key, "ok": ok, "why": why})
    return ok, why


# ----------------------------------------------------------------- processes


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def is_our_qemu(pid: int, pidfile: Path) -> bool:
    """pid is alive and is the QEMU that writes this pidfile (not a recycled pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and str(pidfile).encode() in argv


def running_pid(files: qemu.RunFiles) -> int | None:
    pid = read_pid(files.pidfile)
    return pid if pid is not None and is_our_qemu(pid, files.pidfile) else None


def file_tail(path: Path, lines: int = TAIL) -> str:
    try:
        with open(path, "rb") as fh:   # a guest may fill its console: read the end only
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 65536))
            data = fh.read(65536)
    except OSError:
        return f"({path} is missing)"
    text = data.decode(errors="replace").replace("\r", "")
    return run.tail(text, lines) or f"({path} is empty)"


def _diagnostics(files: qemu.RunFiles) -> str:
    return (f"--- QEMU ({files.qemu_log}) ---\n{file_tail(files.qemu_log, 10)}\n"
            f"--- guest console ({files.console}) ---\n{file_tail(files.console)}")


def _kill(pid: int, files: qemu.RunFiles, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, a QEMU we verified is ours."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not is_our_qemu(pid, files.pidfile):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not is_our_qemu(pid, files.pidfile):
                return
            time.sleep(0.2)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _clear(files: qemu.RunFiles) -> None:
    for p in (files.pidfile, files.qmp):
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------- health and post-start


def wait_healthy(proc: subprocess.Popen, files: qemu.RunFiles, port: int,
                 timeout: float) -> float:
    """Poll the health endpoint until 200; seconds waited. QEMU dying ends it."""
    start = time.monotonic()
    last_note = start
    say(f"start: waiting up to {timeout:.0f} s for {node_http.health_url(port)} "
        f"(console: {files.console})")
    while True:
        ok, why = node_http.probe_health(port)
        elapsed = time.monotonic() - start
        if ok:
            return elapsed
        if proc.poll() is not None:
            raise LaunchError(f"QEMU exited (status {proc.returncode}) before the node "
                              f"answered:\n{_diagnostics(files)}")
        if elapsed > timeout:
            raise LaunchError(f"the node did not answer {node_http.health_url(port)} within "
                              f"{timeout:.0f} s (last: {why}); the VM was stopped\n"
                              f"{_diagnostics(files)}",
                              hint="raise launch.health_timeout, or read the console log")
        if time.monotonic() - last_note >= PROGRESS_EVERY:
            last_note = time.monotonic()
            line = ANSI.sub("", file_tail(files.console, 1)).strip()[:100]
            say(f"start: {elapsed:4.0f} s, not answering yet ({why}); console: {line}")
        time.sleep(HEALTH_POLL_EVERY)


BANNER = """
##########################################################################
#                                                                        #
#   NOT CONFIDENTIAL: emulated guest, no AMD SEV-SNP.                    #
#   The host can read and change this VM's memory, there is no           #
#   attestation report, and the launch measurement does not apply.       #
#                                                                        #
##########################################################################
"""


# ----------------------------------------------------------------- start


def _wait_qmp(proc: subprocess.Popen, files: qemu.RunFiles, timeout: float) -> str:
    """Until QEMU's main loop answers QMP; returns its run state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"QEMU exited at start (status {proc.returncode}):\n"
                              f"{_diagnostics(files)}")
        if files.qmp.exists():
            try:
                return qmp.command(files.qmp, "query-status")["status"]
            except (OSError, ValueError, LaunchError):
                pass
        time.sleep(0.3)
    raise LaunchError(f"QEMU did not answer on {files.qmp} within {timeout:.0f} s")


def _kvm_failed(files: qemu.RunFiles) -> bool:
    text = file_tail(files.qemu_log, 40)
    return any(s in text for s in ("failed to set MSR", "kvm_buf_set_msrs", "KVM_",
                                   "kvm:", "Could not access KVM", "kvm_init"))


def checked_identity(record: dict[str, Any], vm: qemu.VmDefinition, post_start: dict[str, Any] | None,
                     identity_dir: Path | None, mode: qemu.Mode) -> dict[str, str]:
    """ID block, ID auth and HOST_DATA (base64) for launching `vm` and then sending
    `post_start`, checked against measurement.json; an SNP launch they would not
    describe is refused."""
    out: dict[str, str] = {}
    hd, problem = nodeconfig.for_launch(record, post_start)
    if problem:
        if mode == "snp":
            raise LaunchError(f"refusing to start: {problem}",
                              hint="start with the options the build assumed, or rebuild: "
                                   "doit measure")
        say(f"start: note: {problem} (emulated: there is no HOST_DATA)")
    if hd:
        out["host_data"] = nodeconfig.to_b64(hd)
    if identity_dir is not None:
        block = idblock.read_b64(identity_dir / idblock.ID_BLOCK_FILE, idblock.ID_BLOCK_SIZE,
                                 "ID block")
        auth = idblock.read_b64(identity_dir / idblock.ID_AUTH_FILE, idblock.ID_AUTH_SIZE, "ID auth")
        info = idblock.check_for_launch(idblock.b64(block), idblock.b64(auth), record,
                                        vm.guest_policy)
        out.update(id_block=idblock.b64(block), id_auth=idblock.b64(auth))
        say(f"start: ID block for {record.get('expected_hash', '')[:16]}..., author key "
            f"{info.author_key_digest[:16]}...")
    return out


NO_SNP_NIF = ("the image's HyperBEAM has no SNP NIF (dev_snp_nif; measurement.json "
              "snp_nif is not true), so the node cannot produce attestation reports")
ALLOW_NO_SNP_NIF = "--allow-no-snp-nif or launch.allow_no_snp_nif: true"


def snp_nif_note(record: dict[str, Any], mode: qemu.Mode, allowed: bool,
                 review: bool = False) -> str | None:
    """Does the measured image's HyperBEAM have its SNP NIF (measurement.json
    `snp_nif`, from the content manifest)? Without it an SEV-SNP start is
    refused unless `allowed` (--allow-no-snp-nif, launch.allow_no_snp_nif); a
    review (dry run) says what start would do. Returns the line to show (None:
    the NIF is there); emulated starts only note its absence."""
    if record.get("snp_nif") is True:
        return None
    if mode != "snp":
        return f"note: {NO_SNP_NIF} (emulated: there are no attestation reports anyway)"
    if allowed:
        return f"WARNING: {NO_SNP_NIF}; starting SEV-SNP anyway ({ALLOW_NO_SNP_NIF})"
    if review:
        return f"{NO_SNP_NIF}: start refuses SEV-SNP without {ALLOW_NO_SNP_NIF}"
    raise LaunchError(f"refusing to start SEV-SNP: {NO_SNP_NIF}",
                      hint="rebuild with a crates vendor directory so the hyperbeam stage "
                           "builds dev_snp_nif, or start anyway: pass --allow-no-snp-nif "
                           "or set launch.allow_no_snp_nif: true")


def _allow_no_snp_nif(cfg: Config, options: StartOptions) -> bool:
    return options.allow_no_snp_nif or cfg.launch.allow_no_snp_nif


def _stop_started(proc: subprocess.Popen, files: qemu.RunFiles) -> None:
    """Stop the QEMU this start spawned and forget its run files."""
    if proc.poll() is None:
        _kill(proc.pid, files)
    proc.wait()
    _clear(files)


def after_post_start(port: int, body: dict[str, Any], posted: node_http.Outcome) -> list[str]:
    """Once the node may hold its configuration (the POST was accepted, or its
    fate is unknown): the follow-up calls, each reported; returns what failed.
    Nothing here stops the VM."""
    if posted.state == "unknown":
        say(f"start: post-start configuration: {posted.describe()}")
        return [f"the post-start POST got no clear answer ({posted.describe()}); the node "
                f"may have applied it (and made it permanent), so the VM was not stopped "
                f"and the follow-up calls were not made"]
    say(f"start: post-start configuration accepted: {posted.describe()}")
    failed = []
    for path, headers in node_http.follow_up_calls(body):
        got = node_http.follow_up(port, path, headers)
        say(f"start: post-start GET {path}: {got.describe()}" + ("" if got.ok else " (FAILED)"))
        if not got.ok:
            failed.append(f"post-start GET {path}: {got.describe()}")
    return failed


def start_vm(cfg: Config, paths: Paths, *, vm_config: Path, measurement: Path, image: Path,
             hash_tree: Path, options: StartOptions, identity_dir: Path | None = None) -> None:
    """Launch the measured VM (SNP, or emulated when allowed) and wait until healthy."""
    if options.dry_run:
        dry_run(cfg, paths, vm_config=vm_config, measurement=measurement, image=image,
                hash_tree=hash_tree, options=options, identity_dir=identity_dir)
        return
    files = qemu.RunFiles(paths.run_dir)
    files.directory.mkdir(parents=True, exist_ok=True)
    pid = running_pid(files)
    if pid is not None:
        raise LaunchError(f"the VM is already running (pid {pid}, {files.pidfile})",
                          hint="stop it first: doit stop")
    if files.pidfile.exists():
        say(f"start: a previous QEMU is gone (stale {files.pidfile}); its console was:\n"
            f"{file_tail(files.console, 5)}")
        _clear(files)

    raw = vmconfig.load(vm_config)
    vm = qemu.VmDefinition.from_vm_config(raw)
    for label, p in (("verity image", image), ("hash tree", hash_tree)):
        if not p.is_file():
            raise LaunchError(f"{label} {p} does not exist", hint="run: doit verity")
    data = options.data_disk
    if data is not None:
        data = Path(data).expanduser().resolve()
        if not data.is_file():
            raise LaunchError(f"data disk {data} does not exist",
                              hint=f"create one: qemu-img create -f qcow2 {data} 20G")
    record = launch_record(vm, measurement)
    body = nodeconfig.post_start_for(cfg, record, options.post_start)   # HOST_DATA hashes it

    def identity(mode: qemu.Mode) -> dict[str, str]:
        # once the mode is known, before anything is probed, loaded or started
        nif = snp_nif_note(record, mode, _allow_no_snp_nif(cfg, options))
        if nif:
            say(f"start: {nif}")
        return checked_identity(record, vm, body, identity_dir, mode)

    plan = launch_plan.plan(
        cfg, paths, vm=vm, disks=qemu.Disks(image=image, hash_tree=hash_tree, data=data),
        forwards=lambda mode: node_http.forwards(cfg, mode, bool(raw.get("debug"))),
        identity=identity,
        requested_mode=options.mode, qemu_path=options.qemu, review=False,
        kvm_probe=lambda facts, model: cached_kvm_boots_guest(
            facts, model, vm.kernel, files.directory, cfg.launch.kvm_probe_timeout))
    spec, mode, accel, binary = plan.spec, plan.spec.mode, plan.spec.accel, plan.spec.host.qemu
    low = node_http.unbindable(spec.forwards, os.geteuid(), node_http.unprivileged_port_start())
    if low:
        ports = ", ".join(f"{f.host_address}:{f.host_port}" for f in low)
        raise LaunchError(f"cannot forward host port(s) {ports}: binding a port below "
                          f"{node_http.unprivileged_port_start()} needs root",
                          hint="run as root (hb-os's :80), or set launch.host_port "
                               "(e.g. 0: the node's own port) and launch.forwards")
    if mode == "emulated":
        say(BANNER + f"  ({plan.mode_why})\n")
    flavour = f", {qemu.flavour(spec.host.version)} SNP syntax" if mode == "snp" else ""
    say(f"start: mode {mode}, accel {accel} ({plan.accel_why}), QEMU {binary} "
        f"{'.'.join(map(str, spec.host.version))}{flavour}")
    say(f"start: firmware: {qemu.firmware_note(spec)}")
    for note in plan.notes:
        say(f"start: {note}")

    port = nodeconfig.host_port(cfg)
    files.console.unlink(missing_ok=True)
    files.qemu_log.unlink(missing_ok=True)
    proc = run.spawn(qemu.command_line(spec), log=files.qemu_log, detach=True)
    try:
        try:
            _wait_qmp(proc, files, QMP_START_TIMEOUT)
        except LaunchError:
            if not (cfg.launch.accel == "auto" and accel == "kvm" and _kvm_failed(files)):
                raise
            say("start: KVM failed at start; relaunching with TCG")
            _kill(proc.pid, files)
            proc.wait()
            _clear(files)
            spec = dataclasses.replace(spec, accel="tcg")
            accel = "tcg"
            proc = run.spawn(qemu.command_line(spec), log=files.qemu_log, detach=True)
            _wait_qmp(proc, files, QMP_START_TIMEOUT)
        state = {"pid": proc.pid, "mode": mode, "accel": accel, "qemu": str(binary),
                 "argv": qemu.command_line(spec), "port": port,
                 "firmware": qemu.firmware_note(spec), "data_disk": str(data) if data else None,
                 "vm_config": str(vm_config), "measurement": str(measurement),
                 "expected_hash": record.get("expected_hash"), "started": time.time()}
        write_json(files.state, state)
        waited = wait_healthy(proc, files, port, cfg.launch.health_timeout)
        say(f"start: healthy after {waited:.0f} s: {node_http.health_url(port)}")
    except BaseException:
        _stop_started(proc, files)
        raise
    # From the POST on, the node may hold its configuration, and HyperBEAM makes it
    # permanent: only a definite refusal stops the VM; anything else leaves it running.
    failed: list[str] = []
    if body is None:
        say("start: post-start configuration not sent ("
            f"{'--no-auto' if options.no_auto else 'post_start.auto: false'})")
    else:
        try:
            posted = node_http.send_post_start(port, body)
            if posted.state == "refused":
                _stop_started(proc, files)
                raise LaunchError(f"the node did not take the post-start configuration "
                                  f"({posted.describe()}); the VM was stopped",
                                  hint="check post_start.settings and --self/--peer; the "
                                       f"console log is {files.console}")
            failed = after_post_start(port, body, posted)
        except KeyboardInterrupt:
            say(f"start: interrupted during the post-start calls: the VM is left running "
                f"(pid {proc.pid}); stop it with: doit stop")
            raise
    say(f"start: VM running (pid {proc.pid}, {mode}"
        f"{', NOT CONFIDENTIAL' if mode == 'emulated' else ''})\n"
        f"  node:    http://{node_http.host_address(cfg, mode)}:{port}{node_http.HEALTH_PATH}\n"
        f"  console: {files.console}\n  QMP:     {files.qmp}\n  stop:    doit stop")
    if failed:
        raise LaunchError(f"the VM is left running (pid {proc.pid}), but post-start failed:\n  - "
                          + "\n  - ".join(failed),
                          hint="the node keeps the configuration it accepted; see "
                               f"{files.console}; stop the VM with: doit stop")


def dry_run(cfg: Config, paths: Paths, *, vm_config: Path, measurement: Path, image: Path,
            hash_tree: Path, options: StartOptions, identity_dir: Path | None = None) -> None:
    """`start --dry-run`: the same checks, then the decisions and the QEMU line on
    stdout (hbos.launch.plan); nothing is started or written."""
    raw = vmconfig.load(vm_config)
    vm = qemu.VmDefinition.from_vm_config(raw)
    record = launch_record(vm, measurement)
    body = nodeconfig.post_start_for(cfg, record, options.post_start)
    data = Path(options.data_disk).expanduser().resolve() if options.data_disk else None
    p = launch_plan.plan(cfg, paths, vm=vm,
                         disks=qemu.Disks(image=image, hash_tree=hash_tree, data=data),
                         forwards=lambda mode: node_http.forwards(cfg, mode, bool(raw.get("debug"))),
                         identity=lambda mode: checked_identity(record, vm, body, identity_dir, mode),
                         requested_mode=options.mode, qemu_path=options.qemu)
    nif = snp_nif_note(record, p.spec.mode, _allow_no_snp_nif(cfg, options), review=True)
    if nif:
        p = dataclasses.replace(p, notes=(*p.notes, nif.removeprefix("note: ")))
    print(p.describe(), flush=True)


def start_from_build(cfg: Config, paths: Paths, options: StartOptions) -> None:
    """`doit start`: the artifacts of this build directory."""
    start_vm(cfg, paths, vm_config=paths.vm_config, measurement=paths.measurement,
             image=paths.verity_image, hash_tree=paths.hash_tree, options=options,
             identity_dir=paths.identity_dir if cfg.identity.enabled else None)


# ----------------------------------------------------------------- stop and status


def _state(files: qemu.RunFiles) -> dict[str, Any]:
    try:
        return json.loads(files.state.read_text())
    except (OSError, ValueError):
        return {}


def stop_vm(paths: Paths, *, timeout: float = 30.0) -> str:
    """Stop the VM: ACPI power-down when a data disk is attached (let the guest
    flush it), else QMP quit; SIGTERM/SIGKILL as the last resort."""
    files = qemu.RunFiles(paths.run_dir)
    pid = running_pid(files)
    if pid is None:
        stale = files.pidfile.exists()
        _clear(files)
        msg = "the VM is not running" + (" (removed a stale pidfile)" if stale else "")
        say(f"stop: {msg}")
        return msg
    state = _state(files)
    if state.get("data_disk"):
        try:
            qmp.command(files.qmp, "system_powerdown")
            say(f"stop: asked the guest to power down (up to {timeout:.0f} s)")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and is_our_qemu(pid, files.pidfile):
                _reap(pid)
                time.sleep(0.5)
        except (OSError, ValueError, HbosError):
            pass
    if is_our_qemu(pid, files.pidfile):
        try:
            qmp.command(files.qmp, "quit")
            deadline = time.monotonic() + 10
        except (OSError, ValueError, HbosError):
            deadline = 0.0   # QMP is not answering: signals below
        while time.monotonic() < deadline and is_our_qemu(pid, files.pidfile):
            _reap(pid)
            time.sleep(0.2)
    _kill(pid, files)
    if is_our_qemu(pid, files.pidfile):
        raise LaunchError(f"QEMU (pid {pid}) did not stop")
    _clear(files)
    msg = f"stopped the VM (pid {pid})"
    say(f"stop: {msg}")
    return msg


@dataclass(frozen=True)
class VmStatus:
    state: str                   # running | stopped | dead
    pid: int | None = None
    mode: str | None = None
    accel: str | None = None
    port: int | None = None
    qemu_state: str | None = None   # QMP query-status
    healthy: bool | None = None
    health: str = ""
    console: str = ""
    log_tail: str = ""

    def describe(self) -> str:
        if self.state == "stopped":
            return "status: not running"
        if self.state == "dead":
            return (f"status: DEAD: QEMU (pid {self.pid}) is gone without `doit stop`; "
                    f"last output:\n{self.log_tail}")
        conf = "NOT CONFIDENTIAL (emulated)" if self.mode == "emulated" else self.mode
        return (f"status: running (pid {self.pid}, {conf}, accel {self.accel}, "
                f"QEMU {self.qemu_state})\n"
                f"  health: {'OK' if self.healthy else 'not answering'} ({self.health}) "
                f"{node_http.health_url(self.port or 0)}\n  console: {self.console}")


def vm_status(paths: Paths) -> VmStatus:
    files = qemu.RunFiles(paths.run_dir)
    state = _state(files)
    pid = running_pid(files)
    if pid is None:
        recorded = read_pid(files.pidfile)
        if recorded is not None:
            return VmStatus("dead", pid=recorded, mode=state.get("mode"),
                            console=str(files.console), log_tail=_diagnostics(files))
        return VmStatus("stopped")
    try:
        qstate = qmp.command(files.qmp, "query-status")["status"]
    except (OSError, ValueError, HbosError) as exc:
        qstate = f"QMP unavailable: {exc}"
    port = state.get("port")
    healthy, health = node_http.probe_health(port) if port else (None, "unknown port")
    return VmStatus("running", pid=pid, mode=state.get("mode"), accel=state.get("accel"),
                    port=port, qemu_state=qstate, healthy=healthy, health=health,
                    console=str(files.console))


def print_status(paths: Paths) -> None:
    status = vm_status(paths)
    print(status.describe())
    if status.state == "dead":
        raise LaunchError(f"the VM died (pid {status.pid}); see {status.console}",
                          hint="start it again: doit start")


# ----------------------------------------------------------------- doit glue


def options_from_params(data_disk: str = "", self_url: str = "", peer_url: str = "",
                        no_auto: bool = False, dry_run: bool = False, mode: str = "",
                        qemu: str = "", allow_no_snp_nif: bool = False) -> StartOptions:
    """StartOptions from `doit start`'s params (hbos.tasks.params.START; start_release too)."""
    return StartOptions(data_disk=Path(data_disk) if data_disk else None,
                        self_url=self_url, peer_url=peer_url, no_auto=bool(no_auto),
                        dry_run=bool(dry_run), mode=mode, qemu=qemu,
                        allow_no_snp_nif=bool(allow_no_snp_nif))
