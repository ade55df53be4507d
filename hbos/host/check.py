"""Can this host run SEV-SNP guests? The checks behind `doit check_host` and `hbos check-host`.

Each check reads the host through a root directory (`/` normally, a fake tree
in tests) and returns a verdict (pass / fail / unknown) with a one-line detail
and, for a failure, the fix. The device probes (ioctls on /dev/kvm and
/dev/sev) and the QEMU runner are injectable, so tests never touch the real
devices or programs. The QEMU checked is the one an SNP launch would use
(hbos.launch.plan.find_qemu); `check_host()` is the doit action, and the
`hbos check-host` command (hbos.cli.check_host) prints the same checks.

Sources for what a real SNP host shows:
- kvm_amd parameters sev/sev_es/sev_snp read Y (or 1) on an SNP host
  (AMDESE/AMDSEV README); `debug_swap` (Linux 6.8+) makes KVM set
  SEV_FEATURES bit 5 (DebugSwap, 0x20) in every SEV-ES/SNP VMSA it builds
  with the legacy KVM_SEV_*_INIT path, which changes the launch digest.
- ccp driver: "SEV API:1.55 build:21", "SEV-SNP API:1.55 build:21";
  kernel: "SEV-SNP: RMP table physical range [0x... - 0x...]" (6.11+;
  older SNP kernels print "RMP table physical address ... - ..."), or
  "SEV-SNP: Memory for the RMP table has not been reserved by BIOS";
  kvm_amd: "SEV-SNP enabled (ASIDs 1 - 99)" (older: "SEV-ES and SEV-SNP
  supported: 99 ASIDs"). Seen in AMDESE/AMDSEV issues #137, #189, #197, #246.
- Linux refuses SNP firmware older than 1.51 (drivers/crypto/ccp/sev-dev.c,
  SNP_MIN_API_MAJOR/MINOR).
- SNP_PLATFORM_STATUS through /dev/sev (include/uapi/linux/psp-sev.h:
  SEV_ISSUE_CMD, struct sev_user_data_snp_status) reports the same firmware
  version and whether the RMP is initialized, without dmesg.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import stat
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from hbos.config import Config
from hbos.errors import HostError
from hbos.host import system
from hbos.launch import plan as launch_plan
from hbos.paths import Paths
from hbos.util import run

PASS, FAIL, UNKNOWN = "pass", "fail", "unknown"

# drivers/crypto/ccp/sev-dev.c: SNP_MIN_API_MAJOR.SNP_MIN_API_MINOR
SNP_MIN_API = (1, 51)
# SEV_FEATURES bits that a kvm_amd parameter switches on (AMD APM vol. 2,
# table 15-36 "SEV_FEATURES": bit 0 SNPActive, bit 5 DebugSwap).
SNP_ACTIVE = 0x1
SEV_FEATURE_PARAMS: dict[str, int] = {"debug_swap": 0x20}

BIOS_HINTS = ("in the BIOS/UEFI setup (names vary by vendor): enable SMEE / Secure Memory "
              "Encryption (SME), enable SEV-SNP / Secure Nested Paging, enable SNP Memory "
              "Coverage (reserves the RMP table), set the minimum SEV non-ES ASID (\"SEV-ES "
              "ASID space limit\") above 1, e.g. 100, so SEV-ES/SNP guests get ASIDs; keep the "
              "IOMMU enabled; then update the BIOS/SEV firmware if SNP still stays off")


# ----------------------------------------------------------------- results


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str          # PASS | FAIL | UNKNOWN
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class KvmStatus:
    """What /dev/kvm did when used like QEMU uses it."""
    error: str | None = None        # None: a VM and a vCPU could be set up
    api_version: int | None = None
    vm_types: int | None = None     # KVM_CAP_VM_TYPES bitmask (0: not reported)


@dataclass(frozen=True)
class SevStatus:
    """/dev/sev: opened? and what SNP_PLATFORM_STATUS said."""
    error: str | None = None        # None: the device opened read-write
    snp_error: str | None = None    # SNP_PLATFORM_STATUS failed (SNP not initialized)
    api: tuple[int, int] | None = None
    build: int | None = None
    state: int | None = None
    rmp_initialized: bool | None = None


@dataclass
class Probes:
    """The parts of the check that touch devices or run programs."""
    kvm: Callable[[Path], KvmStatus] = field(default_factory=lambda: probe_kvm)
    sev: Callable[[Path], SevStatus] = field(default_factory=lambda: probe_sev)
    qemu_objects: Callable[[Path], str] = field(default_factory=lambda: qemu_object_help)


# ----------------------------------------------------------------- reading the host


class HostView:
    """Reads files of the host under `root` (tolerating absent ones)."""

    def __init__(self, root: Path | str = "/") -> None:
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def read(self, rel: str) -> str | None:
        try:
            return self.path(rel).read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError:
            return None

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def kernel_log(self) -> str | None:
        """The kernel log: /dev/kmsg records, else /var/log/dmesg text, else None."""
        text = read_kmsg(self.path("dev/kmsg"))
        if text is None:
            text = self.read("var/log/dmesg")
        return text


def read_kmsg(path: Path) -> str | None:
    """Messages from a /dev/kmsg-format file ("PRI,SEQ,TS,FLAGS;text" lines).

    Reads non-blocking until EAGAIN (the real device) or EOF (a file).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    lines: list[str] = []
    try:
        if stat.S_ISCHR(os.fstat(fd).st_mode):
            while True:
                try:
                    rec = os.read(fd, 8192)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EPIPE:     # a record was overwritten: go on
                        continue
                    break
                if not rec:
                    break
                lines.extend(rec.decode(errors="replace").splitlines())
        else:
            data = b""
            while chunk := os.read(fd, 1 << 16):
                data += chunk
            lines = data.decode(errors="replace").splitlines()
    finally:
        os.close(fd)
    out = []
    for line in lines:
        if line.startswith(" "):          # continuation (SUBSYSTEM=...) lines
            continue
        _, sep, msg = line.partition(";")
        out.append(msg if sep else line)
    return "\n".join(out)


