"""`doit verify_report` end to end: the real doit entry point on a build dir holding
a measurement.json, with the real hb-os report and AMD's Milan roots (offline)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import doit

pytestmark = [pytest.mark.integration]

MEASUREMENT = ("d841d812c23fa10eb2d6bcffa7fc0ab1562044c81b5ad058a0df98692c9e264a"
               "2c88ed99eb6d2b6b0c0446a9d994661e")


def test_doit_verify_report_entry_point(vectors, tmp_path):
    att = vectors / "attestation"
    build = tmp_path / "build"
    build.mkdir()
    (build / "measurement.json").write_text(json.dumps({"expected_hash": MEASUREMENT}))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"build_dir: {build}\n")
    args = ["verify_report", "--report", str(att / "hbos-benign-report.bin"),
            "--vcek", str(att / "hbos-vcek.crt"), "--certs-dir", str(att / "certs")]
    ok = doit(args + [f"config={overlay}"])
    assert "VERIFIED" in ok.stdout
    bad = doit(args + ["--vmpl", "0", f"config={overlay}"], check=False)
    assert bad.returncode != 0
    assert "NOT VERIFIED: failed vmpl" in bad.stdout
