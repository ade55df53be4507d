"""The import graph of hbos: no cycle, folders stacked one way, late imports
only for heavy libraries (tests/support/imports.py reads it with ast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import imports


def test_no_cycle_no_upward_import_no_light_late_import():
    found = imports.problems()
    assert not found, "\n".join(found)


def test_every_module_is_in_a_layer():
    for name in imports.modules():
        imports.layer(name)  # raises for a module outside LAYERS


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "hbos"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    return root


def test_a_cycle_between_modules_is_named(tmp_path):
    pkg = _package(tmp_path, {"util/a.py": "from hbos.util import b\n",
                              "util/b.py": "from hbos.util.a import x\n"})
    assert "import cycle between modules: hbos.util.a -> hbos.util.b" in imports.problems(pkg)


def test_an_upward_import_and_the_folder_cycle_it_makes_are_named(tmp_path):
    pkg = _package(tmp_path, {"measure/digest.py": "from hbos.launch import qemu\n",
                              "launch/qemu.py": "from hbos.measure import digest\n"})
    found = imports.problems(pkg)
    assert any(p.startswith("upward import: hbos.measure.digest (line 1") for p in found), found
    assert "import cycle between folders: hbos.launch -> hbos.measure" in found


def test_late_imports_only_of_heavy_libraries_with_a_reason(tmp_path):
    pkg = _package(tmp_path, {"util/a.py": (
        "def f():\n"
        "    import json\n"
        "    from hbos.util import b\n"
        "    import jinja2\n"
        "    import requests  # only for a download\n"),
        "util/b.py": ""})
    found = imports.problems(pkg)
    assert any("line 2 imports json" in p and "inside a function" in p for p in found), found
    assert any("line 3 imports hbos.util.b" in p for p in found), found
    assert any("late import without a reason" in p and "line 4 imports jinja2" in p for p in found)
    assert not any("line 5" in p for p in found), found


def test_graph_time_imports_load_no_heavy_library():
    """What dodo.py imports to build the graph: none of the heavy libraries (PyYAML
    reads config.yaml; config validates vm.vcpu_type against sev-snp-measure's CPU
    table, sevsnpmeasure.vcpu_types, 2 ms: the digest code is never loaded)."""
    watched = sorted(imports.HEAVY - {"yaml", "sevsnpmeasure"}) + ["sevsnpmeasure.gctx"]
    code = ("import runpy, sys, doit.doit_cmd; sys.argv = ['doit']; "
            "import importlib.util as u; "
            "spec = u.spec_from_file_location('dodo', 'dodo.py'); m = u.module_from_spec(spec); "
            "spec.loader.exec_module(m); "
            "[getattr(m, n)() for n in dir(m) if n.startswith('task_')]; "
            "print(' '.join(sorted(h for h in %r if h in sys.modules)))" % watched)
    out = subprocess.run([sys.executable, "-c", code], cwd=imports.ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == ""
