"""The production payload as HyperBEAM and the CU must really run (issue 13,
items 1-10): rendered units, env, config.flat, the CU mode check, the data
disk, forwards and the post-start body. Shell scripts run under the real sh."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from hbos import config as hconfig
from hbos.launch import node_http, qemu, start
from hbos.measure import nodeconfig
from hbos.paths import Paths
from hbos.stages import ao_cu, content, hb_node, hb_sources
from tests.conftest import fake_firmware

ROOT = Path(__file__).resolve().parents[3]
RECORD = {"kernel": "k", "initrd": "i", "append": "a", "firmware": "f", "vcpus": 4,
          "vcpu_type": 5, "vmm_type": 1, "guest_features": 1, "expected_hash": "e" * 96,
          "files": {}}


def load(tmp_path: Path, text: str = "", profile: str | None = None):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"build_dir: {tmp_path / 'build'}\n{text}")
    cfg = hconfig.load(overlay=overlay, profile=profile)
    paths = Paths.from_config(cfg)
    fake_firmware(paths)
    return cfg, paths


# ------------------------------------------------- 1. writable working tree


def test_hyperbeam_unit_gives_the_release_a_writable_state(tmp_path):
    cfg, _ = load(tmp_path)
    unit = content.render_hyperbeam_unit(cfg)
    assert "ExecStart=/opt/hyperbeam/bin/hb foreground\n" in unit
    assert "StateDirectory=hyperbeam hyperbeam/cache-mainnet\n" in unit
    assert "WorkingDirectory=/var/lib/hyperbeam\n" in unit
    assert "Environment=HOME=/var/lib/hyperbeam\n" in unit
    assert "Environment=ERL_CRASH_DUMP=/var/lib/hyperbeam/erl_crash.dump\n" in unit
    assert "Environment=HB_KEY=/var/lib/hyperbeam/hyperbeam-key.json\n" in unit
    assert "After=network-online.target hbos-data.service\n" in unit
    # Erlang distribution (relx default -sname/-setcookie) on loopback only
    assert "Environment=ERL_EPMD_ADDRESS=127.0.0.1\n" in unit
    assert 'Environment="ERL_AFLAGS=-kernel inet_dist_use_interface {127,0,0,1}"\n' in unit


def test_state_names_become_links_into_var_lib(tmp_path):
    cfg, paths = load(tmp_path, f"content: {{source: dir, path: {tmp_path / 'src'}, "
                                f"hyperbeam_state: [cache-mainnet, data], cu: false}}\n")
    hb = tmp_path / "src" / "opt" / "hyperbeam" / "bin"
    hb.mkdir(parents=True)
    (hb / "hb").write_text("#!/bin/sh\n")
    (hb.parent / "data").mkdir()        # a directory the release ships is replaced
    content.build(cfg, paths)
    tree = paths.content_tree / "opt" / "hyperbeam"
    assert os.readlink(tree / "cache-mainnet") == "/var/lib/hyperbeam/cache-mainnet"
    assert os.readlink(tree / "data") == "/var/lib/hyperbeam/data"
    assert "StateDirectory=hyperbeam hyperbeam/cache-mainnet hyperbeam/data\n" in \
        (paths.content_tree / "etc/systemd/system/hyperbeam.service").read_text()


# ------------------------------------------------- 2. CU ref and mode


def test_defaults_follow_hb_os_refs_and_profile():
    cfg = hconfig.load()
    # the docker path builds the commit the hyperbeam stage pins, so both measure one source;
    # ao: the head of tillathehun0/cu-experimental (hb-os's branch) the shared mirror holds
    assert cfg.content.hyperbeam_ref == hb_sources.by_name(hb_sources.load(),
                                                           "HyperBEAM").commit
    assert cfg.content.ao_ref == "8cc7926f4c4fa4f133830cb73a27266ff039f807"
    assert cfg.content.hyperbeam_profile == "default"          # 8. _build/default/rel/hb
    assert ao_cu.unit_mode(cfg) == "hbu"


def test_cu_mode_is_cu_when_cu_env_sets_none(tmp_path):
    cfg, _ = load(tmp_path, "content: {cu_env: [NODE_CONFIG_ENV=production]}\n")
    assert ao_cu.unit_mode(cfg) == "cu"


def _cu_source(tmp_path: Path, config_js: str) -> Path:
    (tmp_path / "cu" / "src").mkdir(parents=True)
    (tmp_path / "cu" / "src" / "config.js").write_text(config_js)
    return tmp_path / "cu"


def _check(cu: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(content.CU_MODE_CHECK), str(cu), mode],
                          capture_output=True, text=True, check=False)


def test_cu_mode_check_accepts_a_declared_mode(tmp_path):
    cu = _cu_source(tmp_path, "const s = x.extend({\n  MODE: z.enum(['development']),\n"
                              "  UNIT_MODE: z.enum([\n    'cu', 'ru', 'hbu'\n  ]),\n})\n")
    proc = _check(cu, "hbu")
    assert proc.returncode == 0, proc.stderr
    assert "UNIT_MODE=hbu is one of cu,ru,hbu" in proc.stdout


def test_cu_mode_check_refuses_an_undeclared_mode(tmp_path):
    cu = _cu_source(tmp_path, "UNIT_MODE: z.enum(['cu', 'ru']),\n")
    proc = _check(cu, "hbu")
    assert proc.returncode == 1
    assert "UNIT_MODE=hbu is not accepted" in proc.stderr and "cu,ru" in proc.stderr


def test_cu_mode_check_refuses_a_cu_without_unit_modes(tmp_path):
    cu = _cu_source(tmp_path, "const serverConfigSchema = domainConfigSchema.extend({})\n")
    proc = _check(cu, "cu")
    assert proc.returncode == 1 and "declares no UNIT_MODE" in proc.stderr
    assert _check(tmp_path / "nowhere", "cu").returncode == 1


def test_dockerfile_checks_the_mode_before_npm_and_writes_config_flat_before_release():
    text = (ROOT / "resources" / "content.Dockerfile").read_text()
    assert text.index('cu-mode-check /build/ao/servers/cu "$CU_UNIT_MODE"') < \
        text.index("&& npm ci")
    # 5. config.flat in the source tree before `rebar3 release` (relx's overlay copies it)
    assert text.index("COPY config.flat /build/HyperBEAM/config.flat") < \
        text.index('rebar3 as "$HB_PROFILE" release')
    assert "ARG HB_PROFILE=default" in text


# ------------------------------------------------- 3. CU start command


def test_cu_runs_node_with_the_npm_start_flags(tmp_path):
    cfg, _ = load(tmp_path)
    unit = content.render_cu_unit(cfg)
    assert "ExecStart=/opt/node/bin/node --experimental-wasm-memory64 /opt/cu/src/app.js\n" \
        in unit
    assert "EnvironmentFile=/opt/cu/cu.env\n" in unit
    env = content.render_cu_env(cfg)
    assert "UNIT_MODE=hbu\n" in env and "HB_URL=http://127.0.0.1:10000\n" in env


# ------------------------------------------------- 4. service user


def test_services_run_as_root_by_default(tmp_path):
    cfg, _ = load(tmp_path)
    for unit in (content.render_hyperbeam_unit(cfg), content.render_cu_unit(cfg)):
        assert "User=root\n" in unit and "DynamicUser" not in unit


def test_volume_tools_and_erts_libraries_are_in_the_guest_root():
    for cfg in (hconfig.load(), hconfig.load(profile="local")):
        for pkg in ("cryptsetup-bin", "parted", "fdisk", "e2fsprogs",     # volume, data disk
                    "libtinfo6", "zlib1g", "libstdc++6"):                 # ERTS
            assert pkg in cfg.rootfs.packages, pkg
        # ERTS's crypto: libssl3, named libssl3t64 since trixie's 64-bit time_t transition
        assert {"libssl3", "libssl3t64"} & set(cfg.rootfs.packages)


# ------------------------------------------------- 5/6. config.flat and operator


def test_config_flat_has_hb_os_port_and_operator(tmp_path):
    cfg, _ = load(tmp_path)
    assert nodeconfig.render_config_flat(cfg) == "port: 10000\noperator: unclaimed\n"
    cfg, _ = load(tmp_path, "content: {hyperbeam_operator: abc_DEF-1, "
                            "hyperbeam_config: ['mode: prod']}\n")
    assert nodeconfig.render_config_flat(cfg) == "port: 10000\noperator: abc_DEF-1\nmode: prod\n"


# ------------------------------------------------- 7. post-start


def test_post_start_body_is_hb_os_server_jsonc(tmp_path):
    cfg, _ = load(tmp_path)
    body = nodeconfig.post_start_body(RECORD, cfg.post_start.settings,
                                     nodeconfig.self_url(cfg))
    assert body == {
        "operator": "trustless", "initialized": "permanent",
        "snp_trusted": [{k: RECORD[k] for k in nodeconfig.TRUSTED_KEYS}],
        "self": "http://localhost:80"}
    assert "expected_hash" not in json.dumps(body)


def test_post_start_settings_types_self_and_peer(tmp_path):
    cfg, _ = load(tmp_path, "post_start: {self_url: 'http://node.example', settings: "
                            "['router_price: 250', 'force_signed: true', 'mode: prod']}\n",
                  profile="local")
    assert nodeconfig.self_url(cfg) == "http://node.example"
    assert nodeconfig.self_url(cfg, "http://given:1") == "http://given:1"
    body = nodeconfig.post_start_body(RECORD, cfg.post_start.settings, "http://s", "http://p")
    assert body["router_price"] == 250 and body["force_signed"] is True
    assert body["mode"] == "prod" and body["peer"] == "http://p"
    local, _ = load(tmp_path, profile="local")
    assert nodeconfig.self_url(local) == "http://localhost:10000"


def test_post_start_is_on_by_default_and_no_auto_is_a_start_option():
    assert hconfig.load().post_start.auto is True
    assert start.options_from_params(no_auto=True).no_auto
    assert nodeconfig.post_start_body(RECORD, ("initialized: permanent",), "http://me") == \
        {"initialized": "permanent", "snp_trusted": [nodeconfig.snp_trusted(RECORD)],
         "self": "http://me"}


# ------------------------------------------------- 9. sizing and the data disk


def test_production_sizing_holds_a_node():
    cfg = hconfig.load()
    assert cfg.vm.memory_mib >= 16384 and cfg.vm.vcpu_count >= 4


def test_data_disk_unit_mounts_before_the_services(tmp_path):
    cfg, _ = load(tmp_path)
    unit = content.render_data_disk_unit(cfg)
    assert "ConditionPathExists=/dev/vdc\n" in unit
    assert "Before=hyperbeam.service cu.service\n" in unit
    assert "ExecStart=/opt/hbos/hbos-data.sh /dev/vdc /var/lib/hyperbeam /var/lib/cu\n" in unit
    dyn, _ = load(tmp_path, "content: {service_user: hb}\n")
    assert ("ExecStart=/opt/hbos/hbos-data.sh /dev/vdc /var/lib/private/hyperbeam "
            "/var/lib/private/cu\n") in content.render_data_disk_unit(dyn)
    assert "After=network-online.target hyperbeam.service hbos-data.service\n" in \
        content.render_cu_unit(load(tmp_path)[0])


def test_data_disk_script_without_a_disk_says_so(tmp_path):
    proc = subprocess.run(["sh", str(content.DATA_DISK_SCRIPT), str(tmp_path / "vdc"),
                           str(tmp_path / "hyperbeam")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "no data disk" in proc.stdout and "lost at stop" in proc.stdout
    assert subprocess.run(["sh", "-n", str(content.DATA_DISK_SCRIPT)], check=False).returncode == 0


# ------------------------------------------------- 10. forwards


def _netdev(fwds) -> str:
    return qemu.netdev_args(fwds)[1]


def test_production_forwards_are_hb_os_defaults_on_snp(tmp_path):
    cfg, _ = load(tmp_path)
    assert node_http.forwards(cfg, "snp", False) == (
        qemu.Forward(80, 10000, "0.0.0.0"), qemu.Forward(8734, 8734, "0.0.0.0"))
    assert _netdev(node_http.forwards(cfg, "snp", False)) == (
        "user,id=net0,hostfwd=tcp:0.0.0.0:80-:10000,hostfwd=tcp:0.0.0.0:8734-:8734")


def test_an_emulated_guest_forwards_on_loopback_only(tmp_path):
    cfg, _ = load(tmp_path)
    fwds = node_http.forwards(cfg, "emulated", True)
    assert {f.host_address for f in fwds} == {"127.0.0.1"}
    assert fwds[-1] == qemu.Forward(2222, 22, "127.0.0.1")


def test_the_local_profile_forwards_the_node_port_on_loopback(tmp_path):
    cfg, _ = load(tmp_path, profile="local")
    for mode in ("emulated", "snp"):
        assert node_http.forwards(cfg, mode, False) == (qemu.Forward(10000, 10000, "127.0.0.1"),)
    assert nodeconfig.host_port(cfg) == 10000


def test_explicit_addresses_win(tmp_path):
    cfg, _ = load(tmp_path, "launch: {host_address: 192.0.2.1, host_port: 8080, "
                            "forwards: ['8734:8734', '127.0.0.1:6363:6363']}\n")
    assert node_http.forwards(cfg, "emulated", False) == (
        qemu.Forward(8080, 10000, "192.0.2.1"), qemu.Forward(8734, 8734, "192.0.2.1"),
        qemu.Forward(6363, 6363, "127.0.0.1"))


# ------------------------------------------------- the Erlang release stage


def test_without_erlang_tooling_the_content_falls_back_to_the_sample(tmp_path, monkeypatch,
                                                                     capsys):
    cfg, paths = load(tmp_path, "content: {source: erlang}\n", profile="local")
    monkeypatch.setattr(hb_node.tools, "find", lambda name: None)
    hb_node.build(cfg, paths)
    manifest = json.loads(paths.hb_node_manifest.read_text())
    assert manifest == {"available": False, "reason": "no Erlang tooling: erl (package "
                        "erlang-nox (or erlang)), rebar3 (package rebar3) not installed"}
    assert hb_node.tooling_unchanged(paths)()
    content.build(cfg, paths)
    out = capsys.readouterr().out
    assert "using the Python sample node instead (fallback)" in out
    assert "stand-in written for the tests, NOT HyperBEAM" in out
    data = json.loads(paths.content_manifest.read_text())
    assert data["source"] == "sample" and data["fallback_from"] == "erlang"
    assert data["services"] == ["sample-node"]
    monkeypatch.undo()
    if hb_node.missing_tools() == []:
        assert not hb_node.tooling_unchanged(paths)()   # tooling appeared: rebuild


def test_release_sources_exclude_build_output():
    files = [p.relative_to(hb_node.SOURCE).as_posix() for p in hb_node.source_files()]
    assert "rebar.config" in files and "src/hb_node_http.erl" in files
    assert not any(f.startswith("_build/") for f in files)


def test_post_start_placeholders_and_follow_up_calls_as_hb_os(tmp_path):
    lines = ("router_peer_location: $PEER", "router_prefix: $SELF",
             "green_zone_peer_location: http://gz:80", "green_zone_peer_id: abc",
             "green_zone_adopt_config: false", "green_zone_required_config: x")
    body = nodeconfig.post_start_body(RECORD, lines, "http://me:80", "http://router:80")
    assert body["router_peer_location"] == "http://router:80"
    assert body["router_prefix"] == "http://me:80"
    assert node_http.follow_up_calls(body) == [
        ("/~router@1.0/register", {}),
        ("/~greenzone@1.0/join", {"peer-location": "http://gz:80", "peer-id": "abc",
                                  "adopt-config": "false"}),
        ("/~greenzone@1.0/become", {"peer-location": "http://gz:80", "peer-id": "abc"}),
        ("/~greenzone@1.0/init", {})]
    cfg, _ = load(tmp_path)
    default = nodeconfig.post_start_body(RECORD, cfg.post_start.settings, "http://me")
    assert node_http.follow_up_calls(default) == []


def test_low_host_ports_need_root(tmp_path):
    cfg, _ = load(tmp_path)
    fwds = node_http.forwards(cfg, "snp", False)
    assert node_http.unbindable(fwds, 0, 1024) == []
    assert node_http.unbindable(fwds, 1000, 1024) == [qemu.Forward(80, 10000, "0.0.0.0")]
    assert node_http.unbindable(fwds, 1000, 0) == []
    sysctl = tmp_path / "start"
    sysctl.write_text("80\n")
    assert node_http.unprivileged_port_start(str(sysctl)) == 80
    assert node_http.unprivileged_port_start(str(tmp_path / "none")) == 1024
