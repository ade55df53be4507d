"""Each stage's declared config (hbos/tasks/table.py) over the real task graph.

Changing any declared key changes the task's config_changed digest (doit
reruns the stage); a stage reading a key it did not declare fails.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from hbos import config as hconfig
from hbos.errors import ConfigError
from hbos.tasks import adapter, table
from tests.support.graph import load_dodo


def _leaves(cls: type, prefix: str) -> list[tuple[str, typing.Any]]:
    """(dotted key, type) of every setting under a section."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, tp))
    return out


LEAVES = dict(_leaves(hconfig.Config, ""))


def _candidates(tp: typing.Any, value: typing.Any) -> list[typing.Any]:
    """Other values of the same type, in YAML form; the first the config accepts is used."""
    if typing.get_origin(tp) is typing.Literal:
        return [c for c in typing.get_args(tp) if c != value]
    if tp is bool:
        return [not value]
    if tp is int:
        return [value + 1, value - 1, 1, 0]
    if typing.get_origin(tp) is tuple:
        return [list(value[:-1]), list(value) + [value[0]] if value else ["x=1"], ["cache-x"],
                ["8735:8734"], ["a: 1"], ["A=1"]]
    if tp is str:
        flipped = ("2" if value[:1] == "1" else "1") + value[1:]  # keeps a hex digest valid
        return [value + "1", flipped, value + "x", "EPYC-Milan", "a" * 32, "a" * 64, "a" * 96,
                "http://example.org/x", "/tmp/x", "x"]
    raise AssertionError(tp)


# Stages the default config leaves inactive (their task has no action), and the
# settings that make them run: their keys are checked with these added.
ACTIVATE: dict[str, dict[str, dict[str, typing.Any]]] = {
    "hyperbeam": {"content": {"source": "hyperbeam"}},
    "cu": {"content": {"source": "hyperbeam", "cu": True}},
}


def _overlay(dotted: str | None = None, value: typing.Any = None,
             base: dict[str, dict[str, typing.Any]] | None = None) -> str:
    """The overlay (block YAML) with identity enabled, `base`'s sections merged in,
    and `dotted` set to `value`."""
    import yaml
    data: dict[str, typing.Any] = {"identity": {"enabled": True, "keys_dir": "/nonexistent"}}
    for section, values in (base or {}).items():
        data.setdefault(section, {}).update(values)
    if dotted:
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return yaml.safe_dump(data)


def _load(where, text: str = "") -> dict:
    where.mkdir(parents=True)
    return load_dodo(where, text)


def _digest(graph: dict, task: str) -> str | None:
    """The config_changed digest, or None when the value made the stage inactive
    (e.g. firmware.ovmf set: nothing to build)."""
    if "uptodate" not in graph["tasks"][task]:
        return None
    (changed,) = [u for u in graph["tasks"][task]["uptodate"] if hasattr(u, "_calc_digest")]
    return changed._calc_digest()


def _current(cfg, dotted):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


# base_rootfs keeps its record beside rootfs.tar (rootfs.up_to_date), not in doit's db
GRAPH_STAGES = [s for s in table.ALL if s is not table.BASE_ROOTFS]


def test_every_declared_key_names_a_setting():
    for s in table.ALL:
        for key in s.reads.keys:
            assert key in LEAVES or any(k.startswith(key + ".") for k in LEAVES), (s.name, key)


def test_changing_a_declared_key_reruns_the_stage(tmp_path):
    """For every stage and every setting it declares, a changed value gives another
    config_changed digest (so doit reruns it). The task comes from dodo.py's own task
    function, evaluated with the changed config."""
    from hbos.paths import Paths
    base = _load(tmp_path / "base", _overlay())
    dodo = base["module"]
    cfg = dodo.CFG
    base_digests = {s.name: _digest(base, s.name) for s in GRAPH_STAGES}
    over = tmp_path / "changed.yaml"
    checked = 0
    try:
        for name, activate in ACTIVATE.items():
            over.write_text(f"build_dir: {base['build']}\n" + _overlay(base=activate))
            dodo.CFG = hconfig.load(overlay=over)
            dodo.P = Paths.from_config(dodo.CFG)
            base_digests[name] = _digest({"tasks": {name: getattr(dodo, f"task_{name}")()}},
                                         name)
        for s in GRAPH_STAGES:
            assert base_digests[s.name] is not None, \
                f"stage {s.name} is inactive under the default config: add it to ACTIVATE"
            for key in [k for k in LEAVES if s.reads.covers(k)]:
                candidates = _candidates(LEAVES[key], _current(cfg, key))
                if not candidates:
                    continue  # a setting with one allowed value (vm.vmm_type) cannot change
                for candidate in candidates:
                    over.write_text(f"build_dir: {base['build']}\n" +
                                    _overlay(key, candidate, ACTIVATE.get(s.name)))
                    try:
                        dodo.CFG = hconfig.load(overlay=over)
                    except ConfigError:
                        continue  # a value the config rejects; try another
                    if _current(dodo.CFG, key) == _current(cfg, key):
                        continue
                    dodo.P = Paths.from_config(dodo.CFG)
                    graph = {"tasks": {s.name: getattr(dodo, f"task_{s.name}")()}}
                    assert _digest(graph, s.name) != base_digests[s.name], (s.name, key,
                                                                            candidate)
                    checked += 1
                    break
                else:
                    pytest.fail(f"no valid other value for {key} (stage {s.name})")
    finally:
        dodo.CFG, dodo.P = cfg, Paths.from_config(cfg)
    assert checked > 100


