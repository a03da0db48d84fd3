"""battery.sh: one line per battery from sysfs, "no battery" when none."""

import re

import pytest


@pytest.fixture
def sysfs(sandbox):
    root = sandbox.root / "sys"
    supplies = root / "class" / "power_supply"
    supplies.mkdir(parents=True)
    sandbox.env["SYSFS_PATH"] = str(root)

    def add(name, link=False, **files):
        # In sysfs the entries are symbolic links to device directories.
        target = root / "devices" / name if link else supplies / name
        target.mkdir(parents=True)
        for key, value in files.items():
            (target / key).write_text(f"{value}\n")
        if link:
            (supplies / name).symlink_to(target)

    return add


def test_one_battery(sandbox, sysfs):
    sysfs("AC", type="Mains", online=0)
    sysfs("BAT0", link=True, type="Battery", capacity=87, status="Discharging")
    r = sandbox.run("battery.sh")
    assert r.returncode == 0, r.stderr
    assert r.out == "BAT0: 87% Discharging\n"


def test_two_batteries_and_a_mouse(sandbox, sysfs):
    sysfs("BAT0", type="Battery", capacity=100, status="Full")
    sysfs("BAT1", type="Battery", capacity=5, status="Charging")
    sysfs("hidpp_battery_0", type="Battery", scope="Device", capacity=40, status="Discharging")
    r = sandbox.run("battery.sh")
    assert r.returncode == 0, r.stderr
    assert r.out == "BAT0: 100% Full\nBAT1: 5% Charging\n"


def test_energy_and_charge_when_no_capacity(sandbox, sysfs):
    sysfs("BAT0", type="Battery", energy_now=30000000, energy_full=40000000, status="Discharging")
    sysfs("BAT1", type="Battery", charge_now=1000, charge_full=3000, status="Charging")
    sysfs("BAT2", type="Battery", capacity="garbage", energy_full=0, energy_now=1)
    r = sandbox.run("battery.sh")
    assert r.returncode == 0, r.stderr
    assert r.out == "BAT0: 75% Discharging\nBAT1: 33% Charging\nBAT2: ?% Unknown\n"


def test_status_is_cleaned(sandbox, sysfs):
    sysfs("BAT0", type="Battery", capacity=50, status="Not charging\x1b[31m")
    r = sandbox.run("battery.sh")
    assert r.out == "BAT0: 50% Not chargingm\n"


def test_only_mains(sandbox, sysfs):
    sysfs("AC", type="Mains", online=1)
    r = sandbox.run("battery.sh")
    assert r.returncode == 0, r.stderr
    assert r.out == "no battery\n"


def test_no_power_supply_class(sandbox):
    sandbox.env["SYSFS_PATH"] = str(sandbox.root / "nothing")
    r = sandbox.run("battery.sh")
    assert r.returncode == 0, r.stderr
    assert r.out == "no battery\n"


def test_this_machine(sandbox):
    r = sandbox.run("battery.sh")
    assert r.returncode == 0, r.stderr
    line = re.compile(r"[^:\s]+: (\d+|\?)% [A-Za-z -]+")
    assert r.out == "no battery\n" or all(line.fullmatch(x) for x in r.out.splitlines())
