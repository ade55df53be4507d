"""Reference values: `doit measure` writes them, a release carries and checks them,
`verify-report --reference FILE` applies them (several trusted measurements allowed)."""

from __future__ import annotations

import json

import pytest

from hbos.attest import reference, report
from hbos.cli import main as cli_main
from hbos.errors import AttestationError, ReleaseError
from hbos.release import layout, pack, verify as release_verify
from tests.support.graph import load_dodo
from tests.support.release_fixtures import make_build

HBOS_REPORT = "hbos-benign-report.bin"



@pytest.fixture(autouse=True)
def _fixed_verification_time(monkeypatch):
    """Where a test gives no --at: a fixed time inside the vectors' validity, not now."""
    import datetime

    from hbos.attest import verify as attest_verify
    monkeypatch.setattr(attest_verify, "now_utc", lambda: datetime.datetime(
        2026, 6, 1, tzinfo=datetime.timezone.utc))

@pytest.fixture
def build(tmp_path, amdsev_ovmf):
    return make_build(tmp_path, amdsev_ovmf)


def test_doit_measure_writes_reference_values(build, tmp_path):
    cfg, paths = build
    graph = load_dodo(tmp_path, f"firmware: {{ovmf: {tmp_path / 'fw' / 'OVMF.fd'}}}\n")
    task = graph["tasks"]["measure"]
    assert str(paths.reference_values) in task["targets"]
    paths.measurement.unlink()
    (action,) = task["actions"][0]
    assert action() is None
    record = json.loads(paths.measurement.read_text())
    ref = json.loads(paths.reference_values.read_text())
    assert ref["format"] == reference.FORMAT
    assert ref["measurements"] == [record["expected_hash"]]
    assert ref["guest_policy"] == cfg.vm.guest_policy
    t = cfg.vm.min_committed_tcb
    assert ref["min_tcb"] == {cfg.vm.host_cpu_family: {
        "bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode}}
    assert ref["family_id"] == cfg.vm.family_id and ref["debug"] is False
    assert ref["host_data"] == record["host_data"]  # HOST_DATA = the node configuration (issue 15)
    assert "id_key_digest" not in ref  # identity disabled
    assert reference.load(paths.reference_values)["measurements"] == ref["measurements"]


def test_digests_from_measurement_json_are_carried():
    record = {"expected_hash": "ab" * 48, "host_data": "11" * 32,
              "vm": {"id_key_digest": "22" * 48, "author_key_digest": None,
                     "guest_policy": 0x30000}}
    ref = reference.from_measurement(record)
    assert ref["host_data"] == "11" * 32 and ref["id_key_digest"] == "22" * 48
    assert "author_key_digest" not in ref
    none = reference.from_measurement({"expected_hash": None, "expected_hash_reason": "no fw"})
    assert none["measurements"] == [] and "no fw" in none["measurements_reason"]


@pytest.mark.parametrize("change,needle", [
    ({"format": "x"}, "format is 'x'"),
    ({"measurements": "ab"}, "measurements must be a list"),
    ({"measurements": ["ab"]}, "measurements[0] must be 48 bytes"),
    ({"guest_policy": "0x30000"}, "guest_policy must be an integer"),
    ({"min_tcb": {"Rome": {}}}, "unknown product 'Rome'"),
    ({"min_tcb": {"Milan": {"snp": 256}}}, "min_tcb.Milan.snp must be an integer 0-255"),
    ({"host_data": "11"}, "host_data must be 32 bytes"),
    ({"debug": "yes"}, "debug must be true or false"),
    ({"extra": 1}, "unknown key(s) ['extra']"),
])
def test_bad_reference_values_are_refused(tmp_path, change, needle):
    good = {"format": reference.FORMAT, "measurements": ["ab" * 48], "guest_policy": 0x30000}
    f = tmp_path / "ref.json"
    f.write_text(json.dumps({**good, **change}))
    with pytest.raises(AttestationError) as exc:
        reference.load(f)
    assert needle in exc.value.message


def _verify(att, ref_file, capsys, *extra):
    rc = cli_main(["verify-report", "--report", str(att / HBOS_REPORT), "--vcek",
                   str(att / "hbos-vcek.crt"), "--certs-dir", str(att / "certs"),
                   "--reference", str(ref_file), "--json", *extra])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc in (0, 1) else out.err)


def test_verify_with_reference_values(vectors, tmp_path, capsys):
    att = vectors / "attestation"
    rep = report.load(att / HBOS_REPORT)
    fleet = reference.merge([
        reference.validate({"format": reference.FORMAT, "measurements": ["cd" * 48],
                            "guest_policy": 0x30000,
                            "min_tcb": {"Milan": {"bootloader": 3, "snp": 20}}}, "a"),
        reference.validate({"format": reference.FORMAT, "measurements": [rep.measurement.hex()],
                            "guest_policy": 0x30000,
                            "min_tcb": {"Milan": {"bootloader": 2, "snp": 19},
                                        "Genoa": {"snp": 1}}}, "b")])
    assert len(fleet["measurements"]) == 2
    assert fleet["min_tcb"]["Milan"]["snp"] == 20  # the stricter minimum wins
    f = tmp_path / "ref.json"
    f.write_text(json.dumps(fleet))
    rc, v = _verify(att, f, capsys)
    assert rc == 0, v
    steps = {s["name"]: s for s in v["steps"]}
    assert "trusted digest 2 of 2" in steps["measurement"]["detail"]
    assert steps["tcb"]["status"] == steps["policy"]["status"] == "pass"
    # a TCB minimum above the report, a policy that differs: each its own step
    f.write_text(json.dumps({**fleet, "min_tcb": {"Milan": {"bootloader": 3, "snp": 21}}}))
    rc, v = _verify(att, f, capsys)
    assert rc == 1 and v["failed"] == ["tcb"]
    f.write_text(json.dumps({**fleet, "min_tcb": {"Genoa": {"snp": 1}}}))
    rc, v = _verify(att, f, capsys)
    assert rc == 1 and v["failed"] == ["tcb"]  # no minimum for this product: not a pass
    f.write_text(json.dumps({**fleet, "measurements": ["cd" * 48]}))
    rc, v = _verify(att, f, capsys)
    assert rc == 1 and v["failed"] == ["measurement"]
    # a flag overrides the file
    rc, v = _verify(att, f, capsys, "--measurement", rep.measurement.hex())
    assert rc == 0
    f.write_text(json.dumps({**fleet, "measurements": []}))
    rc, v = _verify(att, f, capsys)
    assert rc == 1 and v["failed"] == ["measurement"]
    f.write_text("{")
    rc, err = _verify(att, f, capsys)
    assert rc == 2 and "not valid JSON" in err


def test_release_carries_and_checks_reference_values(build):
    cfg, paths = build
    pack.package_release(cfg, paths)
    root = paths.release_dir
    ref = json.loads((root / layout.REFERENCE_VALUES).read_text())
    manifest = release_verify.verify_release(root)
    assert ref["measurements"] == [manifest.launch_digest]
    assert layout.REFERENCE_VALUES in {f.name for f in manifest.files}
    # altered (and re-hashed into the manifest): refused by the manifest verification
    ref["measurements"].append("ef" * 48)
    (root / layout.REFERENCE_VALUES).unlink()
    (root / layout.REFERENCE_VALUES).write_text(json.dumps(ref))
    data = json.loads((root / layout.MANIFEST).read_text())
    for f in data["files"]:
        if f["name"] == layout.REFERENCE_VALUES:
            f.update(layout.file_entry(root / layout.REFERENCE_VALUES).__dict__)
            f.pop("name")
            f["name"] = layout.REFERENCE_VALUES
    (root / layout.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ReleaseError, match="measurements differ from what measurement.json"):
        release_verify.verify_release(root)


def test_several_reference_files_trust_several_releases(vectors, tmp_path, capsys):
    att = vectors / "attestation"
    rep = report.load(att / HBOS_REPORT)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    base = {"format": reference.FORMAT, "guest_policy": 0x30000}
    a.write_text(json.dumps({**base, "measurements": ["cd" * 48]}))
    b.write_text(json.dumps({**base, "measurements": [rep.measurement.hex()]}))
    rc, v = _verify(att, a, capsys)
    assert rc == 1 and v["failed"] == ["measurement"]
    rc, v = _verify(att, a, capsys, "--reference", str(b))
    assert rc == 0 and "trusted digest 2 of 2" in {
        s["name"]: s for s in v["steps"]}["measurement"]["detail"]
    b.write_text(json.dumps({**base, "guest_policy": 0x10000, "measurements": []}))
    rc, err = _verify(att, a, capsys, "--reference", str(b))
    assert rc == 2 and "differ in guest_policy" in err
    rc, err = _verify(att, a, capsys, "--reference", "")
    assert rc == 2 and "--reference is empty" in err