def test_ports_change_repackages_the_release(tmp_path):
    """The acceptance case: ports.hyperbeam alone reruns package_release (not verity)."""
    base = _load(tmp_path / "a")
    other = _load(tmp_path / "b", "ports: {hyperbeam: 10001}\n")
    assert _digest(base, "package_release") != _digest(other, "package_release")
    assert _digest(base, "verity") == _digest(other, "verity")


def test_sources_mirror_reruns_nothing(tmp_path):
    """Where the pinned archives come from changes no output (each is checked against
    its pin): sources.mirror is no stage's input."""
    activate = "content: {source: hyperbeam}\n"
    a = _load(tmp_path / "a", activate)
    b = _load(tmp_path / "b", activate + "sources: {mirror: /elsewhere/archives}\n")
    assert b["module"].CFG.sources.mirror == "/elsewhere/archives"
    for task in ("hyperbeam", "content"):
        assert _digest(a, task) is not None
        assert _digest(a, task) == _digest(b, task), task
    assert not any(s.reads.covers("sources.mirror") for s in table.ALL)


def test_view_refuses_an_undeclared_key(monkeypatch):
    cfg = hconfig.load()
    view = hconfig.Reads("ports", "release.name").view(cfg, "package_release")
    assert view.ports.hyperbeam == cfg.ports.hyperbeam
    assert view.release.name == cfg.release.name
    assert view.path("x") == cfg.path("x") and view.build_dir == cfg.build_dir
    assert view.slice("ports") == cfg.slice("ports")
    monkeypatch.setenv(hconfig.STRICT_ENV, "1")
    with pytest.raises(hconfig.UndeclaredConfig, match="package_release read config key 'release.url'"):
        _ = view.release.url
    with pytest.raises(hconfig.UndeclaredConfig, match="'vm'"):
        _ = view.vm
    with pytest.raises(hconfig.UndeclaredConfig, match="'kernel'"):
        view.slice("kernel")
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.ports = None
    import pickle
    assert pickle.loads(pickle.dumps(view)).release.name == cfg.release.name
    monkeypatch.setenv(hconfig.STRICT_ENV, "0")  # outside tests: the value, as before
    assert view.release.url == cfg.release.url


def test_stage_functions_receive_the_view(tmp_path, monkeypatch):
    """The action hands the stage its view: an undeclared read fails as a task failure."""
    monkeypatch.setenv(hconfig.STRICT_ENV, "1")
    seen = []
    s = adapter.Stage("demo", "x:y", hconfig.Reads("ports.cu"))
    s = dataclasses.replace(s, run=lambda c: seen.append(c.ports.cu) or c.ports.ssh)  # type: ignore
    cfg = hconfig.load()
    with pytest.raises(hconfig.UndeclaredConfig, match="'ports.ssh'"):
        s.action(cfg)[0]()
    assert seen == [cfg.ports.cu]


def test_config_error_for_a_bad_value_is_not_a_declaration_problem(tmp_path):
    over = tmp_path / "o.yaml"
    over.write_text("ports: {hyperbeam: 0}\n")
    with pytest.raises(ConfigError):
        hconfig.load(overlay=over)


def test_measure_declares_what_the_node_configuration_reads(monkeypatch):
    """HOST_DATA hashes config.flat and the post-start body: measure's view holds all they read."""
    from hbos.measure import nodeconfig
    monkeypatch.setenv(hconfig.STRICT_ENV, "1")
    cfg = hconfig.load()
    view = table.MEASURE.reads.view(cfg, "measure")
    assert nodeconfig.node_configuration(view, {}) == nodeconfig.node_configuration(cfg, {})
    assert nodeconfig.node_configuration(view, {}, nodeconfig.PostStartOptions(self_url="http://x:1"))
