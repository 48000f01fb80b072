//! The host side of hybrid vsock (the Firecracker / Cloud Hypervisor convention), written
//! once: connect to the VM's vsock unix socket, write `CONNECT <port>\n`, read `OK <n>\n`;
//! from then on the stream is the guest's. Blocking ([`connect_blocking`], for CLI commands
//! that make one short exchange) and async ([`connect`], for the supervisor).

use std::path::Path;
use std::time::Duration;

/// Longest handshake reply accepted ("OK 4294967295\n" is 14 bytes).
const MAX_REPLY: usize = 64;
/// How long the async handshake may take.
const ASYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors connecting into the guest.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("Cannot reach the VM's vsock socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Guest refused vsock port {port} (nothing listening there yet?)")]
    Refused { port: u32 },
    #[error("Guest vsock port {port}: bad handshake reply {reply:?}")]
    BadReply { port: u32, reply: String },
    #[error("Timed out connecting to guest vsock port {port}")]
    Timeout { port: u32 },
}

fn socket_error(uds: &Path) -> impl Fn(std::io::Error) -> VsockError + '_ {
    move |source| VsockError::Socket {
        path: uds.display().to_string(),
        source,
    }
}

/// The handshake's request line.
fn request(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// The reply, taken one byte at a time: the guest's data may follow it in the same segment,
/// so nothing past its newline may be read.
struct Reply {
    port: u32,
    line: Vec<u8>,
}

impl Reply {
    fn new(port: u32) -> Self {
        Reply {
            port,
            line: Vec::with_capacity(16),
        }
    }

    /// Takes the next byte; `Some` once the reply is complete (or too long to be one).
    fn push(&mut self, b: u8) -> Option<Result<(), VsockError>> {
        if b != b'\n' {
            self.line.push(b);
            if self.line.len() <= MAX_REPLY {
                return None;
            }
        }
        Some(if self.line.starts_with(b"OK ") {
            Ok(())
        } else {
            Err(VsockError::BadReply {
                port: self.port,
                reply: String::from_utf8_lossy(&self.line).into_owned(),
            })
        })
    }

    /// The stream ended (or failed) before the reply: nothing listens on that port.
    fn cut_off(&self) -> VsockError {
        VsockError::Refused { port: self.port }
    }
}

/// Opens a stream to guest vsock `port` through the hybrid socket `uds`, waiting at most
/// `timeout` for each read of the handshake.
pub fn connect_blocking(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream, VsockError> {
    use std::io::{Read, Write};
    let sock_err = socket_error(uds);
    let mut s = std::os::unix::net::UnixStream::connect(uds).map_err(&sock_err)?;
    s.set_read_timeout(Some(timeout)).map_err(&sock_err)?;
    s.write_all(request(port).as_bytes()).map_err(&sock_err)?;
    let mut reply = Reply::new(port);
    loop {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(1) => {
                if let Some(done) = reply.push(b[0]) {
                    done?;
                    break;
                }
            }
            _ => return Err(reply.cut_off()),
        }
    }
    s.set_read_timeout(None).map_err(&sock_err)?;
    Ok(s)
}

/// Opens a stream to guest vsock `port` through the hybrid socket `uds` (at most 10 s).
pub async fn connect(uds: &Path, port: u32) -> Result<tokio::net::UnixStream, VsockError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let sock_err = socket_error(uds);
        let mut s = tokio::net::UnixStream::connect(uds)
            .await
            .map_err(&sock_err)?;
        s.write_all(request(port).as_bytes())
            .await
            .map_err(&sock_err)?;
        let mut reply = Reply::new(port);
        loop {
            let mut b = [0u8; 1];
            match s.read(&mut b).await {
                Ok(1) => {
                    if let Some(done) = reply.push(b[0]) {
                        done?;
                        return Ok(s);
                    }
                }
                _ => return Err(reply.cut_off()),
            }
        }
    };
    tokio::time::timeout(ASYNC_TIMEOUT, fut)
        .await
        .unwrap_or(Err(VsockError::Timeout { port }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(bytes: &[u8]) -> Option<Result<(), VsockError>> {
        let mut r = Reply::new(1024);
        bytes.iter().find_map(|&b| r.push(b))
    }

    #[test]
    fn test_reply_ok_line_accepted() {
        assert!(matches!(feed(b"OK 1073741824\n"), Some(Ok(()))));
        assert!(feed(b"OK 10").is_none(), "incomplete");
    }

    #[test]
    fn test_reply_other_line_is_bad_reply() {
        assert!(matches!(
            feed(b"NO\n"),
            Some(Err(VsockError::BadReply { port: 1024, .. }))
        ));
    }

    #[test]
    fn test_reply_without_newline_stops_at_cap() {
        let long = vec![b'x'; MAX_REPLY + 10];
        assert!(matches!(
            feed(&long),
            Some(Err(VsockError::BadReply { .. }))
        ));
    }

    #[tokio::test]
    async fn test_connect_leaves_guest_bytes_after_reply_unread() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let d = tempfile::tempdir().expect("tempdir");
        let uds = d.path().join("v.sock");
        let l = tokio::net::UnixListener::bind(&uds).expect("bind");
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.expect("accept");
            let mut req = [0u8; 13];
            c.read_exact(&mut req).await.expect("read");
            assert_eq!(&req, b"CONNECT 1024\n");
            c.write_all(b"OK 99\nhello").await.expect("write");
        });
        let mut s = connect(&uds, 1024).await.expect("connect");
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.expect("data");
        assert_eq!(&rest, b"hello");
    }

    #[test]
    fn test_connect_blocking_refused_when_closed() {
        let d = tempfile::tempdir().expect("tempdir");
        let uds = d.path().join("v.sock");
        let l = std::os::unix::net::UnixListener::bind(&uds).expect("bind");
        let t = std::thread::spawn(move || drop(l.accept()));
        let e = connect_blocking(&uds, 5, Duration::from_secs(5)).expect_err("refused");
        assert!(matches!(e, VsockError::Refused { port: 5 }), "{e}");
        t.join().expect("join");
    }
}
