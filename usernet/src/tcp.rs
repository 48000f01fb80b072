//! TCP NAT: each guest connection is a smoltcp socket spliced to a non-blocking host
//! socket. Outbound: the guest's SYN is held while the host connect runs, then replayed
//! into a smoltcp socket listening on exactly that destination (so a refused connect
//! becomes a RST, not an accepted-then-reset connection). Inbound forwards: a host
//! listener whose accepted sockets get a smoltcp socket connecting to the guest.
//!
//! Data moves only while the other side has room (smoltcp buffers are fixed-size and the
//! host socket is non-blocking), so memory per connection is bounded and backpressure
//! reaches both peers as a shrinking TCP window.
//!
//! Buffer budget (`Limits::tcp_buffer_budget`): all connections' buffers together stay
//! within it, whatever the guest opens. Every connection costs at least
//! [`MIN_TCP_BUFFER`] per direction; what it gets above that comes from a "bonus" half of
//! the budget, an eighth of what is left of it per connection: the first connections get
//! full-size buffers (`Limits::tcp_buffer`), later ones smaller and smaller, and at least
//! `budget / 2 / (2 * MIN_TCP_BUFFER)` connections always fit (1024 with the 64 MiB
//! default). When a connection does not fit, the guest's SYN is dropped without a RST: the
//! guest retransmits it (1 s, 2 s, 4 s…) and gets in once others close. Connections slow
//! down; host memory does not grow.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{IpListenEndpoint, Ipv4Packet, TcpPacket};

use crate::dns::Resolvers;
use crate::wire::tcp_rst_frame;
use crate::{Core, PortForward, UserNetError, Verdict, KIND_TCP, KIND_TCP_LISTEN};

/// How long an outbound connect may take before the guest gets a RST.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The smallest buffer per direction a connection gets (about 11 full-size segments at
/// a 1460-byte MSS).
pub const MIN_TCP_BUFFER: usize = 16 * 1024;

/// (guest endpoint, remote endpoint as the guest sees it).
type FlowKey = (SocketAddrV4, SocketAddrV4);

struct Pending {
    stream: TcpStream,
    token: Token,
    syn: Vec<u8>,
    seq: u32,
    started: Instant,
    /// Buffer size per direction reserved for the connection.
    buf: usize,
}

struct Conn {
    handle: SocketHandle,
    stream: TcpStream,
    token: Token,
    readable: bool,
    writable: bool,
    /// The host side sent EOF (and the guest side was closed).
    host_eof: bool,
    /// We shut down the host socket's write half after the guest's FIN.
    host_shut: bool,
    /// The guest sent FIN.
    guest_fin: bool,
    /// Finished: removed on the next pass, after smoltcp had a chance to send its RST/FIN.
    dead: bool,
    /// Buffer size per direction, returned to the budget on close.
    buf: usize,
}

struct Listener {
    listener: TcpListener,
    fwd: PortForward,
    addr: SocketAddr,
    ready: bool,
}

pub struct TcpNat {
    pending: HashMap<FlowKey, Pending>,
    pending_tokens: HashMap<Token, FlowKey>,
    /// Pending connects whose socket reported an event (only these are checked).
    pending_ready: Vec<FlowKey>,
    conns: HashMap<FlowKey, Conn>,
    conn_tokens: HashMap<Token, FlowKey>,
    listeners: HashMap<Token, Listener>,
    next_port: u16,
    budget: Budget,
    /// SYNs dropped because the buffer budget was used up.
    deferred: u64,
}

/// Bytes of the buffer budget reserved by pending connects and connections.
#[derive(Default)]
struct Budget {
    /// Total (both directions of every connection).
    reserved: usize,
    /// The part of `reserved` above `MIN_TCP_BUFFER` per direction.
    bonus: usize,
}

impl Budget {
    /// Reserves buffers for one more connection: the size per direction, or `None` when the
    /// budget is used up.
    fn reserve(&mut self, max_buf: usize, budget: usize) -> Option<usize> {
        let max_buf = max_buf.max(MIN_TCP_BUFFER);
        let bonus_free = (budget / 2).saturating_sub(self.bonus);
        let extra = (bonus_free / 8 / 2).min(max_buf - MIN_TCP_BUFFER);
        let buf = MIN_TCP_BUFFER + extra;
        if self.reserved + 2 * buf > budget {
            return None;
        }
        self.reserved += 2 * buf;
        self.bonus += 2 * extra;
        Some(buf)
    }

