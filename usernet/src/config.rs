//! Addressing, limits and port forwards of one [`crate::UserNet`] instance.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

/// Errors in configuration values (command-line or API input).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Invalid port forward {spec:?}: expected PROTO:[HOSTADDR:]HOSTPORT:GUESTPORT with PROTO tcp or udp")]
    BadForward { spec: String },
    #[error("MAC address {mac:?} {why}")]
    BadMac { mac: String, why: &'static str },
    #[error("Address {addr} is not inside the guest network {network}/{prefix}")]
    OutsideNetwork {
        addr: Ipv4Addr,
        network: Ipv4Addr,
        prefix: u8,
    },
    #[error("Invalid prefix length {0}: must be 8..=30")]
    BadPrefix(u8),
    #[error("MTU {0} is out of range 576..=65520")]
    BadMtu(usize),
}

/// Transport protocol of an inbound port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// An inbound port forward: connections to `host` on the host reach the guest's `guest_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortForward {
    pub proto: Proto,
    pub host: SocketAddr,
    pub guest_port: u16,
}

impl PortForward {
    /// Parses `tcp:HOSTPORT:GUESTPORT` or `tcp:HOSTADDR:HOSTPORT:GUESTPORT` (also `udp:`).
    /// The host address defaults to 127.0.0.1, like Docker Desktop's published ports.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadForward {
            spec: spec.to_string(),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (proto, addr, hport, gport) = match parts.as_slice() {
            [p, h, g] => (*p, "127.0.0.1", *h, *g),
            [p, a, h, g] => (*p, *a, *h, *g),
            _ => return Err(bad()),
        };
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad()),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let hport: u16 = hport.parse().map_err(|_| bad())?;
        let gport: u16 = gport.parse().map_err(|_| bad())?;
        if gport == 0 {
            return Err(bad());
        }
        Ok(Self {
            proto,
            host: SocketAddr::V4(SocketAddrV4::new(addr, hport)),
            guest_port: gport,
        })
    }
}

/// Parses a unicast MAC address written as six hex pairs, `52:54:00:12:34:56`: the one
/// parser for usernet's own options and the VMM's `--net ...,mac=`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let bad = |why: &'static str| ConfigError::BadMac {
        mac: s.to_string(),
        why,
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts
            .next()
            .filter(|p| p.len() == 2)
            .ok_or(bad("is not six hex pairs (52:54:00:12:34:56)"))?;
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| bad("is not six hex pairs (52:54:00:12:34:56)"))?;
    }
    if parts.next().is_some() {
        return Err(bad("has more than six parts"));
    }
    if mac[0] & 1 != 0 {
        return Err(bad("is a multicast address"));
    }
    Ok(mac)
}

/// Cloud instance-metadata endpoints: 169.254.169.254 (AWS, GCP, Azure, OpenStack, Oracle,
/// DigitalOcean…), 169.254.170.2 (AWS ECS task credentials), 169.254.169.253/123 (AWS DNS
/// and time, also served on link-local) and 100.100.100.200 (Alibaba Cloud; not
/// link-local, so listed by itself).
pub const METADATA_ADDRS: [Ipv4Addr; 5] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 169, 253),
    Ipv4Addr::new(169, 254, 169, 123),
    Ipv4Addr::new(100, 100, 100, 200),
];

