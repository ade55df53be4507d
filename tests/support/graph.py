"""Load dodo.py as doit would, with an overlay config, and call every task creator."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import doit.doit_cmd

ROOT = Path(__file__).resolve().parents[2]


def load_dodo(tmp_path: Path, overlay_text: str = "", profile: str | None = None) -> dict:
    over = tmp_path / "over.yaml"
    over.write_text(f"build_dir: {tmp_path / 'build'}\n{overlay_text}")
    saved = doit.doit_cmd._CMDLINE_VARS
    doit.doit_cmd._CMDLINE_VARS = {"config": str(over), **({"profile": profile} if profile else {})}
    try:
        spec = importlib.util.spec_from_file_location(f"dodo_{id(tmp_path)}", ROOT / "dodo.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        doit.doit_cmd._CMDLINE_VARS = saved
    tasks = {}
    for name in dir(mod):
        if name.startswith("task_"):
            result = getattr(mod, name)()
            if isinstance(result, dict):
                tasks[name[5:]] = result
    return {"module": mod, "tasks": tasks, "build": tmp_path / "build"}
