//! One stream connection between a guest port and a host unix socket: its state machine and
//! the credit accounting of both directions (virtio 1.2 §5.10.6.3).
//!
//! Guest → host: payload is written to the host socket at once; what the socket does not take
//! waits in `tx_buf`, which never grows past the `buf_alloc` we advertise (a guest that sends
//! beyond its credit gets RST). Host → guest: we read from the host socket only as much as the
//! guest's advertised credit allows, straight into the guest's rx buffer.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::packet::*;

/// The receive buffer we advertise per connection (`buf_alloc`), and the most guest data we
/// ever hold for one connection.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Largest payload we put in one rx packet (Linux guests post 4 KiB rx buffers).
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// How long the guest has to answer our REQUEST (generous: TCG guests are slow).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest has to answer our SHUTDOWN(both) with RST (Linux waits 8 s itself).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(8);
/// Send a CREDIT_UPDATE when the guest's view of our free space lags by this much.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
    /// RST queued: the connection is removed once it is sent.
    Closing,
}

/// Control packets waiting for an rx buffer, in send priority order.
const P_RST: u8 = 1;
const P_REQUEST: u8 = 2;
const P_RESPONSE: u8 = 4;
const P_SHUTDOWN: u8 = 8;
const P_CREDIT_UPDATE: u8 = 16;
const P_CREDIT_REQUEST: u8 = 32;

/// What the connection table must do after the connection saw a guest packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// Remove it now without telling the guest (the guest sent RST).
    Remove,
}

/// Why a guest packet was refused; the connection is reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    #[error("guest sent {len} bytes with only {free} bytes of credit")]
    CreditExceeded { len: usize, free: usize },
    #[error("guest sent {op} in state {state:?}")]
    UnexpectedOp { op: &'static str, state: State },
    #[error("guest sent data after SHUTDOWN")]
    DataAfterShutdown,
    #[error("host socket failed: {0}")]
    Host(String),
}

/// A connection; `local_port` is the host-side port, `peer_port` the guest's.
pub struct Conn {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    guest_cid: u64,
    pub state: State,
    pending: u8,
    shutdown_flags: u32,
    // Guest → host.
    tx_buf: VecDeque<u8>,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// The guest's SHUTDOWN flags so far.
    peer_shut: u32,
    host_write_shut: bool,
    /// The guest closed; RST once `tx_buf` reached the host.
    draining: bool,
    // Host → guest.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    credit_requested: bool,
    /// The host socket may have data (edge-triggered epoll: cleared only on EAGAIN).
    pub readable: bool,
    /// The host peer hung up completely (EPOLLHUP), not just shut its write side.
    pub host_hup: bool,
    host_eof: bool,
    /// Queued in the table's rx ready list.
    pub in_ready: bool,
    /// When the guest's answer to our REQUEST or SHUTDOWN(both) is overdue (then: RST).
    pub deadline: Option<Instant>,
}

