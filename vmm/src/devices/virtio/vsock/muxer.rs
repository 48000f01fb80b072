//! The transport-neutral core of virtio-vsock: the connection table, the host side (the
//! hybrid-vsock unix socket of Firecracker/Cloud Hypervisor) and the routing of guest packets.
//!
//! It knows nothing of virtqueues: the in-process device and the vhost-user backend feed it
//! guest tx packets ([`Muxer::send_from_guest`]), ask it for rx packets ([`Muxer::next_rx`]),
//! and call [`Muxer::process_host_events`] when its epoll fd ([`Muxer::epoll_fd`]) is readable.
//!
//! Host side: clients connect to `uds_path` and write `CONNECT <port>\n`; on the guest's
//! RESPONSE they read `OK <host port>\n` and the socket carries the stream. Guest connections
//! to the host (CID 2) port P are connected to the unix socket `<uds_path>_P`.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::conn::{Conn, State, Verdict, CONN_BUF_SIZE, MAX_PKT_PAYLOAD};
use super::packet::*;
use crate::warn_ratelimited;

/// Most connections (established, connecting, or host clients mid-handshake) at once.
pub const MAX_CONNS: usize = 1024;
/// Most guest data buffered for host sockets, over all connections.
pub const MAX_BUFFERED_TOTAL: usize = 64 << 20;
/// Most RSTs for unknown connections waiting for rx buffers; more are dropped.
const MAX_PENDING_RST: usize = 256;
/// The longest `CONNECT <port>\n` line we read.
const MAX_HANDSHAKE: usize = 32;
/// First host-side port handed to host-initiated connections (as Firecracker does).
const LOCAL_PORT_BASE: u32 = 1 << 30;

const LISTENER_KEY: u64 = u64::MAX;
const TIMER_KEY: u64 = u64::MAX - 1;
/// How often overdue connections are looked for while some wait for the guest.
const TIMER_TICK: std::time::Duration = std::time::Duration::from_secs(1);
const HANDSHAKE_TAG: u64 = 1 << 32;
/// How long a host client may stay connected without completing its `CONNECT` line: a
/// half-open client holds one of the [`MAX_CONNS`] slots, so idle ones are closed.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Errors setting up the host side.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("Cannot listen on the vsock socket {path}: {source}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot set up the vsock event loop: {0}")]
    Epoll(#[source] std::io::Error),
    #[error("Guest CID {0} is reserved (use 3 or more)")]
    BadCid(u64),
}

/// (host-side port, guest port).
type Key = (u32, u32);

/// A host client that has connected but not yet sent its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    since: std::time::Instant,
}

/// The connection table and host sockets of one vsock device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    handshakes: HashMap<RawFd, Handshake>,
    ready: VecDeque<Key>,
    rst_queue: VecDeque<Header>,
    next_local_port: u32,
    buffered_total: usize,
    /// Ticks while some connection waits for the guest's RESPONSE or RST.
    timer: TimerFd,
    timer_armed: bool,
    handshake_timeout: std::time::Duration,
    /// The listener is out of the epoll set after accept failed (EMFILE): the next timer
    /// tick puts it back, so a full fd table does not spin the event loop.
    listener_paused: bool,
}

