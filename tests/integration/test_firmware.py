"""The firmware task for real: Debian's edk2 source -> AmdSevX64 OVMF.fd, measured.

Builds once per session through doit (5-15 minutes on 2 shared cores). The
two pinned source files are cached in the test cache (HBOS_TEST_CACHE) so a
rerun does not download 30 MB again. Two-build reproducibility is checked by
benchmarks/bench_firmware.py (two clean builds do not fit CI's time).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from tests.conftest import cache_dir, doit, missing_prerequisite

pytestmark = [pytest.mark.integration, pytest.mark.slow]

from hbos import config as hconfig  # noqa: E402
from hbos.paths import Paths  # noqa: E402
from hbos.stages import edk2  # noqa: E402
from hbos.util.fsutil import sha256_file  # noqa: E402


@pytest.fixture(scope="session")
def firmware_build(tmp_path_factory):
    """(cfg, paths, doit output) of one real `doit firmware profile=local` build."""
    missing = edk2.missing_build_deps()
    if missing:
        missing_prerequisite(f"edk2 build dependencies missing: {missing}")
    build = tmp_path_factory.mktemp("fw-build")
    overlay = build / "overlay.yaml"
    overlay.write_text(f"build_dir: {build}\n")
    cfg = hconfig.load(overlay=overlay, profile="local")
    paths = Paths.from_config(cfg)
    cached = cache_dir() / "downloads"
    paths.downloads.mkdir(parents=True, exist_ok=True)
    for src in edk2.sources(cfg):
        if (cached / src.name).is_file():
            shutil.copyfile(cached / src.name, paths.downloads / src.name)
    proc = doit(["firmware", "profile=local", f"config={overlay}"], timeout=3600)
    cached.mkdir(parents=True, exist_ok=True)
    for src in edk2.sources(cfg):
        # none when the artifact cache restored the firmware (an earlier test's
        # build: the content stage needs the firmware too, as HyperBEAM's reference)
        if (paths.downloads / src.name).is_file():
            shutil.copyfile(paths.downloads / src.name, cached / src.name)
    return cfg, paths, proc.stdout + proc.stderr


def test_builds_an_ovmf_that_sev_snp_measure_accepts(firmware_build):
    from hbos.measure.digest import Firmware
    cfg, paths, out = firmware_build
    ovmf = paths.built_ovmf
    assert ovmf.stat().st_size == 4 * 1024 * 1024
    fw = Firmware(ovmf)  # parses the SEV metadata incl. SNP_KERNEL_HASHES
    assert len(fw.launch_hash) == 96
    record = json.loads(paths.firmware_manifest.read_text())
    assert record["sha256"] == sha256_file(ovmf)
    assert [s["sha256"] for s in record["sources"]] == [cfg.firmware.orig_sha256,
                                                          cfg.firmware.debian_sha256]
    assert "firmware: [6/6]" in out
    assert not paths.firmware_work.exists()  # keep_tree: false
    log = paths.log("firmware").read_text()
    assert "- Done -" in log and "grub.efi generated" in log


def test_built_ovmf_carries_the_snp_kernel_hashes_section(firmware_build):
    from sevsnpmeasure.ovmf import OVMF, SectionType
    _, paths, _ = firmware_build
    types = {desc.section_type() for desc in OVMF(str(paths.built_ovmf)).metadata_items()}
    assert SectionType.SNP_KERNEL_HASHES in types


def test_rerun_is_up_to_date_without_network(firmware_build):
    _, paths, _ = firmware_build
    overlay = paths.build / "overlay.yaml"
    before = paths.built_ovmf.stat().st_mtime_ns
    env_proxy = {k: os.environ.get(k) for k in ("http_proxy", "HTTP_PROXY")}
    os.environ["http_proxy"] = os.environ["HTTP_PROXY"] = "http://127.0.0.1:9"  # no network
    try:
        proc = doit(["firmware", "profile=local", f"config={overlay}"], timeout=300)
    finally:
        for k, v in env_proxy.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert "-- firmware" in proc.stdout + proc.stderr
    assert paths.built_ovmf.stat().st_mtime_ns == before


def test_measures_a_guest_with_the_built_firmware(firmware_build, kernel_build, tmp_path):
    """hbos.measure.digest and sev-snp-measure's own entry point agree on the digest."""
    from sevsnpmeasure import guest, vcpu_types
    from sevsnpmeasure.sev_mode import SevMode

    from hbos.measure import digest
    _, paths, _ = firmware_build
    _, kpaths = kernel_build
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\x00" * 4096)
    cmdline = "console=ttyS0 root=/dev/vda ro"
    inputs = digest.inputs_from_files(kpaths.vmlinuz, initrd, cmdline, vcpus=1,
                                      vcpu_type="EPYC-v4", guest_features=0x1)
    ours = digest.launch_digest(digest.Firmware(paths.built_ovmf), inputs)
    theirs = guest.calc_launch_digest(SevMode.SEV_SNP, 1, vcpu_types.CPU_SIGS["EPYC-v4"],
                                      str(paths.built_ovmf), str(kpaths.vmlinuz), str(initrd),
                                      cmdline, 0x1).hex()
    assert ours == theirs and len(ours) == 96
    # the firmware really is part of the digest
    other = tmp_path / "OVMF-other.fd"
    data = bytearray(paths.built_ovmf.read_bytes())
    data[0x100] ^= 0xFF  # inside the measured image, outside the metadata
    other.write_bytes(bytes(data))
    assert digest.launch_digest(digest.Firmware(other), inputs) != ours


# --------------------------------- reproducible anywhere (issue 16 item 12)

REPRO_FIRMWARE = os.environ.get("CI") == "true" or os.environ.get("HBOS_REPRO_FIRMWARE") == "1"


@pytest.mark.skipif(not REPRO_FIRMWARE, reason="a second edk2 build takes 6+ minutes: "
                    "runs under CI=true or HBOS_REPRO_FIRMWARE=1")
def test_firmware_is_reproducible_under_variations(firmware_build, tmp_path):
    """Build A is the session's firmware_build; build B runs `doit firmware` in
    another build dir under tests/support/reprotest.py's variations (umask, a later date,
    TZ, locale, hostname, HOME/USER, PATH, personality, one CPU): same OVMF.fd
    bits, so the same launch digest for any kernel, initrd and cmdline."""
    from hbos.measure.digest import Firmware
    from tests.support import reprotest
    missing = reprotest.missing_tools()
    if missing:
        missing_prerequisite(f"reprotest variations need {missing}")
    if not reprotest.can_unshare_uts():
        missing_prerequisite("`unshare --uts` is not permitted (needs root)")
    cfg, paths_a, _ = firmware_build
    root = tmp_path / "firmware-b" / "deeper"
    overlay = reprotest.build_overlay(root / "fw")
    paths_b = Paths.from_config(hconfig.load(overlay=overlay, profile="local"))
    paths_b.downloads.mkdir(parents=True, exist_ok=True)
    for src in edk2.sources(cfg):       # the pinned sources A fetched (sha256 re-checked)
        shutil.copyfile(paths_a.downloads / src.name, paths_b.downloads / src.name)
    reprotest.varied_doit(reprotest.variation(root),
                          ["firmware", "profile=local", f"config={overlay}"], timeout=5400)
    assert sha256_file(paths_b.built_ovmf) == sha256_file(paths_a.built_ovmf)
    assert Firmware(paths_b.built_ovmf).launch_hash == Firmware(paths_a.built_ovmf).launch_hash


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
