"""The guest kernel: fetch its .deb (if from Debian), unpack vmlinuz + modules.

The default is Debian trixie's `linux-image-amd64` (6.12: CONFIG_SEV_GUEST=m,
CONFIG_TSM_REPORTS=m), fetched with a private apt for `kernel.suite` kept under
build/apt (hbos.stages.apt; the host's apt sources are never changed). The
metapackage is followed to the real `linux-image-<version>-amd64`; kernel.json
records both names and the version apt resolved.

The unpacked tree lives in build/kernel/root (lib/modules/VERSION with a
modules.dep made by depmod; trixie ships usr/lib/modules and .ko.xz modules,
lib/modules is then a link to it), vmlinuz is copied to build/kernel/vmlinuz
and build/kernel/kernel.json records the version and hashes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from hbos.config import Config
from hbos.errors import BuildError, CommandFailed, ConfigError
from hbos.paths import Paths
from hbos.stages import apt as debian_apt, snp_bundle  # debian_apt: `apt` names the private apt below
from hbos.util import cache, debpkg, run
from hbos.util.fsutil import atomic_path, read_json, sha256_file, write_json


def deb_path(cfg: Config, paths: Paths) -> Path:
    """The .deb the kernel stage unpacks, for the configured source."""
    src = cfg.kernel.source
    if src == "deb":
        if not cfg.kernel.deb:
            raise ConfigError("kernel.source is 'deb' but kernel.deb is empty")
        return cfg.path(cfg.kernel.deb)
    if src == "package":
        return paths.kernel_deb
    return snp_bundle.guest_kernel_deb(paths)


def _deb_has_kernel(deb: Path) -> bool:
    listing = run.output(["dpkg-deb", "--contents", deb])
    return bool(re.search(r"\./boot/vmlinu[xz]-\S+", listing))


def private_apt(cfg: Config, paths: Paths) -> debian_apt.PrivateApt | None:
    """The private apt for kernel.suite (None: kernel.suite is empty, the host's apt)."""
    if not cfg.kernel.suite:
        return None
    return debian_apt.PrivateApt(paths.apt_dir(cfg.kernel.suite), cfg.kernel.suite,
                                 cfg.kernel.mirror)


def download_argv(package: str, apt: debian_apt.PrivateApt | None) -> list[str]:
    return apt.download_argv(package) if apt else ["apt-get", "download", package]


def _download(package: str, into: Path, apt: debian_apt.PrivateApt | None = None) -> Path:
    proc = run.run(download_argv(package, apt), cwd=into, check=False, quiet=True)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        where = f"{apt.suite} from {apt.mirror}" if apt else "the host's apt sources"
        raise BuildError(f"apt-get download {package} ({where}) failed: {run.tail(out, 3)}",
                         hint=("check kernel.package and kernel.suite" if apt else
                               "run 'apt-get update' first; check the package name "
                               "(apt-cache policy " + package.split("=")[0] + ")"))
    debs = sorted(into.glob("*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise BuildError(f"apt-get download {package} produced no .deb")
    return debs[-1]


def policy_argv(package: str, apt: debian_apt.PrivateApt | None) -> list[str]:
    return apt.argv("apt-cache", "policy", package) if apt else ["apt-cache", "policy", package]


def candidate(package: str, apt: debian_apt.PrivateApt | None) -> str:
    """The version apt would download for `package` ("" when apt does not say)."""
    proc = run.run(policy_argv(package, apt), check=False, quiet=True)
    match = re.search(r"^\s*Candidate:\s*(\S+)", proc.stdout.decode(errors="replace"), re.M)
    return match.group(1) if match and match.group(1) != "(none)" else ""


def cache_inputs(cfg: Config, apt: debian_apt.PrivateApt | None) -> dict | None:
    """What determines the .deb: the package, the suite and mirror it comes from
    (or the host's apt), and the version apt resolves for it now (a metapackage's
    version pins the linux-image it depends on). None (no caching) when apt
    names no candidate version."""
    k = cfg.kernel
    version = candidate(k.package, apt)
    if not version:
        return None
    return {"package": k.package, "suite": k.suite, "mirror": k.mirror if k.suite else "",
            "arch": apt.arch if apt else "host", "version": version}


def fetch_package(cfg: Config, paths: Paths) -> None:
    """The kernel_deb stage: update the private apt, then restore the .deb from
    the artifact cache (hbos.util.cache) for the version apt resolves, or fetch it
    (and store it)."""
    paths.downloads.mkdir(parents=True, exist_ok=True)
    apt = private_apt(cfg, paths)
    if apt is not None:
        print(f"kernel: apt-get update of {apt.mirror} {apt.suite} (private: {apt.root})",
              file=sys.stderr)
        apt.update()
    cache.cached(cfg, "kernel_deb", lambda: cache_inputs(cfg, apt),
                 {"guest-kernel.deb": paths.kernel_deb},
                 lambda: download_kernel(cfg, paths, apt), stage="kernel_deb")


def download_kernel(cfg: Config, paths: Paths, apt: debian_apt.PrivateApt | None) -> None:
    """apt-get download the kernel package; follow a metapackage to its kernel."""
    package = cfg.kernel.package
    with tempfile.TemporaryDirectory(dir=paths.downloads) as tmp:
        deb = _download(package, Path(tmp), apt)
        for _ in range(3):
            if _deb_has_kernel(deb):
                break
            depends = debpkg.fields(deb, "Depends").get("Depends", "")
            match = re.search(r"(linux-image-[^\s,(|]+)(?:\s*\(=\s*([^)\s]+)\))?", depends)
            if not match:
                raise BuildError(f"package {package} holds no kernel and depends on no "
                                 f"linux-image package (Depends: {depends.strip() or 'none'})")
            name, version = match.group(1), match.group(2)
            print(f"kernel: {deb.name} is a metapackage; fetching {name}", file=sys.stderr)
            deb = _download(f"{name}={version}" if version else name, Path(tmp), apt)
        else:
            raise BuildError(f"package {package}: no kernel found after following 3 dependencies")
        with atomic_path(paths.kernel_deb) as out:
            shutil.copyfile(deb, out)
    print(f"kernel: {paths.kernel_deb} <- {deb.name}", file=sys.stderr)


def unpack(cfg: Config, paths: Paths) -> None:
    """Unpack the kernel .deb, run depmod, place vmlinuz, write kernel.json."""
    deb = deb_path(cfg, paths)
    if not deb.is_file():
        raise BuildError(f"kernel package {deb} does not exist")
    with atomic_path(paths.kernel_modules) as tree:
        try:
            run.run(["dpkg-deb", "-x", deb, tree], quiet=True)
        except CommandFailed as exc:
            raise BuildError(f"{deb} is not a valid .deb: {run.tail(exc.output, 3)}") from None
        kernels = sorted((tree / "boot").glob("vmlinu[xz]-*")) if (tree / "boot").is_dir() else []
        if not kernels:
            raise BuildError(f"{deb} contains no kernel (no boot/vmlinuz-*)",
                             hint="point kernel.deb at a linux-image-<version> package, "
                                  "not a metapackage, headers or modules-only package")
        vmlinuz = kernels[0]
        version = vmlinuz.name.split("-", 1)[1]
        moddirs = [tree / "lib" / "modules" / version, tree / "usr" / "lib" / "modules" / version]
        moddir = next((d for d in moddirs if d.is_dir()), None)
        if moddir is None:
            raise BuildError(f"{deb} has a kernel {version} but no lib/modules/{version}")
        if moddir.parent.parent.parent != tree:  # usr/lib/modules: depmod wants lib/modules
            (tree / "lib").mkdir(exist_ok=True)
            (tree / "lib" / "modules").symlink_to("../usr/lib/modules")
        run.run(["depmod", "-b", tree, version], quiet=True)
        for index in moddir.glob("modules.*"):
            # depmod writes its indexes under the caller's umask; they go into the image
            if index.is_file() and not index.is_symlink():
                os.chmod(index, 0o644)
        with atomic_path(paths.vmlinuz) as out:
            shutil.copyfile(vmlinuz, out)
    write_json(paths.kernel_manifest, {
        "version": version,
        **package_fields(deb, cfg),
        "deb": str(deb),
        "deb_sha256": sha256_file(deb),
        "vmlinuz_sha256": sha256_file(paths.vmlinuz),
        "modules": str(paths.kernel_modules / "lib" / "modules" / version),
    })
    print(f"kernel: {version} -> {paths.vmlinuz}", file=sys.stderr)


def package_fields(deb: Path, cfg: Config) -> dict:
    """What kernel.json records of the package: its name and version (dpkg-deb),
    what the config asked for, and the suite it came from."""
    fields = debpkg.fields(deb, "Package", "Version")
    out = {"package": fields.get("Package", ""), "package_version": fields.get("Version", ""),
           "source": cfg.kernel.source}
    if cfg.kernel.source == "package":
        out.update({"requested": cfg.kernel.package, "suite": cfg.kernel.suite or "host apt",
                    "mirror": cfg.kernel.mirror if cfg.kernel.suite else ""})
    return out


def info(paths: Paths) -> dict:
    """kernel.json as written by unpack()."""
    try:
        return read_json(paths.kernel_manifest)
    except FileNotFoundError:
        raise BuildError("the guest kernel has not been unpacked", hint="run: doit kernel") from None
