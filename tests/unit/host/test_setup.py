"""setup_host against a fake SNP bundle and a fake root (never the real system).

Fixtures built here:
- fake_release(): an AMDESE/AMDSEV snp-release layout: linux/host/ with a real
  (tiny) linux-image .deb built by make_deb() with `dpkg-deb --build` plus a -dbg .deb that
  must be skipped, linux/guest/, usr/local/bin/qemu-system-x86_64,
  usr/local/share/qemu/OVMF.fd and a symlink, kvm.conf.
- fake_root(): etc/os-release, var/lib/dpkg/status, proc/sys/kernel/osrelease.
- FakeDpkg: the injected runner; it records every argv and, like dpkg, marks the
  packages it was given as installed in the fake root's status file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hbos.errors import HostError
from hbos.host import setup, system
from hbos.util import run

KVER = "6.9.0-rc7-snp-host-05b10142ac6a"
PKG = f"linux-image-{KVER}"
VERSION = "6.9.0-rc7-g05b10142ac6a-2"
DEBIAN_OS = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def make_deb(path: Path, package: str, version: str) -> Path:
    """A real (tiny) Debian package, built by dpkg-deb."""
    root = path.with_name(path.name + ".d")
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(f"Package: {package}\nVersion: {version}\n"
                                         f"Architecture: amd64\nMaintainer: t <t@t>\n"
                                         f"Description: test\n")
    (root / "boot").mkdir()
    (root / "boot/vmlinuz").write_bytes(b"kernel")
    run.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, path], quiet=True)
    shutil.rmtree(root)
    return path


def fake_release(base: Path) -> Path:
    rel = base / "snp-release-2024-05-01"
    (rel / "linux/host").mkdir(parents=True)
    (rel / "linux/guest").mkdir(parents=True)
    # the file name deliberately disagrees with the control file: control wins
    make_deb(rel / "linux/host" / f"{PKG}_renamed_amd64.deb", PKG, VERSION)
    make_deb(rel / "linux/host" / f"{PKG}-dbg_{VERSION}_amd64.deb", f"{PKG}-dbg", VERSION)
    make_deb(rel / "linux/guest" / f"linux-image-guest_{VERSION}_amd64.deb", "guest", VERSION)
    (rel / "usr/local/bin").mkdir(parents=True)
    qemu = rel / "usr/local/bin/qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\necho qemu\n")
    qemu.chmod(0o755)
    (rel / "usr/local/share/qemu").mkdir(parents=True)
    (rel / "usr/local/share/qemu/OVMF.fd").write_bytes(b"\x00" * 4096)
    (rel / "usr/local/share/qemu/DIRECT_BOOT_OVMF.fd").symlink_to("OVMF.fd")
    (rel / "kvm.conf").write_text("options kvm_amd sev-snp=1 sev=1 sev-es=1\n")
    (rel / "install.sh").write_text("#!/bin/bash\nexit 1\n")
    return rel


def fake_root(base: Path, os_release: str = DEBIAN_OS, running: str = "6.1.0-27-amd64") -> Path:
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(os_release)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        "Package: dpkg\nStatus: install ok installed\nVersion: 1.21.22\n\n"
        f"Package: {PKG}\nStatus: deinstall ok config-files\nVersion: 0.1\n")
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(running + "\n")
    return root


class FakeDpkg:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[list[str]] = []

    def __call__(self, argv):
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        assert argv[0] == "dpkg" and "-i" in argv
        status = self.root / "var/lib/dpkg/status"
        for deb in argv[argv.index("-i") + 1:]:
            d = setup.read_deb(Path(deb))
            status.write_text(status.read_text().rstrip("\n") +
                              f"\n\nPackage: {d.package}\nStatus: install ok installed\n"
                              f"Version: {d.version}\n")


@pytest.fixture
def env(tmp_path):
    return fake_release(tmp_path), fake_root(tmp_path)


def test_read_deb_from_control_never_from_the_name(tmp_path):
    deb = make_deb(tmp_path / "x_1_amd64.deb", "linux-image-6.11.0-snp", "6.11.0-1")
    got = setup.read_deb(deb)
    assert (got.package, got.version, got.kernel_release) == (
        "linux-image-6.11.0-snp", "6.11.0-1", "6.11.0-snp")
    assert setup.read_deb(deb).package != "x"   # the file name says nothing
    junk = tmp_path / "foo_1%3a2.0-3_amd64.deb"
    junk.write_bytes(b"not a deb")
    with pytest.raises(HostError, match="cannot read the package name and version"):
        setup.read_deb(junk)   # no silent fallback to the file name


def test_plan_lists_kernel_and_files(env, capsys):
    release, root = env
    plan = setup.make_plan(release, root)
    assert [d.package for d in plan.install] == [PKG]           # not -dbg, not guest
    assert [c.rel for c in plan.copies] == [
        "usr/local/bin/qemu-system-x86_64", "usr/local/share/qemu/DIRECT_BOOT_OVMF.fd",
        "usr/local/share/qemu/OVMF.fd", "etc/modprobe.d/kvm.conf"]
    text = plan.describe(root)
    assert f"dpkg -i   {PKG} {VERSION} (not installed)" in text
    assert "add       /usr/local/bin/qemu-system-x86_64" in text
    assert plan.kernel_release == KVER


def test_dpkg_argv_exact(tmp_path):
    deb = setup.Deb(Path("/r/linux/host/k.deb"), PKG, VERSION)
    assert setup.dpkg_install_argv([deb], Path("/")) == ["dpkg", "-i", "/r/linux/host/k.deb"]
    assert setup.dpkg_install_argv([deb], tmp_path) == [
        "dpkg", f"--root={tmp_path}", "-i", "/r/linux/host/k.deb"]


def test_setup_then_nothing_to_do(env, capsys):
    release, root = env
    dpkg = FakeDpkg(root)
    setup.setup_bundle(release, root, yes=True, euid=0, runner=dpkg)
    out = capsys.readouterr().out
    assert "setup_host plan:" in out
    assert f"reboot into the SNP host kernel {KVER}" in out and "doit check_host" in out
    assert dpkg.calls == [["dpkg", f"--root={root}", "-i",
                           str(release / "linux/host" / f"{PKG}_renamed_amd64.deb")]]
    qemu = root / "usr/local/bin/qemu-system-x86_64"
    assert qemu.read_text() == "#!/bin/sh\necho qemu\n" and qemu.stat().st_mode & 0o111
    assert (root / "usr/local/share/qemu/DIRECT_BOOT_OVMF.fd").readlink() == Path("OVMF.fd")
    assert (root / "etc/modprobe.d/kvm.conf").is_file()

    # second run: nothing to do, no command
    again = setup.setup_bundle(release, root, yes=True, euid=0, runner=dpkg)
    out = capsys.readouterr().out
    assert again.empty and len(dpkg.calls) == 1
    assert "nothing to do: 1 package(s) at the bundle's version, 4 file(s) identical" in out

    # a changed file is noticed by its hash (same size) and only it is replaced
    (root / "usr/local/share/qemu/OVMF.fd").write_bytes(b"\x01" * 4096)
    third = setup.make_plan(release, root)
    assert [c.rel for c in third.copies] == ["usr/local/share/qemu/OVMF.fd"] and not third.install


def test_older_installed_version_is_upgraded(env):
    release, root = env
    status = root / "var/lib/dpkg/status"
    status.write_text(f"Package: {PKG}\nStatus: install ok installed\nVersion: 6.8.0-1\n")
    plan = setup.make_plan(release, root)
    assert [d.package for d in plan.install] == [PKG]
    assert "(installed: 6.8.0-1)" in plan.describe(root)


def test_running_snp_kernel_message(tmp_path):
    release = fake_release(tmp_path)
    root = fake_root(tmp_path, running=KVER)
    setup.setup_bundle(release, root, yes=True, euid=0, runner=FakeDpkg(root))
    plan = setup.make_plan(release, root)
    assert "is running; check the host: doit check_host" in setup.finish_message(plan, root)


def test_refuses_non_debian(tmp_path):
    root = fake_root(tmp_path, os_release='ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n')
    with pytest.raises(HostError, match="Debian and Ubuntu hosts only; this host is Fedora"):
        setup.setup_bundle(fake_release(tmp_path), root, yes=True, euid=0,
                              runner=FakeDpkg(root))


def test_ubuntu_accepted_via_id(tmp_path):
    root = fake_root(tmp_path, os_release="ID=ubuntu\nID_LIKE=debian\n")
    assert system.require_debian(root) == "ubuntu"


def test_refuses_without_root_and_changes_nothing(env):
    release, root = env
    dpkg = FakeDpkg(root)
    with pytest.raises(HostError, match="must run as root"):
        setup.setup_bundle(release, root, yes=True, euid=1000, runner=dpkg)
    assert dpkg.calls == [] and not (root / "usr/local").exists()


def test_needs_yes_when_not_interactive(env):
    release, root = env
    dpkg = FakeDpkg(root)
    with pytest.raises(HostError, match="stdin is not a terminal") as exc:
        setup.setup_bundle(release, root, euid=0, interactive=False, runner=dpkg)
    assert "--yes" in exc.value.hint
    assert dpkg.calls == []


def test_interactive_answer(env):
    release, root = env
    dpkg = FakeDpkg(root)
    with pytest.raises(HostError, match="cancelled"):
        setup.setup_bundle(release, root, euid=0, interactive=True, runner=dpkg,
                              ask=lambda _q: "n")
    assert dpkg.calls == []
    setup.setup_bundle(release, root, euid=0, interactive=True, runner=dpkg,
                          ask=lambda _q: "y")
    assert len(dpkg.calls) == 1


def test_release_without_host_kernel(tmp_path):
    release = tmp_path / "rel"
    (release / "linux/host").mkdir(parents=True)
    with pytest.raises(HostError, match="no host kernel"):
        setup.make_plan(release, fake_root(tmp_path))


def test_debpkg_fields_single_multiple_and_absent(tmp_path):
    from hbos.util import debpkg
    deb = make_deb(tmp_path / "k.deb", "linux-image-6.11.0-snp", "6.11.0-1")
    assert debpkg.fields(deb, "Package") == {"Package": "linux-image-6.11.0-snp"}
    assert debpkg.fields(deb, "Package", "Version", "Depends") == {
        "Package": "linux-image-6.11.0-snp", "Version": "6.11.0-1"}
    assert debpkg.fields(deb, "Depends") == {}