def cpu_flags(cpuinfo: str) -> set[str]:
    m = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    return set(m.group(1).split()) if m else set()


def cpu_vendor(cpuinfo: str) -> str:
    m = re.search(r"^vendor_id\s*:\s*(\S+)", cpuinfo, re.M)
    return m.group(1) if m else ""


def param_on(value: str | None) -> bool | None:
    """A module parameter file's value as a boolean (None: absent)."""
    if value is None:
        return None
    return value.strip() in ("Y", "y", "1")


@dataclass(frozen=True)
class LogFacts:
    """What the kernel log says about SEV/SNP."""
    sev_api: tuple[int, int, int] | None = None     # major, minor, build
    snp_api: tuple[int, int, int] | None = None
    rmp_range: str | None = None
    rmp_not_reserved: bool = False
    snp_init_failed: str | None = None
    snp_asids: str | None = None


def parse_kernel_log(text: str) -> LogFacts:
    def api(pattern: str):
        m = re.search(pattern + r"\s*API:(\d+)\.(\d+)\s+build:(\d+)", text)
        return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None
    rmp = re.search(r"RMP table physical (?:range|address)\s*:?\s*(\[?0x[0-9a-fA-F]+\s*-\s*"
                    r"0x[0-9a-fA-F]+\]?)", text)
    init = re.search(r"SEV-SNP: failed to INIT[^\n]*", text)
    asids = re.search(r"SEV-SNP enabled \(ASIDs ([^)]*)\)"
                      r"|SEV-ES and SEV-SNP supported: (\d+) ASIDs", text)
    return LogFacts(
        sev_api=api(r"(?<!-)\bSEV"), snp_api=api(r"SEV-SNP"),
        rmp_range=rmp.group(1) if rmp else None,
        rmp_not_reserved="RMP table has not been reserved by BIOS" in text,
        snp_init_failed=init.group(0) if init else None,
        snp_asids=(asids.group(1) or asids.group(2)) if asids else None)


# ----------------------------------------------------------------- device probes

# ioctl numbers: _IO(KVMIO=0xAE, n) and _IOWR/_IOW with the struct size
# (include/uapi/linux/kvm.h).
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
KVM_CREATE_VCPU = 0xAE41
KVM_GET_MSRS = 0xC008AE88          # _IOWR(KVMIO, 0x88, struct kvm_msrs)  (system fd: feature MSRs)
KVM_SET_MSRS = 0x4008AE89          # _IOW(KVMIO, 0x89, struct kvm_msrs)
KVM_CAP_VM_TYPES = 235
KVM_X86_SNP_VM = 4
KVM_API_VERSION = 12
# QEMU sets IA32_ARCH_CAPABILITIES on every vCPU at start and aborts
# ("failed to set MSR 0x10a") when KVM refuses it; this machine's KVM does.
MSR_IA32_ARCH_CAPABILITIES = 0x10A

