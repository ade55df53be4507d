"""Shared fixtures.

- vectors: tests/vectors (third-party data with its licence files beside it; see
  its README). Missing: skipped on a developer box, a failure under CI=true.
- kernel_deb: the real default guest kernel .deb (Debian trixie's
  linux-image-amd64 resolved to its linux-image-<version>-amd64), cached in the
  test cache (HBOS_TEST_CACHE, default ~/.cache/hbos-tests, under
  kernel-trixie/). `.ci/run` fetches it first
  (python -m tests.support.prepare); under CI=true a missing prerequisite fails.
- kernel_build: that kernel unpacked by the real kernel stage, once a session.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
IN_CI = os.environ.get("CI") == "true"
# a stage that reads a config key it does not declare fails (hbos/tasks/table.py);
# the doit runs the tests start inherit it
os.environ["HBOS_STRICT_CONFIG"] = "1"
# the artifact cache (config cache_dir: auto = $XDG_CACHE_HOME/hbos): never the
# user's real ~/.cache/hbos, and no state from an earlier run: a fresh directory
# per session (a test that uses the cache sets cache_dir to its own tmp dir)
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="hbos-test-xdg-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)


def cache_dir() -> Path:
    d = Path(os.environ.get("HBOS_TEST_CACHE", Path.home() / ".cache" / "hbos-tests"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def missing_prerequisite(reason: str):
    """Skip on a developer box; fail under CI, where .ci/run installs everything."""
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        missing_prerequisite(f"test vectors not found at {VECTORS}")
    return VECTORS


@pytest.fixture
def fixed_verification_time(monkeypatch):
    """Certificates expire (the vectors' VCEKs from 2029 on): verify at a fixed time inside
    every vector's validity instead of now, so the suite does not rot. test_attest_strict
    covers the validity step itself."""
    import datetime

    from hbos.attest import verify
    monkeypatch.setattr(verify, "now_utc", lambda: datetime.datetime(
        2026, 6, 1, tzinfo=datetime.timezone.utc))


@pytest.fixture(scope="session")
def amdsev_ovmf(vectors) -> Path:
    """The last 4 KiB of a real AmdSevX64 OVMF: enough for its SEV metadata."""
    return vectors / "measurement" / "ovmf_AmdSev_suffix.bin"


def kernel_cache_build_dir() -> Path:
    """The test cache's build dir for the default kernel (issue 12: Debian trixie's
    linux-image-amd64, fetched with the private apt under its apt/ directory).
    The older cloud kernel at cache_dir()/downloads/guest-kernel.deb is left alone."""
    return cache_dir() / "kernel-trixie"


def cached_kernel_deb() -> Path:
    return kernel_cache_build_dir() / "downloads" / "guest-kernel.deb"


@pytest.fixture(scope="session")
def kernel_deb() -> Path:
    deb = cached_kernel_deb()
    if not deb.is_file():
        proc = subprocess.run([sys.executable, "-m", "tests.support.prepare"], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not deb.is_file():
            missing_prerequisite(f"cannot fetch the default (trixie) kernel .deb: "
                                 f"{proc.stderr.strip()[-500:]}")
    return deb


@pytest.fixture(scope="session")
def kernel_build(kernel_deb, tmp_path_factory):
    """(Config, Paths) of a build dir holding the real unpacked kernel."""
    from hbos import config as hconfig
    from hbos.paths import Paths
    from hbos.stages import kernel
    build = tmp_path_factory.mktemp("kernel-build")
    overlay = build / "overlay.yaml"
    overlay.write_text(f"build_dir: {build}\nkernel: {{source: deb, deb: {kernel_deb}}}\n")
    cfg = hconfig.load(overlay=overlay)
    paths = Paths.from_config(cfg)
    kernel.unpack(cfg, paths)
    return cfg, paths


def write_overlay(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def fake_firmware(paths) -> Path:
    """A stand-in for build/firmware/OVMF.fd, for stages that copy the firmware
    (content: HyperBEAM's reference OVMF) where no firmware is built."""
    paths.built_ovmf.parent.mkdir(parents=True, exist_ok=True)
    if not paths.built_ovmf.exists():
        paths.built_ovmf.write_bytes(b"not an OVMF: a test's stand-in\n")
    return paths.built_ovmf


def config_in(tmp_path: Path, extra: str = ""):
    """(Config, Paths) of the default config with build_dir under tmp_path, plus `extra` YAML."""
    from hbos import config as hconfig
    from hbos.paths import Paths
    cfg = hconfig.load(overlay=write_overlay(tmp_path / "o.yaml", f"build_dir: {tmp_path / 'b'}\n{extra}"))
    return cfg, Paths.from_config(cfg)


def doit(args: list[str], *, cwd: Path = ROOT, check: bool = True,
         timeout: float = 900) -> subprocess.CompletedProcess:
    """Run doit on the project's dodo.py; returns the CompletedProcess (text)."""
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"doit {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# ===================================================================
# Guest image fixtures (issue 3: initramfs, base root, verity) — owned by the
# guest-image engineer; others may use them.
#
# - base_rootfs_cache: the `local` profile's base root (mmdebstrap, real
#   Debian mirror), built once and cached under
#   cache_dir()/base-rootfs/<key of the rootfs config + source_date_epoch>.
# - write_test_content(dir): a small content tree: a Python http.server unit
#   (hbos-test.service, enabled by symlink) serving TEST_MARKER on port
#   TEST_GUEST_PORT.
# - build_guest(dir, ...): runs the real graph (`doit measure profile=local`)
#   in its own build dir with the cached base root linked in, the cached
#   default (trixie) kernel and the amdsev_ovmf vector as firmware; returns a
#   GuestBuild (vmlinuz, initrd, guest.img, hash_tree.bin, roothash, ...).
# - guest_build: one such build for the session (content = the test tree).
# ===================================================================

TEST_MARKER = "hbos-guest-image-test-marker-5f1c"
TEST_GUEST_PORT = 8080


def rootfs_cache_key(cfg) -> str:
    import hashlib
    import json
    data = json.dumps(cfg.slice("rootfs", "source_date_epoch"), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


@pytest.fixture(scope="session")
def base_rootfs_cache():
    """Paths of a cache dir holding base/rootfs.tar + base/rootfs.json (local profile)."""
    from hbos import config as hconfig
    from hbos.errors import HbosError
    from hbos.paths import Paths
    from hbos.stages import rootfs
    from hbos.util import tools
    cfg = hconfig.load(profile="local")
    root = cache_dir() / "base-rootfs" / rootfs_cache_key(cfg)
    root.mkdir(parents=True, exist_ok=True)
    overlay = write_overlay(root / "overlay.yaml", f"build_dir: {root}\n")
    cfg = hconfig.load(profile="local", overlay=overlay)
    paths = Paths.from_config(cfg)
    if not rootfs.up_to_date(cfg, paths)():
        if tools.find("mmdebstrap") is None:
            missing_prerequisite("mmdebstrap is not installed")
        try:
            rootfs.build_rootfs(cfg, paths)   # (the test cache is its own store)
        except HbosError as exc:
            missing_prerequisite(f"cannot build the base root filesystem: {exc}")
    return paths


def write_test_content(root: Path, marker: str = TEST_MARKER) -> Path:
    """A content tree with one enabled service answering `marker` over HTTP."""
    www = root / "opt" / "hbos-test" / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text(f"{marker}\n")
    units = root / "etc" / "systemd" / "system"
    (units / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    (units / "hbos-test.service").write_text(
        "[Unit]\nDescription=HyperBEAM OS guest image test service\n"
        "After=network.target\n\n[Service]\n"
        f"ExecStart=/usr/bin/python3 -m http.server {TEST_GUEST_PORT} "
        "--directory /opt/hbos-test/www\n\n[Install]\nWantedBy=multi-user.target\n")
    link = units / "multi-user.target.wants" / "hbos-test.service"
    if not link.is_symlink():
        link.symlink_to("../hbos-test.service")
    return root


class GuestBuild:
    """A built guest in its own build dir (see build_guest)."""

    def __init__(self, build_dir: Path, overlay: Path):
        from hbos import config as hconfig
        from hbos.paths import Paths
        self.dir = build_dir
        self.overlay = overlay
        self.cfg = hconfig.load(profile="local", overlay=overlay)
        self.paths = Paths.from_config(self.cfg)

    def doit(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return doit([*args, "profile=local", f"config={self.overlay}"], check=check)

    @property
    def vmlinuz(self) -> Path:
        return self.paths.vmlinuz

    @property
    def initrd(self) -> Path:
        return self.paths.initramfs

    @property
    def image(self) -> Path:
        return self.paths.verity_image

    @property
    def hash_tree(self) -> Path:
        return self.paths.hash_tree

    @property
    def roothash(self) -> str:
        return self.paths.roothash.read_text().strip()

    @property
    def measurement(self) -> dict:
        import json
        return json.loads(self.paths.measurement.read_text())

    @property
    def cmdline(self) -> str:
        from hbos.stages import vmconfig
        return vmconfig.kernel_cmdline(self.cfg, self.roothash)


def link_base_rootfs(cache, paths) -> None:
    """Hard-link (or copy) the cached base root into a build dir."""
    import shutil
    paths.base_dir.mkdir(parents=True, exist_ok=True)
    for src, dest in ((cache.base_rootfs, paths.base_rootfs),
                      (cache.base_rootfs_manifest, paths.base_rootfs_manifest)):
        if dest.exists():
            dest.unlink()
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)


def build_guest(build_dir: Path, *, base_cache, kernel_deb: Path, ovmf: Path,
                content: Path, extra: str = "") -> GuestBuild:
    """`doit measure` (profile local) in build_dir with `content` as a content dir."""
    build_dir.mkdir(parents=True, exist_ok=True)
    overlay = write_overlay(build_dir / "overlay.yaml", (
        f"build_dir: {build_dir / 'build'}\n"
        f"kernel: {{source: deb, deb: {kernel_deb}}}\n"
        f"firmware: {{ovmf: {ovmf}}}\n"
        f"content: {{source: dir, path: {content}}}\n" + extra))
    guest = GuestBuild(build_dir, overlay)
    link_base_rootfs(base_cache, guest.paths)
    guest.doit("measure")
    return guest


@pytest.fixture(scope="session")
def guest_build(base_rootfs_cache, kernel_deb, amdsev_ovmf, tmp_path_factory) -> GuestBuild:
    """A local-profile-like guest with the test service, built once a session."""
    root = tmp_path_factory.mktemp("guest-build")
    content = write_test_content(root / "content-src")
    return build_guest(root / "guest", base_cache=base_rootfs_cache, kernel_deb=kernel_deb,
                       ovmf=amdsev_ovmf, content=content)


def kill_qemu(run_dir: Path) -> None:
    """Test teardown: SIGKILL the QEMU whose pidfile is in run_dir, and reap it."""
    import signal
    import time

    from hbos.launch import qemu, start
    files = qemu.RunFiles(run_dir)
    pid = start.read_pid(files.pidfile)
    if pid is None or not start.is_our_qemu(pid, files.pidfile):
        return
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        start._reap(pid)
        if not start.is_our_qemu(pid, files.pidfile):
            break
        time.sleep(0.1)
