"""README.md and docs/*.md: every relative link resolves, and README's set-up and
test commands are the ones .ci/run runs (CI runs what README names)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a link in code is no link)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation
    dropped, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in _HEADING.finditer(_prose(page.read_text())):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    return [m.group(1) for m in _LINK.finditer(_prose(page.read_text()))]


def broken_links(page: Path) -> list[str]:
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto:
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest}")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            bad.append(f"{target}: no heading #{frag} in {dest}")
    return bad


def test_slug_follows_github():
    assert slug("Quickstart: a local guest, no SEV-SNP hardware needed") == \
        "quickstart-a-local-guest-no-sev-snp-hardware-needed"
    assert slug("The local Erlang release (`hb_node`)") == "the-local-erlang-release-hb_node"
    assert slug("HOST_DATA = the node's configuration") == "host_data--the-nodes-configuration"
    assert slug("`--dry-run`") == "--dry-run"


def test_broken_link_is_found(tmp_path):
    (tmp_path / "b.md").write_text("# Here\n\n## Two words\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#two-words) [gone](c.md) [anchor](b.md#three) [web](https://x/y)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert [b.split(":")[0] for b in broken_links(page)] == ["c.md", "b.md#three"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_readme():
    named = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in named] == []


def _readme_block_after(heading: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1]
    block = re.search(r"^```\n(.*?)^```", section, re.M | re.S)
    assert block, f"README's {heading} section has no command block"
    return block.group(1).strip().splitlines()


def _ci_apt_packages(ci: str) -> list[str]:
    cmd = re.search(r"apt-get install (.*?)\n\n", ci.replace("\\\n", " "), re.S)
    assert cmd
    return [w for w in shlex.split(cmd.group(1)) if not w.startswith("-")]


def test_readme_setup_command_installs_what_ci_installs():
    (line,) = _readme_block_after("Set up")
    apt, pip = line.split(" && pip install ")
    apt_words = shlex.split(apt.split("apt-get install", 1)[1])
    ci = (ROOT / ".ci" / "run").read_text()
    assert [w for w in apt_words if not w.startswith("-")] == _ci_apt_packages(ci)
    assert [w for w in apt_words if w.startswith("-")] == ["-y", "--no-install-recommends"]
    assert shlex.split(pip)[-1] == ".[test,lint]"
    assert "pip install -q -e '.[test,lint]'" in ci


def test_ci_runs_the_test_command_readme_names():
    assert _readme_block_after("Tests") == ["python3 -m pytest"]
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    assert ci_lines[-1] == "python3 -m pytest"


def test_readme_stages_table_names_every_task():
    tasks = re.findall(r"^def task_(\w+)\(", (ROOT / "dodo.py").read_text(), re.M)
    text = (ROOT / "README.md").read_text().split("\n## Stages\n", 1)[1].split("\n## ", 1)[0]
    named = {name for row in re.findall(r"^\| ([^|]+) \|", text, re.M)
             for name in re.findall(r"`(\w+)", row)}
    assert len(tasks) > 20
    assert sorted(set(tasks) - named) == []


_SOURCE_PATH = re.compile(r"(?<![\w/.~-])((?:hbos|tests|benchmarks|tools|resources|templates)/[\w./-]*\w)")
_MODULE = re.compile(r"(?<![\w/.])(hbos(?:\.[a-z_][a-z0-9_]*)+)")
# dotted names that are not modules: the guest's kernel parameter, the placeholder
# in "hbos.module:function"
_NOT_MODULES = {"hbos.debug", "hbos.module"}


def stale_names(text: str, root: Path = ROOT) -> list[str]:
    """Source paths (hbos/launch/start.py, tests/support/) and dotted module names
    (hbos.launch.start, hbos.launch.start.wait_healthy) that name nothing in the tree."""
    bad = []
    for path in _SOURCE_PATH.findall(text):
        if not (root / path).exists() and not path.endswith(("_", "*")):
            bad.append(path)
    for dotted in _MODULE.findall(text):
        if dotted in _NOT_MODULES:
            continue
        parts = dotted.split(".")
        # the longest prefix that is a module or package; the next part, if any,
        # must be defined there (a function, class or name)
        for i in range(len(parts), 0, -1):
            module = (root / Path(*parts[:i])).with_suffix(".py")
            package = root / Path(*parts[:i]) / "__init__.py"
            source = module if module.is_file() else package if package.is_file() else None
            if source is not None:
                break
        if source is None:
            bad.append(dotted)
        elif i < len(parts) and not re.search(
                rf"^\s*(?:def|class)\s+{parts[i]}\b|^\s*{parts[i]}\s*[:=]|import .*\b{parts[i]}\b",
                source.read_text(), re.M):
            bad.append(dotted)
    return bad


def test_stale_names_are_found(tmp_path):
    (tmp_path / "hbos" / "launch").mkdir(parents=True)
    (tmp_path / "hbos" / "__init__.py").touch()
    (tmp_path / "hbos" / "launch" / "__init__.py").touch()
    (tmp_path / "hbos" / "launch" / "start.py").write_text("def wait_healthy():\n    pass\n")
    text = ("hbos/launch/start.py hbos/launch.py hbos.launch.start.wait_healthy "
            "hbos.launch_plan hbos.launch.qemu")
    assert stale_names(text, tmp_path) == ["hbos/launch.py", "hbos.launch_plan", "hbos.launch.qemu"]


@pytest.mark.parametrize("page", [*PAGES, ROOT / "config.yaml", ROOT / "dodo.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_modules_and_paths_that_exist(page):
    assert stale_names(page.read_text()) == []