    fn release(&mut self, buf: usize) {
        let extra = buf.saturating_sub(MIN_TCP_BUFFER);
        self.reserved = self.reserved.saturating_sub(2 * buf);
        self.bonus = self.bonus.saturating_sub(2 * extra);
    }
}

fn v4(ep: smoltcp::wire::IpEndpoint) -> Option<SocketAddrV4> {
    match ep.addr {
        smoltcp::wire::IpAddress::Ipv4(a) => Some(SocketAddrV4::new(a, ep.port)),
    }
}

impl TcpNat {
    pub fn new() -> Self {
        Self {
            pending: HashMap::new(),
            pending_tokens: HashMap::new(),
            pending_ready: Vec::new(),
            conns: HashMap::new(),
            conn_tokens: HashMap::new(),
            listeners: HashMap::new(),
            next_port: 49152,
            budget: Budget::default(),
            deferred: 0,
        }
    }

    /// Bytes of buffer budget reserved (pending connects included).
    pub fn buffer_reserved(&self) -> usize {
        self.budget.reserved
    }

    /// Bytes of smoltcp socket buffers actually allocated, measured on the sockets.
    pub fn buffer_allocated(&self, core: &Core) -> usize {
        self.conns
            .values()
            .map(|c| {
                let s = core.sockets.get::<tcp::Socket>(c.handle);
                s.recv_capacity() + s.send_capacity()
            })
            .sum()
    }

