"""Config validation: exact messages, precedence of profile and overlay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hbos import config as hconfig
from hbos.errors import ConfigError


def load_overlay(tmp_path: Path, text: str, **kw) -> hconfig.Config:
    f = tmp_path / "over.yaml"
    f.write_text(text)
    return hconfig.load(overlay=f, **kw)


def error_of(tmp_path: Path, text: str, **kw) -> str:
    with pytest.raises(ConfigError) as exc:
        load_overlay(tmp_path, text, **kw)
    return str(exc.value)


def test_default_config_loads_and_every_profile_validates():
    cfg = hconfig.load()
    assert cfg.vm.vcpu_type == "EPYC-v4"
    assert cfg.build_dir == "build"
    local = hconfig.load(profile="local")
    assert local.kernel.source == "package"
    assert local.kernel.package == "linux-image-amd64"
    assert local.firmware.source == "build"
    assert local.content.source == "hyperbeam"
    assert local.sources.mirror == "../shared/hyperbeam-sources"
    assert cfg.sources.mirror == ""   # production: each source's upstream URL


def test_default_is_stock_trixie_and_local_runs_the_same_kernel_and_suite():
    """Issue 12: no SNP bundle on the default path; local differs only where it must."""
    cfg = hconfig.load()
    assert (cfg.kernel.source, cfg.kernel.package, cfg.kernel.suite) == \
        ("package", "linux-image-amd64", "trixie")
    assert cfg.firmware.source == "build"
    assert cfg.rootfs.suite == "trixie"
    assert "libssl3t64" in cfg.rootfs.packages and "libssl3" not in cfg.rootfs.packages
    local = hconfig.load(profile="local")
    assert local.kernel == cfg.kernel
    assert local.rootfs.suite == cfg.rootfs.suite
    assert local.firmware == cfg.firmware


def test_unknown_key_names_itself_with_did_you_mean(tmp_path):
    f = tmp_path / "over.yaml"
    assert error_of(tmp_path, "vm:\n  vcpu_cout: 2\n") == \
        f"{f}: unknown key 'vm.vcpu_cout' (did you mean 'vm.vcpu_count'?)"


def test_unknown_top_level_key(tmp_path):
    f = tmp_path / "over.yaml"
    assert error_of(tmp_path, "buld_dir: x\n") == \
        f"{f}: unknown key 'buld_dir' (did you mean 'build_dir'?)"


def test_family_id_must_be_32_hex_digits(tmp_path):
    f = tmp_path / "over.yaml"
    assert error_of(tmp_path, "vm:\n  family_id: abc\n") == \
        f"{f}: vm.family_id: expected 32 hex digits, got 'abc' (3 characters)"
    assert "expected 32 hex digits" in error_of(tmp_path, "vm:\n  image_id: " + "g" * 32 + "\n")


def test_wrong_type_names_key_path_and_file(tmp_path):
    f = tmp_path / "over.yaml"
    assert error_of(tmp_path, "vm:\n  vcpu_count: two\n") == \
        f"{f}: vm.vcpu_count: expected an integer, got 'two'"
    assert error_of(tmp_path, "debug: yes-please\n") == \
        f"{f}: debug: expected true or false, got 'yes-please'"
    assert error_of(tmp_path, "vm: 3\n") == f"{f}: vm: expected a mapping, got an integer"


def test_enum_value_with_suggestion(tmp_path):
    f = tmp_path / "over.yaml"
    assert error_of(tmp_path, "kernel:\n  source: packge\n") == (
        f"{f}: kernel.source: 'packge' is not one of 'snp_release', 'deb', 'package' "
        "(did you mean 'package'?)")


def test_vcpu_type_is_checked_against_known_models(tmp_path):
    msg = error_of(tmp_path, "vm:\n  vcpu_type: EPYC-v9\n")
    assert "vm.vcpu_type: unknown vCPU type 'EPYC-v9' (did you mean" in msg


def test_range_checks(tmp_path):
    f = tmp_path / "over.yaml"
    assert error_of(tmp_path, "vm:\n  vcpu_count: 0\n") == \
        f"{f}: vm.vcpu_count: must be between 1 and 512, got 0"
    assert error_of(tmp_path, "ports:\n  hyperbeam: 70000\n") == \
        f"{f}: ports.hyperbeam: must be a TCP port (1-65535), got 70000"


def test_sha256_pin_format(tmp_path):
    msg = error_of(tmp_path, "snp_release:\n  sha256: nothex\n")
    assert msg.endswith("snp_release.sha256: expected a sha256 (64 hex digits) or empty, got 'nothex'")


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    f = tmp_path / "over.yaml"
    assert error_of(tmp_path, "vm:\n  vcpu_count: 1\n bad: [\n") .startswith(f"{f}:3:")
    msg = error_of(tmp_path, "a: b: c\n")
    assert msg == f"{f}:1:5: YAML syntax error: mapping values are not allowed here"


def test_missing_overlay_file(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml does not exist"):
        hconfig.load(overlay=tmp_path / "nope.yaml")


def test_hex_integers_as_yaml_ints_and_strings(tmp_path):
    cfg = load_overlay(tmp_path, "vm:\n  guest_policy: 0x30000\n  guest_features: '0x21'\n")
    assert cfg.vm.guest_policy == 0x30000
    assert cfg.vm.guest_features == 0x21


def test_precedence_base_then_profile_then_overlay(tmp_path):
    cfg = load_overlay(tmp_path, "vm:\n  memory_mib: 2048\n", profile="local")
    assert cfg.vm.memory_mib == 2048          # overlay wins over the profile
    assert cfg.kernel.source == "package"     # profile wins over the base
    assert cfg.vm.vcpu_type == "EPYC-v4"      # base kept
    assert cfg.profile == "local"


def test_overlay_may_define_a_profile(tmp_path):
    cfg = load_overlay(tmp_path, "profiles:\n  mine:\n    vm:\n      vcpu_count: 4\n",
                       profile="mine")
    assert cfg.vm.vcpu_count == 4


def test_unknown_profile_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as exc:
        hconfig.load(profile="locl")
    assert str(exc.value).startswith("unknown profile 'locl' (did you mean 'local'?); defined profiles:")


def test_typo_inside_an_unselected_profile_is_caught(tmp_path):
    base = tmp_path / "config.yaml"
    base.write_text("profiles:\n  x:\n    vm:\n      vcpu: 2\n")
    with pytest.raises(ConfigError) as exc:
        hconfig.load(base)
    assert str(exc.value) == f"{base}: profiles.x: unknown key 'vm.vcpu' (did you mean 'vm.vcpu_type'?)"


def test_config_is_frozen_and_slices_are_plain_data():
    cfg = hconfig.load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.build_dir = "x"  # type: ignore[misc]
    s = cfg.slice("vm", "cmdline")
    assert s["cmdline"] == cfg.cmdline
    assert s["vm"]["min_committed_tcb"]["snp"] == 0


def test_relative_paths_resolve_against_the_project(tmp_path):
    cfg = hconfig.load()
    assert cfg.path("build") == Path(hconfig.DEFAULT_CONFIG).parent / "build"
    assert cfg.path("/abs/x") == Path("/abs/x")


def _field_paths(cls, prefix=""):
    out = set()
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.type) or (isinstance(f.default, object)
                                                and dataclasses.is_dataclass(f.default)):
            out |= _field_paths(type(f.default), key + ".")
        else:
            out.add(key)
    return out


def _yaml_paths(data, prefix=""):
    out = set()
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _yaml_paths(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_config_yaml_holds_every_setting():
    """Every setting the code knows is written out (with its default) in config.yaml."""
    import yaml
    data = yaml.safe_load(Path(hconfig.DEFAULT_CONFIG).read_text())
    data.pop("profiles", None)
    assert _field_paths(hconfig.Config) - _yaml_paths(data) == set()
