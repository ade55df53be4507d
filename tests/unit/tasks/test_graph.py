"""The task graph as data: file_dep, targets and uptodate of every stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.graph import load_dodo

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def local_graph(tmp_path):
    return load_dodo(tmp_path, profile="local")


def test_every_task_has_a_one_line_doc(local_graph):
    for name in dir(local_graph["module"]):
        if name.startswith("task_"):
            doc = getattr(local_graph["module"], name).__doc__
            assert doc and doc.strip() and "\n" not in doc.strip(), name


def test_targets_live_under_the_build_dir_and_paths_are_absolute(local_graph):
    build = str(local_graph["build"].resolve())
    for name, t in local_graph["tasks"].items():
        for target in t.get("targets", []):
            assert target.startswith(build + "/"), (name, target)
        for dep in t.get("file_dep", []):
            assert Path(dep).is_absolute(), (name, dep)


def test_tasks_with_targets_have_inputs_or_uptodate(local_graph):
    """A task with targets but no inputs would always run (doit pitfall)."""
    for name, t in local_graph["tasks"].items():
        if t.get("targets"):
            assert t.get("file_dep") or t.get("uptodate"), name


def test_no_target_is_produced_by_two_tasks(local_graph):
    seen = {}
    for name, t in local_graph["tasks"].items():
        for target in t.get("targets", []):
            assert target not in seen, f"{target} made by {seen.get(target)} and {name}"
            seen[target] = name


def test_measure_depends_on_what_it_measures(local_graph):
    p = local_graph["module"].P
    m = local_graph["tasks"]["measure"]
    assert m["targets"] == [str(p.measurement), str(p.reference_values), str(p.snp_trusted),
                            str(p.host_data)]
    for f in (p.vm_config, p.vmlinuz, p.built_ovmf):
        assert str(f) in m["file_dep"]
    v = local_graph["tasks"]["vm_config"]
    assert str(p.vmlinuz) in v["file_dep"] and str(p.vm_config) in v["targets"]


def test_kernel_source_selects_kernel_inputs(tmp_path):
    g = load_dodo(tmp_path, "kernel: {source: deb, deb: /x/k.deb}\n")
    assert g["tasks"]["kernel"]["file_dep"] == ["/x/k.deb"]
    assert g["tasks"]["kernel_deb"]["actions"] is None
    g2 = load_dodo(tmp_path, profile="local")
    assert g2["tasks"]["kernel"]["file_dep"] == [str(g2["module"].P.kernel_deb)]


def test_explicit_ovmf_is_a_file_dep(tmp_path):
    g = load_dodo(tmp_path, "firmware: {ovmf: /fw/OVMF.fd}\n")
    assert "/fw/OVMF.fd" in g["tasks"]["measure"]["file_dep"]


def test_doit_list_explains_every_stage_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "doit", "list", "profile=local"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    names = {line.split()[0] for line in lines}
    for stage in ("init", "snp_release", "kernel", "vm_config", "measure"):
        assert stage in names
    assert all(len(line.split(None, 1)) == 2 for line in lines), lines


def test_config_error_is_one_line_without_traceback(tmp_path):
    over = tmp_path / "bad.yaml"
    over.write_text("vm:\n  vcpu_cont: 2\n")
    proc = subprocess.run([sys.executable, "-m", "doit", "list", f"config={over}"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"hbos: error: {over}: unknown key 'vm.vcpu_cont' (did you mean 'vm.vcpu_count'?)" \
        in proc.stderr
