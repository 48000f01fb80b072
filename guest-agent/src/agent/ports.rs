//! Listening TCP and UDP ports, read from /proc/net/{tcp,tcp6,udp,udp6}, turned into
//! add/remove events for the host's port forwarder. A UDP socket "listens" when it is bound
//! and not connected (state 07 with a zero remote address): that is how a server (and
//! Docker's UDP proxy for `-p 53:53/udp`) looks, while a client's connected socket does not.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use guest_agent::protocol::{PortEvent, Proto};

/// One listening socket.
pub type Listen = (Proto, String, u16);

const TCP_LISTEN: &str = "0A";
/// TCP_CLOSE, the state /proc shows for every UDP socket that is not connected.
const UDP_UNCONNECTED: &str = "07";
/// UDP ports of the guest's own clients that must never be forwarded (DHCP client, v4/v6).
const UDP_CLIENT_PORTS: [u16; 2] = [68, 546];

fn parse_addr(proto: Proto, hex: &str) -> Option<String> {
    match proto {
        Proto::Tcp | Proto::Udp => {
            let v = u32::from_str_radix(hex, 16).ok()?;
            // /proc prints the in-memory (network-order) address as a native u32.
            Some(Ipv4Addr::from(v.to_ne_bytes()).to_string())
        }
        Proto::Tcp6 | Proto::Udp6 => {
            if hex.len() != 32 {
                return None;
            }
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            Some(Ipv6Addr::from(bytes).to_string())
        }
    }
}

/// Parse the text of /proc/net/{tcp,tcp6,udp,udp6}; malformed lines are skipped.
pub fn parse_proc_net(proto: Proto, text: &str) -> BTreeSet<Listen> {
    let mut out = BTreeSet::new();
    for line in text.lines().skip(1) {
        let mut w = line.split_ascii_whitespace();
        let (Some(_sl), Some(local), Some(remote), Some(state)) =
            (w.next(), w.next(), w.next(), w.next())
        else {
            continue;
        };
        let listening = if proto.is_udp() {
            state == UDP_UNCONNECTED && remote.bytes().all(|b| b == b'0' || b == b':')
        } else {
            state == TCP_LISTEN
        };
        if !listening {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let (Some(addr), Ok(port)) = (parse_addr(proto, addr), u16::from_str_radix(port, 16))
        else {
            continue;
        };
        if port == 0 || (proto.is_udp() && UDP_CLIENT_PORTS.contains(&port)) {
            continue;
        }
        out.insert((proto, addr, port));
    }
    out
}

/// Current listening sockets of the guest (host network namespace only).
pub fn snapshot() -> BTreeSet<Listen> {
    let mut all = BTreeSet::new();
    for (proto, path) in [
        (Proto::Tcp, "/proc/net/tcp"),
        (Proto::Tcp6, "/proc/net/tcp6"),
        (Proto::Udp, "/proc/net/udp"),
        (Proto::Udp6, "/proc/net/udp6"),
    ] {
        if let Ok(t) = std::fs::read_to_string(path) {
            all.extend(parse_proc_net(proto, &t));
        }
    }
    all
}

/// Events that turn `old` into `new`.
pub fn diff(old: &BTreeSet<Listen>, new: &BTreeSet<Listen>) -> Vec<PortEvent> {
    let gone = old.difference(new).map(|l| (l, false));
    let came = new.difference(old).map(|l| (l, true));
    gone.chain(came)
        .map(|((proto, addr, port), listening)| PortEvent {
            proto: *proto,
            addr: addr.clone(),
            port: *port,
            listening,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0F02000A:0016 0202000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   garbage
";
    const TCP6: &str =
        "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0
   1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 0
";

    #[test]
    fn test_parse_proc_net_tcp_listeners_only() {
        let l = parse_proc_net(Proto::Tcp, TCP);
        let v: Vec<_> = l.into_iter().collect();
        assert_eq!(
            v,
            vec![
                (Proto::Tcp, "0.0.0.0".into(), 80),
                (Proto::Tcp, "127.0.0.1".into(), 3306)
            ]
        );
    }

    #[test]
    fn test_parse_proc_net_tcp6() {
        let v: Vec<_> = parse_proc_net(Proto::Tcp6, TCP6).into_iter().collect();
        assert_eq!(
            v,
            vec![
                (Proto::Tcp6, "::".into(), 8080),
                (Proto::Tcp6, "::1".into(), 631)
            ]
        );
    }

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  120: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 11 2 0 0
  121: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12 2 0 0
  122: 0F02000A:A1B2 0302000A:0035 01 00000000:00000000 00:00000000 00000000     0        0 13 2 0 0
  123: 0100007F:1F91 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 14 2 0 0
";

    #[test]
    fn test_parse_proc_net_udp_unconnected_only() {
        let v: Vec<_> = parse_proc_net(Proto::Udp, UDP).into_iter().collect();
        // Port 68 (the DHCP client) and the connected socket are not servers.
        assert_eq!(
            v,
            vec![
                (Proto::Udp, "0.0.0.0".into(), 53),
                (Proto::Udp, "127.0.0.1".into(), 8081)
            ]
        );
    }

    #[test]
    fn test_tcp_states_other_than_listen_are_ignored_even_when_07() {
        let closed = "h\n   0: 00000000:0050 00000000:0000 07 0\n";
        assert!(parse_proc_net(Proto::Tcp, closed).is_empty());
        assert_eq!(parse_proc_net(Proto::Udp, closed).len(), 1);
    }

    #[test]
    fn test_diff_reports_added_and_removed() {
        let a = parse_proc_net(Proto::Tcp, TCP);
        let mut b = a.clone();
        b.remove(&(Proto::Tcp, "0.0.0.0".into(), 80));
        b.insert((Proto::Tcp, "0.0.0.0".into(), 8080));
        let ev = diff(&a, &b);
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().any(|e| e.port == 80 && !e.listening));
        assert!(ev.iter().any(|e| e.port == 8080 && e.listening));
    }
}
