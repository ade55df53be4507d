"""check_host against this real machine (read-only: /proc, /sys, /dev/kmsg, ioctls).

The real /dev/kvm probe creates a VM and a vCPU and closes them again; it
starts no guest. Verdicts depend on the machine, so this asserts consistency
with what the kernel reports directly, not fixed verdicts (the fake-tree unit
tests pin those).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hbos.host import check

pytestmark = [pytest.mark.integration]


def test_real_host_checks_are_consistent():
    checks = {c.name: c for c in check.run_checks("/", qemu=None, qemu_why="not checked")}
    assert set(c.verdict for c in checks.values()) <= {check.PASS, check.FAIL, check.UNKNOWN}
    assert os.uname().release in checks["kernel"].detail
    flags = check.cpu_flags(Path("/proc/cpuinfo").read_text())
    assert (checks["CPU SEV flags"].verdict == check.PASS) == ({"sev", "sev_es", "sev_snp"} <= flags)
    for c in checks.values():
        if c.verdict == check.FAIL:
            assert c.fix, f"{c.name} failed without a fix"


def test_real_kvm_probe():
    # Host-dependent by nature: this probes the real device. This machine and CI
    # have a /dev/kvm (one that fails); a box without KVM has nothing to probe.
    if not os.path.exists("/dev/kvm"):
        pytest.skip("no /dev/kvm on this machine")
    st = check.probe_kvm(Path("/dev/kvm"))
    if st.error and st.error.startswith("cannot open"):
        pytest.skip(st.error)
    # whatever the verdict, the API version came from the real ioctl
    assert st.api_version == check.KVM_API_VERSION
    assert st.vm_types is not None
