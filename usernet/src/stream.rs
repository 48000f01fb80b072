//! QEMU `-netdev stream` transport: Ethernet frames over a unix stream socket, each
//! prefixed by its length as a 4-byte big-endian integer. `usernet stream --socket PATH`
//! listens; QEMU connects (`-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH`).
//! One peer at a time; when it disconnects, the next connection is accepted.

use std::io::{self, Read, Write};
use std::path::Path;

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::{Config, UserNet, UserNetError};

const LISTEN_TOKEN: Token = Token(0);
const SIGNAL_TOKEN: Token = Token(1);
const PEER_TOKEN: Token = Token(2);
/// Bytes of encoded frames buffered towards the peer before the stack is throttled.
const OUT_HIGH: usize = 4 << 20;
/// Largest frame accepted from the peer (64 KiB + headroom); larger lengths are a
/// protocol error and close the connection.
const MAX_FRAME: usize = 65536 + 64;

/// Errors of the stream transport.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("Cannot listen on {path}")]
    Listen {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot start the NAT")]
    Net(#[from] UserNetError),
    #[error("Event loop failed")]
    Io(#[source] io::Error),
    #[error("Cannot install signal handlers")]
    Signals(#[source] io::Error),
    #[cfg(target_os = "linux")]
    #[error("Cannot sandbox usernet")]
    Sandbox(#[from] sandbox::LockdownError),
}

/// Decodes length-prefixed frames from a byte stream.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

/// A frame length the decoder refuses.
#[derive(Debug, thiserror::Error)]
#[error("Frame length {0} is out of range 1..={MAX_FRAME}")]
pub struct BadLength(pub usize);

impl Decoder {
    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, BadLength> {
        let avail = &self.buf[self.start..];
        let Some(hdr) = avail.get(..4) else {
            self.compact();
            return Ok(None);
        };
        let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(BadLength(len));
        }
        if avail.len() < 4 + len {
            self.compact();
            return Ok(None);
        }
        let s = self.start + 4;
        self.start = s + len;
        Ok(self.buf.get(s..s + len))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

struct Peer {
    stream: UnixStream,
    decoder: Decoder,
    out: Vec<u8>,
    out_pos: usize,
}

impl Peer {
    /// Writes buffered output; false if the peer is gone.
    fn flush(&mut self) -> bool {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return false,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        true
    }
}

/// Listens on `path` and serves QEMU peers until SIGTERM/SIGINT.
pub fn run(path: &Path, config: Config) -> Result<(), StreamError> {
    let listen_err = |source| StreamError::Listen {
        path: path.to_path_buf(),
        source,
    };
    // Owner-only from the start: a new connection replaces QEMU as the network peer.
    let std_listener =
        sandbox::hostsock::bind_owner_only(path).map_err(|e| listen_err(e.into_io()))?;
    std_listener.set_nonblocking(true).map_err(listen_err)?;
    let listener = UnixListener::from_std(std_listener);
    let net = UserNet::new(config)?;
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(StreamError::Signals)?;
    net.registry()
        .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)
        .map_err(StreamError::Signals)?;
    // Everything it handles from now on comes from the guest: give up root and the calls an
    // attacker would want next (socket, NAT and signal set-up are done).
    #[cfg(target_os = "linux")]
    sandbox::lock_down(sandbox::seccomp::Profile::Device)?;
    tracing::info!(path = %path.display(), "ready");
    let r = serve(net, Some(listener), None, Some(signals));
    let _ = std::fs::remove_file(path);
    r
}

/// Serves one already connected peer (e.g. one end of a socket pair whose other end is a
/// VMM's virtio-net in the same process) until it disconnects. No listener, no signals: the
/// caller owns the process.
pub fn serve_connected(
    stream: std::os::unix::net::UnixStream,
    config: Config,
) -> Result<(), StreamError> {
    stream.set_nonblocking(true).map_err(StreamError::Io)?;
    let net = UserNet::new(config)?;
    serve(net, None, Some(UnixStream::from_std(stream)), None)
}

fn new_peer(net: &UserNet, mut s: UnixStream) -> Option<Peer> {
    net.registry()
        .register(&mut s, PEER_TOKEN, Interest::READABLE | Interest::WRITABLE)
        .ok()?;
    tracing::info!("peer connected");
    Some(Peer {
        stream: s,
        decoder: Decoder::default(),
        out: Vec::new(),
        out_pos: 0,
    })
}

/// The event loop: accepts peers from `listener` (one at a time, a new one replaces the old)
/// or serves `first` alone, returning when a signal arrives or, without a listener, when the
/// peer is gone.
fn serve(
    mut net: UserNet,
    mut listener: Option<UnixListener>,
    first: Option<UnixStream>,
    mut signals: Option<Signals>,
) -> Result<(), StreamError> {
    if let Some(l) = listener.as_mut() {
        net.registry()
            .register(l, LISTEN_TOKEN, Interest::READABLE)
            .map_err(StreamError::Io)?;
    }
    let mut peer: Option<Peer> = first.and_then(|s| new_peer(&net, s));
    if listener.is_none() && peer.is_none() {
        return Ok(());
    }
    let mut ready = Vec::new();
    let mut rbuf = vec![0u8; 256 * 1024];
    loop {
        ready.clear();
        net.wait(None, &mut ready).map_err(StreamError::Io)?;
        if ready.contains(&SIGNAL_TOKEN)
            && signals
                .as_mut()
                .is_some_and(|s| s.pending().next().is_some())
        {
            return Ok(());
        }
        if let Some(l) = listener.as_ref().filter(|_| ready.contains(&LISTEN_TOKEN)) {
            while let Ok((s, _)) = l.accept() {
                if !sandbox::hostsock::peer_allowed(std::os::fd::AsFd::as_fd(&s)) {
                    tracing::warn!("refused a peer of another user; the current peer stays");
                    continue;
                }
                if let Some(mut old) = peer.take() {
                    let _ = net.registry().deregister(&mut old.stream);
                }
                peer = new_peer(&net, s);
            }
        }
        let mut alive = true;
        if let Some(p) = peer.as_mut() {
            // Read everything available (edge-triggered), feeding frames as they complete.
            loop {
                match p.stream.read(&mut rbuf) {
                    Ok(0) => {
                        alive = false;
                        break;
                    }
                    Ok(n) => {
                        p.decoder.push(&rbuf[..n]);
                        loop {
                            match p.decoder.next_frame() {
                                Ok(Some(f)) => net.receive_frame(f),
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::warn!(error = %e, "bad frame from peer: disconnecting");
                                    alive = false;
                                    break;
                                }
                            }
                        }
                        if !alive {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        alive = false;
                        break;
                    }
                }
            }
        }
        net.process();
        if let Some(p) = peer.as_mut() {
            for _ in 0..16 {
                let mut any = false;
                while p.out.len() < OUT_HIGH {
                    let Some(f) = net.take_frame() else { break };
                    p.out.extend_from_slice(&(f.len() as u32).to_be_bytes());
                    p.out.extend_from_slice(&f);
                    net.recycle(f);
                    any = true;
                }
                alive &= p.flush();
                if !any || !alive || !p.out.is_empty() {
                    break;
                }
                net.process();
            }
        } else {
            // No peer: frames for the guest have nowhere to go.
            while let Some(f) = net.take_frame() {
                net.recycle(f);
            }
        }
        if !alive {
            if let Some(mut p) = peer.take() {
                let _ = net.registry().deregister(&mut p.stream);
                tracing::info!("peer disconnected");
            }
            if listener.is_none() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_decoder_reassembles_split_frames() {
        let mut d = Decoder::default();
        let mut wire = Vec::new();
        for f in [&b"abc"[..], &b"hello world"[..]] {
            wire.extend_from_slice(&(f.len() as u32).to_be_bytes());
            wire.extend_from_slice(f);
        }
        let mut got = Vec::new();
        for byte in &wire {
            d.push(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame().expect("valid") {
                got.push(f.to_vec());
            }
        }
        assert_eq!(got, vec![b"abc".to_vec(), b"hello world".to_vec()]);
    }

    #[test]
    fn test_decoder_rejects_bad_lengths() {
        let mut d = Decoder::default();
        d.push(&[0, 0, 0, 0]);
        assert!(d.next_frame().is_err());
        let mut d = Decoder::default();
        d.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().is_err());
    }
}
