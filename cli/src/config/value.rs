//! The keys and their values: one checked [`Setting`] from either the command line's text
//! (`vmctl config set`, `vmctl start` flags) or the file's TOML, so both say the same thing
//! about the same mistake.

use super::host;
use super::mount::{self, Mount};
use super::EngineChoice;

/// Most vCPUs a VM may have.
pub const MAX_CPUS: u32 = 32;
/// Least guest RAM the guest agent and dockerd run in.
pub const MIN_MEMORY_MIB: u64 = 256;
/// Smallest data disk (`/var/lib/docker`).
pub const MIN_DISK_MIB: u64 = 1024;
/// Largest data disk (it is sparse: only what the guest writes takes space).
pub const MAX_DISK_MIB: u64 = 16 << 20;

/// A configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Engine,
    Cpus,
    Memory,
    DiskSize,
    ShareHome,
    Mounts,
    Nested,
    AllowPrivilegedPorts,
}

impl Key {
    pub const ALL: [Key; 8] = [
        Key::Engine,
        Key::Cpus,
        Key::Memory,
        Key::DiskSize,
        Key::ShareHome,
        Key::Mounts,
        Key::Nested,
        Key::AllowPrivilegedPorts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Key::Engine => "engine",
            Key::Cpus => "cpus",
            Key::Memory => "memory",
            Key::DiskSize => "disk_size",
            Key::ShareHome => "share_home",
            Key::Mounts => "mounts",
            Key::Nested => "nested",
            Key::AllowPrivilegedPorts => "allow_privileged_ports",
        }
    }

    /// A valid value, for "fix it with `vmctl config set KEY VALUE`".
    pub fn example(self) -> &'static str {
        match self {
            Key::Engine => "auto",
            Key::Cpus => "2",
            Key::Memory => "4GiB",
            Key::DiskSize => "64GiB",
            Key::ShareHome => "true",
            Key::Mounts => "/srv/src:/src,/data:ro",
            Key::Nested => "false",
            Key::AllowPrivilegedPorts => "true",
        }
    }

    pub fn from_name(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One key's checked value.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    Engine(EngineChoice),
    Cpus(u32),
    Memory(u64),
    DiskSize(u64),
    ShareHome(bool),
    Mounts(Vec<Mount>),
    Nested(bool),
    AllowPrivilegedPorts(bool),
}

/// Parses `4GiB`, `4G`, `512MiB`, `512M`, `1T` or a bare number of MiB into MiB.
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty; use a size like 4GiB or 512MiB".into());
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err("not a size like 4GiB or 512MiB".into());
    }
    let mul = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => {
            return Err(format!(
                "unknown unit {:?}; use a whole number of MiB, GiB or TiB",
                unit.trim()
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .filter(|v| *v > 0)
        .ok_or_else(|| "out of range; use a size like 4GiB or 512MiB".to_string())
}

pub fn format_size_mib(mib: u64) -> String {
    if mib % 1024 == 0 {
        format!("{}GiB", mib / 1024)
    } else {
        format!("{mib}MiB")
    }
}

fn engine(s: &str) -> Result<EngineChoice, String> {
    match s {
        "auto" => Ok(EngineChoice::Auto),
        "builtin" => Ok(EngineChoice::Builtin),
        "qemu" => Ok(EngineChoice::Qemu),
        _ => Err("use auto, builtin or qemu".into()),
    }
}

fn cpus_range() -> String {
    format!(
        "use a whole number of vCPUs from 1 to {MAX_CPUS} (this host has {})",
        host::cpus()
    )
}

fn cpus(n: i128) -> Result<u32, String> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_CPUS).contains(n))
        .ok_or_else(cpus_range)
}

fn memory(mib: u64) -> Result<u64, String> {
    let host = host::memory_mib();
    if mib < MIN_MEMORY_MIB {
        return Err(format!(
            "at least {} (the default here is {})",
            format_size_mib(MIN_MEMORY_MIB),
            format_size_mib(host::default_memory_mib(host))
        ));
    }
    if mib > host {
        return Err(format!(
            "this host has only {} of RAM (the default here is {})",
            format_size_mib(host),
            format_size_mib(host::default_memory_mib(host))
        ));
    }
    Ok(mib)
}

fn disk_size(mib: u64) -> Result<u64, String> {
    if !(MIN_DISK_MIB..=MAX_DISK_MIB).contains(&mib) {
        return Err(format!(
            "use {} to {} (the disk is sparse; the default is 64GiB)",
            format_size_mib(MIN_DISK_MIB),
            format_size_mib(MAX_DISK_MIB)
        ));
    }
    Ok(mib)
}

fn boolean(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("use true or false".into()),
    }
}

