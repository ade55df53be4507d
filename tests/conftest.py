"""Shared fixtures.

- vectors: ../shared/vectors (read in place, never copied; skipped when absent).
- kernel_deb: the real Debian cloud kernel .deb (linux-image-cloud-amd64
  resolved to its linux-image-<version>-cloud-amd64), cached in the test cache
  (HBOS_TEST_CACHE, default ~/.cache/hbos-tests). `.ci/run` fetches it first
  (python -m tests.prepare); under CI=true a missing prerequisite fails.
- kernel_build: that kernel unpacked by the real kernel stage, once a session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors"
IN_CI = os.environ.get("CI") == "true"


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
        pytest.skip(f"test vectors not found at {VECTORS} (shared/ beside the checkout)")
    return VECTORS


@pytest.fixture(scope="session")
def amdsev_ovmf(vectors) -> Path:
    """The last 4 KiB of a real AmdSevX64 OVMF: enough for its SEV metadata."""
    return vectors / "measurement" / "ovmf_AmdSev_suffix.bin"


def cached_kernel_deb() -> Path:
    return cache_dir() / "downloads" / "guest-kernel.deb"


@pytest.fixture(scope="session")
def kernel_deb() -> Path:
    deb = cached_kernel_deb()
    if not deb.is_file():
        proc = subprocess.run([sys.executable, "-m", "tests.prepare"], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not deb.is_file():
            missing_prerequisite(f"cannot fetch the Debian cloud kernel .deb: "
                                 f"{proc.stderr.strip()[-500:]}")
    return deb


@pytest.fixture(scope="session")
def kernel_build(kernel_deb, tmp_path_factory):
    """(Config, Paths) of a build dir holding the real unpacked kernel."""
    from hbos import config as hconfig, kernel
    from hbos.paths import Paths
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


def doit(args: list[str], *, cwd: Path = ROOT, check: bool = True,
         timeout: float = 900) -> subprocess.CompletedProcess:
    """Run doit on the project's dodo.py; returns the CompletedProcess (text)."""
    proc = subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"doit {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
