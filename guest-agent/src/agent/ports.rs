//! Listening TCP ports, read from /proc/net/tcp{,6}, turned into add/remove events for
//! the host's port forwarder.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use guest_agent::protocol::{PortEvent, Proto};

/// One listening socket.
pub type Listen = (Proto, String, u16);

const TCP_LISTEN: &str = "0A";

fn parse_addr(proto: Proto, hex: &str) -> Option<String> {
    match proto {
        Proto::Tcp => {
            let v = u32::from_str_radix(hex, 16).ok()?;
            // /proc prints the in-memory (network-order) address as a native u32.
            Some(Ipv4Addr::from(v.to_ne_bytes()).to_string())
        }
        Proto::Tcp6 => {
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

/// Parse the text of /proc/net/tcp or /proc/net/tcp6; malformed lines are skipped.
pub fn parse_proc_net(proto: Proto, text: &str) -> BTreeSet<Listen> {
    let mut out = BTreeSet::new();
    for line in text.lines().skip(1) {
        let mut w = line.split_ascii_whitespace();
        let (Some(_sl), Some(local), Some(_rem), Some(state)) =
            (w.next(), w.next(), w.next(), w.next())
        else {
            continue;
        };
        if state != TCP_LISTEN {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let (Some(addr), Ok(port)) = (parse_addr(proto, addr), u16::from_str_radix(port, 16))
        else {
            continue;
        };
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
