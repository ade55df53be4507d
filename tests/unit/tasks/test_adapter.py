"""hbos.tasks.adapter: the one doit adapter, and what dodo.py imports at graph time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from doit.exceptions import TaskFailed

from hbos.errors import BuildError, Busy
from hbos.tasks import adapter

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("cryptography", "jinja2", "sevsnpmeasure", "requests")
# config validation reads the vCPU names from sev-snp-measure's plain data module
LIGHT = ("sevsnpmeasure", "sevsnpmeasure.vcpu_types")


def test_dodo_import_does_not_import_the_heavy_libraries(tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text(f"build_dir: {tmp_path / 'build'}\n")
    code = ("import sys; import doit.doit_cmd as c; c._CMDLINE_VARS = {'config': sys.argv[1]}; "
            "import dodo; [getattr(dodo, n)() for n in dir(dodo) if n.startswith('task_')]; "
            "print(' '.join(m for m in sys.modules if m.partition('.')[0] in "
            f"{HEAVY!r} and m not in {LIGHT!r}))")
    out = subprocess.run([sys.executable, "-c", code, str(over)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.split() == []


def _boom(kind):
    if kind == "hbos":
        raise BuildError("the thing failed", hint="do the other thing")
    if kind == "os":
        raise PermissionError(13, "Permission denied", "/x/y")
    return {"ok": kind}


def test_action_turns_errors_into_one_line():
    (run,) = adapter.action(_boom, "hbos")
    failed = run()
    assert isinstance(failed, TaskFailed)
    assert str(failed.message) == "the thing failed\n  hint: do the other thing"
    failed = adapter.action(_boom, "os")[0]()
    assert isinstance(failed, TaskFailed) and failed.message == "_boom: Permission denied: /x/y"
    assert adapter.action(_boom, "fine")[0]() == {"ok": "fine"}


def test_action_imports_late_and_passes_params():
    (run,) = adapter.action("hbos.launch.start:options_from_params")
    assert run.__name__ == "options_from_params"
    # params arrive as keywords; the result (not dict/str) is dropped for doit
    assert run(data_disk="", self_url="http://x", peer_url="", no_auto=True) is None
    (run,) = adapter.action("hbos.no_such_module:fn")
    with pytest.raises(ModuleNotFoundError):
        run()


def test_action_options_and_lock(tmp_path):
    seen = []
    (run,) = adapter.action(lambda a, opts: seen.append((a, opts)), "A",
                            options="hbos.launch.start:options_from_params",
                            lock=(tmp_path / "locks" / "vm", "start"))
    assert run(self_url="http://me", no_auto=True) is None
    a, opts = seen[0]
    assert a == "A" and opts.self_url == "http://me" and opts.no_auto is True
    from hbos.util import lock
    with lock.hold(tmp_path / "locks" / "vm", "stop"):
        failed = run(self_url="")
    assert isinstance(failed, TaskFailed) and "another run holds it" in failed.message
    assert issubclass(Busy, Exception) and len(seen) == 1


@pytest.mark.parametrize("overlay, message", [
    # at load: the build directory cannot be made (issue 16 acceptance)
    ("build_dir: /proc/x\n", "build_dir: /proc/x cannot be created"),
    # while the graph is built: a task creator meets an HbosError
    ("firmware: {source: path}\n", "firmware.source is 'path' but firmware.ovmf is empty"),
])
def test_graph_errors_are_one_line(tmp_path, overlay, message):
    over = tmp_path / "bad.yaml"
    over.write_text(overlay if overlay.startswith("build_dir") else
                    f"build_dir: {tmp_path / 'build'}\n{overlay}")
    proc = subprocess.run([sys.executable, "-m", "doit", "list", f"config={over}"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hbos: error: ") and message in lines[0]


def test_every_action_names_a_function_that_exists(tmp_path):
    """Actions name their function as text ("hbos.module:function"): a rename that
    misses dodo.py fails here, not at a user's doit run."""
    from tests.support.graph import load_dodo
    refs = set()
    for n, overlay in enumerate(("", "identity: {enabled: true}\n")):
        where = tmp_path / str(n)
        where.mkdir()
        for task in load_dodo(where, overlay)["tasks"].values():
            for act in task.get("actions") or []:  # a python-action is a (callable,) tuple
                refs.update(getattr(act[0] if isinstance(act, tuple) else act, "refs", ()))
    assert len(refs) > 20
    for ref in sorted(refs):
        assert callable(adapter.resolve(ref)), ref


def test_stage_task_adds_action_config_check_and_clean(tmp_path):
    from doit.tools import config_changed

    from hbos import config as hconfig
    from hbos.paths import Paths
    cfg = hconfig.load(overlay=None)
    s = adapter.Stage("demo", "hbos.tasks.adapter:make_dirs", hconfig.Reads("ports"))
    task = adapter.stage_task(s, cfg, Paths(tmp_path), targets=[tmp_path / "a" / ".." / "t"],
                              file_dep=[tmp_path / "d"], uptodate=["extra"])
    assert task["targets"] == [str(tmp_path / "t")]
    assert task["file_dep"] == [str(tmp_path / "d")]
    assert task["clean"] is True
    (fn,) = task["actions"][0]
    assert len(task["actions"]) == 1 and fn.refs == ("hbos.tasks.adapter:make_dirs",)
    check, extra = task["uptodate"]
    assert isinstance(check, config_changed) and extra == "extra"
    assert check.config == cfg.slice("ports")


def test_a_stage_with_its_own_record_uses_it_as_the_config_check(tmp_path):
    from hbos import config as hconfig
    from hbos.paths import Paths
    from hbos.tasks import table
    cfg = hconfig.load(overlay=None)
    check = table.BASE_ROOTFS.config_changed(cfg, Paths(tmp_path))
    assert callable(check) and check() is False   # nothing recorded beside rootfs.tar yet