# /dev/sev: SEV_ISSUE_CMD = _IOWR('S', 0, struct sev_issue_cmd /* packed, 16 bytes */)
SEV_ISSUE_CMD = 0xC0105300
SNP_PLATFORM_STATUS = 9
SNP_STATUS_SIZE = 32               # struct sev_user_data_snp_status (packed)
SNP_STATUS_BUF = 4096              # room to spare should the kernel struct grow


def _msr_buf(index: int, value: int = 0) -> bytearray:
    # struct kvm_msrs {u32 nmsrs, pad} + struct kvm_msr_entry {u32 index, reserved; u64 data}
    return bytearray(struct.pack("=IIIIQ", 1, 0, index, 0, value))


def _open_chardev(dev: Path) -> tuple[int | None, str]:
    """(fd, "") for a character device opened read-write, else (None, why)."""
    try:
        if not stat.S_ISCHR(os.stat(dev).st_mode):
            return None, f"{dev} is not a character device"
        return os.open(dev, os.O_RDWR | os.O_CLOEXEC), ""
    except OSError as exc:
        return None, f"cannot open {dev}: {exc.strerror}"


def probe_kvm(dev: Path) -> KvmStatus:
    """Use /dev/kvm as QEMU would at start: API version, a VM, a vCPU, MSR 0x10a."""
    fd, error = _open_chardev(dev)
    if fd is None:
        return KvmStatus(error=error)
    fds = [fd]
    try:
        try:
            api = fcntl.ioctl(fd, KVM_GET_API_VERSION)
        except OSError as exc:
            return KvmStatus(error=f"KVM_GET_API_VERSION failed: {exc.strerror}")
        if api != KVM_API_VERSION:
            return KvmStatus(error=f"KVM API version {api}, expected {KVM_API_VERSION}",
                             api_version=api)
        try:
            vm_types = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_VM_TYPES)
        except OSError:
            vm_types = 0
        try:
            vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
            fds.append(vm)
        except OSError as exc:
            return KvmStatus(error=f"KVM_CREATE_VM failed: {exc.strerror}", api_version=api,
                             vm_types=vm_types)
        try:
            vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
            fds.append(vcpu)
        except OSError as exc:
            return KvmStatus(error=f"KVM_CREATE_VCPU failed: {exc.strerror}", api_version=api,
                             vm_types=vm_types)
        feature = _msr_buf(MSR_IA32_ARCH_CAPABILITIES)
        try:
            supported = fcntl.ioctl(fd, KVM_GET_MSRS, feature) == 1
        except OSError:
            supported = False
        if supported:
            value = struct.unpack("=IIIIQ", feature)[4]
            try:
                done = fcntl.ioctl(vcpu, KVM_SET_MSRS, _msr_buf(MSR_IA32_ARCH_CAPABILITIES, value))
            except OSError as exc:
                done = -(exc.errno or 0)
            if done != 1:
                return KvmStatus(
                    error=f"KVM refuses MSR {MSR_IA32_ARCH_CAPABILITIES:#x} "
                          "(IA32_ARCH_CAPABILITIES) on a new vCPU, so QEMU aborts at start "
                          "(\"failed to set MSR 0x10a\")", api_version=api, vm_types=vm_types)
        return KvmStatus(api_version=api, vm_types=vm_types)
    finally:
        for f in reversed(fds):
            os.close(f)


def probe_sev(dev: Path) -> SevStatus:
    """Open /dev/sev read-write and ask the firmware for SNP_PLATFORM_STATUS."""
    fd, error = _open_chardev(dev)
    if fd is None:
        return SevStatus(error=error)
    try:
        data = ctypes.create_string_buffer(SNP_STATUS_BUF)
        cmd = bytearray(struct.pack("=IQI", SNP_PLATFORM_STATUS, ctypes.addressof(data), 0))
        try:
            fcntl.ioctl(fd, SEV_ISSUE_CMD, cmd)
        except OSError as exc:
            fw_error = struct.unpack("=IQI", cmd)[2]
            return SevStatus(snp_error=f"SNP_PLATFORM_STATUS failed: {exc.strerror}"
                                       f" (firmware error {fw_error:#x})")
        return parse_snp_status(data.raw)
    finally:
        os.close(fd)


