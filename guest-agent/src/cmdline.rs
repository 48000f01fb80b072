//! The agent's settings on the kernel command line (`vmctl.*` keys): one typed structure the
//! host writes ([`Config::to_words`], used by every engine) and the agent reads
//! ([`Config::parse`]), so the two sides cannot drift apart.
//!
//! | key | meaning |
//! | --- | --- |
//! | `vmctl.hostname=NAME` | hostname (default `vmctl`) |
//! | `vmctl.time=UNIX_SECONDS` | set the clock at boot (the host's time) |
//! | `vmctl.data=SERIAL` | virtio-blk serial of the data disk (default `vmctl-data`) |
//! | `vmctl.docker_tcp=PORT` | also bridge TCP `0.0.0.0:PORT` ↔ `/var/run/docker.sock` |
//! | `vmctl.control_tcp=PORT` | also serve the control protocol on TCP (tests over QEMU user networking; no authentication, so only for guests whose ports only the host can reach) |
//! | `vmctl.share=TAG:PATH[,TAG:PATH…]` | virtio-fs tags to mount |
//! | `vmctl.debug=1` | log each control request |
//! | `vmctl.poweroff=reset` | the machine has no power-off (no ACPI): a shutdown resets it, and the engine, which asked for the stop, treats that reset as the power-off |
//!
//! Network settings use the kernel's own `ip=` parameter (DHCP or static); the agent
//! turns the kernel's lease (`/proc/net/pnp`) into `/etc/resolv.conf`.

/// Parsed agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub hostname: String,
    pub time: Option<i64>,
    pub data_serial: String,
    pub docker_tcp: Option<u16>,
    pub control_tcp: Option<u16>,
    pub shares: Vec<(String, String)>,
    pub debug: bool,
    /// Power off by resetting the machine (see the module docs).
    pub poweroff_by_reset: bool,
    /// Keys the agent did not understand, kept to be logged.
    pub unknown: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "vmctl".into(),
            time: None,
            data_serial: "vmctl-data".into(),
            docker_tcp: None,
            control_tcp: None,
            shares: Vec::new(),
            debug: false,
            poweroff_by_reset: false,
            unknown: Vec::new(),
        }
    }
}

fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Why a value cannot go on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("Hostname {0:?} is not 1-63 letters, digits, '-' or '.'")]
    Hostname(String),
    #[error("Share {tag:?} at {path:?}: a tag is letters, digits, '-' or '_', a guest path is absolute without '..', ',', ':' or spaces")]
    Share { tag: String, path: String },
    #[error("Data disk serial {0:?} is not 1-20 ASCII letters, digits or '-'")]
    DataSerial(String),
}

fn valid_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 36
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_share_path(s: &str) -> bool {
    s.starts_with('/')
        && !s.contains("..")
        && !s.contains(|c: char| c == ',' || c == ':' || c.is_whitespace() || c.is_control())
}

