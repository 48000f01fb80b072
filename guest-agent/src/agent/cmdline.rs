//! The agent's settings, read from the kernel command line (`vmctl.*` keys).
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

impl Config {
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
}