def parse_snp_status(raw: bytes) -> SevStatus:
    """struct sev_user_data_snp_status: api_major, api_minor, state, rmp bit, build_id."""
    major, minor, state, flags, build = struct.unpack_from("=BBBBI", raw)
    return SevStatus(api=(major, minor), build=build, state=state,
                     rmp_initialized=bool(flags & 1))


def qemu_object_help(qemu: Path) -> str:
    """`qemu-system-x86_64 -object help`: the user-creatable object types."""
    return run.output([str(qemu), "-object", "help"], check=False, timeout=60)


# ----------------------------------------------------------------- the checks


@dataclass(frozen=True)
class Facts:
    """Everything the checks decide on, gathered once."""
    release: str | None
    cpuinfo: str | None
    kvm_amd: dict[str, bool | None]         # parameter -> on? (None: absent)
    kvm_amd_loaded: bool
    kvm_present: bool
    sev_present: bool
    log: LogFacts | None


def gather(view: HostView) -> Facts:
    params = {name: param_on(view.read(f"sys/module/kvm_amd/parameters/{name}"))
              for name in ("sev", "sev_es", "sev_snp", *SEV_FEATURE_PARAMS)}
    log_text = view.kernel_log()
    return Facts(
        release=system.running_kernel(view.root) or None,
        cpuinfo=view.read("proc/cpuinfo"),
        kvm_amd=params,
        kvm_amd_loaded=view.exists("sys/module/kvm_amd"),
        kvm_present=view.exists("dev/kvm"),
        sev_present=view.exists("dev/sev"),
        log=parse_kernel_log(log_text) if log_text is not None else None)


def check_kernel(f: Facts) -> Check:
    if f.release is None:
        return Check("kernel", UNKNOWN, "cannot read /proc/sys/kernel/osrelease")
    # SNP bundle (AMDSEV) host kernels carry "snp" in their release (6.9.0-rc7-snp-host-05b10142ac6a)
    if "snp" in f.release.lower() and "guest" not in f.release.lower():
        return Check("kernel", PASS, f"{f.release} (SNP host kernel)")
    if system.kernel_version(f.release) >= system.UPSTREAM_SNP_KERNEL:
        return Check("kernel", PASS, f"{f.release} (upstream SNP host support since 6.11)")
    return Check("kernel", FAIL, f"{f.release}: no SNP host support (needs 6.11+ or an SNP "
                                 "host kernel)",
                 fix="doit setup_host (Debian trixie: linux-image-amd64 6.12; else an SNP "
                     "release's host kernel), reboot into it")


def check_cpu(f: Facts) -> Check:
    if f.cpuinfo is None:
        return Check("CPU SEV flags", UNKNOWN, "cannot read /proc/cpuinfo")
    flags = cpu_flags(f.cpuinfo)
    want = ["sev", "sev_es", "sev_snp"]
    missing = [x for x in want if x not in flags]
    if not missing:
        return Check("CPU SEV flags", PASS, "sev sev_es sev_snp")
    have = " ".join(x for x in want if x in flags) or "none"
    detail = f"missing {' '.join(missing)} (present: {have})"
    if cpu_vendor(f.cpuinfo) != "AuthenticAMD":
        fix = "SEV-SNP needs an AMD EPYC 7003 (Milan) or newer CPU"
    elif "hypervisor" in flags and "sev" not in flags:
        fix = ("this is a virtual machine: SEV-SNP guests need a bare-metal AMD EPYC "
               "(Milan or newer) host")
    else:
        fix = "SNP is off in the BIOS or not enabled by the kernel: see the BIOS row"
    return Check("CPU SEV flags", FAIL, detail, fix=fix)