impl Muxer {
    /// Listens on `uds_path` (replacing a stale socket file) for a guest with `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Muxer, MuxerError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(MuxerError::BadCid(guest_cid));
        }
        let listen_err = |source| MuxerError::Listen {
            path: uds_path.display().to_string(),
            source,
        };
        // Owner-only from the start (0600, replacing only a stale socket file): CONNECT 1024
        // is root exec in the guest.
        let listener =
            crate::hostsock::bind_owner_only(uds_path).map_err(|e| listen_err(e.into_io()))?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_KEY),
            )
            .map_err(MuxerError::Epoll)?;
        let timer = TimerFd::new()
            .map_err(|e| MuxerError::Epoll(std::io::Error::from_raw_os_error(e.errno())))?;
        epoll
            .ctl(
                ControlOperation::Add,
                timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TIMER_KEY),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            ready: VecDeque::new(),
            rst_queue: VecDeque::new(),
            next_local_port: LOCAL_PORT_BASE,
            buffered_total: 0,
            timer,
            timer_armed: false,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            listener_paused: false,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Readable when a host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of connections (for tests and status).
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection (device reset): host clients see their socket close.
    pub fn reset(&mut self) {
        if self.timer_armed {
            self.arm_timer(false);
        }
        self.conns.clear();
        self.by_fd.clear();
        self.ready.clear();
        self.rst_queue.clear();
        self.buffered_total = 0;
    }

    fn total_conns(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    fn mark_ready(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.in_ready && c.has_rx() {
                c.in_ready = true;
                self.ready.push_back(key);
            }
        }
    }

    fn queue_rst(&mut self, to: &Header) {
        if self.rst_queue.len() < MAX_PENDING_RST {
            self.rst_queue.push_back(to.reply(OP_RST));
        } else {
            warn_ratelimited!("vsock: RST queue full; dropping a reset for the guest");
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.by_fd.remove(&c.stream.as_raw_fd());
            self.buffered_total = self.buffered_total.saturating_sub(c.buffered());
            // Closing the stream removes it from the epoll set.
        }
    }

    fn register_conn(&mut self, conn: Conn) {
        let key = (conn.local_port, conn.peer_port);
        let fd = conn.stream.as_raw_fd();
        let ev = EpollEvent::new(
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED,
            fd as u64,
        );
        if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, ev) {
            warn_ratelimited!("vsock: cannot watch a host socket: {e}");
            return;
        }
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.mark_ready(key);
    }

    /// Handles one packet from the guest's tx queue. `payload` holds `h.len` bytes.
    pub fn send_from_guest(&mut self, h: &Header, payload: &[u8]) {
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            warn_ratelimited!(
                "vsock: dropped {} from cid {} to cid {} (guest is cid {})",
                op_name(h.op),
                h.src_cid,
                h.dst_cid,
                self.guest_cid
            );
            if h.op != OP_RST && h.src_cid == self.guest_cid {
                self.queue_rst(h);
            }
            return;
        }
        if h.type_ != TYPE_STREAM || payload.len() != h.len as usize {
            warn_ratelimited!(
                "vsock: bad packet (type {}, len {} with {} payload bytes); reset",
                h.type_,
                h.len,
                payload.len()
            );
            self.reset_or_rst(h);
            return;
        }
        let key = (h.dst_port, h.src_port);
        if !self.conns.contains_key(&key) {
            match h.op {
                OP_REQUEST => self.guest_connect(h),
                OP_RST => {}
                _ => self.queue_rst(h),
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let before = conn.buffered();
        let result = if h.op == OP_RW && self.buffered_total + payload.len() > MAX_BUFFERED_TOTAL {
            warn_ratelimited!("vsock: host sockets are not reading; resetting a connection");
            conn.reset();
            Ok(Verdict::Keep)
        } else {
            conn.recv(h, payload)
        };
        let after = conn.buffered();
        self.buffered_total = (self.buffered_total + after).saturating_sub(before);
        match result {
            Ok(Verdict::Keep) => self.mark_ready(key),
            Ok(Verdict::Remove) => self.remove(key),
            Err(e) => {
                warn_ratelimited!("vsock: port {} → {}: {e}; reset", h.src_port, h.dst_port);
                if let Some(c) = self.conns.get_mut(&key) {
                    c.reset();
                }
                self.mark_ready(key);
            }
        }
    }

    /// RSTs the connection `h` belongs to, or answers RST when there is none.
    fn reset_or_rst(&mut self, h: &Header) {
        let key = (h.dst_port, h.src_port);
        match self.conns.get_mut(&key) {
            Some(c) => {
                c.reset();
                self.mark_ready(key);
            }
            None if h.op != OP_RST => self.queue_rst(h),
            None => {}
        }
    }

    /// The guest connects to host port `h.dst_port`: `<uds_path>_<port>`.
    fn guest_connect(&mut self, h: &Header) {
        if self.total_conns() >= MAX_CONNS {
            warn_ratelimited!("vsock: connection limit ({MAX_CONNS}) reached; refusing");
            return self.queue_rst(h);
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        // Non-blocking: a host service whose backlog is full refuses (EAGAIN) instead of
        // stalling the device thread.
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let conn = Conn::guest_initiated(stream, h, self.guest_cid);
                self.register_conn(conn);
            }
            Err(e) => {
                tracing::debug!(
                    "vsock: guest port {} → host port {}: {}: {e}",
                    h.src_port,
                    h.dst_port,
                    PathBuf::from(path).display()
                );
                self.queue_rst(h);
            }
        }
    }

    /// Whether [`Muxer::next_rx`] may have a packet.
    pub fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.ready.is_empty()
    }

    /// Writes the next packet for the guest into `buf` (header then payload; `buf` should hold
    /// [`HDR_LEN`] + the guest's rx buffer size); returns its length, or None when there is
    /// nothing to send or `buf` cannot hold a header.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<usize> {
        if buf.len() < HDR_LEN {
            return None;
        }
        if let Some(h) = self.rst_queue.pop_front() {
            buf[..HDR_LEN].copy_from_slice(&h.encode());
            return Some(HDR_LEN);
        }
        // Connections that have something but could not fit it into `buf` (a guest rx buffer
        // too small for any payload) wait for the next buffer, not for this loop again.
        let mut skipped = Vec::new();
        let mut out = None;
        while let Some(key) = self.ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_ready = false;
            out = conn.produce(buf);
            let wants_timer = conn.deadline.is_some();
            if wants_timer && !self.timer_armed {
                self.arm_timer(true);
            }
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if conn.finished() {
                self.remove(key);
            } else if out.is_some() {
                self.mark_ready(key);
            } else {
                skipped.push(key);
            }
            if out.is_some() {
                break;
            }
        }
        for key in skipped {
            self.mark_ready(key);
        }
        out
    }

    /// Accepts host clients, reads their handshakes and notes which connections became
    /// readable or writable. Never blocks.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn_ratelimited!("vsock: epoll_wait failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let data = ev.data();
                if data == TIMER_KEY {
                    self.expire_overdue();
                } else if data == LISTENER_KEY {
                    self.accept_clients();
                } else if data & HANDSHAKE_TAG != 0 {
                    self.read_handshake((data & !HANDSHAKE_TAG) as RawFd);
                } else {
                    self.host_ready(data as RawFd, ev.event_set());
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn arm_timer(&mut self, on: bool) {
        let r = if on {
            self.timer.reset(TIMER_TICK, Some(TIMER_TICK))
        } else {
            self.timer.clear()
        };
        match r {
            Ok(()) => self.timer_armed = on,
            Err(e) => warn_ratelimited!("vsock: timer: {e}"),
        }
    }

    /// Resets connections whose REQUEST or SHUTDOWN the guest left unanswered too long,
    /// closes host clients that never finished their handshake, and resumes accepting.
    fn expire_overdue(&mut self) {
        let _ = self.timer.wait();
        let now = std::time::Instant::now();
        if self.listener_paused {
            let ev = EpollEvent::new(EventSet::IN, LISTENER_KEY);
            let fd = self.listener.as_raw_fd();
            if self.epoll.ctl(ControlOperation::Add, fd, ev).is_ok() {
                self.listener_paused = false;
            }
        }
        let timeout = self.handshake_timeout;
        let stale: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, hs)| now.duration_since(hs.since) >= timeout)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in stale {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.handshakes.remove(&fd);
            warn_ratelimited!(
                "vsock: closed a host client that sent no CONNECT line within {} s",
                timeout.as_secs()
            );
        }
        let mut expired = Vec::new();
        let mut waiting = !self.handshakes.is_empty() || self.listener_paused;
        for (key, c) in self.conns.iter_mut() {
            if c.expire(now) {
                expired.push(*key);
            }
            waiting |= c.deadline.is_some();
        }
        for key in expired {
            tracing::debug!("vsock: guest did not answer on port {}; reset", key.1);
            self.mark_ready(key);
        }
        if !waiting {
            self.arm_timer(false);
        }
    }

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if !crate::hostsock::peer_allowed(stream.as_fd()) {
                        warn_ratelimited!(
                            "vsock: refused a host client of another user on {}",
                            self.uds_path.display()
                        );
                        continue;
                    }
                    if self.total_conns() >= MAX_CONNS {
                        warn_ratelimited!(
                            "vsock: connection limit ({MAX_CONNS}) reached; closing a host client"
                        );
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    let ev = EpollEvent::new(EventSet::IN, HANDSHAKE_TAG | fd as u64);
                    if self.epoll.ctl(ControlOperation::Add, fd, ev).is_ok() {
                        self.handshakes.insert(
                            fd,
                            Handshake {
                                stream,
                                line: Vec::new(),
                                since: std::time::Instant::now(),
                            },
                        );
                        if !self.timer_armed {
                            self.arm_timer(true);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: the listener stays readable, so pause it until the
                    // next timer tick instead of spinning on it.
                    warn_ratelimited!(
                        "vsock: accept on {}: {e}; pausing new host clients for {} s",
                        self.uds_path.display(),
                        TIMER_TICK.as_secs()
                    );
                    let fd = self.listener.as_raw_fd();
                    if self
                        .epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                        .is_ok()
                    {
                        self.listener_paused = true;
                        self.arm_timer(true);
                    }
                    return;
                }
            }
        }
    }

    fn read_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        // One byte at a time, so that no stream data after the line is consumed here.
        let mut b = [0u8; 1];
        let done = loop {
            match hs.stream.read(&mut b) {
                Ok(0) => break Err("closed before CONNECT"),
                Ok(_) if b[0] == b'\n' => break Ok(()),
                Ok(_) if hs.line.len() >= MAX_HANDSHAKE => break Err("line too long"),
                Ok(_) => hs.line.push(b[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break Err("read failed"),
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let port = done.and_then(|()| parse_connect(&hs.line).ok_or("expected CONNECT <port>"));
        match port {
            Ok(port) => {
                let local = self.alloc_local_port(port);
                let conn = Conn::host_initiated(hs.stream, local, port, self.guest_cid);
                self.register_conn(conn);
            }
            Err(why) => {
                tracing::debug!("vsock: host client dropped: {why}");
            }
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = if p == u32::MAX {
                LOCAL_PORT_BASE
            } else {
                p + 1
            };
            if !self.conns.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    fn host_ready(&mut self, fd: RawFd, ev: EventSet) {
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if ev.intersects(EventSet::HANG_UP) {
            conn.host_hup = true;
        }
        if ev
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            conn.readable = true;
        }
        if ev.intersects(EventSet::OUT) && conn.buffered() > 0 {
            let before = conn.buffered();
            conn.flush();
            self.buffered_total = self.buffered_total.saturating_sub(before - conn.buffered());
            if conn.state == State::Closing && conn.finished() {
                self.remove(key);
                return;
            }
        }
        self.mark_ready(key);
    }
}

/// Connects a non-blocking unix stream socket to `path`; fails instead of waiting.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    sock.connect(&SockAddr::unix(path)?)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(sock)))
}

/// Parses `CONNECT <port>` (a trailing `\r` is allowed).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let port = s.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

/// Largest rx packet the device ever produces (header + payload).
pub const MAX_RX_PACKET: usize = HDR_LEN + MAX_PKT_PAYLOAD;
const _: () = assert!(MAX_PKT_PAYLOAD <= CONN_BUF_SIZE as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    fn muxer(dir: &Path) -> Muxer {
        Muxer::new(3, &dir.join("v.sock")).unwrap()
    }

    fn guest(op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Header::default()
        }
    }

    fn rx(m: &mut Muxer) -> Option<(Header, Vec<u8>)> {
        let mut buf = vec![0u8; HDR_LEN + 4096];
        let n = m.next_rx(&mut buf)?;
        let h = Header::from_slice(&buf).unwrap();
        Some((h, buf[HDR_LEN..n].to_vec()))
    }

    /// Processes host events until `f` sees what it waits for (or 2 s pass).
    fn pump<T>(m: &mut Muxer, mut f: impl FnMut(&mut Muxer) -> Option<T>) -> T {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            m.process_host_events();
            if let Some(v) = f(m) {
                return v;
            }
            assert!(std::time::Instant::now() < end, "timed out");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn test_parse_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 2375"), Some(2375));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
    }

    #[test]
    fn test_reserved_cids_refused() {
        let d = tempfile::tempdir().unwrap();
        for cid in [0, 1, 2, u64::from(u32::MAX)] {
            assert!(matches!(
                Muxer::new(cid, &d.path().join("x.sock")),
                Err(MuxerError::BadCid(_))
            ));
        }
    }

    #[test]
    fn test_host_connect_handshake_and_data() {
        let d = tempfile::tempdir().unwrap();
        let mut m = muxer(d.path());
        let mut client = UnixStream::connect(d.path().join("v.sock")).unwrap();
        client.write_all(b"CONNECT 1234\nearly").unwrap();
        let (req, _) = pump(&mut m, rx);
        assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 1234, 3));
        assert!(req.src_port >= LOCAL_PORT_BASE);
        let mut resp = guest(OP_RESPONSE, 1234, req.src_port);
        resp.buf_alloc = 65536;
        m.send_from_guest(&resp, &[]);
        let mut ok = vec![0u8; format!("OK {}\n", req.src_port).len()];
        client.read_exact(&mut ok).unwrap();
        assert_eq!(ok, format!("OK {}\n", req.src_port).as_bytes());
        // Bytes sent right after the CONNECT line belong to the stream.
        let (h, data) = pump(&mut m, rx);
        assert_eq!((h.op, data.as_slice()), (OP_RW, &b"early"[..]));
        let mut rw = guest(OP_RW, 1234, req.src_port);
        rw.len = 4;
        m.send_from_guest(&rw, b"pong");
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        // Guest refuses later: RST closes the client.
        m.send_from_guest(&guest(OP_RST, 1234, req.src_port), &[]);
        assert_eq!(m.conn_count(), 0);
        assert_eq!(client.read(&mut got).unwrap(), 0);
    }

    /// The hybrid socket is 0600; and where it is reachable anyway (mode widened by hand),
    /// a client of another uid never gets its CONNECT to the guest: closed at accept.
    #[test]
    fn test_host_client_of_another_uid_never_reaches_the_guest() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut m = muxer(d.path());
        let sock = d.path().join("v.sock");
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        let Some(r) = crate::hostsock::connect_as_nobody(&sock, "CONNECT 1024\n") else {
            return;
        };
        assert!(r.starts_with("connect-error: Permission denied"), "{r}");
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let path = sock.clone();
        let nobody =
            std::thread::spawn(move || crate::hostsock::connect_as_nobody(&path, "CONNECT 1024\n"));
        let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !nobody.is_finished() {
            m.process_host_events();
            assert!(
                rx(&mut m).is_none(),
                "another user's CONNECT reached the guest"
            );
            assert!(std::time::Instant::now() < end, "the nobody client hung");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let r = nobody.join().unwrap().unwrap();
        assert!(r == "eof" || r.starts_with("read-error"), "{r}");
        // The owner still gets through.
        let mut client = UnixStream::connect(&sock).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        let (req, _) = pump(&mut m, rx);
        assert_eq!((req.op, req.dst_port), (OP_REQUEST, 1024));
    }

    #[test]
    fn test_unanswered_host_connect_is_reset_by_the_timer() {
        let d = tempfile::tempdir().unwrap();
        let mut m = muxer(d.path());
        let mut client = UnixStream::connect(d.path().join("v.sock")).unwrap();
        client.write_all(b"CONNECT 77\n").unwrap();
        let (req, _) = pump(&mut m, rx);
        assert_eq!(req.op, OP_REQUEST);
        assert!(m.timer_armed);
        // Pretend REQUEST_TIMEOUT has passed; the next tick (1 s) resets the connection.
        for c in m.conns.values_mut() {
            c.deadline = Some(std::time::Instant::now());
        }
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let rst = loop {
            m.process_host_events();
            if let Some((h, _)) = rx(&mut m) {
                break h;
            }
            assert!(std::time::Instant::now() < end, "no RST after the deadline");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!((rst.op, rst.dst_port), (OP_RST, 77));
        assert_eq!(m.conn_count(), 0);
        let mut b = [0u8; 4];
        assert_eq!(client.read(&mut b).unwrap(), 0, "the host client is closed");
        // Nothing waits any more: the timer is off (no idle wake-ups).
        pump(&mut m, |m| (!m.timer_armed).then_some(()));
    }

    #[test]
    fn test_guest_connect_reaches_port_socket_or_gets_rst() {
        let d = tempfile::tempdir().unwrap();
        let mut m = muxer(d.path());
        // Nothing listens on port 7: RST.
        m.send_from_guest(&guest(OP_REQUEST, 1000, 7), &[]);
        let (h, _) = rx(&mut m).unwrap();
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (OP_RST, 7, 1000, 3)
        );
        // A listener on <path>_8: RESPONSE, and data arrives there.
        let l = UnixListener::bind(d.path().join("v.sock_8")).unwrap();
        m.send_from_guest(&guest(OP_REQUEST, 1001, 8), &[]);
        let (h, _) = rx(&mut m).unwrap();
        assert_eq!(h.op, OP_RESPONSE);
        let (mut s, _) = l.accept().unwrap();
        let mut rw = guest(OP_RW, 1001, 8);
        rw.len = 3;
        m.send_from_guest(&rw, b"abc");
        let mut got = [0u8; 3];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        // The host closes: the guest gets SHUTDOWN(both), answers RST, the entry goes.
        drop(s);
        let (h, _) = pump(&mut m, rx);
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
        m.send_from_guest(&guest(OP_RST, 1001, 8), &[]);
        assert_eq!(m.conn_count(), 0);
    }

    #[test]
    fn test_guest_connect_to_full_backlog_is_refused_not_blocked() {
        let d = tempfile::tempdir().unwrap();
        let mut m = muxer(d.path());
        let _l = UnixListener::bind(d.path().join("v.sock_9")).unwrap(); // never accepts
        let start = std::time::Instant::now();
        let mut rst = 0;
        for i in 0..2000 {
            m.send_from_guest(&guest(OP_REQUEST, i, 9), &[]);
            while let Some((h, _)) = rx(&mut m) {
                rst += usize::from(h.op == OP_RST);
            }
        }
        assert!(rst > 0, "a full backlog must refuse");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn test_hostile_packets_dropped_or_reset() {
        let d = tempfile::tempdir().unwrap();
        let mut m = muxer(d.path());
        // Wrong source CID: dropped silently (we cannot answer a CID that is not the guest).
        let mut h = guest(OP_REQUEST, 1, 2);
        h.src_cid = 9;
        m.send_from_guest(&h, &[]);
        assert!(rx(&mut m).is_none());
        // Wrong destination CID, wrong type, lying length, unknown op: RST.
        let mut a = guest(OP_REQUEST, 1, 2);
        a.dst_cid = 5;
        let mut b = guest(OP_REQUEST, 1, 2);
        b.type_ = 2;
        let mut c = guest(OP_RW, 1, 2);
        c.len = 100;
        let e = guest(42, 1, 2);
        for p in [a, b, c, e] {
            m.send_from_guest(&p, &[]);
            let (r, _) = rx(&mut m).expect("an RST");
            assert_eq!(r.op, OP_RST, "for {p:?}");
        }
        // RST for an unknown connection is not answered.
        m.send_from_guest(&guest(OP_RST, 1, 2), &[]);
        assert!(rx(&mut m).is_none());
        // A flood of bad packets leaves bounded RST state.
        for i in 0..10_000 {
            m.send_from_guest(&guest(OP_RW, i, 2), &[]);
        }
        let mut n = 0;
        while rx(&mut m).is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_PENDING_RST);
    }

    #[test]
    fn test_guest_overrunning_credit_gets_rst_and_bounded_memory() {
        let d = tempfile::tempdir().unwrap();
        let mut m = muxer(d.path());
        let l = UnixListener::bind(d.path().join("v.sock_8")).unwrap();
        m.send_from_guest(&guest(OP_REQUEST, 1001, 8), &[]);
        assert_eq!(rx(&mut m).unwrap().0.op, OP_RESPONSE);
        let (_host, _) = l.accept().unwrap(); // never reads
        let chunk = vec![0u8; 4096];
        let mut rw = guest(OP_RW, 1001, 8);
        rw.len = 4096;
        let mut got_rst = false;
        for _ in 0..2 * CONN_BUF_SIZE as usize / 4096 + 64 {
            m.send_from_guest(&rw, &chunk);
            assert!(m.buffered_total <= CONN_BUF_SIZE as usize);
            while let Some((h, _)) = rx(&mut m) {
                got_rst |= h.op == OP_RST;
            }
            if got_rst {
                break;
            }
        }
        assert!(got_rst, "a guest sending past its credit must be reset");
        assert_eq!(m.conn_count(), 0);
        assert_eq!(m.buffered_total, 0);
    }

    #[test]
    fn test_rx_buffer_too_small_for_data_does_not_spin() {
        let d = tempfile::tempdir().unwrap();
        let mut m = muxer(d.path());
        let l = UnixListener::bind(d.path().join("v.sock_8")).unwrap();
        m.send_from_guest(&guest(OP_REQUEST, 1001, 8), &[]);
        assert_eq!(rx(&mut m).unwrap().0.op, OP_RESPONSE);
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"data").unwrap();
        pump(&mut m, |m| m.has_rx().then_some(()));
        // A header-sized buffer: nothing fits, and the call returns.
        let mut small = [0u8; HDR_LEN];
        assert_eq!(m.next_rx(&mut small), None);
        assert!(m.has_rx(), "the data still waits for a bigger buffer");
        let (h, data) = rx(&mut m).unwrap();
        assert_eq!((h.op, data.as_slice()), (OP_RW, &b"data"[..]));
    }

    #[test]
    fn test_half_open_handshakes_time_out_and_free_their_slots() {
        let d = tempfile::tempdir().unwrap();
        let mut m = muxer(d.path());
        m.handshake_timeout = std::time::Duration::from_millis(500);
        // Clients that connect and never send a CONNECT line (or only part of one).
        let mut idle = Vec::new();
        for i in 0..50 {
            let mut c = UnixStream::connect(d.path().join("v.sock")).unwrap();
            if i % 2 == 0 {
                c.write_all(b"CONN").unwrap();
            }
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            idle.push(c);
        }
        pump(&mut m, |m| (m.handshakes.len() == 50).then_some(()));
        let start = std::time::Instant::now();
        pump(&mut m, |m| m.handshakes.is_empty().then_some(()));
        let took = start.elapsed();
        // Within the timeout plus one timer tick.
        assert!(took <= std::time::Duration::from_millis(1600), "{took:?}");
        for mut c in idle {
            let mut b = [0u8; 8];
            match c.read(&mut b) {
                Ok(n) => assert_eq!(n, 0, "closed"),
                Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
            }
        }
        // A well-behaved client still gets through.
        let mut c = UnixStream::connect(d.path().join("v.sock")).unwrap();
        c.write_all(b"CONNECT 1234\n").unwrap();
        let (h, _) = pump(&mut m, rx);
        assert_eq!((h.op, h.dst_port), (OP_REQUEST, 1234));
    }

    #[test]
    fn test_bad_handshakes_close_client() {
        let d = tempfile::tempdir().unwrap();
        let mut m = muxer(d.path());
        for line in [&b"HELLO\n"[..], b"CONNECT abc\n", &[b'A'; 100][..]] {
            let mut c = UnixStream::connect(d.path().join("v.sock")).unwrap();
            c.write_all(line).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            pump(&mut m, |m| (m.handshakes.is_empty()).then_some(()));
            let mut b = [0u8; 8];
            // Closed: EOF, or a reset when our unread bytes were discarded.
            match c.read(&mut b) {
                Ok(n) => assert_eq!(n, 0, "closed for {line:?}"),
                Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{line:?}"),
            }
        }
        assert_eq!(m.conn_count(), 0);
        assert!(rx(&mut m).is_none());
    }

    #[test]
    fn test_connection_cap_refuses_guest_requests() {
        let d = tempfile::tempdir().unwrap();
        let mut m = muxer(d.path());
        let _l = UnixListener::bind(d.path().join("v.sock_9")).unwrap();
        // The listener's backlog is finite, so connect directly with pairs instead.
        for i in 0..MAX_CONNS as u32 {
            let (a, _b) = UnixStream::pair().unwrap();
            let c = Conn::guest_initiated(a, &guest(OP_REQUEST, i, 9), 3);
            m.conns.insert((9, i), c);
        }
        m.send_from_guest(&guest(OP_REQUEST, 99_999, 9), &[]);
        let (h, _) = rx(&mut m).unwrap();
        assert_eq!(h.op, OP_RST);
        assert_eq!(m.conn_count(), MAX_CONNS);
    }
}
