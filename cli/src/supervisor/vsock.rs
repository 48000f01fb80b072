//! Host-side connections into the guest over hybrid vsock: connect to the VM's vsock unix
//! socket, write `CONNECT <port>\n`, read `OK <n>\n`, then the stream is the guest's.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest handshake reply accepted ("OK 4294967295\n" is 14 bytes).
const MAX_REPLY: usize = 64;

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

/// Opens a stream to guest vsock `port`.
pub async fn connect(uds: &Path, port: u32) -> Result<UnixStream, VsockError> {
    let fut = async {
        let sock_err = |source| VsockError::Socket {
            path: uds.display().to_string(),
            source,
        };
        let mut s = UnixStream::connect(uds).await.map_err(sock_err)?;
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(sock_err)?;
        // Byte by byte: the guest's data may follow the reply in the same segment.
        let mut reply = Vec::with_capacity(16);
        loop {
            let mut b = [0u8; 1];
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return Err(VsockError::Refused { port }),
                Ok(_) => {}
            }
            if b[0] == b'\n' {
                break;
            }
            reply.push(b[0]);
            if reply.len() > MAX_REPLY {
                break;
            }
        }
        let text = String::from_utf8_lossy(&reply).into_owned();
        if text.starts_with("OK ") {
            Ok(s)
        } else {
            Err(VsockError::BadReply { port, reply: text })
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or(Err(VsockError::Timeout { port }))
}
