"""The package as a user installs it: a wheel built from this checkout, installed
into a fresh venv, runs `hbos --help` and the project's `doit list`.

The venv sees the system's site packages for the dependencies (doit, PyYAML,
sev-snp-measure, ...: no download), and hbos only from the wheel: the test
checks the module is the venv's copy, not this checkout's. `doit list` runs in
a copy of the project's files without the hbos/ folder (dodo.py, config.yaml,
templates/, resources/, tools/), so nothing can be imported from the source
tree; hbos.paths finds those files in the directory doit runs in.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration]

PROJECT_FILES = ("dodo.py", "config.yaml", "templates", "resources", "tools")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # a copy of the checkout: building writes build/ and *.egg-info, never into the tree under test
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
        ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out / "dist"), str(src)], check=True)
    (found,) = (out / "dist").glob("hbos-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    where = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(where)], check=True)
    subprocess.run([str(where / "bin" / "python3"), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    return where


def test_the_wheel_holds_every_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in sorted(ROOT.glob("hbos/**/__init__.py")):
        assert init.relative_to(ROOT).as_posix() in names
    for module in sorted(ROOT.glob("hbos/**/*.py")):
        assert module.relative_to(ROOT).as_posix() in names, module


def test_hbos_help_runs_from_the_venv(venv, tmp_path):
    where = subprocess.run([str(venv / "bin" / "python3"), "-c", "import hbos; print(hbos.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where
    out = subprocess.run([str(venv / "bin" / "hbos"), "--help"], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    for command in ("measure", "check-host", "verify-report", "hyperbeam-check", "verify-release"):
        assert command in out


def test_doit_list_runs_with_the_installed_package(venv, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, project / name)
    (project / "over.yaml").write_text(f"build_dir: {tmp_path / 'build'}\n")
    proc = subprocess.run([str(venv / "bin" / "python3"), "-m", "doit", "list", "config=over.yaml"],
                          cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for task in ("build_guest_image", "measure", "start", "package_release", "verify_report"):
        assert task in proc.stdout
    # and the graph was built from the venv's hbos, reading this copy's templates
    code = ("import hbos.paths as p, hbos.util.templates as t; "
            "print(p.__file__); print(t.TEMPLATES)")
    lines = subprocess.run([str(venv / "bin" / "python3"), "-c", code], cwd=project,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0].startswith(str(venv)) and lines[1] == str(project / "templates")
