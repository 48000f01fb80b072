//! Network: loopback up, the kernel's `ip=` lease turned into /etc/resolv.conf, hostname.

use std::fs;

use super::sys;
use tracing::info;

/// Turn /proc/net/pnp (written by the kernel's IP autoconfiguration) into resolv.conf
/// content; `None` when it names no nameserver.
pub fn resolv_conf_from_pnp(pnp: &str) -> Option<String> {
    let mut out = String::new();
    for line in pnp.lines() {
        let mut w = line.split_ascii_whitespace();
        match (w.next(), w.next()) {
            (Some("nameserver"), Some(ip))
                if ip.parse::<std::net::IpAddr>().is_ok() && ip != "0.0.0.0" =>
            {
                out.push_str(&format!("nameserver {ip}\n"));
            }
            (Some("domain"), Some(d))
                if d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
            {
                out.push_str(&format!("search {d}\n"));
            }
            _ => {}
        }
    }
    out.contains("nameserver").then_some(out)
}

/// Bring up networking and write /etc/hostname, /etc/hosts, /etc/resolv.conf.
pub fn setup(hostname: &str) {
    if let Err(e) = sys::link_up("lo") {
        info!("lo up: {e}");
    }
    if let Err(e) = sys::sethostname(hostname) {
        info!("sethostname: {e}");
    }
    let _ = fs::write("/etc/hostname", format!("{hostname}\n"));
    let _ = fs::write(
        "/etc/hosts",
        format!("127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    );
    let resolv = fs::read_to_string("/proc/net/pnp")
        .ok()
        .and_then(|p| resolv_conf_from_pnp(&p))
        .unwrap_or_else(|| "nameserver 10.0.2.3\n".to_string());
    // /etc/resolv.conf may be a dangling symlink in the image: replace it.
    let _ = fs::remove_file("/etc/resolv.conf");
    if let Err(e) = fs::write("/etc/resolv.conf", resolv) {
        info!("write /etc/resolv.conf: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_resolv_conf_from_kernel_lease() {
        let pnp = "#PROTO: DHCP\ndomain example.com\nnameserver 10.0.2.3\nnameserver 0.0.0.0\nbootserver 10.0.2.2\n";
        assert_eq!(
            resolv_conf_from_pnp(pnp).as_deref(),
            Some("search example.com\nnameserver 10.0.2.3\n")
        );
        assert_eq!(
            resolv_conf_from_pnp("#PROTO: DHCP\nnameserver evil;rm\n"),
            None
        );
    }
}
