"""hbos.stages.guest_boot: the lists agree with each other (the built image is checked
by tests/integration/test_guest_boot.py)."""

from __future__ import annotations

from hbos.stages import guest_boot as gb


def test_nothing_needed_is_masked_or_blacklisted():
    assert not set(gb.MASKED_UNITS) & set(gb.NEEDED_UNITS)
    norm = {m.replace("-", "_") for m in gb.NEEDED_MODULES}
    assert not {m.replace("-", "_") for m in gb.BLACKLISTED_MODULES} & norm


def test_masks_are_dev_null_links_and_debug_keeps_its_generators():
    plain, debug = gb.masks(debug=False), gb.masks(debug=True)
    assert set(plain.values()) == {"/dev/null"}
    assert "etc/systemd/system-generators/systemd-debug-generator" in plain
    assert "etc/systemd/system-generators/systemd-debug-generator" not in debug
    assert not any("getty" in rel for rel in plain)


def test_modprobe_conf_has_one_directive_per_line():
    # kmod has no inline comments: a reason goes on its own line
    for line in gb.modprobe_conf().splitlines():
        assert line.startswith("#") or (line.split()[0] == "blacklist" and len(line.split()) == 2)


def test_udev_rule_clears_only_the_cpu_modalias():
    rules = [ln for ln in gb.UDEV_RULE_TEXT.splitlines() if ln and not ln.startswith("#")]
    assert rules == ['SUBSYSTEM=="cpu", ENV{MODALIAS}=""']
    assert gb.UDEV_RULE.rsplit("/", 1)[1] < "80-drivers.rules"
