//! Inbound UDP port forwards: a host UDP socket per forward. Each host peer gets its own
//! gateway-side port, so the guest sees datagrams from 10.0.2.2:PORT and its replies to
//! that port go back to the right peer. Mappings expire when idle; their number is bounded.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use crate::wire::udp_frame;
use crate::{Core, PortForward, UserNetError, KIND_UDP_LISTEN};

/// Gateway ports used for forward mappings (above the TCP forwards' range start; a
/// guest datagram to 10.0.2.2 on a port mapped here is a reply, not NAT to the host).
const PORT_FIRST: u16 = 61000;
const MAX_MAPPINGS: usize = 1024;

struct Listener {
    sock: UdpSocket,
    fwd: PortForward,
    addr: SocketAddr,
    readable: bool,
}

struct Mapping {
    listener: Token,
    peer: SocketAddr,
    last: Instant,
}

pub struct UdpForwards {
    listeners: HashMap<Token, Listener>,
    by_port: HashMap<u16, Mapping>,
    by_peer: HashMap<(Token, SocketAddr), u16>,
    next_port: u16,
    buf: Vec<u8>,
}

impl UdpForwards {
    pub fn new() -> Self {
        Self {
            listeners: HashMap::new(),
            by_port: HashMap::new(),
            by_peer: HashMap::new(),
            next_port: PORT_FIRST,
            buf: vec![0u8; 65536],
        }
    }

    pub fn add_forward(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        fwd: PortForward,
    ) -> Result<(), UserNetError> {
        let err = |source| UserNetError::Listen {
            addr: fwd.host,
            source,
        };
        let mut sock = UdpSocket::bind(fwd.host).map_err(err)?;
        let addr = sock.local_addr().unwrap_or(fwd.host);
        let token = core.token(KIND_UDP_LISTEN);
        registry
            .register(&mut sock, token, Interest::READABLE)
            .map_err(err)?;
        tracing::info!(host = %addr, guest_port = fwd.guest_port, "UDP port forward");
        self.listeners.insert(
            token,
            Listener {
                sock,
                fwd,
                addr,
                readable: true,
            },
        );
        Ok(())
    }

    pub fn remove_forward(&mut self, registry: &Registry, fwd: &PortForward) {
        let gone: Vec<Token> = self
            .listeners
            .iter()
            .filter(|(_, l)| l.fwd == *fwd)
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            if let Some(mut l) = self.listeners.remove(&t) {
                let _ = registry.deregister(&mut l.sock);
            }
            self.by_port.retain(|_, m| m.listener != t);
            self.by_peer.retain(|(lt, _), _| *lt != t);
        }
    }

    pub fn forward_addrs(&self) -> Vec<(PortForward, SocketAddr)> {
        self.listeners.values().map(|l| (l.fwd, l.addr)).collect()
    }

    pub fn host_event(&mut self, token: Token) {
        if let Some(l) = self.listeners.get_mut(&token) {
            l.readable = true;
        }
    }

    /// A guest datagram to the gateway's `port`: if that port is a forward mapping, send
    /// the payload to the host peer and return true.
    pub fn guest_reply(&mut self, port: u16, payload: &[u8]) -> bool {
        let Some(m) = self.by_port.get_mut(&port) else {
            return false;
        };
        m.last = Instant::now();
        if let Some(l) = self.listeners.get(&m.listener) {
            let _ = l.sock.send_to(payload, m.peer);
        }
        true
    }

    fn port_for(&mut self, listener: Token, peer: SocketAddr) -> Option<u16> {
        if let Some(p) = self.by_peer.get(&(listener, peer)) {
            return Some(*p);
        }
        if self.by_port.len() >= MAX_MAPPINGS {
            let (port, key) = self
                .by_port
                .iter()
                .min_by_key(|(_, m)| m.last)
                .map(|(p, m)| (*p, (m.listener, m.peer)))?;
            self.by_port.remove(&port);
            self.by_peer.remove(&key);
        }
        let span = u16::MAX - PORT_FIRST;
        for _ in 0..=span {
            let p = self.next_port;
            self.next_port = if p == u16::MAX { PORT_FIRST } else { p + 1 };
            if let std::collections::hash_map::Entry::Vacant(slot) = self.by_port.entry(p) {
                slot.insert(Mapping {
                    listener,
                    peer,
                    last: Instant::now(),
                });
                self.by_peer.insert((listener, peer), p);
                return Some(p);
            }
        }
        None
    }

    /// Forwards datagrams from host peers to the guest.
    pub fn service(&mut self, core: &mut Core) {
        let tokens: Vec<Token> = self
            .listeners
            .iter()
            .filter(|(_, l)| l.readable)
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            for _ in 0..256 {
                if core.device.tx_full() {
                    break;
                }
                let Some(l) = self.listeners.get_mut(&token) else {
                    break;
                };
                let guest_port = l.fwd.guest_port;
                let (n, peer) = match l.sock.recv_from(&mut self.buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        l.readable = false;
                        break;
                    }
                    Err(_) => continue,
                };
                let Some(port) = self.port_for(token, peer) else {
                    continue;
                };
                let guest = SocketAddrV4::new(core.config.guest_ip, guest_port);
                if let Some(f) = udp_frame(
                    core.link(),
                    (core.config.gateway_ip, port),
                    (*guest.ip(), guest.port()),
                    &self.buf[..n],
                    core.config.mtu,
                ) {
                    core.device.push_tx(f);
                }
            }
        }
    }

    /// Drops idle mappings.
    pub fn expire(&mut self, now: Instant, idle: Duration) {
        let stale: Vec<u16> = self
            .by_port
            .iter()
            .filter(|(_, m)| now.duration_since(m.last) > idle)
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            if let Some(m) = self.by_port.remove(&p) {
                self.by_peer.remove(&(m.listener, m.peer));
            }
        }
    }
}
