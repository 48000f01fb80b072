//! ICMP echo. Pings to the gateway/DNS addresses are answered here; pings to other hosts
//! go out through unprivileged ICMP "ping" sockets (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed
//! by `net.ipv4.ping_group_range`). Where the host forbids them, those pings get no
//! answer (a warning is logged once) — the same as a host that filters ICMP.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::{Registry, Token};
use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, Ipv4Packet};
use socket2::{Domain, Protocol, Socket, Type};

use crate::wire::{icmp_frame, internet_checksum};
use crate::{Core, KIND_ICMP};

/// mio has no wrapper for a socket2 ICMP socket: register its fd directly.
#[cfg(unix)]
fn register(registry: &Registry, sock: &Socket, token: Token) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    registry.register(
        &mut mio::unix::SourceFd(&sock.as_raw_fd()),
        token,
        mio::Interest::READABLE,
    )
}

#[cfg(unix)]
fn deregister(registry: &Registry, sock: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    registry.deregister(&mut mio::unix::SourceFd(&sock.as_raw_fd()))
}

/// Windows has no ping sockets (its ICMP API is IcmpSendEcho): only the gateway answers.
#[cfg(not(unix))]
fn register(_: &Registry, _: &Socket, _: Token) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(not(unix))]
fn deregister(_: &Registry, _: &Socket) -> io::Result<()> {
    Ok(())
}

const IDLE: Duration = Duration::from_secs(10);

/// (guest address, remote address, guest's echo identifier).
type FlowKey = (Ipv4Addr, Ipv4Addr, u16);

struct Flow {
    sock: Socket,
    token: Token,
    last: Instant,
    readable: bool,
}

pub struct IcmpNat {
    flows: HashMap<FlowKey, Flow>,
    tokens: HashMap<Token, FlowKey>,
    /// `Some(false)` once the host refused a ping socket.
    allowed: Option<bool>,
    buf: Vec<u8>,
}

impl IcmpNat {
    pub fn new() -> Self {
        Self {
            flows: HashMap::new(),
            tokens: HashMap::new(),
            allowed: None,
            buf: vec![0u8; 65536],
        }
    }

    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    pub fn host_event(&mut self, token: Token) {
        if let Some(f) = self.tokens.get(&token).and_then(|k| self.flows.get_mut(k)) {
            f.readable = true;
        }
    }

    /// Handles an ICMP message from the guest; false if dropped.
    pub fn guest_icmp(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ip: &Ipv4Packet<&[u8]>,
    ) -> bool {
        let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
            return false;
        };
        if core.config.verify_checksums && !icmp.verify_checksum() {
            return false;
        }
        if icmp.msg_type() != Icmpv4Message::EchoRequest || icmp.msg_code() != 0 {
            return false;
        }
        let (guest, remote) = (ip.src_addr(), ip.dst_addr());
        let msg = ip.payload();
        if remote == core.config.gateway_ip || remote == core.config.dns_ip {
            let mut reply = msg.to_vec();
            reply[0] = 0; // echo reply
            return match icmp_frame(core.link(), remote, guest, &reply) {
                Some(f) => core.device.push_tx(f),
                None => false,
            };
        }
        if core.host_ip(remote).is_none() || self.allowed == Some(false) {
            return false;
        }
        let key = (guest, remote, icmp.echo_ident());
        if !self.flows.contains_key(&key) && !self.open(core, registry, key) {
            return false;
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return false;
        };
        flow.last = Instant::now();
        flow.sock.send(msg).is_ok()
    }

    fn open(&mut self, core: &mut Core, registry: &Registry, key: FlowKey) -> bool {
        if self.flows.len() >= core.config.limits.max_icmp_flows {
            if let Some(old) = self
                .flows
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| *k)
            {
                self.remove(registry, &old);
            }
        }
        let sock = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
            Ok(s) => s,
            Err(e) => {
                if e.kind() == io::ErrorKind::PermissionDenied && self.allowed.is_none() {
                    tracing::warn!(
                        "ping sockets are not allowed on this host (net.ipv4.ping_group_range): \
                         only the gateway answers pings"
                    );
                    self.allowed = Some(false);
                }
                return false;
            }
        };
        self.allowed = Some(true);
        let target = SocketAddrV4::new(key.1, 0);
        if sock.set_nonblocking(true).is_err() || sock.connect(&target.into()).is_err() {
            return false;
        }
        let token = core.token(KIND_ICMP);
        if register(registry, &sock, token).is_err() {
            return false;
        }
        self.tokens.insert(token, key);
        self.flows.insert(
            key,
            Flow {
                sock,
                token,
                last: Instant::now(),
                readable: true,
            },
        );
        true
    }

    fn remove(&mut self, registry: &Registry, key: &FlowKey) {
        if let Some(f) = self.flows.remove(key) {
            self.tokens.remove(&f.token);
            let _ = deregister(registry, &f.sock);
        }
    }

    /// Forwards echo replies from ping sockets to the guest (with the guest's identifier).
    pub fn service(&mut self, core: &mut Core, _registry: &Registry) {
        for ((guest, remote, ident), flow) in self.flows.iter_mut() {
            let mut budget = 64;
            while flow.readable && budget > 0 {
                budget -= 1;
                match std::io::Read::read(&mut &flow.sock, &mut self.buf) {
                    Ok(n) if n >= 8 => {
                        let reply = &mut self.buf[..n];
                        if reply[0] != 0 {
                            continue;
                        }
                        reply[4..6].copy_from_slice(&ident.to_be_bytes());
                        reply[2] = 0;
                        reply[3] = 0;
                        let sum = !internet_checksum(reply);
                        reply[2..4].copy_from_slice(&sum.to_be_bytes());
                        if let Some(f) = icmp_frame(core.link(), *remote, *guest, reply) {
                            core.device.push_tx(f);
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => flow.readable = false,
                    Err(_) => {}
                }
            }
        }
    }

    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        let stale: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| now.duration_since(f.last) > IDLE)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.remove(registry, &k);
        }
    }
}
