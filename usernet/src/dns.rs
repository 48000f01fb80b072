//! The DNS forwarder's view of the host resolver: nameservers from resolv.conf, re-read
//! whenever the file changes (VPNs and network switches rewrite it), and a SERVFAIL
//! answer for when the host has no usable nameserver, so the guest fails fast, not slowly.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often the file's metadata is checked at most.
const RECHECK: Duration = Duration::from_millis(500);

/// Tracks the host's nameservers.
#[derive(Debug)]
pub struct Resolvers {
    path: PathBuf,
    /// (inode, size, mtime) of the file last read; `None` if it was missing.
    stamp: Option<(u64, u64, Option<std::time::SystemTime>)>,
    checked: Option<Instant>,
    servers: Vec<SocketAddr>,
    /// Index of the server queries go to; advanced when one stops answering.
    current: usize,
}

impl Resolvers {
    pub fn new(path: PathBuf) -> Self {
        let mut r = Self {
            path,
            stamp: None,
            checked: None,
            servers: Vec::new(),
            current: 0,
        };
        r.reload();
        r
    }

    fn reload(&mut self) {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (inode(&m), m.len(), m.modified().ok()));
        if stamp == self.stamp && self.checked.is_some() {
            return;
        }
        self.stamp = stamp;
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let servers = parse_resolv_conf(&text);
        if servers != self.servers {
            tracing::info!(path = %self.path.display(), ?servers, "DNS upstream servers");
            self.servers = servers;
            self.current = 0;
        }
    }

    /// Re-reads the file if it changed (checked at most every 500 ms).
    pub fn refresh(&mut self, now: Instant) {
        if self
            .checked
            .is_none_or(|t| now.duration_since(t) >= RECHECK)
        {
            self.reload();
            self.checked = Some(now);
        }
    }

    /// The server to send the next query to.
    pub fn current(&self) -> Option<SocketAddr> {
        self.servers
            .get(self.current % self.servers.len().max(1))
            .copied()
    }

    /// Whether `addr` is one of the configured servers (replies are accepted only from them).
    pub fn is_server(&self, addr: &SocketAddr) -> bool {
        self.servers.contains(addr)
    }

    /// Moves on to the next server after the current one failed to answer.
    pub fn fail_over(&mut self) {
        if !self.servers.is_empty() {
            self.current = (self.current + 1) % self.servers.len();
        }
    }
}

/// The inode number (0 where there is none): a file replaced by rename is a change even
/// if size and mtime match.
#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// IPv4 `nameserver` lines of a resolv.conf, as port-53 socket addresses.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = words.next()?.parse().ok()?;
            // The forwarder's host sockets are IPv4; IPv6 nameservers are skipped.
            ip.is_ipv4().then_some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// A SERVFAIL answer to `query` (header + question echoed), or `None` if it is no query.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let mut reply = query.to_vec();
    // QR=1, keep opcode and RD; RA=1, RCODE=2 (SERVFAIL); drop answer/authority/additional.
    reply[2] = 0x80 | (query[2] & 0x79);
    reply[3] = 0x80 | 2;
    reply[6..12].fill(0);
    // Keep only the question section if it parses; otherwise just the header.
    let qd = u16::from_be_bytes([query[4], query[5]]);
    let end = if qd == 1 {
        question_end(query).unwrap_or(12)
    } else {
        12
    };
    if end == 12 {
        reply[4] = 0;
        reply[5] = 0;
    }
    reply.truncate(end);
    Some(reply)
}

/// Names the forwarder answers itself with the gateway address, as Docker Desktop does, so
/// containers reach the host's loopback by name.
pub const GATEWAY_NAMES: [&str; 3] = [
    "host.docker.internal",
    "gateway.docker.internal",
    "host.containers.internal",
];

