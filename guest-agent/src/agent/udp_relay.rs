//! `ForwardUdp`: one host UDP flow (one client address on the host's forwarded port) relayed
//! to the guest's `127.0.0.1:port` through a socket of its own, so replies find their way back
//! to the right client. Datagrams on the control connection are framed as a big-endian `u16`
//! length and the payload (`protocol::MAX_DATAGRAM` at most).

use std::io::{self, Read, Write};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use guest_agent::protocol::{write_frame, FrameReader, ProtocolError, Response, MAX_DATAGRAM};

use super::bridge::Duplex;

/// How often the guest → host side checks whether the host closed the flow.
const POLL: Duration = Duration::from_millis(500);

/// Reads one framed datagram into `buf`; `Ok(None)` at a clean end of the stream.
pub fn read_datagram<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = usize::from(u16::from_be_bytes(len));
    if n > MAX_DATAGRAM || n > buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("datagram of {n} bytes is over the limit of {MAX_DATAGRAM}"),
        ));
    }
    r.read_exact(&mut buf[..n])?;
    Ok(Some(n))
}

/// Writes one framed datagram (length prefix and payload in one write).
pub fn write_datagram<W: Write>(w: &mut W, data: &[u8]) -> io::Result<()> {
    let len = u16::try_from(data.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_DATAGRAM)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "datagram too large"))?;
    let mut frame = Vec::with_capacity(2 + data.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(data);
    w.write_all(&frame)
}

/// Answers `Ok` and relays datagrams until the host closes the connection.
pub fn relay<S: Duplex>(
    reader: FrameReader<S>,
    mut conn: S,
    port: u16,
    addr: Option<&str>,
) -> Result<(), ProtocolError> {
    // Only the first target: a UDP "connect" always succeeds, so there is no fallback to try.
    let target = match super::server::forward_targets(addr, port) {
        Ok(t) => t.into_iter().next(),
        Err(message) => return write_frame(&mut conn, &Response::Error { message }),
    };
    let Some(target) = target else {
        return write_frame(
            &mut conn,
            &Response::Error {
                message: format!("guest udp port {port}: no address"),
            },
        );
    };
    let local: std::net::SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match UdpSocket::bind(local).and_then(|s| {
        s.connect(target)?;
        s.set_read_timeout(Some(POLL))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            return write_frame(
                &mut conn,
                &Response::Error {
                    message: format!("guest udp port {port}: {e}"),
                },
            )
        }
    };
    write_frame(&mut conn, &Response::Ok)?;
    // The host sends nothing after `ForwardUdp` until it reads `Ok`, so the frame reader
    // holds no buffered bytes of the stream.
    drop(reader);

    let done = Arc::new(AtomicBool::new(false));
    let to_host = {
        let sock = sock.try_clone()?;
        let mut out = conn.split()?;
        let done = done.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while !done.load(Ordering::SeqCst) {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        if write_datagram(&mut out, &buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    // ECONNREFUSED: nothing listens (yet); the datagram is lost, as UDP would.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            out.close_write();
        })
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let result = loop {
        match read_datagram(&mut conn, &mut buf) {
            Ok(Some(n)) => {
                // A refused send (nothing listening right now) drops the datagram, like UDP.
                let _ = sock.send(&buf[..n]);
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(ProtocolError::Io(e)),
        }
    };
    done.store(true, Ordering::SeqCst);
    let _ = to_host.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent::protocol::{Request, PROTOCOL_VERSION};
    use std::os::unix::net::UnixStream;

    fn echo_server() -> (u16, std::thread::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 70000];
            for _ in 0..3 {
                let (n, from) = s.recv_from(&mut buf).unwrap();
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                s.send_to(&reply, from).unwrap();
            }
        });
        (port, h)
    }

    fn open(port: u16) -> UnixStream {
        let (host, agent) = UnixStream::pair().unwrap();
        std::thread::spawn(move || super::super::server::handle(agent));
        let mut w = host.try_clone().unwrap();
        let mut reader = FrameReader::new(host.try_clone().unwrap());
        write_frame(
            &mut w,
            &Request::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        assert!(matches!(
            reader.expect::<Response>().unwrap(),
            Response::Hello { .. }
        ));
        write_frame(&mut w, &Request::ForwardUdp { port, addr: None }).unwrap();
        assert_eq!(reader.expect::<Response>().unwrap(), Response::Ok);
        host
    }

    #[test]
    fn test_datagrams_round_trip_with_boundaries_kept() {
        let (port, server) = echo_server();
        let mut host = open(port);
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let big = vec![7u8; 60000];
        for payload in [&b"a"[..], &b""[..], &big[..]] {
            write_datagram(&mut host, payload).unwrap();
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let n = read_datagram(&mut host, &mut buf).unwrap().unwrap();
            assert_eq!(&buf[..5], b"echo:");
            assert_eq!(&buf[5..n], payload);
        }
        server.join().unwrap();
        // Closing the host side ends the relay: the agent closes its side too.
        host.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn test_oversized_length_ends_the_relay_without_reading_it() {
        let (port, _server) = echo_server();
        let mut host = open(port);
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(&u16::MAX.to_be_bytes()).unwrap();
        let mut rest = Vec::new();
        // The agent gives up on the flow and closes the connection.
        host.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn test_framing_rejects_truncated_payload() {
        let mut input: &[u8] = &[0, 5, b'a', b'b'];
        let mut buf = [0u8; 16];
        assert!(read_datagram(&mut input, &mut buf).is_err());
        let mut empty: &[u8] = &[];
        assert_eq!(read_datagram(&mut empty, &mut buf).unwrap(), None);
    }
}
