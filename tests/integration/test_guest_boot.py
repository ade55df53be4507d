"""The boot-time masks (hbos/stages/guest_boot.py) in a real built guest image.

The session's guest_build (tests/conftest.py: `doit measure profile=local`
with the cached trixie base root and kernel) is unpacked with fsck.erofs, then
read with the real tools: `systemctl --root` says which units are masked, kmod
(`modprobe -C ... --showconfig`) which modules are blacklisted. Every mask must
name a unit, generator or module that exists in the image (no dead entries),
and nothing the node needs may be masked.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hbos.stages import guest_boot, rootfs
from hbos.util import tools
from tests.conftest import missing_prerequisite

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def image_root(guest_build, tmp_path_factory) -> Path:
    if tools.find("fsck.erofs") is None or tools.find("systemctl") is None:
        missing_prerequisite("fsck.erofs (erofs-utils) and systemctl are needed")
    root = tmp_path_factory.mktemp("image-root") / "root"
    subprocess.run(["fsck.erofs", f"--extract={root}", "--no-preserve",
                    str(guest_build.paths.verity_image)], check=True, capture_output=True)
    return root


def _unit_state(root: Path, unit: str) -> str:
    proc = subprocess.run(["systemctl", f"--root={root}", "is-enabled", unit],
                          capture_output=True, text=True)
    return proc.stdout.strip()


def test_masked_units_exist_and_are_masked(image_root):
    vendor = image_root / "usr/lib/systemd/system"
    for unit in guest_boot.MASKED_UNITS:
        name, at, _instance = unit.partition("@")
        template = f"{name}@.{unit.rsplit('.', 1)[1]}" if at else unit
        assert (vendor / template).is_file(), f"{unit}: no such unit in the image (dead mask)"
        assert _unit_state(image_root, unit) == "masked", unit


def test_needed_units_are_not_masked(image_root):
    for unit in guest_boot.NEEDED_UNITS:
        link = image_root / "etc/systemd/system" / unit
        assert not (link.is_symlink() and str(link.readlink()) == "/dev/null"), unit
    # the ones the base image ships: systemctl agrees they are usable
    for unit in ("systemd-networkd.service", "systemd-udevd.service",
                 "systemd-networkd-wait-online.service", "systemd-logind.service"):
        assert _unit_state(image_root, unit) not in ("masked", "masked-runtime", ""), unit


def test_masked_generators_exist(image_root):
    vendor = image_root / "usr/lib/systemd/system-generators"
    masked = image_root / guest_boot.GENERATOR_DIR
    for gen in guest_boot.masked_generators(debug=False):
        assert (vendor / gen).is_file(), f"{gen}: no such generator (dead mask)"
        assert str((masked / gen).readlink()) == "/dev/null"
    # the getty generator stays: debug images log in on the serial console
    assert not (masked / "systemd-getty-generator").exists()


def _norm(module: str) -> str:
    return module.replace("-", "_")


def test_blacklist_parsed_by_kmod_and_spares_what_is_needed(image_root):
    modules = rootfs.modules_dir(image_root)
    (kver,) = [p.name for p in modules.iterdir() if p.is_dir()]
    conf = subprocess.run(["modprobe", "-C", str(image_root / "etc/modprobe.d"),
                           "-d", str(image_root), "-S", kver, "--showconfig"],
                          capture_output=True, text=True, check=True).stdout
    blacklisted = set(re.findall(r"^blacklist (\S+)$", conf, re.M))
    assert blacklisted >= {_norm(m) for m in guest_boot.BLACKLISTED_MODULES}
    shipped = {_norm(p.name.split(".ko")[0]) for p in (modules / kver).rglob("*.ko*")}
    for module in guest_boot.BLACKLISTED_MODULES:
        assert _norm(module) in shipped, f"{module}: not a module of kernel {kver} (dead entry)"
    for module in guest_boot.NEEDED_MODULES:
        assert _norm(module) in shipped, f"{module}: the kernel has no such module"
        assert _norm(module) not in blacklisted, module


def test_what_the_masked_rebuild_units_would_make_is_in_the_image(image_root):
    """ldconfig, hwdb-update and sysusers are masked: their results are built in."""
    assert (image_root / "etc/ld.so.cache").is_file()
    assert (image_root / "usr/lib/udev/hwdb.bin").is_file()
    passwd = {ln.split(":")[0] for ln in (image_root / "etc/passwd").read_text().splitlines()}
    group = {ln.split(":")[0] for ln in (image_root / "etc/group").read_text().splitlines()}
    for conf in (image_root / "usr/lib/sysusers.d").glob("*.conf"):
        for line in conf.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "u":
                assert words[1] in passwd, f"{conf.name}: user {words[1]} not in /etc/passwd"
            elif len(words) >= 2 and words[0] == "g":
                assert words[1] in group, f"{conf.name}: group {words[1]} not in /etc/group"
