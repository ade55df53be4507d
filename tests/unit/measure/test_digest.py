"""Launch digest against sev-snp-measure's published vectors (tests/vectors)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hbos.errors import MeasurementError
from hbos.measure import digest
from hbos.measure.digest import EMPTY_SHA256, Firmware, LaunchInputs, cmdline_sha256, launch_digest
from hbos.stages import measure as measure_stage

README_OVMF_HASH = ("086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa"
                    "16aff8c374c2a55c467a50da6d466b74")
README_VECTORS = [
    (0x21, "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba"
           "7e534442e7e1e17895dfe778d0228977"),
    (0x1, "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362"
          "f390ef83a92046c042e706363b4b08fa"),
]


def empty_inputs(**kw) -> LaunchInputs:
    base = dict(kernel_sha256=EMPTY_SHA256, initrd_sha256=EMPTY_SHA256,
                cmdline_sha256=cmdline_sha256("console=ttyS0 loglevel=7"), vcpus=1,
                vcpu_type="EPYC-v4", guest_features=0x21)
    base.update(kw)
    return LaunchInputs(**base)


def test_firmware_launch_hash_of_the_readme_fixture(amdsev_ovmf):
    assert Firmware(amdsev_ovmf).launch_hash == README_OVMF_HASH


@pytest.mark.parametrize("features,expected", README_VECTORS)
def test_readme_vectors(amdsev_ovmf, features, expected):
    assert launch_digest(Firmware(amdsev_ovmf), empty_inputs(guest_features=features)) == expected


def test_from_files_equals_from_hashes(amdsev_ovmf, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    inputs = digest.inputs_from_files(empty, empty, "console=ttyS0 loglevel=7", vcpus=1,
                                      vcpu_type="EPYC-v4", guest_features=0x21)
    assert launch_digest(Firmware(amdsev_ovmf), inputs) == README_VECTORS[0][1]


def _vectors(vectors):
    data = json.loads((vectors / "measurement" / "sevsnpmeasure_vectors.json").read_text())
    out = []
    for v in data["vectors"]:
        inp = v["inputs"]
        if inp.get("mode") != "SevMode.SEV_SNP" or "precomputed" not in v:
            continue
        if inp.get("ovmf_file") not in ("ovmf_AmdSev_suffix.bin",
                                        "ovmf_AmdSev_suffix_pre202405.bin"):
            continue
        if inp.get("vmm_type", "VMMType.QEMU") not in ("VMMType.QEMU",) or "svsm" in str(inp):
            continue
        out.append(v)
    return out


def test_sevsnpmeasure_vectors_sample(vectors):
    """Every SNP/QEMU vector over an AmdSev fixture, from its precomputed hashes."""
    cases = _vectors(vectors)
    assert len(cases) >= 3, "expected several SNP vectors in the fixture file"
    for v in cases:
        inp = v["inputs"]
        vcpu_type = inp["vcpu_sig"].removeprefix("CPU_SIGS[").removesuffix("]")
        fw = Firmware(vectors / "measurement" / inp["ovmf_file"],
                      launch_hash=inp.get("snp_ovmf_hash_str") or None)
        pre = v["precomputed"]
        got = launch_digest(fw, LaunchInputs(
            kernel_sha256=pre["kernel_sha256"], initrd_sha256=pre["initrd_sha256"],
            cmdline_sha256=pre["cmdline_sha256"], vcpus=inp["vcpus"], vcpu_type=vcpu_type,
            guest_features=inp["guest_features"]))
        assert got == v["expected_digest"], v["test"]


def test_pre202405_firmware_layout_measures(vectors):
    fw = Firmware(vectors / "measurement" / "ovmf_AmdSev_suffix_pre202405.bin")
    assert len(launch_digest(fw, empty_inputs())) == 96


def test_ovmfx64_without_kernel_hashes_fails_clearly(vectors):
    path = vectors / "measurement" / "ovmf_OvmfX64_suffix.bin"
    with pytest.raises(MeasurementError) as exc:
        Firmware(path)
    assert str(path) in str(exc.value)
    assert "no SNP_KERNEL_HASHES metadata section" in str(exc.value)


def test_missing_and_garbage_firmware(tmp_path):
    with pytest.raises(MeasurementError, match="does not exist"):
        Firmware(tmp_path / "none.fd")
    junk = tmp_path / "junk.fd"
    junk.write_bytes(b"\0" * 8192)
    with pytest.raises(MeasurementError, match="not an OVMF image"):
        Firmware(junk)


def test_more_vcpus_and_other_cpu_type_change_the_digest(amdsev_ovmf):
    fw = Firmware(amdsev_ovmf)
    base = launch_digest(fw, empty_inputs())
    assert launch_digest(fw, empty_inputs(vcpus=2)) != base
    assert launch_digest(fw, empty_inputs(vcpu_type="EPYC-Milan")) != base


# ----------------------------------------------------- inputs.json / CLI

ORIGINAL_INPUTS = {  # as the original tool's digest_calc wrote it
    "kernel": EMPTY_SHA256, "initrd": EMPTY_SHA256,
    "append": cmdline_sha256("console=ttyS0 loglevel=7"),
    "firmware": README_OVMF_HASH, "vcpus": 1, "vcpu_type": 5, "vmm_type": 1,
    "guest_features": 0x21,
}


def test_parse_original_inputs_json_enums():
    inputs, fw = digest.parse_inputs(ORIGINAL_INPUTS)
    assert inputs.vcpu_type == "EPYC-v4" and inputs.vmm_type == "QEMU"
    assert fw == README_OVMF_HASH


@pytest.mark.parametrize("field,value,message", [
    ("vcpu_type", 99, "unknown vcpu_type enum value 99"),
    ("vmm_type", 3, "unsupported vmm_type enum value 3"),
    ("kernel", "zz", "'kernel' is not hex"),
    ("append", "ab", "'append' must be 32 bytes, got 1"),
    ("vcpus", "four", "'vcpus' must be an integer"),
])
def test_parse_inputs_errors(field, value, message):
    with pytest.raises(MeasurementError, match=message):
        digest.parse_inputs({**ORIGINAL_INPUTS, field: value})


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "hbos", "measure", *args],
                          capture_output=True, text=True)


def test_cli_recomputes_from_original_inputs_json(amdsev_ovmf, tmp_path):
    f = tmp_path / "inputs.json"
    f.write_text(json.dumps(ORIGINAL_INPUTS))
    proc = run_cli("--inputs", str(f), "--ovmf", str(amdsev_ovmf))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == README_VECTORS[0][1]


def test_cli_vcpus_override_and_json(amdsev_ovmf, tmp_path):
    f = tmp_path / "inputs.json"
    f.write_text(json.dumps(ORIGINAL_INPUTS))
    proc = run_cli("--inputs", str(f), "--ovmf", str(amdsev_ovmf), "--vcpus", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    expected = launch_digest(Firmware(amdsev_ovmf), empty_inputs(vcpus=4))
    assert out["vcpus"] == 4 and out["expected_hash"] == expected


def test_cli_accepts_our_measurement_json(amdsev_ovmf, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    vmc = tmp_path / "vm-config.toml"
    from hbos import config as hconfig
    from hbos.stages import vmconfig
    cfg = hconfig.load()
    vmc.write_text(vmconfig.render(cfg, kernel=kernel, initrd=initrd, ovmf=amdsev_ovmf,
                                   cmdline="console=ttyS0"))
    out = tmp_path / "measurement.json"
    record = measure_stage.write_measurement(vmc, out)
    proc = run_cli("--inputs", str(out), "--ovmf", str(amdsev_ovmf), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["expected_hash"] == record["expected_hash"]
    assert json.loads(proc.stdout)["matches_inputs"] is True


def test_cli_clear_error_without_traceback(vectors, tmp_path):
    f = tmp_path / "inputs.json"
    f.write_text(json.dumps(ORIGINAL_INPUTS))
    proc = run_cli("--inputs", str(f), "--ovmf",
                   str(vectors / "measurement" / "ovmf_OvmfX64_suffix.bin"))
    assert proc.returncode == 2
    assert "no SNP_KERNEL_HASHES metadata section" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_measurement_json_without_firmware_records_null_and_reason(tmp_path):
    from hbos import config as hconfig
    from hbos.stages import vmconfig
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    vmc = tmp_path / "vm-config.toml"
    vmc.write_text(vmconfig.render(hconfig.load(), kernel=kernel, initrd=kernel,
                                   ovmf=tmp_path / "not-built.fd", cmdline="x"))
    record = measure_stage.write_measurement(vmc, tmp_path / "m.json")
    assert record["expected_hash"] is None
    assert "not-built.fd is not available" in record["expected_hash_reason"]
