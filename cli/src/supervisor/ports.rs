//! Automatic port forwarding. The agent streams listening-socket events from the guest
//! (`WatchPorts`); for each guest listener the supervisor listens on a host address and
//! carries each connection over vsock (`Forward` on the control port), where the agent
//! connects to the guest listener. UDP ports get a host UDP socket whose flows (one per
//! client address) travel the same way (`ForwardUdp`, see `udp_ports`). vsock is the carrier
//! rather than usernet because it works the same for every engine and network mode, needs no
//! guest address, and the agent already holds the event stream that says when to open and
//! close.
//!
//! Which host address: a guest listener on a wildcard or loopback address (`-p 8080:80`,
//! `-p 127.0.0.1:8080:80`) is forwarded from host `127.0.0.1`; one on a specific address is
//! forwarded from that address where it is one of the host's own, else from `127.0.0.1`.
//! The agent connects to the listener's own address (loopback for a wildcard listener).
//!
//! Bounds, because the guest decides how many listeners there are: at most
//! [`Policy::max_ports`] host ports are tracked (forwarded or refused), the rest are
//! counted in the instance state's `ports_note`; host ports below 1024 are refused unless
//! the configuration allows them (`allow_privileged_ports`); accept errors (EMFILE) back
//! off instead of spinning (see `limits`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use guest_agent::protocol::{PortEvent, Request};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use super::guest_stream::{current_target, open_stream, Target};
use super::limits::{self, AcceptBackoff};
use super::udp_ports;
use crate::agent::Agent;
use crate::instance::{PortState, State};

/// Host ports forwarded (or tracked as refused) at once, TCP and UDP together.
pub const MAX_PORTS: usize = 512;
/// Host ports below this are privileged.
pub const PRIVILEGED_BELOW: u16 = 1024;

/// What the forwarder may do on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Host ports tracked at once (forwarded or refused with a status line).
    pub max_ports: usize,
    /// Forward to host ports below [`PRIVILEGED_BELOW`].
    pub allow_privileged: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_ports: MAX_PORTS,
            allow_privileged: false,
        }
    }
}

