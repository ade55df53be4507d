"""The measure stage: measurement.json records whether the image's HyperBEAM has
its SNP NIF (dev_snp_nif), as the content manifest says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hbos.errors import MeasurementError
from hbos.stages import measure, vmconfig
from hbos.tasks import table
from tests.conftest import config_in


def _vm_config(cfg, paths, ovmf: Path) -> None:
    kernel, initrd = paths.build / "vmlinuz-test", paths.build / "initrd-test"
    kernel.parent.mkdir(parents=True, exist_ok=True)
    kernel.write_bytes(b"kernel" * 100)
    initrd.write_bytes(b"initrd" * 100)
    paths.vm_config.parent.mkdir(parents=True, exist_ok=True)
    paths.vm_config.write_text(vmconfig.render(cfg, kernel=kernel, initrd=initrd, ovmf=ovmf,
                                               cmdline="console=ttyS0"))


def _manifest(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("data,expected", [
    ({"source": "docker", "snp_nif": True}, True),
    ({"source": "hyperbeam", "snp_nif": False}, False),
    ({"source": "erlang"}, False),                  # an older manifest: no key
    ({"snp_nif": "true"}, False),                   # only a JSON true counts
    ({"snp_nif": 1}, False),
    ([], False),
])
def test_snp_nif_from_the_content_manifest(tmp_path, data, expected):
    assert measure.snp_nif(_manifest(tmp_path / "manifest.json", data)) is expected


def test_snp_nif_without_a_manifest_is_false(tmp_path):
    assert measure.snp_nif(None) is False
    assert measure.snp_nif(tmp_path / "absent.json") is False


def test_broken_manifest_is_a_measurement_error(tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(MeasurementError, match="content manifest .* not valid JSON"):
        measure.snp_nif(bad)


@pytest.mark.parametrize("nif", [True, False, None])
def test_write_measurement_records_snp_nif(tmp_path, amdsev_ovmf, nif):
    cfg, paths = config_in(tmp_path)
    _vm_config(cfg, paths, amdsev_ovmf)
    manifest = None if nif is None else _manifest(tmp_path / "m.json", {"snp_nif": nif})
    record = measure.write_measurement(paths.vm_config, paths.measurement,
                                       content_manifest=manifest)
    assert record["snp_nif"] is bool(nif)
    assert json.loads(paths.measurement.read_text())["snp_nif"] is bool(nif)


@pytest.mark.parametrize("nif", [True, False])
def test_the_stage_reads_the_builds_content_manifest(tmp_path, amdsev_ovmf, capsys, nif):
    """measure's task (with its declared config view) records the build's manifest."""
    cfg, paths = config_in(tmp_path)
    _vm_config(cfg, paths, amdsev_ovmf)
    _manifest(paths.content_manifest, {"source": "docker", "snp_nif": nif})
    measure.write(table.MEASURE.reads.view(cfg, "measure"), paths)
    assert json.loads(paths.measurement.read_text())["snp_nif"] is nif
    out = capsys.readouterr().out
    assert f"HyperBEAM SNP NIF (dev_snp_nif): {'yes' if nif else 'NO'}" in out