impl Config {
    /// The `vmctl.*` words for these settings (defaults left out), checked so that
    /// [`Config::parse`] reads back exactly these settings.
    pub fn to_words(&self) -> Result<Vec<String>, CmdlineError> {
        let d = Config::default();
        let mut w = Vec::new();
        if self.hostname != d.hostname {
            if !valid_hostname(&self.hostname) {
                return Err(CmdlineError::Hostname(self.hostname.clone()));
            }
            w.push(format!("vmctl.hostname={}", self.hostname));
        }
        if let Some(t) = self.time {
            w.push(format!("vmctl.time={t}"));
        }
        if self.data_serial != d.data_serial {
            let s = &self.data_serial;
            if s.is_empty()
                || s.len() > 20
                || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(CmdlineError::DataSerial(s.clone()));
            }
            w.push(format!("vmctl.data={s}"));
        }
        if let Some(p) = self.docker_tcp {
            w.push(format!("vmctl.docker_tcp={p}"));
        }
        if let Some(p) = self.control_tcp {
            w.push(format!("vmctl.control_tcp={p}"));
        }
        if !self.shares.is_empty() {
            let mut items = Vec::new();
            for (tag, path) in &self.shares {
                if !valid_tag(tag) || !valid_share_path(path) {
                    return Err(CmdlineError::Share {
                        tag: tag.clone(),
                        path: path.clone(),
                    });
                }
                items.push(format!("{tag}:{path}"));
            }
            w.push(format!("vmctl.share={}", items.join(",")));
        }
        if self.debug {
            w.push("vmctl.debug=1".into());
        }
        if self.poweroff_by_reset {
            w.push("vmctl.poweroff=reset".into());
        }
        Ok(w)
    }

    /// Parse a kernel command line; bad values are reported in `unknown`, never fatal.
    pub fn parse(cmdline: &str) -> Config {
        let mut c = Config::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("vmctl.") else {
                continue;
            };
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            let ok = match key {
                "hostname" if valid_hostname(value) => {
                    c.hostname = value.to_string();
                    true
                }
                "time" => value.parse().map(|t| c.time = Some(t)).is_ok(),
                "data" if !value.is_empty() => {
                    c.data_serial = value.to_string();
                    true
                }
                "docker_tcp" => value.parse().map(|p| c.docker_tcp = Some(p)).is_ok(),
                "control_tcp" => value.parse().map(|p| c.control_tcp = Some(p)).is_ok(),
                "debug" => {
                    c.debug = value != "0";
                    true
                }
                "poweroff" if value == "reset" => {
                    c.poweroff_by_reset = true;
                    true
                }
                "share" => {
                    let mut all = true;
                    for item in value.split(',') {
                        match item.split_once(':') {
                            Some((tag, path))
                                if !tag.is_empty()
                                    && path.starts_with('/')
                                    && !path.contains("..") =>
                            {
                                c.shares.push((tag.to_string(), path.to_string()))
                            }
                            _ => all = false,
                        }
                    }
                    all
                }
                _ => false,
            };
            if !ok {
                c.unknown.push(word.to_string());
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_full_cmdline() {
        let c = Config::parse(
            "console=ttyS0 root=/dev/vda ro vmctl.hostname=box vmctl.time=1700000000 \
             vmctl.docker_tcp=2375 vmctl.control_tcp=1024 vmctl.share=home:/Users/me,tmp:/mnt/t vmctl.debug=1",
        );
        assert_eq!(c.hostname, "box");
        assert_eq!(c.time, Some(1_700_000_000));
        assert_eq!(c.docker_tcp, Some(2375));
        assert_eq!(c.control_tcp, Some(1024));
        assert_eq!(
            c.shares,
            vec![
                ("home".into(), "/Users/me".into()),
                ("tmp".into(), "/mnt/t".into())
            ]
        );
        assert!(c.debug);
        assert!(c.unknown.is_empty());
    }

    #[test]
    fn test_parse_bad_values_are_reported_not_applied() {
        let c = Config::parse(
            "vmctl.hostname=a/b vmctl.docker_tcp=99999 vmctl.share=x:../etc vmctl.what",
        );
        assert_eq!(c.hostname, "vmctl");
        assert_eq!(c.docker_tcp, None);
        assert!(c.shares.is_empty());
        assert_eq!(c.unknown.len(), 4);
    }

    #[test]
    fn test_to_words_round_trips_through_parse() {
        let c = Config {
            hostname: "box-1".into(),
            time: Some(1_700_000_000),
            data_serial: "data-2".into(),
            docker_tcp: Some(2376),
            control_tcp: None,
            shares: vec![
                ("home".into(), "/home/me".into()),
                ("m0".into(), "/srv".into()),
            ],
            debug: true,
            poweroff_by_reset: true,
            unknown: Vec::new(),
        };
        let words = c.to_words().expect("valid");
        assert_eq!(Config::parse(&words.join(" ")), c);
        assert!(Config::default().to_words().expect("valid").is_empty());
    }

    #[test]
    fn test_to_words_refuses_what_parse_would_drop() {
        let bad_share = |path: &str| Config {
            shares: vec![("t".into(), path.into())],
            ..Config::default()
        };
        for path in ["relative", "/a/../b", "/a b", "/a,b", "/a:b", "/a\nb"] {
            assert!(bad_share(path).to_words().is_err(), "{path}");
        }
        let c = Config {
            hostname: "a b".into(),
            ..Config::default()
        };
        assert!(matches!(c.to_words(), Err(CmdlineError::Hostname(_))));
    }
}
