//! Byte streams into the guest through the agent's control port: a control connection that
//! says hello and then asks `Forward` (TCP), `ForwardUdp` or `ReplayEvents` stops carrying
//! frames and carries the stream. Shared by TCP and UDP port forwarding and host file events.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use guest_agent::protocol::{self, ProtocolError, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::vsock::{self, VsockError};

/// Where forwarded connections go in the guest (`None`: the agent's loopback); updated as
/// guest listeners come and go.
pub(super) type Target = Arc<std::sync::Mutex<Option<IpAddr>>>;

/// The guest address connections should go to now (`None`: the agent's loopback).
pub(super) fn current_target(target: &Target) -> Option<String> {
    target.lock().ok().and_then(|t| *t).map(|ip| ip.to_string())
}

/// Longest reply line read here: the answers to `Hello` and to the stream request are short,
/// and the guest's stream bytes follow them.
const MAX_REPLY: usize = 4096;

/// Errors opening a stream into the guest.
#[derive(Debug, thiserror::Error)]
pub(super) enum StreamError {
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("Guest agent reply longer than {MAX_REPLY} bytes")]
    ReplyTooLong,
    #[error("Guest agent refused the stream: {0}")]
    Refused(String),
}

/// Reads one reply frame byte by byte, so that none of the stream after it is consumed.
async fn read_reply(s: &mut UnixStream) -> Result<Response, StreamError> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) if b[0] == b'\n' => return Ok(protocol::decode(&line)?),
            Ok(1) => line.push(b[0]),
            Ok(_) => return Err(ProtocolError::Closed.into()),
            Err(e) => return Err(ProtocolError::Io(e).into()),
        }
        if line.len() > MAX_REPLY {
            return Err(StreamError::ReplyTooLong);
        }
    }
}

async fn call(s: &mut UnixStream, req: &Request) -> Result<Response, StreamError> {
    let frame = protocol::encode(req)?;
    s.write_all(&frame).await.map_err(ProtocolError::Io)?;
    read_reply(s).await
}

/// Opens a control connection, checks the agent's protocol version and turns the connection
/// into a byte stream with `req` (`Forward`, `ForwardUdp` or `ReplayEvents`).
pub(super) async fn open_stream(uds: &Path, req: &Request) -> Result<UnixStream, StreamError> {
    let mut guest = vsock::connect(uds, protocol::CONTROL_PORT).await?;
    protocol::check_hello(call(&mut guest, &Request::hello()).await?)?;
    match call(&mut guest, req).await? {
        Response::Ok => Ok(guest),
        Response::Error { message } => Err(StreamError::Refused(message)),
        other => Err(ProtocolError::Unexpected(format!("{other:?}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hybrid-vsock socket whose "agent" answers Hello with `version`, then `Ok` and
    /// `stream` in one write.
    fn fake_agent(dir: &Path, version: u32, stream: &'static [u8]) -> std::path::PathBuf {
        let uds = dir.join("vsock.sock");
        let l = tokio::net::UnixListener::bind(&uds).expect("bind");
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.expect("accept");
            let mut lines = 0;
            while lines < 3 {
                let mut b = [0u8; 1];
                if c.read(&mut b).await.expect("read") == 0 {
                    return;
                }
                if b[0] != b'\n' {
                    continue;
                }
                lines += 1;
                let reply = match lines {
                    1 => b"OK 1\n".to_vec(),
                    2 => protocol::encode(&Response::Hello {
                        version,
                        agent: "test".into(),
                    })
                    .expect("encode"),
                    _ => [
                        protocol::encode(&Response::Ok).expect("encode"),
                        stream.to_vec(),
                    ]
                    .concat(),
                };
                if c.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
        uds
    }

    #[tokio::test]
    async fn test_open_stream_keeps_bytes_after_ok() {
        let d = tempfile::tempdir().expect("tempdir");
        let uds = fake_agent(d.path(), protocol::PROTOCOL_VERSION, b"payload");
        let req = Request::Forward {
            port: 80,
            addr: None,
        };
        let mut s = open_stream(&uds, &req).await.expect("stream");
        let mut got = [0u8; 7];
        s.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"payload");
    }

    #[tokio::test]
    async fn test_open_stream_other_version_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let uds = fake_agent(d.path(), protocol::PROTOCOL_VERSION + 1, b"");
        let req = Request::Forward {
            port: 80,
            addr: None,
        };
        let e = open_stream(&uds, &req).await.expect_err("version");
        assert!(
            matches!(e, StreamError::Protocol(ProtocolError::Version(_))),
            "{e}"
        );
    }
}
