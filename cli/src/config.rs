//! The instance configuration: `<instance dir>/config.toml`.
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `engine` | `auto`, `builtin`, `qemu` | `auto` | which engine runs the VM (`auto`: builtin when the host hypervisor can run the guest, else qemu) |
//! | `cpus` | integer | half the host's cores (1–8) | vCPUs |
//! | `memory` | size (`4GiB`, `512MiB`) | a quarter of host RAM (1–8 GiB) | guest RAM |
//! | `disk_size` | size | `64GiB` | the sparse data disk for `/var/lib/docker` (grows only) |
//! | `share_home` | bool | `true` | share `$HOME` at the same path in the VM |
//! | `mounts` | list of `HOSTDIR[:GUESTDIR][:ro]` | `[]` | more shared folders |
//! | `nested` | bool | `false` | give the VM a `/dev/kvm` of its own (KVM workloads in containers: `docker run --device /dev/kvm`), where the host allows it |
//!
//! `vmctl start` flags override the file for that start and are saved into it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or changing the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid vmctl configuration: {source}; fix it with `vmctl config edit`")]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("Cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Unknown key {0:?}; keys are engine, cpus, memory, disk_size, share_home, mounts, nested"
    )]
    UnknownKey(String),
    #[error("Invalid value for {key}: {why}")]
    Value { key: String, why: String },
}

/// Which engine runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    #[default]
    Auto,
    Builtin,
    Qemu,
}

/// A host folder shared into the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    pub guest: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for Mount {
    type Err = String;
    /// `HOSTDIR[:GUESTDIR][:ro]`
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts: Vec<&str> = s.split(':').collect();
        let read_only = match parts.last() {
            Some(&"ro") if parts.len() > 1 => {
                parts.pop();
                true
            }
            Some(&"rw") if parts.len() > 1 => {
                parts.pop();
                false
            }
            _ => false,
        };
        let (host, guest) = match parts.as_slice() {
            [h] => (*h, *h),
            [h, g] => (*h, *g),
            _ => return Err(format!("{s:?}: use HOSTDIR[:GUESTDIR][:ro]")),
        };
        if !host.starts_with('/') || !guest.starts_with('/') {
            return Err(format!("{s:?}: folders must be absolute paths"));
        }
        Ok(Mount {
            host: host.into(),
            guest: guest.into(),
            read_only,
        })
    }
}

impl std::fmt::Display for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host.display(), self.guest.display())?;
        if self.read_only {
            write!(f, ":ro")?;
        }
        Ok(())
    }
}

/// Parses `4GiB`, `4G`, `512MiB`, `512M`, `1T` or a bare number of MiB into MiB.
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4GiB or 512MiB"))?;
    let mul = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(mul)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

pub fn format_size_mib(mib: u64) -> String {
    if mib % 1024 == 0 {
        format!("{}GiB", mib / 1024)
    } else {
        format!("{mib}MiB")
    }
}

/// The file's content; absent keys take host-derived defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_home: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested: Option<bool>,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub engine: EngineChoice,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_size_mib: u64,
    pub share_home: bool,
    pub mounts: Vec<Mount>,
    pub nested: bool,
}

fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2)
}

fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .map(|kib| kib / 1024)
        .unwrap_or(4096)
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(s) => toml::from_str(&s).map_err(|source| ConfigError::Parse {
                path: path.display().to_string(),
                source: Box::new(source),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        let text =
            format!("# vmctl instance configuration; keys: see `vmctl config --help`\n{body}");
        std::fs::write(path, text).map_err(|source| ConfigError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// Sets one key from its command-line text, validating it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |why: String| ConfigError::Value {
            key: key.to_string(),
            why,
        };
        match key {
            "engine" => {
                self.engine = Some(match value {
                    "auto" => EngineChoice::Auto,
                    "builtin" => EngineChoice::Builtin,
                    "qemu" => EngineChoice::Qemu,
                    _ => return Err(bad("use auto, builtin or qemu".into())),
                })
            }
            "cpus" => {
                let n: u32 = value.parse().map_err(|_| bad("not a number".into()))?;
                if !(1..=32).contains(&n) {
                    return Err(bad("use 1 to 32".into()));
                }
                self.cpus = Some(n);
            }
            "memory" => {
                let m = parse_size_mib(value).map_err(bad)?;
                if m < 256 {
                    return Err(bad("at least 256MiB".into()));
                }
                self.memory = Some(format_size_mib(m));
            }
            "disk_size" => {
                let m = parse_size_mib(value).map_err(bad)?;
                if m < 1024 {
                    return Err(bad("at least 1GiB".into()));
                }
                self.disk_size = Some(format_size_mib(m));
            }
            "share_home" => {
                self.share_home = Some(value.parse().map_err(|_| bad("use true or false".into()))?)
            }
            "nested" => {
                self.nested = Some(value.parse().map_err(|_| bad("use true or false".into()))?)
            }
            "mounts" => {
                let list: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                for m in &list {
                    m.parse::<Mount>().map_err(bad)?;
                }
                self.mounts = Some(list);
            }
            other => return Err(ConfigError::UnknownKey(other.to_string())),
        }
        Ok(())
    }

    /// The effective value of `key` as text.
    pub fn get(&self, key: &str) -> Result<String, ConfigError> {
        let c = self.resolve()?;
        Ok(match key {
            "engine" => format!("{:?}", c.engine).to_lowercase(),
            "cpus" => c.cpus.to_string(),
            "memory" => format_size_mib(c.memory_mib),
            "disk_size" => format_size_mib(c.disk_size_mib),
            "share_home" => c.share_home.to_string(),
            "nested" => c.nested.to_string(),
            "mounts" => c
                .mounts
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(","),
            other => return Err(ConfigError::UnknownKey(other.to_string())),
        })
    }

    /// Fills defaults from the host.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let bad = |key: &str, why: String| ConfigError::Value {
            key: key.to_string(),
            why,
        };
        let memory_mib = match &self.memory {
            Some(m) => parse_size_mib(m).map_err(|w| bad("memory", w))?,
            None => (host_memory_mib() / 4 / 1024 * 1024).clamp(1024, 8192),
        };
        let disk_size_mib = match &self.disk_size {
            Some(d) => parse_size_mib(d).map_err(|w| bad("disk_size", w))?,
            None => 64 * 1024,
        };
        let mounts = self
            .mounts
            .iter()
            .flatten()
            .map(|m| m.parse::<Mount>().map_err(|w| bad("mounts", w)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            engine: self.engine.unwrap_or_default(),
            cpus: self.cpus.unwrap_or_else(|| (host_cpus() / 2).clamp(1, 8)),
            memory_mib,
            disk_size_mib,
            share_home: self.share_home.unwrap_or(true),
            mounts,
            nested: self.nested.unwrap_or(false),
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
        assert!(parse_size_mib("4XB").is_err());
        assert!(parse_size_mib("-1G").is_err());
        assert!(parse_size_mib("0").is_err());
        assert!(parse_size_mib("99999999999999999999G").is_err());
    }

    #[test]
    fn test_mount_parse_forms() {
        let m: Mount = "/a".parse().unwrap();
        assert_eq!(
            (m.host.to_str(), m.guest.to_str(), m.read_only),
            (Some("/a"), Some("/a"), false)
        );
        let m: Mount = "/a:/b:ro".parse().unwrap();
        assert_eq!((m.guest.to_str(), m.read_only), (Some("/b"), true));
        let m: Mount = "/a:ro".parse().unwrap();
        assert_eq!((m.guest.to_str(), m.read_only), (Some("/a"), true));
        assert!("rel:/b".parse::<Mount>().is_err());
        assert!("/a:/b:/c".parse::<Mount>().is_err());
    }

    #[test]
    fn test_config_file_set_get_save_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        let mut c = ConfigFile::load(&p).unwrap();
        c.set("cpus", "3").unwrap();
        c.set("memory", "2G").unwrap();
        c.set("mounts", "/srv:/data:ro").unwrap();
        assert!(c.set("cpus", "0").is_err());
        assert!(c.set("nope", "1").is_err());
        assert!(c.set("memory", "12M").is_err());
        c.save(&p).unwrap();
        let back = ConfigFile::load(&p).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.get("memory").unwrap(), "2GiB");
        assert_eq!(back.get("mounts").unwrap(), "/srv:/data:ro");
        let r = back.resolve().unwrap();
        assert_eq!(
            (r.cpus, r.memory_mib, r.engine),
            (3, 2048, EngineChoice::Auto)
        );
    }

    #[test]
    fn test_config_file_garbage_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "cpus = \"many\"\nwat = 1\n").unwrap();
        let e = ConfigFile::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("config.toml") && e.contains("vmctl config edit"),
            "{e}"
        );
    }
}