/// An answer to `query` when it asks for one of [`GATEWAY_NAMES`]: an A record with
/// `gateway` for type A, and an empty NOERROR answer for other types (AAAA), so resolvers do
/// not wait for the host's DNS. `None` for every other query, which is forwarded.
pub fn local_answer(query: &[u8], gateway: std::net::Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    let end = question_end(query)?;
    let mut name = String::new();
    let mut i = 12;
    while query[i] != 0 {
        let len = usize::from(query[i]);
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(&query[i + 1..i + 1 + len]).to_ascii_lowercase());
        i += 1 + len;
    }
    if !GATEWAY_NAMES.contains(&name.trim_end_matches('.')) {
        return None;
    }
    let qtype = u16::from_be_bytes([query[end - 4], query[end - 3]]);
    let mut reply = query[..end].to_vec();
    // QR=1, AA=1, keep opcode and RD; RA=1, NOERROR; one question, maybe one answer.
    reply[2] = 0x84 | (query[2] & 0x79);
    reply[3] = 0x80;
    reply[8..12].fill(0);
    if qtype == 1 {
        reply[6..8].copy_from_slice(&1u16.to_be_bytes());
        reply.extend_from_slice(&[0xc0, 0x0c]); // name: pointer to the question
        reply.extend_from_slice(&1u16.to_be_bytes()); // A
        reply.extend_from_slice(&1u16.to_be_bytes()); // IN
        reply.extend_from_slice(&60u32.to_be_bytes()); // TTL
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&gateway.octets());
    } else {
        reply[6..8].fill(0);
    }
    Some(reply)
}

/// End offset of the first question (QNAME labels + QTYPE + QCLASS).
fn question_end(msg: &[u8]) -> Option<usize> {
    let mut i = 12;
    loop {
        let len = usize::from(*msg.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
    }
    let end = i + 4;
    (end <= msg.len()).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn test_local_answer_host_docker_internal_a_record() {
        let gw = std::net::Ipv4Addr::new(10, 0, 2, 2);
        let r = local_answer(&query("Host.Docker.Internal", 1), gw).unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 0, 2, 2]);
        let aaaa = local_answer(&query("host.docker.internal", 28), gw).unwrap();
        assert_eq!(&aaaa[6..8], &[0, 0], "no AAAA answer, but an answer");
        assert!(local_answer(&query("example.com", 1), gw).is_none());
        assert!(local_answer(&[0u8; 5], gw).is_none());
        let mut truncated = query("host.docker.internal", 1);
        truncated.truncate(20);
        assert!(local_answer(&truncated, gw).is_none());
    }

    #[test]
    fn test_parse_resolv_conf_ipv4_only() {
        let s = "# c\nsearch x\nnameserver 10.1.2.3\nnameserver ::1\nnameserver  127.0.0.53 # x\nnameserver bad\n";
        assert_eq!(
            parse_resolv_conf(s),
            vec![
                "10.1.2.3:53".parse().expect("a"),
                "127.0.0.53:53".parse().expect("b")
            ]
        );
    }

    #[test]
    fn test_servfail_keeps_id_and_question() {
        // id 0x1234, RD, one question "a." type A class IN.
        let q = [
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1, 1, b'a', 0, 0, 1, 0, 1, 0xaa,
        ];
        let r = servfail(&q).expect("reply");
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[2] & 0x80, 0x80);
        assert_eq!(r[3] & 0x0f, 2);
        assert_eq!(r.len(), 19);
        assert!(servfail(&r).is_none(), "a response is not answered");
        assert!(servfail(&[0; 5]).is_none());
    }

    #[test]
    fn test_resolvers_follow_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 10.0.0.1\n").expect("write");
        let mut r = Resolvers::new(path.clone());
        assert_eq!(r.current(), Some("10.0.0.1:53".parse().expect("a")));
        std::fs::write(&path, "nameserver 10.0.0.2\nnameserver 10.0.0.3\n").expect("write");
        r.refresh(Instant::now() + Duration::from_secs(1));
        assert_eq!(r.current(), Some("10.0.0.2:53".parse().expect("b")));
        r.fail_over();
        assert_eq!(r.current(), Some("10.0.0.3:53".parse().expect("c")));
        std::fs::remove_file(&path).expect("rm");
        r.refresh(Instant::now() + Duration::from_secs(2));
        assert_eq!(r.current(), None);
    }
}
