"""Load and validate config.yaml, its profiles and an optional overlay file.

The configuration is a tree of frozen dataclasses. A generic loader walks the
YAML mapping against the dataclass fields, so an unknown key, a wrong type or
a bad value is reported with its full key path and the file it came from,
before any task runs. Order of precedence (later wins):
config.yaml < profile (profiles.NAME) < overlay file (config=FILE).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hbos.errors import ConfigError
from hbos.paths import DEFAULT_CONFIG
from hbos.util import limits

HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def _hex_digits(n: int):
    pattern = re.compile(rf"^[0-9a-fA-F]{{{n}}}$")

    def check(value: str) -> str | None:
        if not pattern.match(value):
            return f"expected {n} hex digits, got {value!r} ({len(value)} characters)"
        return None
    return check


def _sha256_or_empty(value: str) -> str | None:
    if value and not HEX64.match(value):
        return f"expected a sha256 (64 hex digits) or empty, got {value!r}"
    return None


def _min(n: int):
    def check(value: int) -> str | None:
        return None if value >= n else f"must be at least {n}, got {value}"
    return check


def _range(lo: int, hi: int):
    def check(value: int) -> str | None:
        return None if lo <= value <= hi else f"must be between {lo} and {hi}, got {value}"
    return check


def _limit(rng: limits.Range):
    """The shared VM ranges (hbos.util.limits): config, measure --inputs and releases agree."""
    return rng.problem


def _cache_dir(value: str) -> str | None:
    """hbos.util.cache.location: "auto", "" (no cache) or a path."""
    if value != value.strip() or any(c in value for c in "\0\n\r"):
        return f"expected 'auto', empty (no cache) or a directory path, got {value!r}"
    return None


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"must be a TCP port (1-65535), got {value}"


def _vcpu_type(value: str) -> str | None:
    from sevsnpmeasure.vcpu_types import CPU_SIGS  # sev-snp-measure: only to validate a vcpu_type
    if value not in CPU_SIGS:
        near = difflib.get_close_matches(value, list(CPU_SIGS), n=1)
        also = f" (did you mean {near[0]!r}?)" if near else ""
        return f"unknown vCPU type {value!r}{also}; known: {', '.join(CPU_SIGS)}"
    return None


# -- content validators (guest content: no secret may reach the measured image)

_SECRET_KEY = re.compile(r"(^WALLET$|SECRET|PASSWORD|PASSWD|TOKEN|MNEMONIC|PRIVATE|JWK)", re.I)


def _git_url(value: str) -> str | None:
    if not value.strip() or value.startswith("-") or re.search(r"\s", value):
        return f"expected a git repository URL or path, got {value!r}"
    return None


def _word(value: str) -> str | None:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", value):
        return f"expected a plain word (letters, digits, . _ -), got {value!r}"
    return None


def _git_ref(value: str) -> str | None:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/^{}-]*$", value) or ".." in value:
        return f"expected a branch, tag or 40-hex commit, got {value!r}"
    return None


def _docker_tag(value: str) -> str | None:
    if not re.match(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$", value):
        return f"expected a docker image name[:tag] in lower case, got {value!r}"
    return None


def _unix_user(value: str) -> str | None:
    if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", value):
        return f"expected a unix user name (e.g. hyperbeam or root), got {value!r}"
    return None


def _env_entries(values: tuple[str, ...]) -> str | None:
    for entry in values:
        key, sep, _ = entry.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            return f"expected KEY=VALUE entries, got {entry!r}"
        if _SECRET_KEY.search(key):
            return (f"{key} looks like a secret; secrets never go into the measured image "
                    f"(the CU wallet is generated in the guest at first boot)")
    return None


def _flat_lines(values: tuple[str, ...]) -> str | None:
    for line in values:
        key, sep, _ = line.partition(": ")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", key):
            return f"expected 'key: value' lines (HyperBEAM config.flat), got {line!r}"
        if key in ("port", "operator"):
            return (f"{key} has its own setting (ports.hyperbeam, content.hyperbeam_operator), "
                    f"not a config.flat line")
        if _SECRET_KEY.search(key):
            return f"{key} looks like a secret; secrets never go into the measured image"
    return None


def _operator(value: str) -> str | None:
    if not re.match(r"^[A-Za-z0-9_-]{1,64}$", value):
        return f"expected 'unclaimed' or the operator's address, got {value!r}"
    return None


def _state_names(values: tuple[str, ...]) -> str | None:
    for name in values:
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$", name):
            return (f"expected names relative to the release directory "
                    f"(e.g. cache-mainnet), got {name!r}")
    return None


def _forward_list(values: tuple[str, ...]) -> str | None:
    for entry in values:
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not all(p.isdigit() and 1 <= int(p) <= 65535
                                                for p in parts[-2:]):
            return f"expected 'HOST_PORT:GUEST_PORT' or 'ADDRESS:HOST_PORT:GUEST_PORT', got {entry!r}"
    return None


def _settings(values: tuple[str, ...]) -> str | None:
    for line in values:
        key, sep, _ = line.partition(": ")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", key):
            return f"expected 'key: value' lines, got {line!r}"
        if _SECRET_KEY.search(key):
            return f"{key} looks like a secret; it would be sent in clear to the node"
    return None


def _self_url(value: str) -> str | None:
    if value and not re.match(r"^https?://[^\s/]+", value):
        return f"expected an http(s):// URL or empty, got {value!r}"
    return None


def _suite_or_empty(value: str) -> str | None:
    if value and not re.match(r"^[a-z][a-z0-9-]*$", value):
        return f"expected a Debian suite name (e.g. trixie) or empty, got {value!r}"
    return None


def _apt_mirror(value: str) -> str | None:
    if not re.match(r"^(https?|file)://\S+$", value):
        return f"expected a Debian mirror URL (http://, https:// or file://), got {value!r}"
    return None


def check(fn) -> dict[str, Any]:
    """Field metadata attaching a validator: fn(value) -> error text or None."""
    return {"check": fn}


# ----------------------------------------------------------------- sections


@dataclass(frozen=True)
class SnpReleaseConfig:
    url: str = ""
    sha256: str = field(default="", metadata=check(_sha256_or_empty))
    path: str = ""


@dataclass(frozen=True)
class KernelConfig:
    source: Literal["snp_release", "deb", "package"] = "package"
    deb: str = ""
    package: str = "linux-image-amd64"
    suite: str = field(default="trixie", metadata=check(_suite_or_empty))
    mirror: str = field(default="http://deb.debian.org/debian", metadata=check(_apt_mirror))


@dataclass(frozen=True)
class FirmwareConfig:
    source: Literal["snp_release", "path", "build"] = "build"
    ovmf: str = ""
    # source: build -- Debian trixie's edk2 source package (hbos/stages/edk2.py),
    # pinned by the sha256 of the archive's Sources index.
    orig_url: str = ("http://deb.debian.org/debian/pool/main/e/edk2/"
                     "edk2_2025.02.orig.tar.xz")
    orig_sha256: str = field(
        default="b63b6053d6d89c74d9291f9e96fde1584be99e6fb9c169ba9511505129d6b049",
        metadata=check(_hex_digits(64)))
    debian_url: str = ("http://deb.debian.org/debian/pool/main/e/edk2/"
                       "edk2_2025.02-8+deb13u1.debian.tar.xz")
    debian_sha256: str = field(
        default="e2a7f6fc58640818416a028d6d5e9dfc255697a7cdc60c14566c236df6bd9b08",
        metadata=check(_hex_digits(64)))
    platform: str = "OvmfPkg/AmdSev/AmdSevX64.dsc"
    build_type: Literal["RELEASE", "DEBUG"] = "RELEASE"
    toolchain: str = field(default="GCC5", metadata=check(_word))
    build_options: tuple[str, ...] = ()
    drop_grub_modules: tuple[str, ...] = ("sevsecret",)
    keep_tree: bool = False


@dataclass(frozen=True)
class TcbConfig:
    bootloader: int = field(default=0, metadata=check(_range(0, 255)))
    tee: int = field(default=0, metadata=check(_range(0, 255)))
    snp: int = field(default=0, metadata=check(_range(0, 255)))
    microcode: int = field(default=0, metadata=check(_range(0, 255)))


@dataclass(frozen=True)
class VmConfig:
    host_cpu_family: Literal["Milan", "Genoa", "Turin"] = "Milan"
    vcpu_count: int = field(default=4, metadata=check(_limit(limits.VCPUS)))
    vcpu_type: str = field(default="EPYC-v4", metadata=check(_vcpu_type))
    vmm_type: Literal["QEMU"] = "QEMU"
    guest_features: int = field(default=0x1, metadata=check(_limit(limits.GUEST_FEATURES)))
    platform_info: int = field(default=0x3, metadata=check(_range(0, 2**64 - 1)))
    guest_policy: int = field(default=0x30000, metadata=check(_range(0, 2**64 - 1)))
    family_id: str = field(default="0" * 32, metadata=check(_hex_digits(32)))
    image_id: str = field(default="0" * 32, metadata=check(_hex_digits(32)))
    min_committed_tcb: TcbConfig = TcbConfig()
    memory_mib: int = field(default=16384, metadata=check(_limit(limits.MEMORY_MIB)))


@dataclass(frozen=True)
class PortsConfig:
    hyperbeam: int = field(default=10000, metadata=check(_port))
    cu: int = field(default=6363, metadata=check(_port))
    ssh: int = field(default=2222, metadata=check(_port))


@dataclass(frozen=True)
class InitramfsConfig:
    path: str = ""
    compression: Literal["gzip", "zstd"] = "gzip"
    extra_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class RootfsConfig:
    suite: str = "trixie"
    mirror: str = "http://deb.debian.org/debian"
    variant: Literal["minbase", "essential", "apt", "required", "important", "standard"] = "minbase"
    packages: tuple[str, ...] = ("systemd", "systemd-sysv", "udev", "ca-certificates")
    path_exclude: tuple[str, ...] = ("/usr/share/man/*", "/usr/share/doc/*",
                                     "/usr/share/locale/*", "/usr/share/info/*")
    path_include: tuple[str, ...] = ("/usr/share/doc/*/copyright",)
    hostname: str = "hbos"
    nameserver: str = "10.0.2.3"


@dataclass(frozen=True)
class ImageConfig:
    filesystem: Literal["erofs", "ext4"] = "erofs"
    erofs_compression: Literal["", "lz4", "lz4hc"] = ""


@dataclass(frozen=True)
class ContentConfig:
    source: Literal["docker", "hyperbeam", "dir", "tarball", "sample", "erlang"] = "docker"
    path: str = ""
    # docker source
    dockerfile: str = "resources/content.Dockerfile"
    image_tag: str = field(default="hbos-content:latest", metadata=check(_docker_tag))
    hyperbeam_repo: str = field(default="https://github.com/permaweb/HyperBEAM.git",
                                metadata=check(_git_url))
    hyperbeam_ref: str = field(default="edge", metadata=check(_git_ref))
    hyperbeam_profile: str = field(default="default", metadata=check(_word))
    cu: bool = True
    ao_repo: str = field(default="https://github.com/permaweb/ao.git", metadata=check(_git_url))
    ao_ref: str = field(default="tillathehun0/cu-experimental", metadata=check(_git_ref))
    otp_version: str = field(default="27", metadata=check(_word))
    node_version: str = field(default="22", metadata=check(_word))
    docker_build_args: tuple[str, ...] = field(default=(), metadata=check(_env_entries))
    # services
    service_user: str = field(default="root", metadata=check(_unix_user))
    restart: Literal["always", "on-failure", "on-abnormal", "on-abort", "no"] = "on-failure"
    restart_sec: int = field(default=5, metadata=check(_range(0, 3600)))
    hyperbeam_operator: str = field(default="unclaimed", metadata=check(_operator))
    hyperbeam_state: tuple[str, ...] = field(default=("cache-mainnet",),
                                             metadata=check(_state_names))
    hyperbeam_config: tuple[str, ...] = field(default=(), metadata=check(_flat_lines))
    hyperbeam_env: tuple[str, ...] = field(default=(), metadata=check(_env_entries))
    cu_env: tuple[str, ...] = field(default=(
        "NODE_CONFIG_ENV=production", "UNIT_MODE=hbu", "DEFAULT_LOG_LEVEL=error",
        "DISABLE_PROCESS_FILE_CHECKPOINT_CREATION=false"), metadata=check(_env_entries))


@dataclass(frozen=True)
class SourcesConfig:
    mirror: str = ""


@dataclass(frozen=True)
class HyperbeamConfig:
    pins: str = "resources/hyperbeam-sources.json"
    cu_pins: str = "resources/cu-sources.json"
    suite: str = field(default="trixie", metadata=check(_suite_or_empty))
    mirror: str = field(default="http://deb.debian.org/debian", metadata=check(_apt_mirror))
    jobs: int = field(default=0, metadata=check(_range(0, 1024)))
    keep_tree: bool = False


@dataclass(frozen=True)
class LaunchConfig:
    snp: Literal["auto", "required", "off"] = "auto"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    qemu: str = ""
    health_timeout: int = field(default=300, metadata=check(_min(1)))
    cbitpos: int = field(default=0, metadata=check(_range(0, 63)))
    reduced_phys_bits: int = field(default=1, metadata=check(_range(0, 63)))
    machine: str = "q35"
    host_address: str = ""
    host_port: int = field(default=80, metadata=check(_range(0, 65535)))
    forwards: tuple[str, ...] = field(default=("8734:8734",), metadata=check(_forward_list))
    kvm_probe_timeout: int = field(default=20, metadata=check(_min(1)))
    allow_no_snp_nif: bool = False
    id_block: str = ""
    id_auth: str = ""
    host_data: str = ""
    certs: str = ""
    extra_args: tuple[str, ...] = ()


def _pem_paths(values: tuple[str, ...]) -> str | None:
    for v in values:
        if not v.strip():
            return "expected paths of PEM public keys, got an empty entry"
    return None


def _digest_or_empty(value: str) -> str | None:
    if value and not re.match(r"^[0-9a-fA-F]{96}$", value):
        return f"expected a launch digest (96 hex digits) or empty, got {value!r}"
    return None


@dataclass(frozen=True)
class ReleaseConfig:
    name: str = "hyperbeam-os"
    url: str = ""
    sha256: str = field(default="", metadata=check(_sha256_or_empty))
    launch_digest: str = field(default="", metadata=check(_digest_or_empty))
    trusted_keys: tuple[str, ...] = field(default=(), metadata=check(_pem_paths))
    compresslevel: int = field(default=6, metadata=check(_range(0, 9)))
    retries: int = field(default=3, metadata=check(_range(1, 20)))
    backoff_ms: int = field(default=1000, metadata=check(_range(0, 60000)))
    connect_timeout: int = field(default=10, metadata=check(_min(1)))
    read_timeout: int = field(default=60, metadata=check(_min(1)))


def _http_url(value: str) -> str | None:
    if not re.match(r"^https?://[^\s/]+", value):
        return f"expected an http(s) URL, got {value!r}"
    return None


@dataclass(frozen=True)
class AttestConfig:
    kds_url: str = field(default="https://kdsintf.amd.com", metadata=check(_http_url))
    cert_cache: str = ""   # empty: Paths.cert_cache (build/certs)
    explain: bool = True


@dataclass(frozen=True)
class IdentityConfig:
    enabled: bool = False
    keys_dir: str = ""   # empty: $XDG_CONFIG_HOME/hbos/keys (hbos.measure.identity)
    guest_svn: int = field(default=0, metadata=check(_range(0, 2**32 - 1)))


@dataclass(frozen=True)
class PostStartConfig:
    auto: bool = True
    self_url: str = field(default="", metadata=check(_self_url))
    settings: tuple[str, ...] = field(default=("operator: trustless", "initialized: permanent"),
                                      metadata=check(_settings))


@dataclass(frozen=True)
class Config:
    build_dir: str = "build"
    cache_dir: str = field(default="auto", metadata=check(_cache_dir))
    source_date_epoch: int = field(default=1704067200, metadata=check(_min(0)))
    debug: bool = False
    cmdline: str = "console=ttyS0 loglevel=7"
    snp_release: SnpReleaseConfig = SnpReleaseConfig()
    kernel: KernelConfig = KernelConfig()
    firmware: FirmwareConfig = FirmwareConfig()
    vm: VmConfig = VmConfig()
    ports: PortsConfig = PortsConfig()
    initramfs: InitramfsConfig = InitramfsConfig()
    rootfs: RootfsConfig = RootfsConfig()
    image: ImageConfig = ImageConfig()
    content: ContentConfig = ContentConfig()
    sources: SourcesConfig = SourcesConfig()
    hyperbeam: HyperbeamConfig = HyperbeamConfig()
    launch: LaunchConfig = LaunchConfig()
    post_start: PostStartConfig = PostStartConfig()
    release: ReleaseConfig = ReleaseConfig()
    attest: AttestConfig = AttestConfig()
    identity: IdentityConfig = IdentityConfig()
    # not settings themselves: where the config came from
    root: str = field(default=".", metadata={"internal": True})
    profile: str = field(default="", metadata={"internal": True})
    files: tuple[str, ...] = field(default=(), metadata={"internal": True})

    # -- helpers -----------------------------------------------------------

    def path(self, value: str) -> Path:
        """A path from the config, resolved against the project directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (Path(self.root) / p).resolve()

    def slice(self, *keys: str) -> dict[str, Any]:
        """The config keys named (dotted: "ports", "release.name") as plain nested
        data: what a stage's config_changed compares, so an unrelated edit
        rebuilds nothing. Reads.slice and ConfigView.slice call it, and so do
        the records that keep config beside an artifact (rootfs.json,
        verity.json, provenance.json)."""
        out: dict[str, Any] = {}
        for key in keys:
            value: Any = self
            parts = key.split(".")
            for part in parts:
                value = getattr(value, part)
            node = out
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            is_section = dataclasses.is_dataclass(value) and not isinstance(value, type)
            node[parts[-1]] = dataclasses.asdict(value) if is_section else value
        return out


