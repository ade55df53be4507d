"""Render files from templates/ with jinja2 (strict: an undefined name fails)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

from hbos.paths import TEMPLATES


def _toml_str(value: Any) -> str:
    # A JSON string is a valid TOML basic string for the text we write.
    return json.dumps(str(value))


def environment() -> jinja2.Environment:
    import jinja2  # here, not at import: dodo.py reads template paths at graph time

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["toml_str"] = _toml_str
    return env


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)


def path(name: str) -> Path:
    return TEMPLATES / name
