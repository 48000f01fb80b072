//! `usernet`: user-mode NAT networking for vmctl VMs.
//!
//! The core, [`UserNet`], is frames-in/frames-out and transport-neutral: feed it the
//! guest's Ethernet frames with [`UserNet::receive_frame`], let it work with
//! [`UserNet::process`], and take the frames for the guest with [`UserNet::next_frame`]
//! (or [`UserNet::take_frame`]). Host sockets live in a `mio` poller owned by the
//! instance: a transport registers its own fd in [`UserNet::registry`] under a token below
//! [`TRANSPORT_TOKENS`] and blocks in [`UserNet::wait`]; an embedder with its own event
//! loop (the builtin VMM's virtio-net device) instead watches [`UserNet::as_raw_fd`] and
//! calls `wait(Some(Duration::ZERO), ..)` when it is readable, honouring
//! [`UserNet::poll_delay`] for timers.
//!
//! ```no_run
//! # fn demo(guest_frame: &[u8]) -> Result<(), usernet::UserNetError> {
//! let mut net = usernet::UserNet::new(usernet::Config::default())?;
//! net.receive_frame(guest_frame);
//! net.process();
//! let mut buf = vec![0u8; 65536];
//! while let Some(n) = net.next_frame(&mut buf) {
//!     // hand buf[..n] to the guest
//!     # let _ = n;
//! }
//! # Ok(()) }
//! ```
//!
//! ## Why smoltcp, and what is hand-written
//!
//! The guest side of TCP is terminated in [smoltcp](https://docs.rs/smoltcp): a small,
//! allocation-bounded, well-tested TCP/IP stack in safe Rust that needs no kernel help
//! (so it runs on macOS and Windows too) and supports window scaling and large MTUs.
//! Each guest TCP connection is a smoltcp socket spliced to a non-blocking host socket
//! (`tcp` module). smoltcp has no NAT, DHCP server or DNS forwarder and its UDP/ICMP
//! sockets bind local addresses only, so these are written here on top of
//! `smoltcp::wire`: DHCP server (`dhcp`), UDP NAT with idle timeouts (`udp`), inbound
//! UDP forwards (`udp_fwd`), ICMP echo via unprivileged ping sockets (`icmp`), the
//! resolv.conf-following DNS forwarder (`dns`), and TCP RSTs / ICMP port-unreachable
//! replies (`wire`). Threading: none; one instance is driven by one event loop. Guest frames are classified in
//! this module; only ARP and TCP reach smoltcp. IPv6 and IPv4 fragments are dropped
//! (the guest gets no IPv6 route, so it falls back to IPv4 at once; Linux TCP sets DF).
//!
//! ## What the guest can reach
//!
//! [`Config::host_target`] decides: the gateway reaches the host's loopback (unless
//! `allow_host_loopback` is off), the DNS address the host's resolvers; 127.0.0.0/8 is
//! reachable only through the gateway; link-local (169.254.0.0/16) and cloud metadata
//! addresses ([`METADATA_ADDRS`]) are refused unless `allow_link_local` / `allow_metadata`;
//! IPv6 (fe80::/10 included) is never forwarded. Everything else goes out as connections
//! from the host. Memory for TCP buffers is bounded by `Limits::tcp_buffer_budget` (see
//! the `tcp` module).

// `tests/common/frames.rs` names the crate `usernet`; the fuzz smoke test includes it.
#[cfg(test)]
extern crate self as usernet;

mod config;
mod device;
mod dhcp;
mod dns;
// Fuzz entry points: for this crate's tests and `fuzz/` (cargo-fuzz builds with `--cfg
// fuzzing`); not part of the API otherwise.
#[cfg(any(test, fuzzing))]
pub mod fuzz;
mod icmp;
mod tcp;
mod udp;
mod udp_fwd;
mod wire;

#[cfg(target_os = "linux")]
pub mod netcfg;
#[cfg(unix)]
pub mod stream;
#[cfg(target_os = "linux")]
pub mod tap;

