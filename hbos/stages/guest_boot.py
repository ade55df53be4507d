"""What the guest does not run at boot: masked units and generators, and kernel
modules udev must not load automatically (docs/boot.md has the timeline).

The guest root is an immutable, measured image (dm-verity) whose /etc and /var
are a fresh tmpfs overlay on every boot. Debian's defaults assume a mutable,
long-lived machine: package timers, filesystem maintenance, "the system was
updated" rebuilds (ConditionNeedsUpdate is true on every boot of such an
image, because /etc/.updated never survives), generators for features the
guest has no use for, and udev loading drivers for every emulated chipset
device. Under TCG each of them costs seconds; under SEV-SNP they are attack
surface and noise.

hbos.stages.verity puts `masks(debug)` and `text_files()` into every guest
root: masks are symlinks to /dev/null in /etc (systemd's own mechanism, visible
with `systemctl list-unit-files`), the module list is an /etc/modprobe.d file
(`blacklist` only stops alias-based loading by udev; an explicit `modprobe
NAME` still works), beside the udev rule and the journald drop-in. Nothing
here touches what the node needs (NEEDED_UNITS, NEEDED_MODULES); tests check
both lists against a real built image.
"""

from __future__ import annotations

UNIT_DIR = "etc/systemd/system"
GENERATOR_DIR = "etc/systemd/system-generators"
MODPROBE_FILE = "etc/modprobe.d/hbos-guest.conf"

# unit -> why it is masked
MASKED_UNITS: dict[str, str] = {
    # packages cannot change on a read-only, measured root
    "apt-daily.timer": "apt: packages cannot change on the read-only root",
    "apt-daily.service": "apt: packages cannot change on the read-only root",
    "apt-daily-upgrade.timer": "apt: packages cannot change on the read-only root",
    "apt-daily-upgrade.service": "apt: packages cannot change on the read-only root",
    "dpkg-db-backup.timer": "dpkg database is read-only",
    "dpkg-db-backup.service": "dpkg database is read-only",
    # filesystem maintenance: the root is erofs/ext4 under dm-verity, no LVM
    "e2scrub_all.timer": "no LVM snapshots to check",
    "e2scrub_all.service": "no LVM snapshots to check",
    "e2scrub_reap.service": "no LVM snapshots to reap",
    "fstrim.timer": "the root is read-only; the node's state is on tmpfs or the data disk",
    "fstrim.service": "the root is read-only; the node's state is on tmpfs or the data disk",
    # ConditionNeedsUpdate=/etc or /var: true on every boot of this image, but
    # the caches were built with the image (ld.so.cache, hwdb.bin, users)
    "ldconfig.service": "ld.so.cache is built into the image",
    "systemd-hwdb-update.service": "hwdb.bin is built into the image (/usr/lib/udev)",
    "systemd-journal-catalog-update.service": "the catalog is static in the image",
    "systemd-update-done.service": "the image is never updated in place",
    "systemd-sysusers.service": "system users and groups are in the image's /etc/passwd",
    # persistent state the guest does not keep (/var is a tmpfs overlay)
    "systemd-random-seed.service": "/var is discarded at power-off; the kernel seeds itself (RDRAND)",
    "systemd-pstore.service": "no persistent storage to archive pstore records to",
    "systemd-firstboot.service": "nothing to ask: the image is configured at build time",
    "systemd-networkd-persistent-storage.service": "networkd's state would go to the /var tmpfs",
    "systemd-journal-flush.service": "the journal is volatile (JOURNALD_FILE): nothing to flush",
    "systemd-remount-fs.service": "/etc/fstab is empty: the initramfs mounts the root",
    # kernel features the guest does not use
    "modprobe@drm.service": "no display (logind wants drm for seats)",
    "modprobe@efi_pstore.service": "no EFI variable store (SeaBIOS or AmdSev OVMF)",
    "modprobe@fuse.service": "no FUSE",
    "systemd-binfmt.service": "no foreign binary formats",
    "proc-sys-fs-binfmt_misc.automount": "no foreign binary formats",
    "proc-sys-fs-binfmt_misc.mount": "no foreign binary formats",
    "sys-kernel-debug.mount": "no debugfs in a confidential guest",
    "sys-kernel-tracing.mount": "no tracefs in a confidential guest",
    "sys-fs-fuse-connections.mount": "no FUSE",
    "dev-hugepages.mount": "no hugetlbfs users (the BEAM does not use it)",
    "dev-mqueue.mount": "no POSIX message queue users",
    "systemd-udev-load-credentials.service": "no udev rules from VMM-supplied credentials",
}

