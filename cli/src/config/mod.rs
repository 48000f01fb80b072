//! The instance configuration: `<instance dir>/config.toml`.
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `engine` | `"auto"`, `"builtin"`, `"qemu"` | `"auto"` | which engine runs the VM (`auto`: builtin when the host hypervisor can run the guest, else qemu) |
//! | `cpus` | integer, 1–32 | all the host's CPUs but one (1–8) | vCPUs |
//! | `memory` | size (`"4GiB"`, `"512MiB"`; a bare integer is MiB), 256MiB–host RAM | a quarter of host RAM, up to 2GiB within half of it | guest RAM (freed memory goes back to the host) |
//! | `disk_size` | size, 1GiB–16TiB | `"64GiB"` | the sparse data disk for `/var/lib/docker`; a larger value grows the existing disk at the next start and the guest grows its filesystem online (it never shrinks) |
//! | `share_home` | bool | `true` | share `$HOME` at the same path in the VM |
//! | `mounts` | list of `"HOSTDIR[:GUESTDIR][:ro]"` | `[]` | more shared folders: absolute paths without `,` or control characters, guest folders without whitespace, each guest folder once |
//! | `nested` | bool | `false` | give the VM a `/dev/kvm` of its own (KVM workloads in containers: `docker run --device /dev/kvm`), where the host allows it |
//! | `allow_privileged_ports` | bool | `false` | forward guest ports to host ports below 1024 (refused by default: the guest must not take over a host service's port; without root the host may refuse them anyway) |
//!
//! Every value is checked when the file is read: a syntax error, an unknown key, a wrong
//! type or an out-of-range value is an error naming the file, the line, the key and the
//! command that fixes it; `vmctl config check` runs the same checks (plus whether the shared
//! folders exist) without starting anything.
//!
//! `vmctl start` flags (`--cpus`, `--memory`, `--disk-size`, `--mount`, `--engine`,
//! `--nested`) are checked before anything is written, apply to that start, and are saved
//! into `config.toml` only once the VM has started (Docker answers): a rejected flag or a
//! failed start leaves the file exactly as it was. The supervisor runs from the
//! effective configuration `vmctl start` hands it in `<instance dir>/run.toml`.

mod error;
pub mod host;
mod mount;
mod value;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use mount::{parse_list as mount_list, Mount};
pub use value::{format_size_mib, parse_size_mib, Key, Setting};

/// The keys, for messages.
pub const KEY_LIST: &str =
    "engine, cpus, memory, disk_size, share_home, mounts, nested, allow_privileged_ports";

/// A configuration file larger than this is not one (a few lines are).
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The instance's configuration file.
pub fn config_path(instance_dir: &Path) -> PathBuf {
    instance_dir.join("config.toml")
}

/// The effective configuration of the current run (the file plus `vmctl start` flags),
/// written by `vmctl start` for the supervisor; `config.toml` where there is none.
pub fn run_path(instance_dir: &Path) -> PathBuf {
    let run = instance_dir.join("run.toml");
    if run.is_file() {
        run
    } else {
        config_path(instance_dir)
    }
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

impl EngineChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Builtin => "builtin",
            EngineChoice::Qemu => "qemu",
        }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_privileged_ports: Option<bool>,
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
    /// Forward guest ports to host ports below 1024.
    pub allow_privileged_ports: bool,
}

impl Config {
    /// What the file cannot say about this host: that the shared folders exist.
    pub fn check_host(&self) -> Result<(), ConfigError> {
        for m in &self.mounts {
            m.check_host().map_err(|why| ConfigError::Host {
                key: Key::Mounts.name(),
                why,
            })?;
        }
        Ok(())
    }
}

/// `value` for a message: quoted, and cut short when it is long.
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    if value.len() <= MAX {
        return format!("{value:?}");
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &value[..end], value.len())
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &[u8], offset: usize) -> usize {
    let end = offset.min(text.len());
    text[..end].iter().filter(|b| **b == b'\n').count() + 1
}