use std::net::Ipv4Addr;
#[cfg(unix)]
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpCidr,
    IpProtocol, Ipv4Packet,
};

pub use config::{parse_mac, Config, ConfigError, Limits, PortForward, Proto, METADATA_ADDRS};

use device::FrameQueue;
use wire::Link;

/// Tokens `0..TRANSPORT_TOKENS` of [`UserNet::registry`] belong to the transport.
pub const TRANSPORT_TOKENS: usize = 16;

/// Token kinds (top byte) of the host sockets registered by the NAT tables.
const KIND_SHIFT: u32 = 56;
pub(crate) const KIND_TCP: usize = 1;
pub(crate) const KIND_TCP_LISTEN: usize = 2;
pub(crate) const KIND_UDP: usize = 3;
pub(crate) const KIND_ICMP: usize = 4;
pub(crate) const KIND_UDP_LISTEN: usize = 5;

/// Errors of the NAT core.
#[derive(Debug, thiserror::Error)]
pub enum UserNetError {
    #[error("Invalid configuration")]
    Config(#[from] ConfigError),
    #[error("Cannot create the event poller")]
    Poll(#[source] std::io::Error),
    #[error("Cannot listen on {addr} for a port forward")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What became of a guest frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Malformed, unsupported or refused.
    Dropped,
    /// Consumed by a NAT table (DHCP, UDP, ICMP, held SYN).
    Handled,
    /// For smoltcp (ARP, TCP): queue it.
    ToStack,
}

impl From<bool> for Verdict {
    fn from(handled: bool) -> Self {
        if handled {
            Verdict::Handled
        } else {
            Verdict::Dropped
        }
    }
}

/// Counters, for tests and diagnostics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub rx_frames: u64,
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tcp_connections: usize,
    pub tcp_pending: usize,
    /// Bytes of TCP socket buffers allocated (measured on the sockets), within
    /// `Limits::tcp_buffer_budget`.
    pub tcp_buffer_bytes: usize,
    /// Bytes of the budget reserved (connections plus connects in progress).
    pub tcp_buffer_reserved: usize,
    /// Guest SYNs (and forwarded host connections) turned away because the budget was used
    /// up; the guest retransmits.
    pub tcp_deferred: u64,
    pub udp_flows: usize,
    pub icmp_flows: usize,
}

/// State shared by the NAT tables: the smoltcp interface and sockets, the frame queues.
pub(crate) struct Core {
    pub config: Config,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub device: FrameQueue,
    pub guest_mac: Option<[u8; 6]>,
    pub epoch: std::time::Instant,
    pub next_token: usize,
}

impl Core {
    pub fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Link endpoints for a frame towards the guest (broadcast until its MAC is known).
    pub fn link(&self) -> Link {
        Link {
            src_mac: self.config.gateway_mac,
            dst_mac: self.guest_mac.unwrap_or([0xff; 6]),
        }
    }

    /// A fresh mio token of `kind`.
    pub fn token(&mut self, kind: usize) -> mio::Token {
        self.next_token = (self.next_token + 1) & ((1 << KIND_SHIFT) - 1);
        mio::Token((kind << KIND_SHIFT) | self.next_token)
    }

    /// Maps an address the guest talks to onto the host address to use (`None`: refused;
    /// the policy is [`Config::host_target`]).
    pub fn host_ip(&self, remote: Ipv4Addr) -> Option<Ipv4Addr> {
        self.config.host_target(remote)
    }