# generator -> why it is masked (systemd skips a generator linked to /dev/null in /etc)
MASKED_GENERATORS: dict[str, str] = {
    "systemd-gpt-auto-generator": "the root is opened by the initramfs, no GPT auto-discovery",
    "systemd-hibernate-resume-generator": "no hibernation",
    "systemd-rc-local-generator": "no /etc/rc.local",
    "systemd-run-generator": "no systemd.run= from the kernel command line",
    "systemd-ssh-generator": "no sshd",
    "systemd-system-update-generator": "no offline updates on an immutable image",
    "systemd-sysv-generator": "no SysV init scripts to convert",
    "systemd-tpm2-generator": "no TPM",
}
# kept in debug images: systemd.debug_shell and systemd.mask= on the kernel command line
DEBUG_GENERATORS = {"systemd-debug-generator": "no debug shell or unit masks from the "
                                               "kernel command line"}

# module -> why udev must not load it: drivers for QEMU's q35 chipset and
# devices a headless SEV-SNP node never uses (seen loading in the guest's log)
BLACKLISTED_MODULES: dict[str, str] = {
    "kvm": "no nested virtualization in a guest",
    "kvm_amd": "no nested virtualization in a guest",
    "kvm_intel": "no nested virtualization in a guest",
    "ahci": "q35's SATA controller: the guest's disks are virtio",
    "lpc_ich": "q35 chipset LPC bridge",
    "i2c_i801": "q35 chipset SMBus",
    "iTCO_wdt": "q35 chipset watchdog",
    "iTCO_vendor_support": "q35 chipset watchdog",
    "pcspkr": "no speaker",
    "psmouse": "no mouse",
    "serio_raw": "no raw serial input devices",
    "joydev": "no joystick",
    "cfg80211": "no wireless",
    "intel_rapl_msr": "no power capping in a guest",
    "intel_rapl_common": "no power capping in a guest",
    "intel_pmc_core": "no PMC in a guest",
    "sp5100_tco": "no chipset watchdog",
    "bochs": "no display (-display none)",
}

# what the node needs: never masked or blacklisted (tests check the built image);
# configfs: the TSM attestation reports live in /sys/kernel/config/tsm
NEEDED_UNITS = ("hyperbeam.service", "modprobe@configfs.service", "sys-kernel-config.mount",
                "hbos-data.service", "systemd-networkd.service",
                "systemd-networkd.socket", "systemd-networkd-wait-online.service",
                "systemd-udevd.service", "systemd-udev-trigger.service",
                "systemd-journald.service", "systemd-logind.service",
                "systemd-tmpfiles-setup.service", "systemd-modules-load.service",
                "network-online.target", "multi-user.target")
# sev-guest and tsm (attestation reports), the NIC, verity, dm-crypt (HyperBEAM's
# volume feature runs cryptsetup) and its AES, evdev + button (ACPI power-down reaches logind)
NEEDED_MODULES = ("sev-guest", "tsm", "virtio_net", "dm_verity", "dm_crypt",
                  "aesni_intel", "evdev", "button")


def masked_generators(debug: bool) -> dict[str, str]:
    return {**MASKED_GENERATORS, **({} if debug else DEBUG_GENERATORS)}


def masks(debug: bool) -> dict[str, str]:
    """Root-relative path -> symlink target (/dev/null) for every mask."""
    out = {f"{UNIT_DIR}/{unit}": "/dev/null" for unit in MASKED_UNITS}
    out.update({f"{GENERATOR_DIR}/{gen}": "/dev/null" for gen in masked_generators(debug)})
    return out


def modprobe_conf() -> str:
    lines = ["# HyperBEAM OS (hbos/stages/guest_boot.py): drivers udev must not load automatically",
             "# in the guest; `modprobe NAME` still loads one by hand."]
    for module, why in BLACKLISTED_MODULES.items():
        lines += [f"# {why}", f"blacklist {module}"]
    return "\n".join(lines) + "\n"


# udev rules run in name order: this one clears the CPU device's modalias before
# 80-drivers.rules turns it into `kmod load`: no driver is loaded at boot for
# each CPU feature (crypto, EDAC, thermal, RAPL, kvm: dozens of modules, the
# slowest part of coldplug under TCG). The crypto API still loads an
# accelerated implementation on demand (aesni_intel is alias crypto-aes ...).
UDEV_RULE = "etc/udev/rules.d/79-hbos-no-cpu-modalias.rules"
UDEV_RULE_TEXT = """\
# HyperBEAM OS (hbos/stages/guest_boot.py): udev loads no drivers for CPU features.
SUBSYSTEM=="cpu", ENV{MODALIAS}=""
"""
# the journal stays in /run: /var is a tmpfs too, so nothing is lost, and
# systemd-journal-flush has nothing to move
JOURNALD_FILE = "etc/systemd/journald.conf.d/hbos-volatile.conf"
JOURNALD_TEXT = """\
# HyperBEAM OS (hbos/stages/guest_boot.py): /var is a tmpfs overlay, keep the journal in /run.
[Journal]
Storage=volatile
"""


def text_files() -> dict[str, str]:
    """Root-relative path -> file text."""
    return {MODPROBE_FILE: modprobe_conf(), UDEV_RULE: UDEV_RULE_TEXT,
            JOURNALD_FILE: JOURNALD_TEXT}