impl ConfigFile {
    /// Reads and checks the file; a missing file is the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let read_err = |source| ConfigError::Read {
            path: shown.clone(),
            source,
        };
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(read_err(e)),
        };
        let mut bytes = Vec::new();
        f.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            let size = std::fs::metadata(path).map_or(MAX_FILE_BYTES + 1, |m| m.len());
            return Err(ConfigError::TooBig { path: shown, size });
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| ConfigError::NotUtf8 {
            path: shown.clone(),
            line: line_of(&bytes, e.valid_up_to()),
        })?;
        Self::parse(text, &shown)
    }

    /// Parses and checks `text`, the content of the file `path` (for messages).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        type Entries = BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;
        let entries: Entries = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_string(),
            line: e.span().map_or(1, |s| line_of(text.as_bytes(), s.start)),
            what: e.message().trim().replace('\n', "; "),
        })?;
        let mut entries: Vec<_> = entries.into_iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut file = ConfigFile::default();
        for (k, v) in entries {
            let line = line_of(text.as_bytes(), k.span().start);
            let key = Key::from_name(k.get_ref()).ok_or_else(|| ConfigError::UnknownKeyInFile {
                path: path.to_string(),
                line,
                key: k.get_ref().clone(),
            })?;
            let setting =
                Setting::from_toml(key, v.get_ref()).map_err(|why| ConfigError::InFile {
                    path: path.to_string(),
                    line,
                    key: key.name(),
                    why,
                    example: key.example(),
                })?;
            file.apply(setting);
        }
        Ok(file)
    }

    /// Writes the file atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let write_err = |p: &Path| {
            let p = p.display().to_string();
            move |source| ConfigError::Write { path: p, source }
        };
        let body = toml::to_string_pretty(self).map_err(|e| ConfigError::Write {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        let text = format!(
            "# vmctl instance configuration: keys in `vmctl config --help`; \
             check with `vmctl config check`\n{body}"
        );
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text).map_err(write_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(write_err(path))
    }

    /// Sets a checked value.
    pub fn apply(&mut self, s: Setting) {
        match s {
            Setting::Engine(e) => self.engine = Some(e),
            Setting::Cpus(n) => self.cpus = Some(n),
            Setting::Memory(m) => self.memory = Some(format_size_mib(m)),
            Setting::DiskSize(m) => self.disk_size = Some(format_size_mib(m)),
            Setting::ShareHome(b) => self.share_home = Some(b),
            Setting::Mounts(v) => self.mounts = Some(v.iter().map(Mount::to_string).collect()),
            Setting::Nested(b) => self.nested = Some(b),
            Setting::AllowPrivilegedPorts(b) => self.allow_privileged_ports = Some(b),
        }
    }

    /// Checks `value` for `key` (command-line text), without changing anything.
    pub fn check(key: &str, value: &str) -> Result<Setting, ConfigError> {
        let key = Key::from_name(key).ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
        Setting::from_text(key, value).map_err(|why| ConfigError::Value {
            key: key.name(),
            value: value.to_string(),
            why,
        })
    }

    /// Sets one key from its command-line text, checking it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let s = Self::check(key, value)?;
        self.apply(s);
        Ok(())
    }

    /// The effective value of `key` as text.
    pub fn get(&self, key: &str) -> Result<String, ConfigError> {
        let key = Key::from_name(key).ok_or_else(|| ConfigError::UnknownKey(key.to_string()))?;
        let c = self.resolve()?;
        Ok(match key {
            Key::Engine => c.engine.as_str().to_string(),
            Key::Cpus => c.cpus.to_string(),
            Key::Memory => format_size_mib(c.memory_mib),
            Key::DiskSize => format_size_mib(c.disk_size_mib),
            Key::ShareHome => c.share_home.to_string(),
            Key::Nested => c.nested.to_string(),
            Key::AllowPrivilegedPorts => c.allow_privileged_ports.to_string(),
            Key::Mounts => c
                .mounts
                .iter()
                .map(Mount::to_string)
                .collect::<Vec<_>>()
                .join(","),
        })
    }

    /// Fills defaults from the host.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let bad = |key: Key, value: &str, why: String| ConfigError::Value {
            key: key.name(),
            value: value.to_string(),
            why,
        };
        let memory_mib = match &self.memory {
            Some(m) => parse_size_mib(m).map_err(|w| bad(Key::Memory, m, w))?,
            None => host::default_memory_mib(host::memory_mib()),
        };
        let disk_size_mib = match &self.disk_size {
            Some(d) => parse_size_mib(d).map_err(|w| bad(Key::DiskSize, d, w))?,
            None => 64 * 1024,
        };
        let mounts = match &self.mounts {
            Some(list) => mount::parse_list(list.iter().map(String::as_str))
                .map_err(|w| bad(Key::Mounts, &list.join(","), w))?,
            None => Vec::new(),
        };
        Ok(Config {
            engine: self.engine.unwrap_or_default(),
            cpus: self
                .cpus
                .unwrap_or_else(|| host::default_cpus(host::cpus())),
            memory_mib,
            disk_size_mib,
            share_home: self.share_home.unwrap_or(true),
            mounts,
            nested: self.nested.unwrap_or(false),
            allow_privileged_ports: self.allow_privileged_ports.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests;
