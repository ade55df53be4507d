"""The launch decision without launching: `doit start --dry-run [--mode M] [--qemu PATH]`.

`plan()` makes the decisions `hbos.launch.start_vm` makes (mode, accelerator,
QEMU and its SNP flavour, firmware, CPU model) and builds the exact argv with
`hbos.qemu.command_line`, touching nothing: no QEMU is started (not even the
KVM probe), no run file is written. `--mode snp` builds the SEV-SNP command line
on any host, so an operator can review it before moving to the SNP host: the
C-bit position then comes from launch.cbitpos, else this CPU's CPUID, else
DEFAULT_CBITPOS (EPYC Milan, Genoa and Turin all use 51).

`describe()` prints the decisions one per line and the command as one
shell-quoted line beginning `qemu: ` (paste it after the prefix into a shell).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hbos import qemu, run as hrun
from hbos.config import Config
from hbos.errors import LaunchError
from hbos.paths import Paths

DEFAULT_CBITPOS = 51
MODES = ("", "auto", "snp", "emulated")   # --mode values ("" = launch.snp)


def mode_setting(configured: str, requested: str) -> str:
    """launch.snp (auto|required|off) after --mode (snp -> required, emulated -> off)."""
    if requested not in MODES:
        raise LaunchError(f"--mode {requested!r} is not one of auto, snp, emulated")
    return {"": configured, "auto": "auto", "snp": "required", "emulated": "off"}[requested]


def dry_run_mode(setting: str, ready: bool, why: str) -> tuple[qemu.Mode, str]:
    """Like launch.decide_mode, except that `required` (--mode snp) builds the SNP
    command line even here: a dry run shows what the SNP host would run."""
    if setting == "off":
        return "emulated", "SEV-SNP off: launch.snp: off or --mode emulated"
    if ready:
        return "snp", why
    if setting == "required":
        return "snp", f"requested; this host cannot run it ({why}): review only"
    return "emulated", f"this host cannot run SEV-SNP ({why})"


def dry_run_accel(setting: str, mode: qemu.Mode, kvm_dev: Path = Path("/dev/kvm")
                  ) -> tuple[qemu.Accel, str]:
    """The accelerator a dry run shows. SNP: KVM. Emulated with auto: start probes
    KVM with a throwaway guest; a dry run starts nothing, so it shows KVM when
    /dev/kvm opens (start falls back to TCG if the probe fails), else TCG."""
    if mode == "snp":
        if setting == "tcg":
            raise LaunchError("launch.accel is 'tcg' but an SEV-SNP guest needs KVM",
                              hint="set launch.accel: auto (or --mode emulated)")
        return "kvm", "SEV-SNP needs KVM"
    if setting in ("kvm", "tcg"):
        return setting, f"launch.accel: {setting}"  # type: ignore[return-value]
    try:
        fd = os.open(kvm_dev, os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        return "tcg", f"{kvm_dev} unusable ({exc.strerror})"
    return "kvm", ("auto: not probed in a dry run; start probes KVM and falls back "
                   "to TCG if a KVM guest cannot boot")


def cbitpos(configured: int, from_cpuid: int | None) -> tuple[int, str]:
    """C-bit position for an SNP dry run, and where it came from."""
    if configured:
        return configured, "launch.cbitpos"
    if from_cpuid:
        return from_cpuid, "CPUID 0x8000001F"
    return DEFAULT_CBITPOS, (f"default {DEFAULT_CBITPOS}: no launch.cbitpos and this CPU "
                             "reports no SEV C-bit")


@dataclass(frozen=True)
class Plan:
    spec: qemu.LaunchSpec
    argv: list[str]
    mode_why: str
    accel_why: str
    qemu_where: str
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        spec = self.spec
        v = ".".join(map(str, spec.host.version))
        flavour = f", {qemu.flavour(spec.host.version)} SNP syntax" if spec.mode == "snp" else ""
        lines = [f"mode: {spec.mode} ({self.mode_why})"
                 + (" NOT CONFIDENTIAL" if spec.mode == "emulated" else ""),
                 f"accel: {spec.accel} ({self.accel_why})",
                 f"qemu-binary: {spec.host.qemu} {v} ({self.qemu_where}{flavour})",
                 f"firmware: {qemu.firmware_note(spec)}"]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"qemu: {hrun.quote(self.argv)}")
        return "\n".join(lines)


def plan(cfg: Config, paths: Paths, *, vm: qemu.VmDefinition, disks: qemu.Disks,
         forwards: Callable[[qemu.Mode], tuple[qemu.Forward, ...]],
         identity: Callable[[qemu.Mode], dict[str, str]] | None = None,
         requested_mode: str = "", qemu_path: str = "") -> Plan:
    """The decisions and argv `doit start` would use, computed without side effects.

    `forwards(mode)` and `identity(mode)` (ID block, ID auth, HOST_DATA as
    launch.launch_identity gives them) depend on the mode decided here."""
    from hbos import launch
    setting = mode_setting(cfg.launch.snp, requested_mode)
    ready, why = launch.snp_host_ready()
    mode, mode_why = dry_run_mode(setting, ready, why)
    if qemu_path:
        binary, where = Path(qemu_path).expanduser().resolve(), "--qemu"
        if not binary.exists():
            raise LaunchError(f"--qemu {binary} does not exist")
    else:
        binary = launch.find_qemu(cfg, paths, mode)
        where = "launch.qemu" if cfg.launch.qemu else (
            "SNP release or PATH" if mode == "snp" else "PATH")
    facts = launch.host_facts(binary)
    notes: list[str] = []
    if mode == "snp" and facts.cpu_models and vm.vcpu_type not in facts.cpu_models:
        # start would refuse; the dry run shows the line the SNP host's QEMU must accept
        notes.append(f"this QEMU has no CPU model {vm.vcpu_type} (the measured vcpu_type): "
                     f"the SNP host's QEMU must have it (QEMU >= 8.1, or --qemu PATH)")
        facts = dataclasses.replace(facts, cpu_models=frozenset())
    else:
        _model, cpu_note = qemu.cpu_model(mode, vm.vcpu_type, facts.cpu_models)
        if cpu_note:
            notes.append(cpu_note)
    if mode == "snp" and qemu.flavour(facts.version) == "amd-fork":
        notes.append(f"QEMU {'.'.join(map(str, facts.version))} < 9.1: AMD-fork SNP syntax; "
                     f"for upstream QEMU >= 9.1 (Debian trixie) pass --qemu PATH")
    accel, accel_why = dry_run_accel(cfg.launch.accel, mode)
    snp = None
    if mode == "snp":
        cbit, cbit_why = cbitpos(cfg.launch.cbitpos, launch.host_cbitpos())
        notes.append(f"C-bit position {cbit} ({cbit_why})")
        snp = launch.snp_options(
            dataclasses.replace(cfg, launch=dataclasses.replace(cfg.launch, cbitpos=cbit)),
            identity(mode) if identity is not None else None)
    spec = qemu.LaunchSpec(vm=vm, disks=disks, run=qemu.RunFiles(paths.run_dir), host=facts,
                           mode=mode, accel=accel, forwards=forwards(mode), snp=snp,
                           machine=cfg.launch.machine, extra_args=cfg.launch.extra_args)
    return Plan(spec=spec, argv=qemu.command_line(spec), mode_why=mode_why,
                accel_why=accel_why, qemu_where=where, notes=tuple(notes))