impl Setting {
    /// From command-line text. `mounts` is a comma-separated list (empty: no mounts).
    pub fn from_text(key: Key, s: &str) -> Result<Setting, String> {
        Ok(match key {
            Key::Engine => Setting::Engine(engine(s)?),
            Key::Cpus => {
                let n = s.parse::<i128>().map_err(|_| {
                    if s.is_empty() {
                        "empty; use a whole number like 2".to_string()
                    } else {
                        cpus_range()
                    }
                })?;
                Setting::Cpus(cpus(n)?)
            }
            Key::Memory => Setting::Memory(memory(parse_size_mib(s)?)?),
            Key::DiskSize => Setting::DiskSize(disk_size(parse_size_mib(s)?)?),
            Key::ShareHome => Setting::ShareHome(boolean(s)?),
            Key::Nested => Setting::Nested(boolean(s)?),
            Key::AllowPrivilegedPorts => Setting::AllowPrivilegedPorts(boolean(s)?),
            Key::Mounts => Setting::Mounts(mount::parse_list(
                s.split(',').map(str::trim).filter(|m| !m.is_empty()),
            )?),
        })
    }

    /// From the file's TOML value.
    pub fn from_toml(key: Key, v: &toml::Value) -> Result<Setting, String> {
        use toml::Value as V;
        let wrong = |want: &str| format!("{} is a {}; want {want}", v, v.type_str());
        Ok(match (key, v) {
            (Key::Engine, V::String(s)) => Setting::Engine(engine(s)?),
            (Key::Engine, _) => return Err(wrong("\"auto\", \"builtin\" or \"qemu\"")),
            (Key::Cpus, V::Integer(n)) => Setting::Cpus(cpus(i128::from(*n))?),
            (Key::Cpus, _) => return Err(wrong("a whole number without quotes, e.g. 2")),
            (Key::Memory | Key::DiskSize, V::String(s)) => Setting::from_text(key, s)?,
            (Key::Memory | Key::DiskSize, V::Integer(n)) => {
                let mib = u64::try_from(*n).map_err(|_| "a negative size".to_string())?;
                Setting::from_text(key, &mib.to_string())?
            }
            (Key::Memory | Key::DiskSize, _) => return Err(wrong("a size like \"4GiB\"")),
            (Key::ShareHome, V::Boolean(b)) => Setting::ShareHome(*b),
            (Key::Nested, V::Boolean(b)) => Setting::Nested(*b),
            (Key::AllowPrivilegedPorts, V::Boolean(b)) => Setting::AllowPrivilegedPorts(*b),
            (Key::ShareHome | Key::Nested | Key::AllowPrivilegedPorts, _) => {
                return Err(wrong("true or false without quotes"))
            }
            (Key::Mounts, V::Array(items)) => {
                let mut list = Vec::new();
                for item in items {
                    match item {
                        V::String(s) => list.push(s.as_str()),
                        other => {
                            return Err(format!(
                                "{other} is a {}; each mount is a string like \"/src:/src:ro\"",
                                other.type_str()
                            ))
                        }
                    }
                }
                Setting::Mounts(mount::parse_list(list)?)
            }
            (Key::Mounts, _) => return Err(wrong("a list like [\"/srv/src:/src\"]")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_size_units() {
        assert_eq!(parse_size_mib("4GiB"), Ok(4096));
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("2048"), Ok(2048));
        assert_eq!(parse_size_mib("1T"), Ok(1 << 20));
        for bad in [
            "4XB",
            "-1G",
            "0",
            "99999999999999999999G",
            "",
            "G",
            "4.5G",
            "4KiB",
        ] {
            assert!(parse_size_mib(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn test_setting_from_text_rejects_out_of_range() {
        for (k, v) in [
            (Key::Cpus, "0"),
            (Key::Cpus, "-1"),
            (Key::Cpus, "33"),
            (Key::Cpus, "99999999999999999999999"),
            (Key::Cpus, ""),
            (Key::Cpus, "two"),
            (Key::Memory, "12M"),
            (Key::Memory, "1000T"),
            (Key::DiskSize, "512MiB"),
            (Key::DiskSize, "17TiB"),
            (Key::ShareHome, "yes"),
            (Key::Engine, "kvm"),
            (Key::Mounts, "relative"),
        ] {
            assert!(Setting::from_text(k, v).is_err(), "{k:?} {v:?}");
        }
        assert_eq!(Setting::from_text(Key::Cpus, "2"), Ok(Setting::Cpus(2)));
        assert_eq!(
            Setting::from_text(Key::Mounts, ""),
            Ok(Setting::Mounts(Vec::new()))
        );
    }

    #[test]
    fn test_setting_from_toml_names_the_wrong_type() {
        let e = Setting::from_toml(Key::Cpus, &toml::Value::String("2".into()));
        assert!(e.as_ref().is_err_and(|e| e.contains("string")), "{e:?}");
        let e = Setting::from_toml(Key::Nested, &toml::Value::String("true".into()));
        assert!(e.is_err());
        let e = Setting::from_toml(Key::Memory, &toml::Value::Integer(-5));
        assert!(e.is_err());
        assert_eq!(
            Setting::from_toml(Key::Memory, &toml::Value::Integer(1024)),
            Ok(Setting::Memory(1024))
        );
    }
}
