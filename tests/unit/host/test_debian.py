"""Stock Debian trixie as the SNP host (issue 12): check_host, setup_host, release QEMU ldd.

Fake trees as in test_check.py / test_setup.py (never the real system);
the ldd output of the release-QEMU check is real `ldd` output text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hbos.errors import HostError
from hbos.host import check, debian, setup
from hbos.host.check import PASS, SevStatus
from hbos.stages import snp_bundle
from tests.conftest import config_in
from tests.unit.host.test_check import BASE_FLAGS, QEMU_SNP_OBJECTS, fake_host, probes, verdicts

TRIXIE_OS = ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\n'
             'VERSION_ID="13"\nVERSION_CODENAME=trixie\nID=debian\n')
BOOKWORM_OS = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n' \
              'VERSION_CODENAME=bookworm\n'
TRIXIE_KERNEL = "6.12.117+deb13-amd64"
# what a stock 6.12 SNP host prints (drivers/crypto/ccp, arch/x86/virt/svm/sev.c, kvm_amd)
TRIXIE_LOG = [
    f"Linux version {TRIXIE_KERNEL} (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC",
    "SEV-SNP: RMP table physical range [0x0000000035600000 - 0x0000000075bfffff]",
    "ccp 0000:23:00.1: SEV firmware updated from 1.55.21 to 1.55.22",
    "ccp 0000:23:00.1: SEV API:1.55 build:22",
    "ccp 0000:23:00.1: SEV-SNP API:1.55 build:22",
    "kvm_amd: SEV enabled (ASIDs 100 - 509)",
    "kvm_amd: SEV-ES enabled (ASIDs 1 - 99)",
    "kvm_amd: SEV-SNP enabled (ASIDs 1 - 99)",
]


def test_stock_trixie_host_is_ready_without_a_release(tmp_path):
    root = fake_host(tmp_path, release=TRIXIE_KERNEL,
                     flags=BASE_FLAGS + " sme sev sev_es sev_snp",
                     kvm_amd={"sev": "Y", "sev_es": "Y", "sev_snp": "Y", "debug_swap": "N"},
                     log=TRIXIE_LOG)
    snp = SevStatus(api=(1, 55), build=22, state=1, rmp_initialized=True)
    checks = check.run_checks(root, guest_features=0x1,
                              qemu=Path("/usr/bin/qemu-system-x86_64"), qemu_why="PATH",
                              probes=probes(sev=lambda _d: snp, objects=QEMU_SNP_OBJECTS))
    assert set(verdicts(checks).values()) == {PASS}, check.table(checks)
    by = {c.name: c for c in checks}
    assert "upstream SNP host support" in by["kernel"].detail
    assert by["QEMU sev-snp-guest"].detail == "/usr/bin/qemu-system-x86_64 (PATH)"
    assert check.ready(checks)


# ----------------------------------------------------------------- setup_host on trixie


def fake_debian(root: Path, os_text: str = TRIXIE_OS, installed: dict[str, str] | None = None,
                kernel: str = "6.1.0-30-amd64") -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(os_text)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("".join(
        f"Package: {p}\nStatus: install ok installed\nVersion: {v}\n\n"
        for p, v in (installed or {}).items()))
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(kernel + "\n")
    return root


class FakeApt:
    """The injected runner: records argv, marks packages installed like apt-get."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def __call__(self, argv):
        self.calls.append(list(argv))
        assert argv[:4] == ["apt-get", "install", "-y", "--no-install-recommends"]
        with open(self.root / "var/lib/dpkg/status", "a") as fh:
            for pkg in argv[4:]:
                fh.write(f"Package: {pkg}\nStatus: install ok installed\nVersion: 1\n\n")


def test_trixie_setup_installs_from_debian_then_nothing_to_do(tmp_path, capsys):
    root = fake_debian(tmp_path, installed={"qemu-system-x86": "1:10.0.13+ds-0+deb13u1"})
    apt = FakeApt(root)
    plan = debian.setup_debian(root, yes=True, euid=0, runner=apt)
    assert plan.install == ["linux-image-amd64"]
    assert apt.calls == [["apt-get", "install", "-y", "--no-install-recommends",
                          "linux-image-amd64"]]
    out = capsys.readouterr().out
    assert "apt-get install  linux-image-amd64 (not installed)" in out
    assert "keep             qemu-system-x86 1:10.0.13+ds-0+deb13u1" in out
    assert "reboot into Debian's linux-image-amd64" in out
    again = debian.setup_debian(root, yes=True, euid=0, runner=apt)
    assert again.empty and len(apt.calls) == 1
    assert "nothing to do" in capsys.readouterr().out