    /// SYNs dropped so far because the buffer budget was used up.
    pub fn deferred(&self) -> u64 {
        self.deferred
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn new_socket(n: usize) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; n]),
            tcp::SocketBuffer::new(vec![0u8; n]),
        );
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(60)));
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(300)));
        s
    }

    /// Handles a TCP segment from the guest.
    pub fn guest_segment(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ip: &Ipv4Packet<&[u8]>,
        frame: &[u8],
        dns: &mut Resolvers,
    ) -> Verdict {
        let Ok(seg) = TcpPacket::new_checked(ip.payload()) else {
            return Verdict::Dropped;
        };
        let is_syn = seg.syn() && !seg.ack() && !seg.rst() && !seg.fin();
        if !is_syn {
            return Verdict::ToStack;
        }
        // smoltcp verifies the other segments; a SYN is acted on here, before it.
        if core.config.verify_checksums
            && !seg.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into())
        {
            return Verdict::Dropped;
        }
        let guest = SocketAddrV4::new(ip.src_addr(), seg.src_port());
        let remote = SocketAddrV4::new(ip.dst_addr(), seg.dst_port());
        let key = (guest, remote);
        if self.conns.contains_key(&key) {
            return Verdict::ToStack;
        }
        if self.pending.contains_key(&key) {
            return Verdict::Handled; // retransmitted SYN while connecting: keep waiting
        }
        if guest.port() == 0 || remote.port() == 0 {
            return Verdict::Dropped;
        }
        let seq = seg.seq_number().0 as u32;
        let link = core.link();
        let rst = |core: &mut Core| {
            let f = tcp_rst_frame(
                link,
                (*remote.ip(), remote.port()),
                (*guest.ip(), guest.port()),
                None,
                Some(seq.wrapping_add(1)),
            );
            core.device.push_tx(f);
            Verdict::Handled
        };
        let limits = &core.config.limits;
        if self.pending.len() >= limits.max_pending_connects
            || self.conns.len() + self.pending.len() >= limits.max_tcp_connections
        {
            tracing::debug!(%guest, %remote, "TCP table full: refusing");
            return rst(core);
        }
        let target = if *remote.ip() == core.config.dns_ip && remote.port() == 53 {
            dns.refresh(Instant::now());
            dns.current()
        } else {
            core.host_ip(*remote.ip())
                .map(|ip| SocketAddr::V4(SocketAddrV4::new(ip, remote.port())))
        };
        let Some(target) = target else {
            return rst(core);
        };
        let Some(buf) = self
            .budget
            .reserve(limits.tcp_buffer, limits.tcp_buffer_budget)
        else {
            // No RST: the guest retransmits the SYN and gets in once others close.
            self.deferred += 1;
            tracing::debug!(%guest, %remote, "TCP buffer budget used up: SYN deferred");
            return Verdict::Handled;
        };
        let mut stream = match TcpStream::connect(target) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%target, error = %e, "connect failed at once");
                self.budget.release(buf);
                return rst(core);
            }
        };
        let token = core.token(KIND_TCP);
        if registry
            .register(&mut stream, token, Interest::WRITABLE | Interest::READABLE)
            .is_err()
        {
            self.budget.release(buf);
            return rst(core);
        }
        self.pending_tokens.insert(token, key);
        self.pending.insert(
            key,
            Pending {
                stream,
                token,
                syn: frame.to_vec(),
                seq,
                started: Instant::now(),
                buf,
            },
        );
        Verdict::Handled
    }

    /// Records readiness of a host socket (pending connect or connection).
    pub fn host_event(&mut self, token: Token) {
        if let Some(key) = self.conn_tokens.get(&token) {
            if let Some(c) = self.conns.get_mut(key) {
                c.readable = true;
                c.writable = true;
            }
        }
        if let Some(key) = self.pending_tokens.get(&token) {
            self.pending_ready.push(*key);
        }
    }

    pub fn listener_event(&mut self, token: Token) {
        if let Some(l) = self.listeners.get_mut(&token) {
            l.ready = true;
        }
    }

    /// Completes outbound connects whose host side finished (or failed).
    pub fn finish_connects(&mut self, core: &mut Core, registry: &Registry) {
        if self.pending_ready.is_empty() {
            return;
        }
        let mut done = Vec::new();
        let ready = std::mem::take(&mut self.pending_ready);
        for key in ready {
            let Some(p) = self.pending.get(&key) else {
                continue;
            };
            match p.stream.take_error() {
                Ok(Some(e)) => done.push((key, Err(e))),
                Err(e) => done.push((key, Err(e))),
                Ok(None) => match p.stream.peer_addr() {
                    Ok(_) => done.push((key, Ok(()))),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => done.push((key, Err(e))),
                },
            }
        }
        for (key, result) in done {
            let Some(mut p) = self.pending.remove(&key) else {
                continue;
            };
            self.pending_tokens.remove(&p.token);
            let (guest, remote) = key;
            if let Err(e) = result {
                tracing::debug!(%guest, %remote, error = %e, "connect refused/failed");
                self.budget.release(p.buf);
                let _ = registry.deregister(&mut p.stream);
                let f = tcp_rst_frame(
                    core.link(),
                    (*remote.ip(), remote.port()),
                    (*guest.ip(), guest.port()),
                    None,
                    Some(p.seq.wrapping_add(1)),
                );
                core.device.push_tx(f);
                continue;
            }
            let _ = p.stream.set_nodelay(true);
            let mut sock = Self::new_socket(p.buf);
            let ep = IpListenEndpoint {
                addr: Some((*remote.ip()).into()),
                port: remote.port(),
            };
            if sock.listen(ep).is_err() {
                self.budget.release(p.buf);
                continue;
            }
            let handle = core.sockets.add(sock);
            self.conn_tokens.insert(p.token, key);
            self.conns.insert(
                key,
                Conn {
                    handle,
                    stream: p.stream,
                    token: p.token,
                    readable: true,
                    writable: true,
                    host_eof: false,
                    host_shut: false,
                    guest_fin: false,
                    dead: false,
                    buf: p.buf,
                },
            );
            // Replay the SYN now that a socket listens for it, before any other listener
            // for the same destination exists (so each SYN meets its own socket).
            core.device.push_rx(&p.syn);
            core.pump();
        }
    }

    /// Accepts host connections on the forward listeners.
    pub fn accept_forwards(&mut self, core: &mut Core, registry: &Registry) {
        let limits = core.config.limits.clone();
        let limit = limits.max_tcp_connections;
        let mut accepted = Vec::new();
        for l in self.listeners.values_mut() {
            while l.ready {
                match l.listener.accept() {
                    Ok((stream, peer)) => accepted.push((stream, peer, l.fwd)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => l.ready = false,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        l.ready = false;
                    }
                }
            }
        }
        for (mut stream, peer, fwd) in accepted {
            if self.conns.len() + self.pending.len() >= limit {
                tracing::debug!(%peer, "TCP table full: dropping forwarded connection");
                continue;
            }
            let Some(buf) = self
                .budget
                .reserve(limits.tcp_buffer, limits.tcp_buffer_budget)
            else {
                self.deferred += 1;
                tracing::debug!(%peer, "TCP buffer budget used up: dropping forwarded connection");
                continue;
            };
            let mut sock = Self::new_socket(buf);
            let port = self.ephemeral_port(core);
            let guest = SocketAddrV4::new(core.config.guest_ip, fwd.guest_port);
            let local = SocketAddrV4::new(core.config.gateway_ip, port);
            if sock
                .connect(
                    core.iface.context(),
                    (*guest.ip(), guest.port()),
                    (*local.ip(), local.port()),
                )
                .is_err()
            {
                self.budget.release(buf);
                continue;
            }
            let token = core.token(KIND_TCP);
            if registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                self.budget.release(buf);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let handle = core.sockets.add(sock);
            let key = (guest, local);
            self.conn_tokens.insert(token, key);
            self.conns.insert(
                key,
                Conn {
                    handle,
                    stream,
                    token,
                    readable: true,
                    writable: true,
                    host_eof: false,
                    host_shut: false,
                    guest_fin: false,
                    dead: false,
                    buf,
                },
            );
        }
    }

    fn ephemeral_port(&mut self, core: &Core) -> u16 {
        for _ in 0..16384 {
            let p = self.next_port;
            self.next_port = if p == u16::MAX { 49152 } else { p + 1 };
            let key_local = SocketAddrV4::new(core.config.gateway_ip, p);
            if !self.conns.keys().any(|(_, r)| *r == key_local) {
                return p;
            }
        }
        self.next_port
    }

    /// Moves data between smoltcp sockets and host sockets; returns whether any moved.
    pub fn service(&mut self, core: &mut Core, registry: &Registry) -> bool {
        let mut moved = false;
        let mut dead = Vec::new();
        for (key, c) in self.conns.iter_mut() {
            if c.dead {
                dead.push(*key);
                continue;
            }
            let sock = core.sockets.get_mut::<tcp::Socket>(c.handle);
            moved |= splice(c, sock);
        }
        for key in dead {
            self.close_conn(core, registry, &key);
        }
        moved
    }

    fn close_conn(&mut self, core: &mut Core, registry: &Registry, key: &FlowKey) {
        if let Some(mut c) = self.conns.remove(key) {
            self.budget.release(c.buf);
            self.conn_tokens.remove(&c.token);
            let _ = registry.deregister(&mut c.stream);
            core.sockets.remove(c.handle);
        }
    }

    /// Fails connects that took too long.
    pub fn expire(&mut self, core: &mut Core, registry: &Registry, now: Instant) {
        let stale: Vec<FlowKey> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.started) > CONNECT_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some(mut p) = self.pending.remove(&key) {
                self.budget.release(p.buf);
                self.pending_tokens.remove(&p.token);
                let _ = registry.deregister(&mut p.stream);
                let (guest, remote) = key;
                let f = tcp_rst_frame(
                    core.link(),
                    (*remote.ip(), remote.port()),
                    (*guest.ip(), guest.port()),
                    None,
                    Some(p.seq.wrapping_add(1)),
                );
                core.device.push_tx(f);
            }
        }
    }

    pub fn add_forward(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        fwd: PortForward,
    ) -> Result<(), UserNetError> {
        let mut listener = TcpListener::bind(fwd.host).map_err(|source| UserNetError::Listen {
            addr: fwd.host,
            source,
        })?;
        let addr = listener.local_addr().unwrap_or(fwd.host);
        let token = core.token(KIND_TCP_LISTEN);
        registry
            .register(&mut listener, token, Interest::READABLE)
            .map_err(|source| UserNetError::Listen {
                addr: fwd.host,
                source,
            })?;
        tracing::info!(host = %addr, guest_port = fwd.guest_port, "TCP port forward");
        self.listeners.insert(
            token,
            Listener {
                listener,
                fwd,
                addr,
                ready: true,
            },
        );
        Ok(())
    }

    pub fn remove_forward(&mut self, registry: &Registry, fwd: &PortForward) {
        self.listeners.retain(|_, l| {
            let keep = l.fwd != *fwd;
            if !keep {
                let _ = registry.deregister(&mut l.listener);
            }
            keep
        });
    }

    pub fn forward_addrs(&self) -> Vec<(PortForward, SocketAddr)> {
        self.listeners.values().map(|l| (l.fwd, l.addr)).collect()
    }

    /// Guest endpoints of live connections (for diagnostics).
    #[allow(dead_code)]
    pub fn endpoints(&self, core: &Core) -> Vec<(Option<SocketAddrV4>, Option<SocketAddrV4>)> {
        self.conns
            .values()
            .map(|c| {
                let s = core.sockets.get::<tcp::Socket>(c.handle);
                (
                    s.remote_endpoint().and_then(v4),
                    s.local_endpoint().and_then(v4),
                )
            })
            .collect()
    }
}