impl Conn {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, guest_cid: u64) -> Conn {
        Conn {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state: State::LocalInit,
            pending: 0,
            shutdown_flags: 0,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            peer_shut: 0,
            host_write_shut: false,
            draining: false,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            credit_requested: false,
            readable: false,
            host_hup: false,
            host_eof: false,
            in_ready: false,
            deadline: None,
        }
    }

    /// A host client asked for guest port `peer_port`: REQUEST is queued.
    pub fn host_initiated(stream: UnixStream, local_port: u32, peer_port: u32, cid: u64) -> Conn {
        let mut c = Conn::new(stream, local_port, peer_port, cid);
        c.pending = P_REQUEST;
        c
    }

    /// The guest's REQUEST reached a host listener: RESPONSE is queued.
    pub fn guest_initiated(stream: UnixStream, req: &Header, cid: u64) -> Conn {
        let mut c = Conn::new(stream, req.dst_port, req.src_port, cid);
        c.state = State::Established;
        c.pending = P_RESPONSE;
        c.update_peer_credit(req);
        c
    }

    /// Guest data accepted but not yet written to the host socket.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// How many more bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Resets the connection: RST goes to the guest, then the table removes it.
    pub fn reset(&mut self) {
        self.state = State::Closing;
        self.pending = P_RST;
    }

    /// Handles a guest packet addressed to this connection.
    pub fn recv(&mut self, h: &Header, payload: &[u8]) -> Result<Verdict, ConnError> {
        if h.op == OP_RST {
            return Ok(Verdict::Remove);
        }
        if self.state == State::Closing {
            return Ok(Verdict::Keep);
        }
        self.update_peer_credit(h);
        match (self.state, h.op) {
            (State::LocalInit, OP_RESPONSE) => {
                self.state = State::Established;
                self.deadline = None;
                // The hybrid-vsock handshake's answer: small, on a fresh socket, so it fits
                // the socket buffer; a client that cannot take 16 bytes is reset.
                let ok = format!("OK {}\n", self.local_port);
                self.stream
                    .write_all(ok.as_bytes())
                    .map_err(|e| ConnError::Host(e.to_string()))?;
            }
            (State::Established, OP_RW) => self.recv_data(payload)?,
            (State::Established, OP_CREDIT_UPDATE) => self.credit_requested = false,
            (State::Established, OP_CREDIT_REQUEST) => self.pending |= P_CREDIT_UPDATE,
            (State::Established, OP_SHUTDOWN) => {
                self.peer_shut |= h.flags & SHUTDOWN_BOTH;
                if self.peer_shut == SHUTDOWN_BOTH {
                    // The guest closed: deliver what it sent, then RST (as Linux expects).
                    self.draining = true;
                    self.flush();
                } else {
                    self.maybe_shut_host_write();
                }
            }
            (state, op) => {
                return Err(ConnError::UnexpectedOp {
                    op: op_name(op),
                    state,
                })
            }
        }
        Ok(Verdict::Keep)
    }

    fn recv_data(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        if self.peer_shut & SHUTDOWN_SEND != 0 {
            return Err(ConnError::DataAfterShutdown);
        }
        let free = CONN_BUF_SIZE as usize - self.tx_buf.len();
        if payload.len() > free {
            return Err(ConnError::CreditExceeded {
                len: payload.len(),
                free,
            });
        }
        let mut rest = payload;
        if self.tx_buf.is_empty() && !self.host_write_shut {
            match self.stream.write(rest) {
                Ok(n) => {
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Host(e.to_string())),
            }
        }
        self.tx_buf.extend(rest);
        self.check_credit_update();
        Ok(())
    }

    /// Writes buffered guest data to the host socket (on EPOLLOUT). Errors reset the
    /// connection.
    pub fn flush(&mut self) {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.tx_buf.clear();
                    if self.state != State::Closing {
                        self.reset();
                    }
                    return;
                }
            }
        }
        if self.tx_buf.is_empty() && self.draining && self.state != State::Closing {
            self.reset();
            return;
        }
        if self.tx_buf.is_empty() {
            // Release the memory of a connection that had a burst.
            if self.tx_buf.capacity() > 64 * 1024 {
                self.tx_buf.shrink_to(0);
            }
            self.maybe_shut_host_write();
        }
        self.check_credit_update();
    }

    fn maybe_shut_host_write(&mut self) {
        if self.peer_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty() && !self.host_write_shut {
            // Half-close: the host reader sees EOF, and can still write back.
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
    }

    fn check_credit_update(&mut self) {
        if self.state == State::Established
            && self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD
        {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    /// Whether `produce` would emit a packet now.
    pub fn has_rx(&self) -> bool {
        self.pending != 0 || self.can_send_data()
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && !self.draining
            && self.readable
            && !self.host_eof
            && self.peer_shut & SHUTDOWN_RCV == 0
            && (self.peer_credit() > 0 || !self.credit_requested)
    }

    fn header(&mut self, op: u16) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Writes the next packet for the guest (header + payload) into `buf`; returns its length.
    /// `buf` must hold at least a header.
    pub fn produce(&mut self, buf: &mut [u8]) -> Option<usize> {
        if buf.len() < HDR_LEN {
            return None;
        }
        for bit in [
            P_RST,
            P_REQUEST,
            P_RESPONSE,
            P_SHUTDOWN,
            P_CREDIT_UPDATE,
            P_CREDIT_REQUEST,
        ] {
            if self.pending & bit == 0 {
                continue;
            }
            self.pending &= !bit;
            let op = match bit {
                P_RST => OP_RST,
                P_REQUEST => OP_REQUEST,
                P_RESPONSE => OP_RESPONSE,
                P_SHUTDOWN => OP_SHUTDOWN,
                P_CREDIT_UPDATE => OP_CREDIT_UPDATE,
                _ => OP_CREDIT_REQUEST,
            };
            let mut h = self.header(op);
            if bit == P_SHUTDOWN {
                h.flags = self.shutdown_flags;
                if h.flags == SHUTDOWN_BOTH {
                    self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                }
            }
            if bit == P_REQUEST {
                self.deadline = Some(Instant::now() + REQUEST_TIMEOUT);
            }
            buf[..HDR_LEN].copy_from_slice(&h.encode());
            return Some(HDR_LEN);
        }
        if !self.can_send_data() {
            return None;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            // Out of the guest's credit: ask once, and wait for its CREDIT_UPDATE.
            self.credit_requested = true;
            let h = self.header(OP_CREDIT_REQUEST);
            buf[..HDR_LEN].copy_from_slice(&h.encode());
            return Some(HDR_LEN);
        }
        let room = (buf.len() - HDR_LEN).min(credit).min(MAX_PKT_PAYLOAD);
        if room == 0 {
            return None;
        }
        let n = loop {
            match self.stream.read(&mut buf[HDR_LEN..HDR_LEN + room]) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return self.produce_control_after_read(buf);
                }
                Err(_) => {
                    self.reset();
                    return self.produce(buf);
                }
            }
        };
        if n == 0 {
            // EOF: the host shut its write side (or closed, when it hung up).
            self.host_eof = true;
            self.readable = false;
            self.shutdown_flags = if self.host_hup {
                SHUTDOWN_BOTH
            } else {
                SHUTDOWN_SEND
            };
            self.pending |= P_SHUTDOWN;
            return self.produce(buf);
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
        let mut h = self.header(OP_RW);
        h.len = n as u32;
        buf[..HDR_LEN].copy_from_slice(&h.encode());
        Some(HDR_LEN + n)
    }

    fn produce_control_after_read(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.pending != 0 {
            self.produce(buf)
        } else {
            None
        }
    }

    /// Resets the connection if the guest's answer is overdue at `now`; true if it did.
    pub fn expire(&mut self, now: Instant) -> bool {
        match self.deadline {
            Some(d) if d <= now && self.state != State::Closing => {
                self.deadline = None;
                self.reset();
                true
            }
            _ => false,
        }
    }

    /// After the RST went out, the connection is done.
    pub fn finished(&self) -> bool {
        self.state == State::Closing && self.pending & P_RST == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn guest_hdr(op: u16) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: 80,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 8192,
            ..Header::default()
        }
    }

    fn next(c: &mut Conn) -> Option<(Header, Vec<u8>)> {
        let mut buf = vec![0u8; HDR_LEN + 4096];
        let n = c.produce(&mut buf)?;
        let h = Header::from_slice(&buf[..n]).unwrap();
        assert_eq!(h.len as usize, n - HDR_LEN);
        Some((h, buf[HDR_LEN..n].to_vec()))
    }

    #[test]
    fn test_guest_initiated_response_then_data_both_ways() {
        let (ours, mut theirs) = pair();
        let mut c = Conn::guest_initiated(ours, &guest_hdr(OP_REQUEST), 3);
        let (h, _) = next(&mut c).unwrap();
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (OP_RESPONSE, 80, 5000, 3)
        );
        assert_eq!(h.buf_alloc, CONN_BUF_SIZE);
        assert!(next(&mut c).is_none());

        let mut rw = guest_hdr(OP_RW);
        rw.len = 5;
        assert_eq!(c.recv(&rw, b"hello"), Ok(Verdict::Keep));
        let mut got = [0u8; 5];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");

        theirs.write_all(b"world").unwrap();
        c.readable = true;
        let (h, data) = next(&mut c).unwrap();
        assert_eq!((h.op, h.fwd_cnt), (OP_RW, 5));
        assert_eq!(data, b"world");
        // Drained: the next read hits EAGAIN and clears `readable`.
        assert!(next(&mut c).is_none());
        assert!(!c.readable);
    }

    #[test]
    fn test_host_to_guest_never_exceeds_peer_credit() {
        let (ours, mut theirs) = pair();
        let mut req = guest_hdr(OP_REQUEST);
        req.buf_alloc = 1000;
        let mut c = Conn::guest_initiated(ours, &req, 3);
        next(&mut c).unwrap(); // RESPONSE
        theirs.write_all(&[7u8; 3000]).unwrap();
        c.readable = true;
        let mut sent = 0;
        while let Some((h, d)) = next(&mut c) {
            if h.op == OP_CREDIT_REQUEST {
                break;
            }
            assert_eq!(h.op, OP_RW);
            sent += d.len();
        }
        assert_eq!(sent, 1000, "sent more than the guest's buf_alloc");
        assert!(!c.has_rx(), "must wait for the guest's credit update");
        // The guest consumed 600 bytes.
        let mut upd = guest_hdr(OP_CREDIT_UPDATE);
        upd.buf_alloc = 1000;
        upd.fwd_cnt = 600;
        c.recv(&upd, &[]).unwrap();
        let (h, d) = next(&mut c).unwrap();
        assert_eq!((h.op, d.len()), (OP_RW, 600));
    }

    #[test]
    fn test_guest_ignoring_our_credit_is_refused() {
        let (ours, _theirs) = pair(); // nobody reads: everything lands in tx_buf
        let mut c = Conn::guest_initiated(ours, &guest_hdr(OP_REQUEST), 3);
        let chunk = vec![1u8; 4096];
        let mut rw = guest_hdr(OP_RW);
        rw.len = chunk.len() as u32;
        let mut accepted = 0usize;
        let err = loop {
            match c.recv(&rw, &chunk) {
                Ok(_) => accepted += chunk.len(),
                Err(e) => break e,
            }
            assert!(accepted < 4 * CONN_BUF_SIZE as usize, "never refused");
        };
        assert!(matches!(err, ConnError::CreditExceeded { .. }), "{err}");
        assert!(c.buffered() <= CONN_BUF_SIZE as usize);
    }

    #[test]
    fn test_credit_update_sent_after_host_drains() {
        let (ours, mut theirs) = pair();
        let mut c = Conn::guest_initiated(ours, &guest_hdr(OP_REQUEST), 3);
        next(&mut c).unwrap();
        let chunk = vec![2u8; 4096];
        let mut rw = guest_hdr(OP_RW);
        rw.len = 4096;
        // 128 KiB: more than the update threshold once the host has read it all.
        for _ in 0..32 {
            c.recv(&rw, &chunk).unwrap();
        }
        let mut sink = vec![0u8; 128 * 1024];
        let mut total = 0;
        while total < sink.len() {
            c.flush();
            total += theirs.read(&mut sink[total..]).unwrap();
        }
        c.flush();
        let (h, _) = next(&mut c).unwrap();
        assert_eq!(h.op, OP_CREDIT_UPDATE);
        assert_eq!(h.fwd_cnt, 128 * 1024);
    }

    #[test]
    fn test_host_initiated_response_writes_ok_line() {
        let (ours, mut theirs) = pair();
        let mut c = Conn::host_initiated(ours, 1 << 30, 2375, 3);
        let (h, _) = next(&mut c).unwrap();
        assert_eq!((h.op, h.src_port, h.dst_port), (OP_REQUEST, 1 << 30, 2375));
        let mut resp = guest_hdr(OP_RESPONSE);
        resp.src_port = 2375;
        resp.dst_port = 1 << 30;
        c.recv(&resp, &[]).unwrap();
        assert_eq!(c.state, State::Established);
        let mut line = [0u8; 14];
        theirs.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
    }

    #[test]
    fn test_half_close_both_ways() {
        let (ours, mut theirs) = pair();
        let mut c = Conn::guest_initiated(ours, &guest_hdr(OP_REQUEST), 3);
        next(&mut c).unwrap();
        // Guest shuts its send side: the host reader sees EOF but can still write.
        let mut sh = guest_hdr(OP_SHUTDOWN);
        sh.flags = SHUTDOWN_SEND;
        c.recv(&sh, &[]).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(theirs.read(&mut b).unwrap(), 0);
        theirs.write_all(b"late").unwrap();
        theirs.shutdown(Shutdown::Write).unwrap();
        c.readable = true;
        let (h, d) = next(&mut c).unwrap();
        assert_eq!((h.op, d.as_slice()), (OP_RW, &b"late"[..]));
        let (h, _) = next(&mut c).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        // The guest closes: RST, then the connection is finished.
        sh.flags = SHUTDOWN_BOTH;
        c.recv(&sh, &[]).unwrap();
        let (h, _) = next(&mut c).unwrap();
        assert_eq!(h.op, OP_RST);
        assert!(c.finished());
    }

    #[test]
    fn test_unanswered_request_and_shutdown_expire_to_rst() {
        let (ours, _t) = pair();
        let mut c = Conn::host_initiated(ours, 1 << 30, 2375, 3);
        assert!(
            !c.expire(Instant::now() + REQUEST_TIMEOUT * 2),
            "no deadline before REQUEST"
        );
        assert_eq!(next(&mut c).unwrap().0.op, OP_REQUEST);
        assert!(!c.expire(Instant::now()));
        assert!(c.expire(Instant::now() + REQUEST_TIMEOUT));
        assert_eq!(next(&mut c).unwrap().0.op, OP_RST);
        assert!(c.finished());

        // The host hung up; the guest never answers our SHUTDOWN(both).
        let (ours, theirs) = pair();
        let mut c = Conn::guest_initiated(ours, &guest_hdr(OP_REQUEST), 3);
        next(&mut c).unwrap();
        drop(theirs);
        c.readable = true;
        c.host_hup = true;
        let (h, _) = next(&mut c).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
        assert!(c.expire(Instant::now() + CLOSE_TIMEOUT));
        assert_eq!(next(&mut c).unwrap().0.op, OP_RST);
    }

    #[test]
    fn test_unexpected_ops_and_data_after_shutdown_are_errors() {
        let (ours, _t) = pair();
        let mut c = Conn::guest_initiated(ours, &guest_hdr(OP_REQUEST), 3);
        assert!(c.recv(&guest_hdr(OP_REQUEST), &[]).is_err());
        assert!(c.recv(&guest_hdr(99), &[]).is_err());
        let mut sh = guest_hdr(OP_SHUTDOWN);
        sh.flags = SHUTDOWN_SEND;
        c.recv(&sh, &[]).unwrap();
        let mut rw = guest_hdr(OP_RW);
        rw.len = 1;
        assert_eq!(c.recv(&rw, b"x"), Err(ConnError::DataAfterShutdown));
        assert_eq!(c.recv(&guest_hdr(OP_RST), &[]), Ok(Verdict::Remove));
    }
}