/// The guest address of a port event (`0.0.0.0`, `::`, `[::]`, `127.0.0.1`, ...).
fn parse_guest_addr(addr: &str) -> Option<IpAddr> {
    addr.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Whether `ip` is an address of this host (a socket can be bound to it).
fn is_host_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The host address a guest listener on `guest` is forwarded from.
pub fn host_addr_for(guest: IpAddr) -> IpAddr {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if guest.is_unspecified() || guest.is_loopback() || !is_host_address(guest) {
        loopback
    } else {
        guest
    }
}

/// Keeps host listeners in step with the guest's listeners until the task is dropped.
pub async fn run(vsock_uds: PathBuf, state: Arc<Mutex<State>>, policy: Policy) {
    loop {
        let (tx, mut rx) = mpsc::channel::<PortEvent>(256);
        let uds = vsock_uds.clone();
        let watcher = tokio::task::spawn_blocking(move || {
            let mut watch =
                match Agent::connect(&uds, Duration::from_secs(5)).and_then(|a| a.watch_ports()) {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::debug!("ports: cannot watch: {e}");
                        return;
                    }
                };
            while let Some(ev) = watch.next_event() {
                if tx.blocking_send(ev).is_err() {
                    return;
                }
            }
        });
        let mut fwd = Forwarder::new(vsock_uds.clone(), state.clone(), policy);
        while let Some(ev) = rx.recv().await {
            fwd.event(&ev).await;
        }
        // The guest went away (reboot, shutdown): drop every forward, then watch again.
        fwd.clear().await;
        let _ = watcher.await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    udp: bool,
    host: IpAddr,
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

/// The guest address the agent connects to for a host port: a wildcard listener first (the
/// agent's loopback), then a loopback one, then the lowest specific address.
fn target_of(guests: &BTreeMap<IpAddr, usize>) -> Option<IpAddr> {
    let rank = |ip: &IpAddr| (!ip.is_unspecified(), !ip.is_loopback(), !ip.is_ipv4());
    guests.keys().min_by_key(|ip| (rank(ip), **ip)).copied()
}

/// A forwarded host port: its task and the guest address its connections go to.
struct Open {
    task: JoinHandle<()>,
    target: Arc<std::sync::Mutex<Option<IpAddr>>>,
}

struct Forwarder {
    uds: PathBuf,
    state: Arc<Mutex<State>>,
    policy: Policy,
    /// Guest listeners behind each host port, with how many sockets each (v4 + v6, ...).
    guests: BTreeMap<Key, BTreeMap<IpAddr, usize>>,
    open: BTreeMap<Key, Open>,
    /// Host ports with a "not forwarded" status line (in use, privileged).
    refused: BTreeSet<Key>,
    /// Host ports over the limit, neither opened nor listed; opened when room frees up.
    over_limit: BTreeSet<Key>,
}

impl Forwarder {
    fn new(uds: PathBuf, state: Arc<Mutex<State>>, policy: Policy) -> Self {
        Self {
            uds,
            state,
            policy,
            guests: BTreeMap::new(),
            open: BTreeMap::new(),
            refused: BTreeSet::new(),
            over_limit: BTreeSet::new(),
        }
    }

    async fn event(&mut self, ev: &PortEvent) {
        let Some(guest) = parse_guest_addr(&ev.addr) else {
            tracing::debug!("ports: ignoring a listener on {:?}", ev.addr);
            return;
        };
        let key = Key {
            udp: ev.proto.is_udp(),
            host: host_addr_for(guest),
            port: ev.port,
        };
        let guests = self.guests.entry(key).or_default();
        if ev.listening {
            *guests.entry(guest).or_insert(0) += 1;
        } else if let Some(n) = guests.get_mut(&guest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                guests.remove(&guest);
            }
        }
        let target = target_of(guests);
        if target.is_none() {
            self.guests.remove(&key);
            self.close(key).await;
            self.promote().await;
        } else if let Some(open) = self.open.get(&key) {
            if let Ok(mut t) = open.target.lock() {
                *t = target;
            }
        } else if !self.refused.contains(&key) && !self.over_limit.contains(&key) {
            self.open(key, target).await;
        }
    }

    fn tracked(&self) -> usize {
        self.open.len() + self.refused.len()
    }

    /// Opens the host side of `key`, or records why not.
    async fn open(&mut self, key: Key, target: Option<IpAddr>) {
        if self.tracked() >= self.policy.max_ports {
            if self.over_limit.insert(key) && self.over_limit.len() == 1 {
                tracing::warn!(
                    "ports: limit of {} forwarded ports reached; further guest ports are not forwarded",
                    self.policy.max_ports
                );
            }
            self.note().await;
            return;
        }
        let (port, proto, host) = (key.port, key.proto(), key.host);
        let status = match self.bind(key, target).await {
            Ok(open) => {
                self.open.insert(key, open);
                tracing::info!("ports: forwarding {host}:{port}/{proto}");
                "forwarded".to_string()
            }
            Err(why) => {
                self.refused.insert(key);
                tracing::warn!("ports: {proto} port {port}: {why}");
                format!("not forwarded: {why}")
            }
        };
        let mut s = self.state.lock().await;
        s.ports
            .retain(|p| !(p.port == port && p.proto == proto && p.address == host.to_string()));
        s.ports.push(PortState {
            proto: proto.into(),
            port,
            address: host.to_string(),
            status,
        });
        s.ports
            .sort_by(|a, b| (a.port, &a.proto, &a.address).cmp(&(b.port, &b.proto, &b.address)));
        drop(s);
        self.note().await;
    }

    async fn bind(&self, key: Key, target: Option<IpAddr>) -> Result<Open, String> {
        let (port, proto) = (key.port, key.proto());
        if port < PRIVILEGED_BELOW && !self.policy.allow_privileged {
            return Err(format!(
                "host port {port} is privileged (below {PRIVILEGED_BELOW}); \
                 publish it on a port above 1023, or allow it with \
                 `vmctl config set allow_privileged_ports true`"
            ));
        }
        let target = Arc::new(std::sync::Mutex::new(target));
        let uds = self.uds.clone();
        let bound = if key.udp {
            tokio::net::UdpSocket::bind((key.host, port))
                .await
                .map(|s| tokio::spawn(udp_ports::relay(s, uds, port, target.clone())))
        } else {
            TcpListener::bind((key.host, port))
                .await
                .map(|l| tokio::spawn(accept_loop(l, uds, port, target.clone())))
        };
        match bound {
            Ok(task) => Ok(Open { task, target }),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
                "host port {port} is privileged and vmctl runs without root \
                 (this host lets unprivileged users bind ports from {} up): {e}",
                limits::unprivileged_port_start()
            )),
            Err(e) => Err(format!("host {proto} port {port} in use ({e})")),
        }
    }

    async fn close(&mut self, key: Key) {
        let was_open = match self.open.remove(&key) {
            Some(o) => {
                o.task.abort();
                true
            }
            None => false,
        };
        let was_refused = self.refused.remove(&key);
        if self.over_limit.remove(&key) {
            self.note().await;
        }
        if !was_open && !was_refused {
            return;
        }
        let (port, proto, host) = (key.port, key.proto(), key.host.to_string());
        self.state
            .lock()
            .await
            .ports
            .retain(|p| !(p.port == port && p.proto == proto && p.address == host));
        tracing::info!("ports: stopped forwarding {host}:{port}/{proto}");
    }

    /// Opens ports that were over the limit while there is room.
    async fn promote(&mut self) {
        while self.tracked() < self.policy.max_ports {
            let Some(key) = self.over_limit.pop_first() else {
                break;
            };
            let target = self.guests.get(&key).and_then(target_of);
            if target.is_some() {
                self.open(key, target).await;
            }
        }
        self.note().await;
    }

    /// The status line about the limit (empty while under it).
    async fn note(&self) {
        let note = if self.over_limit.is_empty() {
            String::new()
        } else {
            format!(
                "limit of {} forwarded ports reached: {} more guest ports not forwarded",
                self.policy.max_ports,
                self.over_limit.len()
            )
        };
        let mut s = self.state.lock().await;
        if s.ports_note != note {
            s.ports_note = note;
        }
    }

    async fn clear(&mut self) {
        for (_, o) in std::mem::take(&mut self.open) {
            o.task.abort();
        }
        self.refused.clear();
        self.over_limit.clear();
        self.guests.clear();
        let mut s = self.state.lock().await;
        s.ports.clear();
        s.ports_note.clear();
    }
}

async fn accept_loop(listener: TcpListener, uds: PathBuf, port: u16, target: Target) {
    let mut backoff = AcceptBackoff::new("forwarded port");
    loop {
        let client = match listener.accept().await {
            Ok((c, _)) => {
                backoff.succeeded();
                c
            }
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let uds = uds.clone();
        let addr = current_target(&target);
        tokio::spawn(async move {
            if let Err(e) = forward(client, &uds, port, addr).await {
                tracing::info!("ports: connection to guest port {port}: {e}");
            }
        });
    }
}

async fn forward(
    mut client: TcpStream,
    uds: &Path,
    port: u16,
    addr: Option<String>,
) -> Result<(), String> {
    let mut guest = open_stream(uds, &Request::Forward { port, addr })
        .await
        .map_err(|e| e.to_string())?;
    tokio::io::copy_bidirectional(&mut client, &mut guest)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
