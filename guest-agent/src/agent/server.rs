//! The control protocol server (vsock port 1024 in the guest; a unix socket in tests).

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use guest_agent::protocol::{
    write_frame, FrameReader, Health, ProtocolError, Request, Response, CONTROL_PORT,
    PROTOCOL_VERSION,
};

use super::bridge::Duplex;
use tracing::info;

use super::log;
use super::vsock::VsockListener;
use super::{exec, mounts, ports, services, shutdown, sys, udp_relay};

static PID1: AtomicBool = AtomicBool::new(false);
static DEBUG: AtomicBool = AtomicBool::new(false);

fn agent_name() -> String {
    format!("vmctl-guest-agent {}", env!("CARGO_PKG_VERSION"))
}

fn error(message: impl std::fmt::Display) -> Response {
    Response::Error {
        message: message.to_string(),
    }
}

/// Serve the control protocol on vsock [`CONTROL_PORT`] (as PID 1).
pub fn serve_vsock(debug: bool) -> std::io::Result<()> {
    PID1.store(true, Ordering::SeqCst);
    DEBUG.store(debug, Ordering::SeqCst);
    let l = VsockListener::bind(CONTROL_PORT)?;
    info!("control server: vsock port {CONTROL_PORT}");
    loop {
        match l.accept() {
            Ok(s) => {
                std::thread::spawn(move || handle(s));
            }
            Err(e) => {
                info!("control server: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serve the control protocol on TCP `0.0.0.0:port` (as PID 1; `vmctl.control_tcp`).
pub fn serve_tcp(port: u16) -> std::io::Result<()> {
    PID1.store(true, Ordering::SeqCst);
    let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
    info!("control server: tcp port {port}");
    for s in l.incoming() {
        match s {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                std::thread::spawn(move || handle(s));
            }
            Err(e) => info!("control server: accept: {e}"),
        }
    }
    Ok(())
}

/// Serve the control protocol on a unix socket, without PID-1 duties (tests).
pub fn serve_unix(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    for s in l.incoming() {
        let s = s?;
        std::thread::spawn(move || handle(s));
    }
    Ok(())
}

/// Serve one connection until the peer closes it or a stream request ends it.
pub fn handle<S: Duplex>(conn: S) {
    if let Err(e) = session(conn) {
        if !matches!(e, ProtocolError::Closed) {
            info!("control connection: {e}");
        }
    }
}

fn session<S: Duplex>(mut conn: S) -> Result<(), ProtocolError> {
    let mut reader = FrameReader::new(conn.split()?);
    match reader.expect::<Request>()? {
        Request::Hello { version } if version == PROTOCOL_VERSION => {
            write_frame(
                &mut conn,
                &Response::Hello {
                    version: PROTOCOL_VERSION,
                    agent: agent_name(),
                },
            )?;
        }
        Request::Hello { version } => {
            write_frame(
                &mut conn,
                &error(format!("unsupported protocol version {version}")),
            )?;
            return Err(ProtocolError::Version(version));
        }
        other => {
            write_frame(&mut conn, &error("expected hello"))?;
            return Err(ProtocolError::Unexpected(format!("{other:?}")));
        }
    }
    loop {
        let req = match reader.read::<Request>() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => {
                write_frame(&mut conn, &error(&e))?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if DEBUG.load(Ordering::Relaxed) {
            info!("control request: {req:?}");
        }
        let pid1 = PID1.load(Ordering::SeqCst);
        let resp = match req {
            Request::Health => Response::Health(Health {
                docker_ready: services::docker_ready(),
                uptime_ms: log::uptime_ms(),
                phases: log::phases(),
            }),
            Request::Exec(r) => {
                return exec::run(r, reader, conn);
            }
            Request::SetClock { .. } | Request::MountShare { .. } if !pid1 => {
                error("not PID 1: refused")
            }
            Request::SetClock { unix_nanos } => match sys::set_clock(unix_nanos) {
                Ok(()) => Response::Ok,
                Err(e) => error(format!("set clock: {e}")),
            },
            Request::MountShare { tag, path } => {
                if !path.starts_with('/') || path.split('/').any(|c| c == "..") || tag.is_empty() {
                    error("share path must be absolute without '..', tag non-empty")
                } else {
                    match mounts::share(&tag, &path) {
                        Ok(()) => Response::Ok,
                        Err(e) => error(format!("mount {tag} on {path}: {e}")),
                    }
                }
            }
            Request::WatchPorts => return watch_ports(reader, conn),
            Request::Forward { port, addr } => return forward(reader, conn, port, addr.as_deref()),
            Request::ReplayEvents { path } => return super::events::replay(reader, conn, &path),
            Request::ServeFs { path, read_only } => {
                return super::fs_server::serve(reader, conn, &path, read_only);
            }
            Request::ForwardUdp { port, addr } => {
                return udp_relay::relay(reader, conn, port, addr.as_deref())
            }
            Request::Shutdown { reboot } => {
                write_frame(&mut conn, &Response::Ok)?;
                if pid1 {
                    shutdown::run(reboot);
                } else {
                    std::process::exit(0);
                }
                return Ok(());
            }
            other => error(format!("unexpected request {other:?}")),
        };
        write_frame(&mut conn, &resp)?;
    }
}

/// Where a forward connects: the listener's own address when it is a specific one, else
/// the guest's loopback (v4 first, then v6). `Err` for an address that is not an IP.
pub(super) fn forward_targets(
    addr: Option<&str>,
    port: u16,
) -> Result<Vec<std::net::SocketAddr>, String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let loopback = vec![
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
    ];
    let Some(a) = addr else {
        return Ok(loopback);
    };
    let ip: IpAddr = a
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("forward address {a:?} is not an IP address"))?;
    if ip.is_unspecified() {
        Ok(loopback)
    } else {
        Ok(vec![SocketAddr::new(ip, port)])
    }
}

/// Connect to a guest port (see [`forward_targets`]) and splice it with the control
/// connection.
fn forward<S: Duplex>(
    reader: FrameReader<S>,
    mut conn: S,
    port: u16,
    addr: Option<&str>,
) -> Result<(), ProtocolError> {
    let targets = match forward_targets(addr, port) {
        Ok(t) => t,
        Err(e) => return write_frame(&mut conn, &error(e)),
    };
    let mut target = Err(std::io::Error::from(std::io::ErrorKind::AddrNotAvailable));
    for t in &targets {
        target = std::net::TcpStream::connect_timeout(t, Duration::from_secs(5));
        if target.is_ok() {
            break;
        }
    }
    match target {
        Ok(tcp) => {
            let _ = tcp.set_nodelay(true);
            write_frame(&mut conn, &Response::Ok)?;
            // The host sends nothing after `Forward` until it reads `Ok`, so the frame
            // reader holds no buffered bytes of the stream.
            drop(reader);
            super::bridge::splice(conn, tcp)?;
            Ok(())
        }
        Err(e) => {
            write_frame(&mut conn, &error(format!("guest port {port}: {e}")))?;
            Ok(())
        }
    }
}

fn watch_ports<S: Duplex>(mut reader: FrameReader<S>, mut conn: S) -> Result<(), ProtocolError> {
    let closed = Arc::new(AtomicBool::new(false));
    let c = closed.clone();
    std::thread::spawn(move || {
        while let Ok(Some(_)) | Err(ProtocolError::Malformed(_)) = reader.read::<Request>() {}
        c.store(true, Ordering::SeqCst);
    });
    let mut known = Default::default();
    while !closed.load(Ordering::SeqCst) {
        let now = ports::snapshot();
        for ev in ports::diff(&known, &now) {
            write_frame(&mut conn, &Response::Port(ev))?;
        }
        known = now;
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn hello(reader: &mut FrameReader<UnixStream>, w: &mut UnixStream) {
        write_frame(
            w,
            &Request::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        assert!(matches!(
            reader.expect::<Response>().unwrap(),
            Response::Hello { .. }
        ));
    }

    #[test]
    fn test_forward_splices_to_guest_loopback_port() {
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        let (host, agent) = UnixStream::pair().unwrap();
        std::thread::spawn(move || handle(agent));
        let mut w = host.try_clone().unwrap();
        let mut reader = FrameReader::new(host.try_clone().unwrap());
        hello(&mut reader, &mut w);
        write_frame(&mut w, &Request::Forward { port, addr: None }).unwrap();
        assert_eq!(reader.expect::<Response>().unwrap(), Response::Ok);
        drop(reader);
        w.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        let mut r = host;
        r.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
    }

    #[test]
    fn test_forward_reaches_listener_on_specific_address_only_with_addr() {
        // A listener on one specific address (127.0.0.2, not the loopback 127.0.0.1 the
        // agent tries by default), like `docker run -p 10.0.2.15:8080:80` in the guest.
        let echo = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            s.write_all(b"specific").unwrap();
        });
        let open = |addr: Option<&str>| {
            let (host, agent) = UnixStream::pair().unwrap();
            std::thread::spawn(move || handle(agent));
            let mut w = host.try_clone().unwrap();
            let mut reader = FrameReader::new(host.try_clone().unwrap());
            hello(&mut reader, &mut w);
            drop(reader);
            let addr = addr.map(str::to_string);
            write_frame(&mut w, &Request::Forward { port, addr }).unwrap();
            // Byte by byte, as the supervisor reads it: the listener speaks first, so a
            // buffered reader would swallow its greeting along with the reply.
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            let mut r = &host;
            while r.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            let resp: Response = serde_json::from_slice(&line).unwrap();
            (resp, host)
        };
        let (resp, _) = open(None);
        assert!(matches!(resp, Response::Error { .. }), "{resp:?}");
        let (resp, _) = open(Some("not-an-ip"));
        assert!(
            matches!(&resp, Response::Error { message } if message.contains("not an IP")),
            "{resp:?}"
        );
        let (resp, mut host) = open(Some("127.0.0.2"));
        assert_eq!(resp, Response::Ok);
        let mut back = [0u8; 8];
        host.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"specific");
    }

    #[test]
    fn test_forward_targets_wildcard_is_loopback() {
        let t = forward_targets(Some("0.0.0.0"), 80).unwrap();
        assert_eq!(t[0].to_string(), "127.0.0.1:80");
        let t = forward_targets(Some("[::]"), 80).unwrap();
        assert_eq!(t.len(), 2);
        let t = forward_targets(Some("::1"), 80).unwrap();
        assert_eq!(t, vec!["[::1]:80".parse().unwrap()]);
    }

    #[test]
    fn test_forward_to_closed_port_reports_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (host, agent) = UnixStream::pair().unwrap();
        std::thread::spawn(move || handle(agent));
        let mut w = host.try_clone().unwrap();
        let mut reader = FrameReader::new(host);
        hello(&mut reader, &mut w);
        write_frame(&mut w, &Request::Forward { port, addr: None }).unwrap();
        assert!(matches!(
            reader.expect::<Response>().unwrap(),
            Response::Error { .. }
        ));
    }
}
