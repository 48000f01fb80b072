//! Automatic port forwarding. The agent streams listening-socket events from the guest
//! (`WatchPorts`); for each wildcard listener the supervisor listens on host 127.0.0.1:<port>
//! and carries each connection over vsock (`Forward` on the control port), where the agent
//! connects to the guest's loopback. UDP ports get a host UDP socket whose flows (one per
//! client address) travel the same way (`ForwardUdp`, see `udp_ports`). vsock is the carrier
//! rather than usernet because it works the same for every engine and network mode, needs no
//! guest address, and the agent already holds the event stream that says when to open and
//! close.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use guest_agent::protocol::{self, PortEvent, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use super::{udp_ports, vsock};
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
        let mut open: BTreeMap<Key, JoinHandle<()>> = BTreeMap::new();
        let mut wanted: BTreeMap<Key, usize> = BTreeMap::new();
        while let Some(ev) = rx.recv().await {
            if !is_wildcard(&ev.addr) {
                continue;
            }
            // The v4 and v6 wildcard listeners of one port share one host listener.
            let key = Key {
                udp: ev.proto.is_udp(),
                port: ev.port,
            };
            let count = wanted.entry(key).or_insert(0);
            if ev.listening {
                *count += 1;
                if *count == 1 {
                    open_port(key, &vsock_uds, &state, &mut open).await;
                }
            } else {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    wanted.remove(&key);
                    close_port(key, &state, &mut open).await;
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

/// One forwarded host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    udp: bool,
    port: u16,
}

impl Key {
    fn proto(self) -> &'static str {
        if self.udp {
            "udp"
        } else {
            "tcp"
        }
    }
}

async fn open_port(
    key: Key,
    uds: &Path,
    state: &Arc<Mutex<State>>,
    open: &mut BTreeMap<Key, JoinHandle<()>>,
) {
    let (port, proto) = (key.port, key.proto());
    let task = if key.udp {
        tokio::net::UdpSocket::bind(("127.0.0.1", port))
            .await
            .map(|s| tokio::spawn(udp_ports::relay(s, uds.to_path_buf(), port)))
    } else {
        TcpListener::bind(("127.0.0.1", port))
            .await
            .map(|l| tokio::spawn(accept_loop(l, uds.to_path_buf(), port)))
    };
    let status = match task {
        Ok(task) => {
            open.insert(key, task);
            log::info!("ports: forwarding 127.0.0.1:{port}/{proto}");
            "forwarded".to_string()
        }
        Err(e) => {
            log::warn!("ports: cannot forward {proto} port {port}: host port in use ({e})");
            format!("not forwarded: host {proto} port {port} in use ({e})")
        }
    };
    let mut s = state.lock().await;
    s.ports.retain(|p| !(p.port == port && p.proto == proto));
    s.ports.push(PortState {
        proto: proto.into(),
        port,
        status,
    });
    s.ports
        .sort_by(|a, b| (a.port, &a.proto).cmp(&(b.port, &b.proto)));
}

async fn close_port(key: Key, state: &Arc<Mutex<State>>, open: &mut BTreeMap<Key, JoinHandle<()>>) {
    if let Some(h) = open.remove(&key) {
        h.abort();
    }
    let (port, proto) = (key.port, key.proto());
    state
        .lock()
        .await
        .ports
        .retain(|p| !(p.port == port && p.proto == proto));
    log::info!("ports: stopped forwarding {port}/{proto}");
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

async fn forward(mut client: TcpStream, uds: &Path, port: u16) -> Result<(), String> {
    let mut guest = open_stream(uds, &Request::Forward { port }).await?;
    tokio::io::copy_bidirectional(&mut client, &mut guest)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