# ----------------------------------------------------------------- loading


def _describe(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string", float: "a number",
            list: "a list", dict: "a mapping", type(None): "empty"}.get(type(value), type(value).__name__)


def _coerce(tp: Any, value: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, got {_describe(value)}")
        return _build(tp, value, key, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            also = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{where}: {key}: {value!r} is not one of "
                              f"{', '.join(repr(c) for c in choices)}{also}")
        return value
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key}: expected a list, got {_describe(value)}")
        return tuple(_coerce(item_tp, v, f"{key}[{i}]", where) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, str) and re.match(r"^0[xX][0-9a-fA-F]+$", value.strip()):
            return int(value, 16)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: {key}: expected a string, got {_describe(value)}")
        return str(value)
    raise AssertionError(f"unsupported config type {tp!r} for {key}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The evaluated field types of a section (evaluating them is most of a load)."""
    return typing.get_type_hints(cls)


def _build(cls: type, data: dict[str, Any], prefix: str, where: str) -> Any:
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            also = f" (did you mean '{prefix + '.' if prefix else ''}{near[0]}'?)" if near else ""
            raise ConfigError(f"{where}: unknown key {key_path!r}{also}")  # repr: one line
        f = fields[key]
        coerced = _coerce(hints[key], value, key_path, where)
        validator = f.metadata.get("check")
        if validator is not None:
            problem = validator(coerced)
            if problem:
                raise ConfigError(f"{where}: {key_path}: {problem}")
        kwargs[key] = coerced
    return cls(**kwargs)


def _read_yaml(path: Path) -> dict[str, Any]:
    data = limits.load_yaml(path, limits.CONFIG_BYTES, "config file", ConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {_describe(data)}")
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _profiles(data: dict[str, Any], where: str) -> dict[str, Any]:
    profiles = data.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{where}: profiles: expected a mapping of profile names")
    for name, body in profiles.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: profiles.{name}: expected a mapping, got {_describe(body)}")
    return profiles


def load(path: str | Path | None = None, *, overlay: str | Path | None = None,
         profile: str | None = None) -> Config:
    """Load config.yaml (or `path`), apply profile and overlay, validate all."""
    base_path = Path(path) if path else DEFAULT_CONFIG
    base_path = base_path.resolve()
    base = _read_yaml(base_path)
    profiles = _profiles(base, str(base_path))
    sources = [str(base_path)]
    over: dict[str, Any] = {}
    over_path = None
    if overlay:
        over_path = Path(overlay).resolve()
        over = _read_yaml(over_path)
        for name, body in _profiles(over, str(over_path)).items():
            profiles[name] = merge(profiles.get(name, {}), body)
        sources.append(str(over_path))

    # Validate the base, then every profile on top of it, so a typo in a
    # profile nobody selected today is still caught.
    _build(Config, base, "", str(base_path))
    for name, body in profiles.items():
        try:
            _build(Config, merge(base, body), "", str(base_path))
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(f"{base_path}: ",
                                               f"{base_path}: profiles.{name}: ", 1)) from None
    data = base
    if profile:
        if profile not in profiles:
            near = difflib.get_close_matches(profile, list(profiles), n=1)
            also = f" (did you mean '{near[0]}'?)" if near else ""
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"unknown profile '{profile}'{also}; defined profiles: {known}")
        data = merge(data, profiles[profile])
    if over_path is not None:
        _build(Config, over, "", str(over_path))
        data = merge(data, over)
    cfg = _build(Config, data, "", str(over_path or base_path))
    return dataclasses.replace(cfg, root=str(base_path.parent), profile=profile or "",
                               files=tuple(sources))