/// Everything a [`crate::UserNet`] needs to know. `Config::default()` is slirp's layout.
#[derive(Debug, Clone)]
pub struct Config {
    /// Guest network, e.g. 10.0.2.0 with `prefix_len` 24.
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// The address the guest gets (DHCP) or is configured with (TAP).
    pub guest_ip: Ipv4Addr,
    /// Gateway; connections to it reach `host_loopback` on the host (host.docker.internal).
    pub gateway_ip: Ipv4Addr,
    /// DNS forwarder address inside the guest network.
    pub dns_ip: Ipv4Addr,
    /// What the gateway address maps to on the host.
    pub host_loopback: Ipv4Addr,
    /// MAC address of the gateway/DNS side.
    pub gateway_mac: [u8; 6],
    /// IP MTU offered to the guest (DHCP option 26) and used on the TAP device.
    pub mtu: usize,
    /// Resolver configuration to forward DNS to; re-read when it changes.
    pub resolv_conf: PathBuf,
    /// Inbound port forwards.
    pub forwards: Vec<PortForward>,
    /// NAT to hosts other than the gateway (host loopback) and DNS; `false` makes a
    /// host-only network.
    pub outbound: bool,
    /// Whether the gateway address reaches the host's loopback (`host_loopback`). Off: the
    /// guest cannot reach services listening on the host's 127.0.0.1 at all.
    pub allow_host_loopback: bool,
    /// NAT to link-local addresses (169.254.0.0/16) of the host's networks. Off by default:
    /// they are the host's own neighbours (cloud metadata, container-engine and DHCP-less
    /// peers), nothing a VM needs. IPv6 (fe80::/10 included) is never forwarded.
    pub allow_link_local: bool,
    /// NAT to cloud instance-metadata endpoints ([`METADATA_ADDRS`]). Off by default: on a
    /// cloud host they hand out the host's credentials to anyone who asks.
    pub allow_metadata: bool,
    /// Verify IPv4/TCP/UDP/ICMP checksums of guest frames (off for a trusted local TAP).
    pub verify_checksums: bool,
    /// The transport tells the guest that checksums are valid (virtio-net
    /// `VIRTIO_NET_HDR_F_DATA_VALID`), so TCP checksums of frames to the guest are not
    /// computed. Only for transports that set that flag (TAP with vnet headers).
    pub tx_checksum_offload: bool,
    /// Limits that bound memory whatever the guest sends.
    pub limits: Limits,
}

