//! Whether this device runs on battery: read from the kernel's power supply class
//! (`/sys/class/power_supply`, or the folder `CNSPR_POWER_SUPPLY_DIR` names). A device
//! is on battery when no external supply (mains, USB) is online and a battery
//! discharges. Anything unreadable counts as mains: a desktop has no battery, and
//! watching a device closely is the safe side.

use std::path::{Path, PathBuf};

use crate::config::Profile;

/// The kernel's power supply class.
const SYSFS: &str = "/sys/class/power_supply";
/// At most this many supplies are read (a laptop has two or three).
const MAX_SUPPLIES: usize = 32;
/// At most this many bytes of one attribute.
const MAX_ATTR: u64 = 64;

/// The folder the supplies are read from.
pub fn supply_dir() -> PathBuf {
    std::env::var_os("CNSPR_POWER_SUPPLY_DIR").map_or_else(|| PathBuf::from(SYSFS), PathBuf::from)
}

fn attr(dir: &Path, name: &str) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(dir.join(name))
        .ok()?
        .take(MAX_ATTR)
        .read_to_string(&mut s)
        .ok()?;
    Some(s.trim().to_string())
}

/// Whether the supplies under `dir` say this device runs on battery.
pub fn on_battery(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut discharging = false;
    for entry in entries.flatten().take(MAX_SUPPLIES) {
        let d = entry.path();
        match attr(&d, "type").as_deref() {
            Some("Mains") | Some("USB") | Some("USB_C") | Some("USB_PD")
                if attr(&d, "online").as_deref() == Some("1") =>
            {
                return false;
            }
            Some("Battery") => {
                // A battery of a device (a mouse) has scope "Device": not ours.
                let system = attr(&d, "scope").is_none_or(|s| s != "Device");
                if system && attr(&d, "status").as_deref() == Some("Discharging") {
                    discharging = true;
                }
            }
            _ => {}
        }
    }
    discharging
}

/// Whether the profile makes this device gentle now (`auto` reads the supplies).
pub fn gentle(profile: Profile, dir: &Path) -> bool {
    match profile {
        Profile::Battery => true,
        Profile::Mains => false,
        Profile::Auto => on_battery(dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, attrs: &[(&str, &str)]) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in attrs {
            std::fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn a_laptop_unplugged_is_on_battery_and_plugged_in_is_not() {
        let t = tempfile::tempdir().unwrap();
        supply(t.path(), "AC", &[("type", "Mains"), ("online", "0")]);
        supply(
            t.path(),
            "BAT0",
            &[("type", "Battery"), ("status", "Discharging")],
        );
        assert!(on_battery(t.path()));
        assert!(gentle(Profile::Auto, t.path()));
        assert!(!gentle(Profile::Mains, t.path()));
        supply(t.path(), "AC", &[("online", "1")]);
        supply(t.path(), "BAT0", &[("status", "Charging")]);
        assert!(!on_battery(t.path()));
        // Online mains wins even while the battery still says discharging.
        supply(t.path(), "BAT0", &[("status", "Discharging")]);
        assert!(!on_battery(t.path()));
    }

    #[test]
    fn no_supply_a_device_battery_or_garbage_is_mains() {
        let t = tempfile::tempdir().unwrap();
        assert!(!on_battery(t.path()));
        assert!(!on_battery(&t.path().join("missing")));
        assert!(gentle(Profile::Battery, &t.path().join("missing")));
        supply(
            t.path(),
            "hidpp_battery_0",
            &[
                ("type", "Battery"),
                ("scope", "Device"),
                ("status", "Discharging"),
            ],
        );
        assert!(!on_battery(t.path()));
        let long = "x".repeat(10_000);
        supply(
            t.path(),
            "odd",
            &[("type", long.as_str()), ("status", "Discharging")],
        );
        assert!(!on_battery(t.path()));
        // A phone on battery with only a USB supply offline.
        supply(t.path(), "usb", &[("type", "USB"), ("online", "0")]);
        supply(
            t.path(),
            "battery",
            &[("type", "Battery"), ("status", "Discharging")],
        );
        assert!(on_battery(t.path()));
    }
}
