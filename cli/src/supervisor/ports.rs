//! Automatic port forwarding. The agent streams listening-socket events from the guest
//! (`WatchPorts`); for each wildcard listener the supervisor listens on host 127.0.0.1:<port>
//! and carries each connection over vsock (`Forward` on the control port), where the agent
//! connects to the guest's loopback. vsock is the carrier rather than usernet because it works
//! the same for every engine and network mode, needs no guest address, and the agent already
//! holds the event stream that says when to open and close.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use guest_agent::protocol::{self, PortEvent, Proto, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use super::vsock;
use crate::agent::Agent;
use crate::instance::{PortState, State};

fn is_wildcard(addr: &str) -> bool {
    matches!(addr, "0.0.0.0" | "::" | "[::]")
}

/// Keeps host listeners in step with the guest's listeners until the task is dropped.
pub async fn run(vsock_uds: PathBuf, state: Arc<Mutex<State>>) {
    loop {
        let (tx, mut rx) = mpsc::channel::<PortEvent>(256);
        let uds = vsock_uds.clone();
        let watcher = tokio::task::spawn_blocking(move || {
            let mut watch =
                match Agent::connect(&uds, Duration::from_secs(5)).and_then(|a| a.watch_ports()) {
                    Ok(w) => w,
                    Err(e) => {
                        log::debug!("ports: cannot watch: {e}");
                        return;
                    }
                };
            while let Some(ev) = watch.next_event() {
                if tx.blocking_send(ev).is_err() {
                    return;
                }
            }
        });
        let mut open: BTreeMap<(Proto, u16), JoinHandle<()>> = BTreeMap::new();
        let mut wanted: BTreeMap<u16, usize> = BTreeMap::new();
        while let Some(ev) = rx.recv().await {
            if !is_wildcard(&ev.addr) || ev.proto.is_udp() {
                continue;
            }
            let key = (ev.proto, ev.port);
            // tcp and tcp6 wildcard listeners of one port share one host listener.
            let count = wanted.entry(ev.port).or_insert(0);
            if ev.listening {
                *count += 1;
                if *count == 1 {
                    open_port(ev.port, key, &vsock_uds, &state, &mut open).await;
                }
            } else {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    wanted.remove(&ev.port);
                    close_port(ev.port, &state, &mut open).await;
                }
            }
        }
        // The guest went away (reboot, shutdown): drop every forward, then watch again.
        for (_, h) in std::mem::take(&mut open) {
            h.abort();
        }
        state.lock().await.ports.clear();
        let _ = watcher.await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn open_port(
    port: u16,
    key: (Proto, u16),
    uds: &Path,
    state: &Arc<Mutex<State>>,
    open: &mut BTreeMap<(Proto, u16), JoinHandle<()>>,
) {
    let status = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => {
            let uds = uds.to_path_buf();
            open.insert(key, tokio::spawn(accept_loop(l, uds, port)));
            log::info!("ports: forwarding 127.0.0.1:{port}");
            "forwarded".to_string()
        }
        Err(e) => {
            log::warn!("ports: cannot forward port {port}: host port in use ({e})");
            format!("not forwarded: host port {port} in use ({e})")
        }
    };
    let mut s = state.lock().await;
    s.ports.retain(|p| p.port != port);
    s.ports.push(PortState {
        proto: "tcp".into(),
        port,
        status,
    });
    s.ports.sort_by_key(|p| p.port);
}

async fn close_port(
    port: u16,
    state: &Arc<Mutex<State>>,
    open: &mut BTreeMap<(Proto, u16), JoinHandle<()>>,
) {
    open.retain(|(_, p), h| {
        if *p == port {
            h.abort();
            false
        } else {
            true
        }
    });
    state.lock().await.ports.retain(|p| p.port != port);
    log::info!("ports: stopped forwarding {port}");
}

async fn accept_loop(listener: TcpListener, uds: PathBuf, port: u16) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let uds = uds.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(client, &uds, port).await {
                log::info!("ports: connection to guest port {port}: {e}");
            }
        });
    }
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

async fn forward(mut client: TcpStream, uds: &Path, port: u16) -> Result<(), String> {
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
    match call(&mut guest, &Request::Forward { port }).await? {
        Response::Ok => {}
        Response::Error { message } => return Err(message),
        other => return Err(format!("unexpected {other:?}")),
    }
    tokio::io::copy_bidirectional(&mut client, &mut guest)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