/// Bounds on every table and buffer; the guest cannot grow memory past them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Established + half-open TCP connections (each has two `tcp_buffer` buffers).
    pub max_tcp_connections: usize,
    /// Outbound TCP connects in progress (SYN flood bound).
    pub max_pending_connects: usize,
    /// Largest receive and send buffer of one guest-side TCP socket, bytes.
    pub tcp_buffer: usize,
    /// All TCP socket buffers together, bytes (see `tcp` module docs: buffers shrink towards
    /// 16 KiB per direction as connections grow; beyond the budget new connections wait).
    pub tcp_buffer_budget: usize,
    pub max_udp_flows: usize,
    pub udp_idle_timeout: Duration,
    pub max_icmp_flows: usize,
    /// Frames queued towards the guest before the stack stops producing.
    pub max_tx_frames: usize,
    /// Frames queued from the guest before further ones are dropped.
    pub max_rx_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tcp_connections: 4096,
            max_pending_connects: 1024,
            tcp_buffer: 512 * 1024,
            tcp_buffer_budget: 64 << 20,
            max_udp_flows: 1024,
            udp_idle_timeout: Duration::from_secs(60),
            max_icmp_flows: 64,
            max_tx_frames: 512,
            max_rx_frames: 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            network: Ipv4Addr::new(10, 0, 2, 0),
            prefix_len: 24,
            guest_ip: Ipv4Addr::new(10, 0, 2, 15),
            gateway_ip: Ipv4Addr::new(10, 0, 2, 2),
            dns_ip: Ipv4Addr::new(10, 0, 2, 3),
            host_loopback: Ipv4Addr::LOCALHOST,
            gateway_mac: [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02],
            mtu: 65520,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            forwards: Vec::new(),
            outbound: true,
            allow_host_loopback: true,
            allow_link_local: false,
            allow_metadata: false,
            verify_checksums: true,
            tx_checksum_offload: false,
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// Netmask of the guest network.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    /// Whether `addr` is inside the guest network.
    pub fn in_network(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(addr) & mask == u32::from(self.network) & mask
    }

    /// Maps an address the guest talks to onto the host address to connect to, or `None` when
    /// the guest may not reach it: the gateway is the host's loopback (unless
    /// `allow_host_loopback` is off); other guest-network, broadcast, multicast, unspecified
    /// and loopback destinations are never routed (127.0.0.0/8 only through the gateway, so
    /// turning that off cannot be bypassed); link-local and metadata addresses only when
    /// allowed.
    pub fn host_target(&self, remote: Ipv4Addr) -> Option<Ipv4Addr> {
        if remote == self.gateway_ip {
            return self.allow_host_loopback.then_some(self.host_loopback);
        }
        if !self.outbound
            || self.in_network(remote)
            || remote.is_broadcast()
            || remote.is_multicast()
            || remote.is_unspecified()
            || remote.is_loopback()
            || remote.octets()[0] == 0
        {
            return None;
        }
        if METADATA_ADDRS.contains(&remote) {
            return self.allow_metadata.then_some(remote);
        }
        if remote.is_link_local() && !self.allow_link_local {
            return None;
        }
        Some(remote)
    }

    /// Checks that the addresses are consistent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(8..=30).contains(&self.prefix_len) {
            return Err(ConfigError::BadPrefix(self.prefix_len));
        }
        if !(576..=65520).contains(&self.mtu) {
            return Err(ConfigError::BadMtu(self.mtu));
        }
        for addr in [self.guest_ip, self.gateway_ip, self.dns_ip] {
            if !self.in_network(addr) {
                return Err(ConfigError::OutsideNetwork {
                    addr,
                    network: self.network,
                    prefix: self.prefix_len,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_forward_parse_short_and_long_forms() {
        let f = PortForward::parse("tcp:8080:80").expect("short form");
        assert_eq!(f.host, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(f.guest_port, 80);
        let f = PortForward::parse("udp:0.0.0.0:53:5353").expect("long form");
        assert_eq!(f.proto, Proto::Udp);
        assert_eq!(f.host, "0.0.0.0:53".parse().expect("addr"));
        for bad in ["tcp:1", "sctp:1:2", "tcp:x:2", "tcp:1:0", "tcp:1:2:3:4", ""] {
            assert!(PortForward::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_host_target_blocks_link_local_metadata_and_loopback_by_default() {
        let c = Config::default();
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        assert_eq!(c.host_target(c.gateway_ip), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(c.host_target(ip("1.1.1.1")), Some(ip("1.1.1.1")));
        for blocked in [
            "169.254.169.254",
            "169.254.170.2",
            "169.254.0.1",
            "169.254.255.254",
            "100.100.100.200",
            "127.0.0.1",
            "127.1.2.3",
            "0.1.2.3",
            "10.0.2.77",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert_eq!(c.host_target(ip(blocked)), None, "{blocked}");
        }
        // 100.64/10 (carrier-grade NAT) is ordinary: only Alibaba's one address is metadata.
        assert_eq!(
            c.host_target(ip("100.100.100.201")),
            Some(ip("100.100.100.201"))
        );

        let ll = Config {
            allow_link_local: true,
            ..Config::default()
        };
        assert_eq!(ll.host_target(ip("169.254.0.1")), Some(ip("169.254.0.1")));
        assert_eq!(
            ll.host_target(ip("169.254.169.254")),
            None,
            "metadata stays blocked"
        );
        let md = Config {
            allow_metadata: true,
            ..Config::default()
        };
        assert_eq!(
            md.host_target(ip("169.254.169.254")),
            Some(ip("169.254.169.254"))
        );
        assert_eq!(
            md.host_target(ip("100.100.100.200")),
            Some(ip("100.100.100.200"))
        );
        assert_eq!(md.host_target(ip("169.254.0.1")), None);

        let no_lo = Config {
            allow_host_loopback: false,
            ..Config::default()
        };
        assert_eq!(no_lo.host_target(no_lo.gateway_ip), None);
        assert_eq!(no_lo.host_target(ip("127.0.0.1")), None, "no bypass");
        assert_eq!(no_lo.host_target(ip("1.1.1.1")), Some(ip("1.1.1.1")));
    }

    #[test]
    fn test_config_default_is_valid_and_masks() {
        let c = Config::default();
        c.validate().expect("default valid");
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(c.in_network(Ipv4Addr::new(10, 0, 2, 200)));
        assert!(!c.in_network(Ipv4Addr::new(10, 0, 3, 1)));
        assert_eq!(parse_mac("52:55:0a:00:02:02").expect("mac"), c.gateway_mac);
        assert!(parse_mac("52:55").is_err());
        assert!(parse_mac("52:55:0a:00:02:02:01").is_err());
        assert!(parse_mac("5:55:0a:00:02:02").is_err());
        assert!(parse_mac("53:55:0a:00:02:02").is_err(), "multicast");
    }
}