def check_kvm_amd(f: Facts, name: str) -> Check:
    label = f"kvm_amd.{name}"
    value = f.kvm_amd.get(name)
    if not f.kvm_amd_loaded:
        return Check(label, FAIL, "kvm_amd is not loaded",
                     fix="modprobe kvm_amd (needs an AMD CPU with SVM; not possible in a VM "
                         "without nested SVM)")
    if value is None:
        if name == "sev_snp":
            return Check(label, FAIL, "parameter absent: this kernel's KVM has no SNP support",
                         fix="install the SNP host kernel (doit setup_host), reboot into it")
        return Check(label, FAIL, "parameter absent", fix="install the SNP host kernel")
    if value:
        return Check(label, PASS, "Y")
    return Check(label, FAIL, "N",
                 fix=f"boot with kvm_amd.{name}=1 (or 'options kvm_amd {name}=1' in "
                     "/etc/modprobe.d/kvm.conf); if it stays N, enable it in the BIOS "
                     "(see the BIOS row) and check dmesg for ccp/SEV errors")


def check_kvm_dev(f: Facts, view: HostView, probes: Probes) -> tuple[Check, KvmStatus | None]:
    if not f.kvm_present:
        return Check("/dev/kvm", FAIL, "absent",
                     fix="enable SVM (AMD-V) in the BIOS and load kvm_amd"), None
    st = probes.kvm(view.path("dev/kvm"))
    if st.error:
        return Check("/dev/kvm", FAIL, f"present but unusable: {st.error}",
                     fix="KVM cannot start a VM here (nested/limited hypervisor): use a "
                         "bare-metal host; for emulation only use launch.accel: tcg"), st
    types = ""
    if st.vm_types:
        snp = "yes" if st.vm_types & (1 << KVM_X86_SNP_VM) else "no"
        types = f", VM types {st.vm_types:#x} (SNP VM type: {snp})"
    return Check("/dev/kvm", PASS, f"usable: API {st.api_version}, VM and vCPU created{types}"), st


def check_sev_dev(f: Facts, view: HostView, probes: Probes) -> tuple[Check, SevStatus | None]:
    if not f.sev_present:
        return Check("/dev/sev", FAIL, "absent (the ccp driver found no SEV firmware)",
                     fix="enable SEV/SNP in the BIOS (see the BIOS row); modprobe ccp; "
                         "check dmesg | grep -i -e ccp -e sev"), None
    st = probes.sev(view.path("dev/sev"))
    if st.error:
        return Check("/dev/sev", FAIL, f"present but unusable: {st.error}",
                     fix="run as root (or give the user rw access to /dev/sev)"), st
    return Check("/dev/sev", PASS, "opened read-write"), st


def _ver(api: tuple[int, ...]) -> str:
    return f"{api[0]}.{api[1]}" + (f" build {api[2]}" if len(api) > 2 else "")


def check_sev_firmware(f: Facts, sev: SevStatus | None) -> Check:
    name = "SNP firmware"
    fix_old = ("update the SEV firmware (AMD's SEV firmware page or a BIOS update); Linux "
               f"needs SNP API {SNP_MIN_API[0]}.{SNP_MIN_API[1]} or newer")
    api: tuple[int, ...] | None = None
    source = ""
    if sev is not None and sev.api is not None:
        api, source = (*sev.api, sev.build or 0), "SNP_PLATFORM_STATUS"
    elif f.log is not None and f.log.snp_api is not None:
        api, source = f.log.snp_api, "dmesg"
    if api is not None:
        if tuple(api[:2]) < SNP_MIN_API:
            return Check(name, FAIL, f"SNP API {_ver(api)} ({source}) is too old", fix=fix_old)
        return Check(name, PASS, f"SNP API {_ver(api)} ({source})")
    if f.log is not None and f.log.snp_init_failed:
        return Check(name, FAIL, f.log.snp_init_failed,
                     fix="update the SEV firmware and BIOS; check the BIOS SNP settings")
    if sev is not None and sev.snp_error:
        extra = f"; SEV API {_ver(f.log.sev_api)}" if f.log and f.log.sev_api else ""
        return Check(name, FAIL, f"{sev.snp_error}{extra}",
                     fix="SNP is not initialized: enable SNP in the BIOS and boot the SNP "
                         "host kernel")
    if f.log is not None and f.log.sev_api is not None:
        return Check(name, FAIL, f"only SEV API {_ver(f.log.sev_api)} in dmesg, no SEV-SNP API",
                     fix="the kernel did not initialize SNP: boot the SNP host kernel with SNP "
                         "enabled in the BIOS")
    where = "dmesg unreadable" if f.log is None else "no ccp SEV lines in dmesg"
    return Check(name, UNKNOWN, f"not reported ({where}, no SNP status from /dev/sev)")