/// Moves bytes both ways for one connection and tracks closing; returns whether any moved.
fn splice(c: &mut Conn, sock: &mut tcp::Socket<'static>) -> bool {
    let mut moved = false;
    // Guest -> host.
    while c.writable && sock.can_recv() {
        let stream = &mut c.stream;
        match sock.recv(|buf| match stream.write(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        }) {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => moved = true,
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => {
                // Host reset or broke the connection: reset the guest side too.
                sock.abort();
                c.dead = true;
                return true;
            }
            Err(_) => break,
        }
    }
    let state = sock.state();
    if matches!(
        state,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    ) {
        c.guest_fin = true;
    }
    if c.guest_fin && !c.host_shut && sock.recv_queue() == 0 {
        let _ = c.stream.shutdown(Shutdown::Write);
        c.host_shut = true;
        moved = true;
    }
    // Host -> guest.
    while c.readable && !c.host_eof && sock.can_send() {
        let stream = &mut c.stream;
        match sock.send(|buf| match stream.read(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        }) {
            Ok(Ok(0)) => {
                c.host_eof = true;
                sock.close();
                moved = true;
            }
            Ok(Ok(_)) => moved = true,
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => {
                sock.abort();
                c.dead = true;
                return true;
            }
            Err(_) => break,
        }
    }
    match sock.state() {
        State::Closed => {
            if !(c.guest_fin && c.host_eof) {
                // The guest reset the connection (or it timed out): reset the host side.
                let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
            }
            c.dead = true;
        }
        State::TimeWait if c.host_shut && c.host_eof => c.dead = true,
        _ => {}
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_budget_bounds_total_and_keeps_room_for_many_connections() {
        let (max, budget) = (512 * 1024, 64 << 20);
        let mut b = Budget::default();
        let mut sizes = Vec::new();
        while let Some(n) = b.reserve(max, budget) {
            sizes.push(n);
            assert!(b.reserved <= budget, "over budget: {}", b.reserved);
        }
        assert_eq!(sizes[0], max, "the first connection gets full-size buffers");
        assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "sizes only shrink");
        assert_eq!(*sizes.last().expect("some"), MIN_TCP_BUFFER);
        assert!(sizes.len() >= 1024, "only {} connections fit", sizes.len());
        assert!(sizes.len() <= budget / (2 * MIN_TCP_BUFFER));
        // Releasing one connection makes room for exactly one more.
        let last = sizes.pop().expect("last");
        b.release(last);
        assert!(b.reserve(max, budget).is_some());
        assert!(b.reserve(max, budget).is_none());
        // Everything released: back to zero and to full-size buffers.
        b = Budget::default();
        let n = b.reserve(max, budget).expect("fits");
        b.release(n);
        assert_eq!((b.reserved, b.bonus), (0, 0));
    }
}
