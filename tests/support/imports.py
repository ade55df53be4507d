"""The hbos import graph, read from the source with ast (nothing is imported).

`LAYERS` is the one statement of which folder may import which (also drawn in
docs/architecture.md): a module may import its own layer and the layers before
it, never one after it. `problems()` names every cycle, upward import and
function-level import that is not of a heavy library; tests/unit/test_imports.py
asserts it finds none, and checks it does find the ones it is shown.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hbos"

# Bottom to top. A top-level module is its own layer; a folder is one layer.
LAYERS = ("hbos", "hbos.errors", "hbos.paths", "hbos.util", "hbos.config", "hbos.measure",
          "hbos.attest", "hbos.stages", "hbos.launch", "hbos.release", "hbos.host", "hbos.tasks",
          "hbos.cli", "hbos.__main__")

# Libraries slow enough to import that a module may import them inside the
# function that needs them (with a comment saying why), so `doit list`, a no-op
# build and `hbos --help` never load them.
HEAVY = frozenset({"sevsnpmeasure", "cryptography", "requests", "urllib3", "tqdm", "jinja2", "yaml"})


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str       # dotted module name
    imported: str       # dotted module name (for hbos: the module, never a function in it)
    line: int
    late: bool          # inside a function
    reason: str         # the comment on the import's line, if any


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, known: set[str], importer: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: resolve against the importer's package
        pkg = importer.split(".")[: -node.level] if not importer.endswith("__init__") else importer.split(".")
        base = ".".join([*pkg, base] if base else pkg)
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in known else base)
    return out


def imports(package: Path = PACKAGE) -> list[Import]:
    mods = modules(package)
    known = set(mods)
    out: list[Import] = []
    for name, path in mods.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)

        def visit(node: ast.AST, late: bool, name: str = name, lines: list[str] = lines) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    text = lines[child.lineno - 1]
                    reason = text.partition("#")[2].strip() if "#" in text else ""
                    for target in _targets(child, known, name):
                        out.append(Import(name, target, child.lineno, late, reason))
                inner = late or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, inner)
        visit(tree, False)
    return out


def layer(module: str) -> int:
    """The index in LAYERS of the longest entry that is `module` or its package."""
    best = -1
    for i, entry in enumerate(LAYERS):
        if (module == entry or module.startswith(entry + ".")) and \
                (best < 0 or len(entry) >= len(LAYERS[best])):
            best = i
    if best < 0:
        raise ValueError(f"{module} is in no layer of tests/support/imports.py LAYERS")
    return best


def cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (or a self-loop), sorted."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(found)


def folder(module: str) -> str:
    return LAYERS[layer(module)]


def problems(package: Path = PACKAGE) -> list[str]:
    """Every cycle (between modules, and between folders), upward import and late
    import of a light module, one line each."""
    found: list[str] = []
    every = imports(package)
    internal = [i for i in every if i.imported.split(".")[0] == "hbos"]
    for comp in cycles([(i.importer, i.imported) for i in internal if i.importer != i.imported]):
        found.append("import cycle between modules: " + " -> ".join(comp))
    for comp in cycles([(folder(i.importer), folder(i.imported)) for i in internal
                        if folder(i.importer) != folder(i.imported)]):
        found.append("import cycle between folders: " + " -> ".join(comp))
    for i in internal:
        if layer(i.imported) > layer(i.importer):
            found.append(f"upward import: {i.importer} (line {i.line}, layer {folder(i.importer)}) "
                         f"imports {i.imported} (layer {folder(i.imported)})")
    for i in every:
        if not i.late:
            continue
        top = i.imported.split(".")[0]
        if top not in HEAVY:
            found.append(f"import inside a function: {i.importer} line {i.line} imports {i.imported} "
                         "(only heavy libraries may be imported late; move it to the top)")
        elif not i.reason:
            found.append(f"late import without a reason: {i.importer} line {i.line} imports "
                         f"{i.imported} (say why on its line)")
    return list(dict.fromkeys(found))
