//! UDP port forwarding. The host socket on 127.0.0.1:<port> receives datagrams from many
//! clients; each client address is a flow with a vsock connection of its own (`ForwardUdp`),
//! where the agent owns a guest socket connected to the guest's port, so every reply comes
//! back on the flow it answers and goes to the client that asked. A flow ends after
//! [`IDLE`] without traffic either way (what conntrack and docker-proxy do for UDP); at most
//! [`MAX_FLOWS`] are open at once, further new clients are dropped (as a full NAT table would)
//! and logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_agent::protocol::{Request, MAX_DATAGRAM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::guest_stream::{current_target, open_stream, Target};

/// A flow with no datagram in either direction for this long is closed.
pub const IDLE: Duration = Duration::from_secs(90);
/// Open flows per forwarded port.
pub const MAX_FLOWS: usize = 1024;
/// Datagrams queued per flow while its vsock connection opens or is slow.
const QUEUE: usize = 256;

/// Relays datagrams between `sock` (host 127.0.0.1:<port>) and guest port `port`.
pub async fn relay(sock: UdpSocket, uds: PathBuf, port: u16, target: Target) {
    let sock = Arc::new(sock);
    let mut flows: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut warned_full = false;
    let mut backoff = super::limits::AcceptBackoff::new("forwarded udp port");
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => {
                backoff.succeeded();
                r
            }
            // ICMP errors of earlier sends (ECONNREFUSED…) surface here; keep serving.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::debug!("ports: udp {port}: {e}");
                continue;
            }
            // Anything else (ENOMEM, ...) may repeat at once: back off instead of spinning.
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        let datagram = buf[..n].to_vec();
        if let Some(tx) = flows.get(&from) {
            match tx.try_send(datagram) {
                Ok(()) => continue,
                // A slow flow drops datagrams, as a full socket buffer would.
                Err(mpsc::error::TrySendError::Full(_)) => continue,
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    flows.remove(&from);
                    let addr = current_target(&target);
                    start_flow(&mut flows, &sock, &uds, (port, addr), from, d);
                    continue;
                }
            }
        }
        if flows.len() >= MAX_FLOWS {
            flows.retain(|_, tx| !tx.is_closed());
        }
        if flows.len() >= MAX_FLOWS {
            if !warned_full {
                tracing::warn!("ports: udp {port}: {MAX_FLOWS} flows open, dropping new clients");
                warned_full = true;
            }
            continue;
        }
        warned_full = false;
        let addr = current_target(&target);
        start_flow(&mut flows, &sock, &uds, (port, addr), from, datagram);
    }
}

fn start_flow(
    flows: &mut HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    sock: &Arc<UdpSocket>,
    uds: &Path,
    (port, addr): (u16, Option<String>),
    peer: SocketAddr,
    first: Vec<u8>,
) {
    let (tx, rx) = mpsc::channel(QUEUE);
    // Cannot fail: the channel is new and empty.
    let _ = tx.try_send(first);
    flows.insert(peer, tx);
    let (sock, uds) = (sock.clone(), uds.to_path_buf());
    tokio::spawn(async move {
        if let Err(e) = flow(sock, &uds, (port, addr), peer, rx).await {
            tracing::info!("ports: udp {port} flow from {peer}: {e}");
        }
    });
}

fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

async fn flow(
    sock: Arc<UdpSocket>,
    uds: &Path,
    (port, addr): (u16, Option<String>),
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> Result<(), String> {
    let guest = open_stream(uds, &Request::ForwardUdp { port, addr })
        .await
        .map_err(|e| e.to_string())?;
    let (mut from_guest, mut to_guest) = guest.into_split();
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));

    // Guest → client: each framed datagram is sent to the client this flow belongs to.
    let replies = {
        let last = last.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let n = match from_guest.read_u16().await {
                    Ok(n) => usize::from(n),
                    Err(_) => return,
                };
                if n > MAX_DATAGRAM || from_guest.read_exact(&mut buf[..n]).await.is_err() {
                    return;
                }
                last.store(now_ms(start), Ordering::Relaxed);
                let _ = sock.send_to(&buf[..n], peer).await;
            }
        })
    };

    // Client → guest, until the flow has been idle both ways for IDLE.
    let result = loop {
        match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(d)) => {
                last.store(now_ms(start), Ordering::Relaxed);
                let mut frame = Vec::with_capacity(2 + d.len());
                // A datagram received into a MAX_DATAGRAM buffer always fits in u16.
                frame.extend_from_slice(&(d.len() as u16).to_be_bytes());
                frame.extend_from_slice(&d);
                if let Err(e) = to_guest.write_all(&frame).await {
                    break Err(e.to_string());
                }
            }
            Ok(None) => break Ok(()),
            Err(_) if replies.is_finished() => break Ok(()),
            Err(_) => {
                let idle_ms = now_ms(start).saturating_sub(last.load(Ordering::Relaxed));
                if idle_ms >= IDLE.as_millis() as u64 {
                    break Ok(());
                }
            }
        }
    };
    replies.abort();
    result
}