def check_rmp(f: Facts, sev: SevStatus | None) -> Check:
    name = "RMP table"
    if f.log is not None and f.log.rmp_not_reserved:
        return Check(name, FAIL, "memory for the RMP table has not been reserved by BIOS",
                     fix="enable SNP Memory Coverage / SEV-SNP in the BIOS")
    if sev is not None and sev.rmp_initialized is not None:
        if sev.rmp_initialized:
            rng = f" {f.log.rmp_range}" if f.log and f.log.rmp_range else ""
            return Check(name, PASS, f"initialized (SNP_PLATFORM_STATUS){rng}")
        return Check(name, FAIL, "not initialized (SNP_PLATFORM_STATUS)",
                     fix="enable SNP in the BIOS; boot the SNP host kernel")
    if f.log is not None and f.log.rmp_range:
        return Check(name, PASS, f"physical range {f.log.rmp_range} (dmesg)")
    where = "dmesg unreadable" if f.log is None else "no RMP line in dmesg"
    return Check(name, UNKNOWN, f"not reported ({where})")


def check_qemu(qemu: Path | None, why: str, probes: Probes) -> Check:
    if qemu is None:
        return Check("QEMU sev-snp-guest", FAIL, why,
                     fix="doit setup_host (Debian trixie: qemu-system-x86 10.0), or set "
                         "launch.qemu")
    try:
        text = probes.qemu_objects(qemu)
    except Exception as exc:  # a broken binary must not crash the report
        return Check("QEMU sev-snp-guest", FAIL, f"{qemu}: {exc}".splitlines()[0],
                     fix="use the SNP bundle's QEMU (doit setup_host) or set launch.qemu")
    objects = set(text.split())
    if "sev-snp-guest" in objects:
        return Check("QEMU sev-snp-guest", PASS, f"{qemu} ({why})")
    have = "sev-guest only" if "sev-guest" in objects else "no SEV objects"
    return Check("QEMU sev-snp-guest", FAIL, f"{qemu} ({why}) has {have}",
                 fix="use QEMU 9.1+ (Debian trixie's qemu-system-x86: doit setup_host) or "
                     "the SNP bundle's QEMU (launch.qemu)")


def expected_guest_features(configured: int, params: dict[str, bool | None]) -> int:
    """The SEV_FEATURES the host's kvm_amd will put in the VMSA."""
    value = configured | SNP_ACTIVE
    for name, bit in SEV_FEATURE_PARAMS.items():
        value = (value | bit) if params.get(name) else (value & ~bit)
    return value


def check_guest_features(f: Facts, configured: int, kvm: KvmStatus | None = None) -> Check:
    """Does vm.guest_features match the SEV_FEATURES this host's KVM will launch with?

    Kernels whose KVM offers the SNP VM type (KVM_CAP_VM_TYPES bit 4) take the
    VMSA features from the VMM through KVM_SEV_INIT2, so kvm_amd.debug_swap no
    longer adds DebugSwap on its own; older SNP host kernels add it to every
    VMSA they build when the parameter is on.
    """
    name = "guest_features"
    if not f.kvm_amd_loaded:
        return Check(name, UNKNOWN, f"configured {configured:#x}; kvm_amd not loaded")
    on = [p for p in SEV_FEATURE_PARAMS if f.kvm_amd.get(p)]
    if kvm is not None and kvm.vm_types and kvm.vm_types & (1 << KVM_X86_SNP_VM):
        if configured == SNP_ACTIVE:
            return Check(name, PASS, f"vm.guest_features {configured:#x}; KVM_SEV_INIT2 host: "
                                     "the VMM chooses SEV_FEATURES, kvm_amd parameters do not")
        return Check(name, UNKNOWN, f"vm.guest_features {configured:#x}: on a KVM_SEV_INIT2 host "
                                    "only the VMM sets extra SEV_FEATURES; make sure QEMU "
                                    "requests them")
    want = expected_guest_features(configured, f.kvm_amd)
    why = ", ".join(f"kvm_amd.{p}=Y" for p in on) or "no SEV_FEATURES parameters on"
    if want == configured:
        return Check(name, PASS, f"vm.guest_features {configured:#x} matches this host ({why})")
    return Check(name, FAIL,
                 f"vm.guest_features is {configured:#x} but this host launches with {want:#x} "
                 f"({why}): the launch measurement would not match",
                 fix=f"set vm.guest_features: {want:#x} in config.yaml (or turn the "
                     "parameter off: kvm_amd.debug_swap=0)")


