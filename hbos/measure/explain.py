"""Explain a launch-measurement mismatch: which launch parameter differs?

The report's MEASUREMENT is the launch digest: the GCTX digest chain over the
firmware pages, the metadata pages (SNP_KERNEL_HASHES with the kernel, initrd
and cmdline hashes, secrets, CPUID, zero pages), then one VMSA page per vCPU
(SNP ABI spec "SNP_LAUNCH_UPDATE", PAGE_TYPE_VMSA). The VMSA pages depend
only on the vCPU type (its CPUID signature in RDX) and SEV_FEATURES
(guest_features), so everything up to the first VMSA page is the same for all
candidates: computed once. Then, per (CPU signature, guest_features), the
digest is extended one vCPU at a time, testing 1..512 vCPUs with one SHA-384
of a 112-byte PAGE_INFO each (hbos.measure.sevsnp.extend_vmsa), whose page
digest is itself computed once.

Searched: vCPU counts 1-512 x every CPU signature sev-snp-measure knows x
guest_features = the build's value with any one SEV_FEATURES bit toggled, and
SNPActive plus any subset of the bits hosts commonly set (debug_swap, ...).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from hbos.measure import sevsnp
from hbos.measure.digest import Firmware, LaunchInputs

MAX_VCPUS = 512

# SEV_FEATURES bits of the VMSA (AMD APM Vol. 2, Table 15-34 "SEV_FEATURES"),
# named as Linux/QEMU name them.
SEV_FEATURE_BITS: dict[int, str] = {
    0: "snp_active", 1: "vtom", 2: "reflect_vc", 3: "restricted_injection",
    4: "alternate_injection", 5: "debug_swap", 6: "prevent_host_ibs", 7: "btb_isolation",
    8: "vmpl_sss", 9: "secure_tsc", 10: "vmgexit_parameter", 12: "ibs_virtualization",
    14: "vmsa_reg_prot", 15: "smt_protection",
}
# Bits a host commonly sets on its own (KVM module parameters / QEMU options).
COMMON_HOST_BITS = (5, 6, 7, 3, 9, 2)


def feature_names(bits: int) -> list[str]:
    return [SEV_FEATURE_BITS.get(b, f"bit{b}") for b in range(64) if bits >> b & 1]


def candidate_features(base: int) -> list[int]:
    """The build's guest_features first, then single-bit toggles, then common host sets."""
    out = [base]
    out += [base ^ (1 << b) for b in SEV_FEATURE_BITS if b != 0]
    for n in range(1, len(COMMON_HOST_BITS) + 1):
        for combo in combinations(COMMON_HOST_BITS, n):
            out.append(1 | sum(1 << b for b in combo))
    return list(dict.fromkeys(out))   # first occurrence of each, in order


def cpu_groups() -> dict[int, list[str]]:
    """CPU signature -> the vCPU type names that share it."""
    groups: dict[int, list[str]] = {}
    for name, sig in sevsnp.CPU_SIGNATURES.items():
        groups.setdefault(sig, []).append(name)
    return groups


@dataclass
class Explanation:
    found: bool
    message: str
    seconds: float
    candidates: int
    match: dict[str, Any] | None = None
    all_matches: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"found": self.found, "message": self.message, "seconds": round(self.seconds, 3),
                "candidates": self.candidates, "match": self.match}


def search(firmware: Firmware, inputs: LaunchInputs, target: bytes,
           max_vcpus: int = MAX_VCPUS) -> tuple[list[dict[str, Any]], int]:
    """Every (vcpus, cpu signature, guest_features) whose launch digest equals `target`."""
    layout = firmware.image.layout
    base = sevsnp.metadata_digest(bytes.fromhex(firmware.launch_hash), layout,
                                  inputs.kernel_hashes(), inputs.vmm_type)
    matches: list[dict[str, Any]] = []
    tried = 0
    for sig, names in cpu_groups().items():
        for features in candidate_features(inputs.guest_features):
            bsp, ap = sevsnp.vmsa_pages(layout, sig, features, inputs.vmm_type)
            ld = sevsnp.extend_vmsa(base, hashlib.sha384(bsp).digest())
            tried += 1
            if ld == target:
                matches.append({"vcpus": 1, "cpu_sig": sig, "vcpu_types": names,
                                "guest_features": features})
            if ap is None:
                continue
            ap_digest = hashlib.sha384(ap).digest()
            for n in range(2, max_vcpus + 1):
                ld = sevsnp.extend_vmsa(ld, ap_digest)
                tried += 1
                if ld == target:
                    matches.append({"vcpus": n, "cpu_sig": sig, "vcpu_types": names,
                                    "guest_features": features})
    return matches, tried


def _differences(match: dict[str, Any], inputs: LaunchInputs) -> list[str]:
    out = []
    if match["guest_features"] != inputs.guest_features:
        gf = match["guest_features"]
        added = feature_names(gf & ~inputs.guest_features)
        removed = feature_names(inputs.guest_features & ~gf)
        why = []
        if added:
            why.append(f"the host enables {', '.join(added)}")
        if removed:
            why.append(f"the host does not enable {', '.join(removed)}")
        out.append(f"guest_features {gf:#x}: {' and '.join(why)} "
                   f"(the build has {inputs.guest_features:#x})")
    if match["vcpus"] != inputs.vcpus:
        out.append(f"{match['vcpus']} vCPUs (the build has {inputs.vcpus})")
    if inputs.vcpu_type not in match["vcpu_types"]:
        out.append(f"vCPU type {' / '.join(match['vcpu_types'])} "
                   f"(the build has {inputs.vcpu_type})")
    return out


def explain(firmware: Firmware, inputs: LaunchInputs, measurement: bytes) -> Explanation:
    """Search likely launch parameters for `measurement`; say which one differs."""
    start = time.perf_counter()
    matches, tried = search(firmware, inputs, measurement)
    seconds = time.perf_counter() - start
    if not matches:
        return Explanation(False, "no vCPU count (1-512), CPU type or common guest_features "
                           "value gives the reported measurement: the image (kernel, initrd, "
                           "cmdline) or the firmware differs", seconds, tried)
    best = min(matches, key=lambda m: len(_differences(m, inputs)))
    diffs = _differences(best, inputs)
    if not diffs:
        message = ("the build's own launch parameters give the reported measurement: the "
                   "expected_hash recorded in measurement.json is stale (re-run doit measure)")
    else:
        message = "matches with " + "; ".join(diffs)
    match = dict(best, cpu_sig=f"{best['cpu_sig']:#x}")
    return Explanation(True, message, seconds, tried, match, matches)