# ----------------------------------------------------------------- stage views
#
# A stage declares the config keys it reads (`Reads`, dotted: "ports",
# "release.name"). The same declaration gives the task's config_changed slice
# (Config.slice) and the view the stage function receives (`ConfigView`), which
# refuses any other key when HBOS_STRICT_CONFIG=1 (the test suite sets it), so
# what a stage reads and what reruns it cannot drift apart.

STRICT_ENV = "HBOS_STRICT_CONFIG"
# Not settings: where the config came from, and how paths in it resolve.
# cache_dir too: where the artifact cache lives changes no output, so it must
# not rerun a stage (hbos/util/cache.py explains this exception); and sources
# (sources.mirror): where pinned archives are fetched from changes no output
# either, every archive is checked against its pin.
_ALWAYS = frozenset({"path", "root", "profile", "files", "build_dir", "cache_dir", "sources"})


class UndeclaredConfig(AttributeError):
    """A stage read a config key it did not declare (a bug in the stage)."""


@dataclasses.dataclass(frozen=True)
class Reads:
    """The config keys a stage reads, as dotted paths from the top of config.yaml."""

    keys: tuple[str, ...]

    def __init__(self, *keys: str):
        object.__setattr__(self, "keys", tuple(keys))

    def covers(self, dotted: str) -> bool:
        """Is `dotted` declared, itself or through a declared parent?"""
        return any(dotted == k or dotted.startswith(k + ".") for k in self.keys)

    def below(self, dotted: str) -> bool:
        """Is some key below `dotted` declared (so a part of it may be read)?"""
        return any(k.startswith(dotted + ".") for k in self.keys)

    def slice(self, cfg: Any) -> dict[str, Any]:
        """The declared values as plain nested data, for doit's config_changed."""
        return _real(cfg).slice(*self.keys)

    def view(self, cfg: Any, stage: str) -> "ConfigView":
        return ConfigView(_real(cfg), self, stage)


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def _real(cfg: Any) -> Any:
    return object.__getattribute__(cfg, "_cfg") if isinstance(cfg, ConfigView) else cfg


class ConfigView:
    """Read access to the declared part of a Config (or of one of its sections)."""

    __slots__ = ("_cfg", "_reads", "_stage", "_prefix")

    def __init__(self, cfg: Any, reads: Reads, stage: str, prefix: str = ""):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cfg, name)
        dotted = self._prefix + name
        if (not self._prefix and name in _ALWAYS) or self._reads.covers(dotted):
            return value
        if self._reads.below(dotted) and dataclasses.is_dataclass(value):
            return ConfigView(value, self._reads, self._stage, dotted + ".")
        if strict():
            raise UndeclaredConfig(
                f"stage {self._stage} read config key '{dotted}' it does not declare "
                f"(declared: {', '.join(self._reads.keys) or 'none'})")
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # doit -n N pickles the actions
        return (ConfigView, (self._cfg, self._reads, self._stage, self._prefix))

    def slice(self, *keys: str) -> dict[str, Any]:
        for key in keys:
            self.__getattr__(key)  # an undeclared key fails here (strict)
        return self._cfg.slice(*keys)

    def __repr__(self) -> str:
        return f"ConfigView({self._stage}: {', '.join(self._reads.keys)})"
