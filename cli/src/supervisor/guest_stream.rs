//! Byte streams into the guest through the agent's control port: a control connection that
//! says hello and then asks `Forward` (TCP), `ForwardUdp` or `ReplayEvents` stops carrying
//! frames and carries the stream. Shared by TCP and UDP port forwarding and host file events.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use guest_agent::protocol::{self, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::vsock;

/// Where forwarded connections go in the guest (`None`: the agent's loopback); updated as
/// guest listeners come and go.
pub(super) type Target = Arc<std::sync::Mutex<Option<IpAddr>>>;

/// The guest address connections should go to now (`None`: the agent's loopback).
pub(super) fn current_target(target: &Target) -> Option<String> {
    target.lock().ok().and_then(|t| *t).map(|ip| ip.to_string())
}

async fn read_line(s: &mut UnixStream) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) if b[0] == b'\n' => return Ok(line),
            Ok(1) => line.push(b[0]),
            _ => return Err("agent closed the connection".into()),
        }
        if line.len() > 4096 {
            return Err("agent reply too long".into());
        }
    }
}

async fn call(s: &mut UnixStream, req: &Request) -> Result<Response, String> {
    let frame = protocol::encode(req).map_err(|e| e.to_string())?;
    s.write_all(&frame).await.map_err(|e| e.to_string())?;
    let line = read_line(s).await?;
    serde_json::from_slice(&line).map_err(|e| e.to_string())
}

/// Opens a control connection and turns it into a byte stream with `req` (`Forward` or
/// `ForwardUdp`).
pub(super) async fn open_stream(uds: &Path, req: &Request) -> Result<UnixStream, String> {
    let mut guest = vsock::connect(uds, protocol::CONTROL_PORT)
        .await
        .map_err(|e| e.to_string())?;
    match call(
        &mut guest,
        &Request::Hello {
            version: protocol::PROTOCOL_VERSION,
        },
    )
    .await?
    {
        Response::Hello { .. } => {}
        other => return Err(format!("unexpected {other:?}")),
    }
    match call(&mut guest, req).await? {
        Response::Ok => Ok(guest),
        Response::Error { message } => Err(message),
        other => Err(format!("unexpected {other:?}")),
    }
}