def test_trixie_setup_refusals_change_nothing(tmp_path):
    root = fake_debian(tmp_path)
    apt = FakeApt(root)
    with pytest.raises(HostError, match="must run as root"):
        debian.setup_debian(root, yes=True, euid=1000, runner=apt)
    with pytest.raises(HostError, match="stdin is not a terminal"):
        debian.setup_debian(root, euid=0, interactive=False, runner=apt)
    with pytest.raises(HostError, match="cancelled"):
        debian.setup_debian(root, euid=0, interactive=True, runner=apt, ask=lambda _: "n")
    assert apt.calls == []


def test_bookworm_without_release_is_refused_with_the_way_out(tmp_path):
    root = fake_debian(tmp_path, os_text=BOOKWORM_OS)
    with pytest.raises(HostError) as exc:
        debian.setup_debian(root, yes=True, euid=0, runner=FakeApt(root))
    assert "Debian GNU/Linux 12 (bookworm)" in str(exc.value)
    assert "trixie" in exc.value.hint and "snp_release" in exc.value.hint


def test_running_612_kernel_message(tmp_path):
    root = fake_debian(tmp_path, kernel=TRIXIE_KERNEL,
                       installed={"linux-image-amd64": "6.12.117-1", "qemu-system-x86": "1"})
    assert "is running" in debian.finish_message(root)


def test_setup_from_config_picks_debian_without_release(tmp_path, monkeypatch):
    cfg, paths = config_in(tmp_path)
    seen = {}
    monkeypatch.setattr(debian, "setup_debian", lambda root, **kw: seen.update(root=root, **kw))
    monkeypatch.setattr(setup, "setup_bundle", lambda *a, **kw: pytest.fail("bundle path"))
    setup.setup_from_config(cfg, paths, yes=True)
    assert seen["root"] == "/" and seen["yes"] is True


def test_setup_from_config_with_a_bundle_checks_its_qemu_then_installs_it(tmp_path, monkeypatch):
    cfg, paths = config_in(tmp_path)
    calls = []
    monkeypatch.setattr(snp_bundle, "configured", lambda c: True)
    monkeypatch.setattr(snp_bundle, "qemu", lambda p: Path("/b/usr/local/bin/qemu-system-x86_64"))
    monkeypatch.setattr(snp_bundle, "root", lambda p: Path("/b"))
    monkeypatch.setattr(debian, "setup_debian", lambda *a, **kw: pytest.fail("Debian path"))
    monkeypatch.setattr(debian, "check_bundle_qemu", lambda q: calls.append(("ldd", q)))
    monkeypatch.setattr(setup, "setup_bundle",
                        lambda release, root, **kw: calls.append(("install", release, root, kw["yes"])))
    setup.setup_from_config(cfg, paths, yes=True)
    assert calls == [("ldd", Path("/b/usr/local/bin/qemu-system-x86_64")),
                     ("install", Path("/b"), "/", True)]


# ----------------------------------------------------------------- release QEMU libraries

LDD_OUT = """\
\tlinux-vdso.so.1 (0x00007ffd4c5f2000)
\tlibslirp.so.0 => not found
\tlibpixman-1.so.0 => /lib/x86_64-linux-gnu/libpixman-1.so.0 (0x00007f0d9b1c0000)
\tlibfoo-made-up.so.3 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0d9ae00000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0d9b2a0000)
"""


def test_release_qemu_missing_libraries_are_named_with_packages():
    q = Path("/b/snp-release/usr/local/bin/qemu-system-x86_64")
    assert debian.missing_libraries(q, ldd=lambda p: LDD_OUT) == {
        "libslirp.so.0": "libslirp0", "libfoo-made-up.so.3": "unknown package"}
    with pytest.raises(HostError) as exc:
        debian.check_bundle_qemu(q, ldd=lambda p: LDD_OUT)
    msg = str(exc.value)
    assert "2 shared libraries missing" in msg and "libslirp.so.0" in msg
    assert "(Debian package: libslirp0)" in msg
    assert exc.value.hint.startswith("apt-get install libslirp0")


def test_release_qemu_all_resolved(capsys):
    ok = LDD_OUT.replace("libslirp.so.0 => not found", "").replace(
        "libfoo-made-up.so.3 => not found", "")
    debian.check_bundle_qemu(Path("/q"), ldd=lambda p: ok)
    assert "every shared library resolves" in capsys.readouterr().err


def test_real_ldd_on_a_real_binary_finds_nothing_missing():
    import shutil
    ls = shutil.which("ls")
    assert debian.missing_libraries(Path(ls)) == {}