def snp_off(f: Facts) -> list[str]:
    """Evidence that the platform (BIOS/firmware) has SNP off."""
    why = []
    if f.cpuinfo is not None:
        flags = cpu_flags(f.cpuinfo)
        if "sev_snp" not in flags:
            why.append("no sev_snp CPU flag")
        if "sme" not in flags and "sev" not in flags:
            why.append("no sme/sev CPU flags (SMEE off?)")
    if f.kvm_amd.get("sev_snp") is False:
        why.append("kvm_amd.sev_snp=N")
    if f.log is not None:
        if f.log.rmp_not_reserved:
            why.append("RMP table not reserved by BIOS")
        if f.log.snp_asids in ("0", "0 - 0"):
            why.append("no ASIDs for SEV-ES/SNP")
    return why


def check_bios(f: Facts) -> Check:
    why = snp_off(f)
    flags = cpu_flags(f.cpuinfo or "")
    if "hypervisor" in flags and "sev" not in flags:
        return Check("BIOS", UNKNOWN, "virtual machine: the physical host's BIOS decides")
    if not why:
        asids = f" (SNP ASIDs {f.log.snp_asids})" if f.log and f.log.snp_asids else ""
        return Check("BIOS", PASS, f"SNP enabled by the platform{asids}")
    return Check("BIOS", FAIL, "SNP looks off: " + "; ".join(why), fix=BIOS_HINTS)


def run_checks(root: Path | str = "/", *, guest_features: int = SNP_ACTIVE,
               qemu: Path | None = None, qemu_why: str = "no QEMU found",
               probes: Probes | None = None) -> list[Check]:
    """All checks against the host under `root`."""
    probes = probes or Probes()
    view = HostView(root)
    f = gather(view)
    sev_check, sev = check_sev_dev(f, view, probes)
    kvm_check, kvm = check_kvm_dev(f, view, probes)
    return [
        check_kernel(f),
        check_cpu(f),
        check_kvm_amd(f, "sev"),
        check_kvm_amd(f, "sev_es"),
        check_kvm_amd(f, "sev_snp"),
        kvm_check,
        sev_check,
        check_sev_firmware(f, sev),
        check_rmp(f, sev),
        check_qemu(qemu, qemu_why, probes),
        check_guest_features(f, guest_features, kvm),
        check_bios(f),
    ]


def ready(checks: list[Check]) -> bool:
    """The host can run SNP guests: nothing failed."""
    return not any(c.verdict == FAIL for c in checks)


# ----------------------------------------------------------------- config glue and output


def checks_for_config(cfg: Config, paths: Paths, root: Path | str = "/") -> list[Check]:
    """run_checks() with this config's QEMU (as an SNP launch finds it) and vm.guest_features."""
    qemu, why = launch_plan.find_qemu(cfg, paths)
    return run_checks(root, guest_features=cfg.vm.guest_features, qemu=qemu, qemu_why=why)


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'CHECK':<{width}}  {'RESULT':<7}  DETAIL"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.verdict:<7}  {c.detail}")
        if c.fix and c.verdict == FAIL:
            lines.append(f"{'':<{width}}  {'':<7}  fix: {c.fix}")
    failed = [c.name for c in checks if c.verdict == FAIL]
    if failed:
        lines.append(f"\nthis host cannot run SEV-SNP guests ({len(failed)} failed: "
                     f"{', '.join(failed)})")
    else:
        unknown = sum(c.verdict == UNKNOWN for c in checks)
        lines.append("\nthis host can run SEV-SNP guests"
                     + (f" ({unknown} check(s) unknown)" if unknown else ""))
    return "\n".join(lines)


def as_json(checks: list[Check]) -> dict:
    return {"ready": ready(checks), "checks": [asdict(c) for c in checks]}


def check_host(cfg: Config, paths: Paths, root: Path | str = "/") -> None:
    """doit check_host: print the table; HostError when the host cannot run SNP."""
    checks = checks_for_config(cfg, paths, root)
    print(table(checks))
    if not ready(checks):
        raise HostError("this host cannot run SEV-SNP guests (see the table above)",
                        hint="emulated runs still work: launch.snp: off (or auto)")