    /// Runs smoltcp until it has nothing more to do or the tx queue is full.
    pub fn pump(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        for _ in 0..4096 {
            if self.device.tx_full() {
                break;
            }
            let r = self
                .iface
                .poll_egress(now, &mut self.device, &mut self.sockets);
            if r == smoltcp::iface::PollResult::None {
                break;
            }
        }
    }
}

/// A user-mode NAT instance serving one guest. See the crate docs for the API shape.
pub struct UserNet {
    core: Core,
    poll: mio::Poll,
    events: mio::Events,
    ready: Vec<mio::Token>,
    tcp: tcp::TcpNat,
    udp: udp::UdpNat,
    udp_fwd: udp_fwd::UdpForwards,
    icmp: icmp::IcmpNat,
    dns: dns::Resolvers,
    stats: Stats,
}

impl UserNet {
    /// Creates the stack and binds the configured port forwards on the host.
    pub fn new(config: Config) -> Result<Self, UserNetError> {
        config.validate()?;
        let mut device = FrameQueue::new(
            config.mtu,
            config.limits.max_rx_frames,
            config.limits.max_tx_frames,
            config.verify_checksums,
            config.tx_checksum_offload,
        );
        let hw = HardwareAddress::Ethernet(EthernetAddress(config.gateway_mac));
        let mut icfg = IfaceConfig::new(hw);
        icfg.random_seed = seed();
        let epoch = std::time::Instant::now();
        let mut iface = Interface::new(icfg, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // Capacity is 2 (smoltcp's default); exactly two addresses are pushed.
            let _ = addrs.push(IpCidr::new(config.gateway_ip.into(), config.prefix_len));
            let _ = addrs.push(IpCidr::new(config.dns_ip.into(), config.prefix_len));
        });
        // AnyIP + a default route via our own address: smoltcp accepts segments for every
        // destination, which is what lets one socket stand in for any remote host.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(config.gateway_ip);
        let poll = mio::Poll::new().map_err(UserNetError::Poll)?;
        let core = Core {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            guest_mac: None,
            epoch,
            next_token: 0,
            config,
        };
        let dns = dns::Resolvers::new(core.config.resolv_conf.clone());
        let forwards = core.config.forwards.clone();
        let mut net = Self {
            core,
            poll,
            events: mio::Events::with_capacity(1024),
            ready: Vec::new(),
            tcp: tcp::TcpNat::new(),
            udp: udp::UdpNat::new(),
            udp_fwd: udp_fwd::UdpForwards::new(),
            icmp: icmp::IcmpNat::new(),
            dns,
            stats: Stats::default(),
        };
        for fwd in forwards {
            net.add_forward(fwd)?;
        }
        Ok(net)
    }

