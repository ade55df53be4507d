"""Debian trixie's real QEMU 10 takes the launch identity (issue 15).

The SNP command line the launcher builds for an identity-enabled build, with
the ID block, ID auth, author-key-enabled=on and host-data it generated,
parses completely in QEMU 10 and stops only where KVM is asked for an SNP VM;
one misspelled identity option or non-base64 HOST_DATA instead fails at
parsing, so the two outcomes are told apart. QEMU runs from issue 12's
cached trixie root (tests/support/trixie_root.py). The build is the small synthetic
one of the release tests (QEMU refuses at KVM before it reads kernel or
firmware); the ID block is signed for its real measurement.
"""

from __future__ import annotations

import dataclasses
import subprocess

import pytest

from hbos.launch import plan, qemu, start
from hbos.measure import idblock, identity, nodeconfig
from hbos.stages import measure, vmconfig
from tests.support.release_fixtures import make_build

trixie = pytest.importorskip(
    "tests.support.trixie_root", reason="issue 12's QEMU 10 harness (tests/support/trixie_root.py) is not "
                                "in this tree yet")
trixie_root = trixie.trixie_root  # the session fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

KVM_REFUSES_SNP = "vm-type SEV-SNP not supported by KVM"


@pytest.fixture(scope="module")
def snp_argv(trixie_root, amdsev_ovmf, tmp_path_factory):
    root = tmp_path_factory.mktemp("identity-qemu10")
    cfg, paths = make_build(root / "b", amdsev_ovmf, extra_yaml=(
        f"identity: {{enabled: true, keys_dir: {root / 'keys'}}}\nlaunch: {{cbitpos: 51}}\n"))
    identity.make_keys(cfg)
    record = measure.write_measurement(paths.vm_config, paths.measurement,
                                       extra=lambda rec: identity.measurement_fields(cfg, rec))
    idblock.write_id_block(cfg, paths)
    wrapper = trixie.wrapper(trixie_root, [root], root / "qemu-system-x86_64")
    vm = qemu.VmDefinition.from_vm_config(vmconfig.load(paths.vm_config))
    generated = start.checked_identity(record, vm, nodeconfig.post_start_for(cfg, record),
                                       paths.identity_dir, "snp")
    spec = qemu.LaunchSpec(
        vm=vm, disks=qemu.Disks(paths.verity_image, paths.hash_tree),
        run=qemu.RunFiles(paths.run_dir), host=plan.host_facts(wrapper), mode="snp",
        accel="kvm", forwards=(qemu.Forward(10000, 10000),),
        snp=plan.snp_options(cfg, generated))
    assert spec.host.version[0] == 10
    return qemu.command_line(spec), paths, record, cfg


def _run(argv, paths):
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def _sev(argv) -> int:
    return next(i for i, a in enumerate(argv) if a.startswith("sev-snp-guest,"))


def test_qemu10_accepts_id_block_id_auth_author_key_and_host_data(snp_argv):
    argv, paths, _record, _cfg = snp_argv
    obj = argv[_sev(argv)]
    keys = [p.partition("=")[0] for p in obj.split(",")]
    assert {"id-block", "id-auth", "author-key-enabled", "host-data"} <= set(keys)
    assert f"id-block={paths.id_block.read_text().strip()}" in obj
    proc = _run(argv, paths)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and KVM_REFUSES_SNP in out, out


@pytest.mark.parametrize("old,new,error", [
    ("id-block=", "id-blok=", "id-blok"),
    ("author-key-enabled=on", "author-key-enabled=maybe", "author-key-enabled"),
    ("host-data=", "host-data=!", "Base64"),
])
def test_a_broken_identity_option_fails_at_parsing(snp_argv, old, new, error):
    argv, paths, _, _ = snp_argv
    argv = list(argv)
    i = _sev(argv)
    argv[i] = argv[i].replace(old, new)
    proc = _run(argv, paths)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and error in out and KVM_REFUSES_SNP not in out, out


def test_the_launch_refuses_a_stale_id_block_before_qemu(snp_argv):
    _, paths, record, cfg = snp_argv
    vm = qemu.VmDefinition.from_vm_config(vmconfig.load(paths.vm_config))
    body = nodeconfig.post_start_for(cfg, record)
    with pytest.raises(Exception, match="LD"):
        start.checked_identity(dict(record, expected_hash="00" * 48), vm, body,
                               paths.identity_dir, "snp")
    with pytest.raises(Exception, match="policy"):
        start.checked_identity(record, dataclasses.replace(vm, guest_policy=0x70000), body,
                               paths.identity_dir, "snp")
