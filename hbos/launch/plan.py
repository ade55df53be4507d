"""The launch decision, apart from running it: mode, accelerator, QEMU binary,
firmware, CPU model and the exact argv.

`plan()` is the one place that decides; `doit start` (hbos.launch.start.start_vm) runs
what it returns, and `doit start --dry-run [--mode M] [--qemu PATH]` prints it
(`review=True`): then nothing is started (not even the KVM probe) and no run
file is written. `--mode snp` with review builds the SEV-SNP command line on any
host, so an operator can check it before moving to the SNP host: the C-bit
position then comes from launch.cbitpos, else this CPU's CPUID, else
DEFAULT_CBITPOS (EPYC Milan, Genoa and Turin all use 51).

`describe()` prints the decisions one per line and the command as one
shell-quoted line beginning `qemu: ` (paste it after the prefix into a shell).

`find_qemu()` names the QEMU an SNP launch uses (launch.qemu, else the AMDSEV
SNP bundle's, else PATH); hbos.host.check checks that same binary.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hbos.config import Config
from hbos.errors import HbosError, LaunchError
from hbos.launch import qemu
from hbos.paths import Paths
from hbos.stages import snp_bundle
from hbos.util import limits, run as hrun, tools

DEFAULT_CBITPOS = 51
MODES = ("", "auto", "snp", "emulated")   # --mode values ("" = launch.snp)

# (QEMU facts, CPU model) -> (KVM usable?, why); start boots a throwaway guest
KvmProbe = Callable[[qemu.HostFacts, str], tuple[bool, str]]


# ----------------------------------------------------------------- host facts


def snp_host_ready(root: Path = Path("/")) -> tuple[bool, str]:
    """A quick SNP readiness probe: /dev/sev, /dev/kvm, kvm_amd.sev_snp=Y.

    hbos.host.check.run_checks() does the full job (firmware version, RMP, ...);
    `doit check_host` prints it. This is the launch decision only.
    """
    why = []
    if not (root / "dev/sev").exists():
        why.append("no /dev/sev")
    if not (root / "dev/kvm").exists():
        why.append("no /dev/kvm")
    param = root / "sys/module/kvm_amd/parameters/sev_snp"
    try:
        value = param.read_text().strip()
    except OSError:
        value = ""
    if value not in ("Y", "1"):
        why.append("kvm_amd.sev_snp is not enabled" if value else "kvm_amd has no sev_snp")
    return (not why, "; ".join(why) or "SEV-SNP host")


def host_cbitpos(cpuid_dev: Path = Path("/dev/cpu/0/cpuid")) -> int | None:
    """C-bit position from CPUID 0x8000001F via the cpuid driver (modprobe cpuid)."""
    try:
        fd = os.open(cpuid_dev, os.O_RDONLY)
    except OSError:
        return None
    try:
        return qemu.cbitpos_from_cpuid(os.pread(fd, 16, 0x8000001F))
    except OSError:
        return None
    finally:
        os.close(fd)


def find_qemu(cfg: Config, paths: Paths) -> tuple[Path | None, str]:
    """The QEMU that would launch SNP guests, and where it came from (None: why there is none)."""
    if cfg.launch.qemu:
        q = cfg.path(cfg.launch.qemu)
        return (q, "launch.qemu") if q.exists() else (None, f"launch.qemu {q} does not exist")
    if snp_bundle.configured(cfg):
        try:
            return snp_bundle.qemu(paths), "SNP bundle"
        except HbosError as exc:
            return None, exc.message
    found = tools.find("qemu-system-x86_64")
    return (Path(found), "PATH") if found else (None, "qemu-system-x86_64 not on PATH")


def host_facts(binary: Path) -> qemu.HostFacts:
    version = qemu.parse_version(hrun.output([binary, "--version"]))
    models = qemu.parse_cpu_models(hrun.output([binary, "-cpu", "help"]))
    return qemu.HostFacts(qemu=binary, version=version, cpu_models=models)


def kvm_opens(kvm_dev: Path = Path("/dev/kvm")) -> tuple[bool, str]:
    """The review's stand-in for start's KVM probe: /dev/kvm opens read-write."""
    try:
        fd = os.open(kvm_dev, os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        return False, f"{kvm_dev} unusable ({exc.strerror})"
    return True, ("auto: not probed in a dry run; start probes KVM and falls back "
                  "to TCG if a KVM guest cannot boot")


# ----------------------------------------------------------------- decisions


def mode_setting(configured: str, requested: str) -> str:
    """launch.snp (auto|required|off) after --mode (snp -> required, emulated -> off)."""
    if requested not in MODES:
        raise LaunchError(f"--mode {requested!r} is not one of auto, snp, emulated")
    return {"": configured, "auto": "auto", "snp": "required", "emulated": "off"}[requested]


def decide_mode(setting: str, ready: bool, why: str, review: bool = False
                ) -> tuple[qemu.Mode, str]:
    """launch.snp (auto|required|off) and the host's readiness -> the mode and why.

    `required` on a host that cannot run SNP refuses, except in a review (dry
    run), which builds the SNP command line the SNP host would run."""
    if setting == "off":
        return "emulated", "SEV-SNP off: launch.snp: off or --mode emulated"
    if ready:
        return "snp", why
    if setting == "required":
        if review:
            return "snp", f"requested; this host cannot run it ({why}): review only"
        raise LaunchError(f"launch.snp is 'required' but this host cannot run SEV-SNP guests "
                          f"({why})", hint="see: doit check_host; or set launch.snp: auto")
    return "emulated", f"this host cannot run SEV-SNP ({why})"


def choose_accel(setting: str, mode: qemu.Mode, probe: Callable[[], tuple[bool, str]]
                 ) -> tuple[qemu.Accel, str]:
    """launch.accel (auto|kvm|tcg) -> the accelerator and why; `probe` decides auto."""
    if mode == "snp":
        if setting == "tcg":
            raise LaunchError("launch.accel is 'tcg' but an SEV-SNP guest needs KVM",
                              hint="set launch.accel: auto (or launch.snp: off / "
                                   "--mode emulated to emulate)")
        return "kvm", "SEV-SNP needs KVM"
    if setting in ("kvm", "tcg"):
        return setting, f"launch.accel: {setting}"  # type: ignore[return-value]
    ok, why = probe()
    return ("kvm", why) if ok else ("tcg", f"{why}; using TCG")


def qemu_binary(cfg: Config, paths: Paths, mode: qemu.Mode, given: str = ""
                ) -> tuple[Path, str]:
    """--qemu, else launch.qemu, else the SNP bundle's QEMU (SNP mode), else PATH;
    and where it came from."""
    override = qemu_override(given)
    if override is not None:
        return override, "--qemu"
    if mode == "snp" or cfg.launch.qemu:
        found, where = find_qemu(cfg, paths)
        if found is None:
            raise LaunchError(f"no QEMU to launch with: {where}")
        return found, where
    return Path(tools.require("qemu-system-x86_64")), "PATH"


def cbitpos(configured: int, from_cpuid: int | None, review: bool = False) -> tuple[int, str]:
    """The C-bit position and where it came from; a review falls back to the default."""
    if configured:
        return configured, "launch.cbitpos"
    if from_cpuid:
        return from_cpuid, "CPUID 0x8000001F"
    if not review:
        raise LaunchError("cannot read the C-bit position from CPUID 0x8000001F "
                          "(/dev/cpu/0/cpuid)", hint="modprobe cpuid, or set launch.cbitpos")
    return DEFAULT_CBITPOS, (f"default {DEFAULT_CBITPOS}: no launch.cbitpos and this CPU "
                             "reports no SEV C-bit")


def qemu_override(qemu_path: str) -> Path | None:
    """--qemu PATH, checked (None when not given)."""
    if not qemu_path:
        return None
    binary = Path(qemu_path).expanduser().resolve()
    if not binary.is_file():
        raise LaunchError(f"--qemu {binary} does not exist")
    return binary


CPUID_DEV = Path("/dev/cpu/0/cpuid")


def modprobe_cpuid_argv() -> list[str]:
    return ["modprobe", "cpuid"]


def load_cpuid_driver(dev: Path = CPUID_DEV, euid: int | None = None, runner=None) -> bool:
    """At an SNP launch: the C-bit position is read from /dev/cpu/0/cpuid; when it
    is missing and we are root, `modprobe cpuid` (and say so). True if it exists."""
    if dev.exists():
        return True
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return False
    print(f"start: {dev} is missing: modprobe cpuid (to read the C-bit position)",
          file=sys.stderr, flush=True)
    try:
        (runner or (lambda argv: hrun.run(argv, quiet=True)))(modprobe_cpuid_argv())
    except Exception as exc:  # noqa: BLE001 - reported, then snp_options explains
        print(f"start: modprobe cpuid failed: {exc}", file=sys.stderr, flush=True)
    return dev.exists()


def _b64_file(cfg: Config, value: str, what: str) -> str:
    if not value:
        return ""
    p = cfg.path(value)
    return limits.read_text(p, 64 << 10, f"launch.{what}", LaunchError).strip()


def snp_options(cfg: Config, generated: dict[str, str] | None = None,
                cbit: int | None = None) -> qemu.SnpOptions:
    """`generated`: id_block/id_auth/host_data (base64) from the build or release;
    the launch.* files, when set, win. `cbit`: default launch.cbitpos, else CPUID."""
    if cbit is None:
        if not cfg.launch.cbitpos:
            load_cpuid_driver()
        cbit = cbitpos(cfg.launch.cbitpos, host_cbitpos())[0]
    la = cfg.launch
    gen = generated or {}
    return qemu.SnpOptions(cbitpos=cbit, reduced_phys_bits=la.reduced_phys_bits,
                           id_block=_b64_file(cfg, la.id_block, "id_block")
                           or gen.get("id_block", ""),
                           id_auth=_b64_file(cfg, la.id_auth, "id_auth")
                           or gen.get("id_auth", ""),
                           host_data=_b64_file(cfg, la.host_data, "host_data")
                           or gen.get("host_data", ""),
                           certs_path=str(cfg.path(la.certs)) if la.certs else "")


# ----------------------------------------------------------------- the plan


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
         requested_mode: str = "", qemu_path: str = "", review: bool = True,
         kvm_probe: KvmProbe | None = None) -> Plan:
    """The decisions and argv of a launch. `review` (the dry run): no side effect,
    SNP reviewable on any host; else `kvm_probe` decides launch.accel: auto.

    `forwards(mode)` and `identity(mode)` (ID block, ID auth, HOST_DATA as
    hbos.launch.start.checked_identity gives them) depend on the mode decided here."""
    setting = mode_setting(cfg.launch.snp, requested_mode)
    ready, why = snp_host_ready()
    mode, mode_why = decide_mode(setting, ready, why, review=review)
    generated = identity(mode) if identity is not None else None
    binary, where = qemu_binary(cfg, paths, mode, qemu_path)
    facts = host_facts(binary)
    notes: list[str] = []
    model = vm.vcpu_type
    if review and mode == "snp" and facts.cpu_models and vm.vcpu_type not in facts.cpu_models:
        # start refuses; the review shows the line the SNP host's QEMU must accept
        notes.append(f"this QEMU has no CPU model {vm.vcpu_type} (the measured vcpu_type): "
                     f"the SNP host's QEMU must have it (QEMU >= 8.1, or --qemu PATH)")
        facts = dataclasses.replace(facts, cpu_models=frozenset())
    else:
        model, cpu_note = qemu.cpu_model(mode, vm.vcpu_type, facts.cpu_models)
        if cpu_note:
            notes.append(cpu_note)
    if mode == "snp" and qemu.flavour(facts.version) == "amd-fork":
        notes.append(f"QEMU {'.'.join(map(str, facts.version))} < 9.1: AMD-fork SNP syntax; "
                     f"for upstream QEMU >= 9.1 (Debian trixie) pass --qemu PATH")
    snp = None
    if mode == "snp":
        if not review and not cfg.launch.cbitpos:
            load_cpuid_driver()   # a launch may load the cpuid driver; a review changes nothing
        cbit, cbit_why = cbitpos(cfg.launch.cbitpos, host_cbitpos(), review)
        notes.append(f"C-bit position {cbit} ({cbit_why})")
        snp = snp_options(cfg, generated, cbit)
    if review or kvm_probe is None:
        accel, accel_why = choose_accel(cfg.launch.accel, mode, kvm_opens)
    else:
        probe = kvm_probe
        accel, accel_why = choose_accel(cfg.launch.accel, mode, lambda: probe(facts, model))
    spec = qemu.LaunchSpec(vm=vm, disks=disks, run=qemu.RunFiles(paths.run_dir), host=facts,
                           mode=mode, accel=accel, forwards=forwards(mode), snp=snp,
                           machine=cfg.launch.machine, extra_args=cfg.launch.extra_args)
    return Plan(spec=spec, argv=qemu.command_line(spec), mode_why=mode_why,
                accel_why=accel_why, qemu_where=where, notes=tuple(notes))