    /// The poller transports register their fds in (tokens below [`TRANSPORT_TOKENS`]).
    pub fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.tcp_connections = self.tcp.connections();
        s.tcp_pending = self.tcp.pending();
        s.tcp_buffer_bytes = self.tcp.buffer_allocated(&self.core);
        s.tcp_buffer_reserved = self.tcp.buffer_reserved();
        s.tcp_deferred = self.tcp.deferred();
        s.udp_flows = self.udp.flows();
        s.icmp_flows = self.icmp.flows();
        s
    }

    /// How long the stack may sleep before its timers need [`UserNet::process`].
    pub fn poll_delay(&mut self) -> Duration {
        let now = self.core.now();
        let mut d = self
            .core
            .iface
            .poll_delay(now, &self.core.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(Duration::from_secs(1));
        if self.udp.flows() > 0 || self.icmp.flows() > 0 || self.tcp.pending() > 0 {
            d = d.min(Duration::from_secs(1));
        }
        d.min(Duration::from_secs(5))
    }

    /// Waits up to `timeout` (or less, for the stack's timers) for host socket events and
    /// records them for [`UserNet::process`]; transport tokens that fired go to `ready`.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<mio::Token>,
    ) -> std::io::Result<()> {
        let own = self.poll_delay();
        let t = Some(timeout.map_or(own, |t| t.min(own)));
        match self.poll.poll(&mut self.events, t) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            let tok = ev.token();
            if tok.0 < TRANSPORT_TOKENS {
                ready.push(tok);
            } else {
                self.ready.push(tok);
                if ev.is_error() || ev.is_read_closed() || ev.is_write_closed() {
                    // Let the owner find out the details through its next syscall.
                    tracing::trace!(?tok, "socket closed/error event");
                }
            }
        }
        Ok(())
    }

    /// Feeds one Ethernet frame from the guest. Malformed or unsupported frames are
    /// dropped (counted in [`Stats::rx_dropped`]).
    pub fn receive_frame(&mut self, frame: &[u8]) {
        self.stats.rx_frames += 1;
        let ok = match self.classify(frame) {
            Verdict::Dropped => false,
            Verdict::Handled => true,
            Verdict::ToStack => self.core.device.push_rx(frame),
        };
        if !ok {
            self.stats.rx_dropped += 1;
        }
    }

    /// A buffer at least `size` bytes long to read a guest frame into; hand it back with
    /// [`UserNet::receive_frame_buf`] (or [`UserNet::recycle_rx_buffer`]). Together they
    /// skip a copy of every TCP segment on the guest-to-host path.
    pub fn rx_buffer(&mut self, size: usize) -> Vec<u8> {
        self.core.device.rx_buffer(size)
    }

    /// Feeds `buf[..len]` as one guest frame, taking the buffer.
    pub fn receive_frame_buf(&mut self, buf: Vec<u8>, len: usize) {
        self.stats.rx_frames += 1;
        let verdict = match buf.get(..len) {
            Some(frame) => self.classify(frame),
            None => Verdict::Dropped,
        };
        let ok = match verdict {
            Verdict::ToStack => return self.push_owned(buf, len),
            Verdict::Handled => true,
            Verdict::Dropped => false,
        };
        self.core.device.recycle_rx(buf);
        if !ok {
            self.stats.rx_dropped += 1;
        }
    }

    fn push_owned(&mut self, buf: Vec<u8>, len: usize) {
        if !self.core.device.push_rx_owned(buf, len) {
            self.stats.rx_dropped += 1;
        }
    }

    /// Returns an unused buffer from [`UserNet::rx_buffer`].
    pub fn recycle_rx_buffer(&mut self, buf: Vec<u8>) {
        self.core.device.recycle_rx(buf);
    }

    fn classify(&mut self, frame: &[u8]) -> Verdict {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Verdict::Dropped;
        };
        let src = eth.src_addr();
        if !src.is_unicast() || src.0 == self.core.config.gateway_mac {
            return Verdict::Dropped;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                // smoltcp in AnyIP mode would answer ARP for every address (proxy ARP),
                // which breaks the guest's duplicate-address probes: pass on only what
                // concerns the gateway/DNS addresses.
                let Ok(arp) = ArpPacket::new_checked(eth.payload()) else {
                    return Verdict::Dropped;
                };
                let Ok(ArpRepr::EthernetIpv4 {
                    target_protocol_addr,
                    ..
                }) = ArpRepr::parse(&arp)
                else {
                    return Verdict::Dropped;
                };
                let cfg = &self.core.config;
                if target_protocol_addr != cfg.gateway_ip && target_protocol_addr != cfg.dns_ip {
                    return Verdict::Dropped;
                }
                self.core.guest_mac = Some(src.0);
                Verdict::ToStack
            }
            EthernetProtocol::Ipv4 => {
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    return Verdict::Dropped;
                };
                if self.core.config.verify_checksums && !ip.verify_checksum() {
                    return Verdict::Dropped;
                }
                if ip.more_frags() || ip.frag_offset() != 0 {
                    return Verdict::Dropped;
                }
                self.core.guest_mac = Some(src.0);
                match ip.next_header() {
                    IpProtocol::Tcp => self.tcp.guest_segment(
                        &mut self.core,
                        self.poll.registry(),
                        &ip,
                        frame,
                        &mut self.dns,
                    ),
                    IpProtocol::Udp => Verdict::from(self.udp.guest_datagram(
                        &mut self.core,
                        self.poll.registry(),
                        &ip,
                        &mut self.dns,
                        &mut self.udp_fwd,
                    )),
                    IpProtocol::Icmp => Verdict::from(self.icmp.guest_icmp(
                        &mut self.core,
                        self.poll.registry(),
                        &ip,
                    )),
                    _ => Verdict::Dropped,
                }
            }
            _ => Verdict::Dropped,
        }
    }

    /// Does all pending work: host socket events, smoltcp, data between the two, timers.
    pub fn process(&mut self) {
        let registry = self.poll.registry();
        for tok in self.ready.drain(..) {
            match tok.0 >> KIND_SHIFT {
                KIND_TCP => self.tcp.host_event(tok),
                KIND_TCP_LISTEN => self.tcp.listener_event(tok),
                KIND_UDP => self.udp.host_event(tok),
                KIND_UDP_LISTEN => self.udp_fwd.host_event(tok),
                KIND_ICMP => self.icmp.host_event(tok),
                _ => {}
            }
        }
        self.tcp.accept_forwards(&mut self.core, registry);
        self.tcp.finish_connects(&mut self.core, registry);
        for _ in 0..64 {
            self.core.pump();
            let moved = self.tcp.service(&mut self.core, registry);
            if !moved || self.core.device.tx_full() {
                break;
            }
        }
        self.core.pump();
        self.udp.service(&mut self.core, registry, &mut self.dns);
        self.udp_fwd.service(&mut self.core);
        self.icmp.service(&mut self.core, registry);
        let now = std::time::Instant::now();
        self.udp
            .expire(now, registry, self.core.config.limits.udp_idle_timeout);
        self.udp_fwd
            .expire(now, self.core.config.limits.udp_idle_timeout);
        self.icmp.expire(now, registry);
        self.tcp.expire(&mut self.core, registry, now);
    }

    /// Whether frames for the guest are waiting.
    pub fn has_frames(&self) -> bool {
        !self.core.device.tx.is_empty()
    }

    /// Copies the next frame for the guest into `buf`; frames longer than `buf` are dropped.
    pub fn next_frame(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let f = self.core.device.tx.pop_front()?;
            self.stats.tx_frames += 1;
            if let Some(dst) = buf.get_mut(..f.len()) {
                dst.copy_from_slice(&f);
                let n = f.len();
                self.core.device.recycle(f);
                return Some(n);
            }
            self.core.device.recycle(f);
        }
    }

    /// Takes the next frame for the guest without copying; give it back with
    /// [`UserNet::recycle`] to reuse its allocation.
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
        let f = self.core.device.tx.pop_front()?;
        self.stats.tx_frames += 1;
        Some(f)
    }

    /// Puts a frame taken with [`UserNet::take_frame`] back at the head (transport busy).
    pub fn untake_frame(&mut self, frame: Vec<u8>) {
        self.stats.tx_frames = self.stats.tx_frames.saturating_sub(1);
        self.core.device.tx.push_front(frame);
    }

    /// Returns a frame buffer for reuse.
    pub fn recycle(&mut self, frame: Vec<u8>) {
        self.core.device.recycle(frame);
    }

    /// Adds an inbound port forward at run time.
    pub fn add_forward(&mut self, fwd: PortForward) -> Result<(), UserNetError> {
        match fwd.proto {
            Proto::Tcp => self
                .tcp
                .add_forward(&mut self.core, self.poll.registry(), fwd),
            Proto::Udp => self
                .udp_fwd
                .add_forward(&mut self.core, self.poll.registry(), fwd),
        }
    }

    /// Removes an inbound port forward (existing connections stay up).
    pub fn remove_forward(&mut self, fwd: &PortForward) {
        match fwd.proto {
            Proto::Tcp => self.tcp.remove_forward(self.poll.registry(), fwd),
            Proto::Udp => self.udp_fwd.remove_forward(self.poll.registry(), fwd),
        }
    }

    /// Host addresses the forwards are actually bound to (resolves port 0).
    pub fn forward_addrs(&self) -> Vec<(PortForward, std::net::SocketAddr)> {
        let mut v = self.tcp.forward_addrs();
        v.extend(self.udp_fwd.forward_addrs());
        v
    }
}

#[cfg(unix)]
impl AsRawFd for UserNet {
    /// The epoll fd: readable when host sockets have events for [`UserNet::wait`].
    fn as_raw_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u64::from_ne_bytes(b)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
}
