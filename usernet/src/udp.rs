//! UDP NAT and the DNS forwarder's transport. Each (guest endpoint, remote endpoint) flow
//! gets a host UDP socket; flows expire when idle and the table is bounded (the least
//! recently used flow makes room). Queries to the DNS address go to the host's current
//! nameserver; with none, the guest gets SERVFAIL at once.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdp};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use smoltcp::wire::{IpAddress, Ipv4Packet, UdpPacket};

use crate::dns::{local_answer, servfail, Resolvers};
use crate::udp_fwd::UdpForwards;
use crate::wire::{icmp_port_unreachable, udp_frame};
use crate::{dhcp, Core, KIND_UDP};

const DNS_IDLE: Duration = Duration::from_secs(10);
/// A DNS query unanswered this long makes the forwarder try the next nameserver.
const DNS_FAILOVER: Duration = Duration::from_secs(2);
const MAX_DATAGRAM: usize = 65535;

type FlowKey = (SocketAddrV4, SocketAddrV4);

struct Flow {
    sock: UdpSocket,
    token: Token,
    last: Instant,
    readable: bool,
    /// DNS flow: unconnected, sent to the current nameserver.
    dns: bool,
    /// When the oldest unanswered DNS query was sent.
    unanswered: Option<Instant>,
}

pub struct UdpNat {
    flows: HashMap<FlowKey, Flow>,
    tokens: HashMap<Token, FlowKey>,
    buf: Vec<u8>,
}

impl UdpNat {
    pub fn new() -> Self {
        Self {
            flows: HashMap::new(),
            tokens: HashMap::new(),
            buf: vec![0u8; MAX_DATAGRAM],
        }
    }

    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    pub fn host_event(&mut self, token: Token) {
        if let Some(f) = self.tokens.get(&token).and_then(|k| self.flows.get_mut(k)) {
            f.readable = true;
        }
    }

    /// Handles a UDP datagram from the guest; false if dropped.
    pub fn guest_datagram(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ip: &Ipv4Packet<&[u8]>,
        dns: &mut Resolvers,
        forwards: &mut UdpForwards,
    ) -> bool {
        let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
            return false;
        };
        if core.config.verify_checksums
            && !udp.verify_checksum(
                &IpAddress::Ipv4(ip.src_addr()),
                &IpAddress::Ipv4(ip.dst_addr()),
            )
        {
            return false;
        }
        let guest = SocketAddrV4::new(ip.src_addr(), udp.src_port());
        let remote = SocketAddrV4::new(ip.dst_addr(), udp.dst_port());
        let payload = udp.payload();
        if remote.port() == 67 && guest.port() == 68 {
            return self.dhcp(core, payload);
        }
        if guest.port() == 0 || remote.port() == 0 || ip.src_addr().is_unspecified() {
            return false;
        }
        if *remote.ip() == core.config.gateway_ip && forwards.guest_reply(remote.port(), payload) {
            return true;
        }
        let is_dns = *remote.ip() == core.config.dns_ip && remote.port() == 53;
        if is_dns {
            if let Some(answer) = local_answer(payload, core.config.gateway_ip) {
                return self.reply_dns(core, guest, remote, &answer);
            }
        }
        let target = if is_dns {
            dns.refresh(Instant::now());
            match dns.current() {
                Some(t) => t,
                None => return self.reply_servfail(core, guest, remote, payload),
            }
        } else {
            match core.host_ip(*remote.ip()) {
                Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, remote.port())),
                None => return false,
            }
        };
        let key = (guest, remote);
        if !self.flows.contains_key(&key) && !self.open(core, registry, key, target, is_dns) {
            return if is_dns {
                self.reply_servfail(core, guest, remote, payload)
            } else {
                false
            };
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return false;
        };
        let now = Instant::now();
        flow.last = now;
        let sent = if flow.dns {
            if flow
                .unanswered
                .is_some_and(|t| now.duration_since(t) > DNS_FAILOVER)
            {
                dns.fail_over();
                flow.unanswered = None;
            }
            let target = dns.current().unwrap_or(target);
            flow.unanswered.get_or_insert(now);
            flow.sock.send_to(payload, target)
        } else {
            flow.sock.send(payload)
        };
        match sent {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "UDP send failed");
                if is_dns {
                    return self.reply_servfail(core, guest, remote, payload);
                }
                false
            }
        }
    }

    fn dhcp(&mut self, core: &mut Core, payload: &[u8]) -> bool {
        let Some(reply) = dhcp::handle(&core.config, payload) else {
            return false;
        };
        // Always broadcast: the guest has no address yet (and smoltcp's client asks so).
        let mut link = core.link();
        link.dst_mac = [0xff; 6];
        match udp_frame(
            link,
            (core.config.gateway_ip, 67),
            (Ipv4Addr::BROADCAST, 68),
            &reply,
            core.config.mtu,
        ) {
            Some(f) => core.device.push_tx(f),
            None => false,
        }
    }

    fn reply_servfail(
        &mut self,
        core: &mut Core,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
        query: &[u8],
    ) -> bool {
        let Some(reply) = servfail(query) else {
            return false;
        };
        self.reply_dns(core, guest, remote, &reply)
    }

    /// Sends a DNS answer of our own to the guest.
    fn reply_dns(
        &mut self,
        core: &mut Core,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
        reply: &[u8],
    ) -> bool {
        match udp_frame(
            core.link(),
            (*remote.ip(), remote.port()),
            (*guest.ip(), guest.port()),
            reply,
            core.config.mtu,
        ) {
            Some(f) => core.device.push_tx(f),
            None => false,
        }
    }

    fn open(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        key: FlowKey,
        target: SocketAddr,
        dns: bool,
    ) -> bool {
        if self.flows.len() >= core.config.limits.max_udp_flows {
            // Evict the least recently used flow.
            if let Some(old) = self
                .flows
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| *k)
            {
                self.remove(registry, &old);
            }
        }
        let std = match StdUdp::bind((Ipv4Addr::UNSPECIFIED, 0)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "UDP socket failed");
                return false;
            }
        };
        if std.set_nonblocking(true).is_err() || (!dns && std.connect(target).is_err()) {
            return false;
        }
        let mut sock = UdpSocket::from_std(std);
        let token = core.token(KIND_UDP);
        if registry
            .register(&mut sock, token, Interest::READABLE)
            .is_err()
        {
            return false;
        }
        self.tokens.insert(token, key);
        self.flows.insert(
            key,
            Flow {
                sock,
                token,
                last: Instant::now(),
                readable: true,
                dns,
                unanswered: None,
            },
        );
        true
    }

    fn remove(&mut self, registry: &Registry, key: &FlowKey) {
        if let Some(mut f) = self.flows.remove(key) {
            self.tokens.remove(&f.token);
            let _ = registry.deregister(&mut f.sock);
        }
    }

    /// Forwards datagrams that arrived on host sockets to the guest.
    pub fn service(&mut self, core: &mut Core, _registry: &Registry, dns: &mut Resolvers) {
        let max_payload = core.config.mtu.saturating_sub(28);
        for ((guest, remote), flow) in self.flows.iter_mut() {
            let mut budget = 256;
            while flow.readable && budget > 0 {
                budget -= 1;
                if core.device.tx_full() {
                    // Leave the rest in the socket buffer until the guest catches up.
                    break;
                }
                let got = if flow.dns {
                    flow.sock
                        .recv_from(&mut self.buf)
                        .map(|(n, from)| (n, dns.is_server(&from)))
                } else {
                    flow.sock.recv(&mut self.buf).map(|n| (n, true))
                };
                match got {
                    Ok((n, true)) => {
                        flow.last = Instant::now();
                        if flow.dns {
                            flow.unanswered = None;
                        }
                        if n > max_payload {
                            continue;
                        }
                        if let Some(f) = udp_frame(
                            core.link(),
                            (*remote.ip(), remote.port()),
                            (*guest.ip(), guest.port()),
                            &self.buf[..n],
                            core.config.mtu,
                        ) {
                            core.device.push_tx(f);
                        }
                    }
                    Ok((_, false)) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => flow.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && !flow.dns => {
                        // The host got "port unreachable": tell the guest the same way.
                        if let Some(f) = icmp_port_unreachable(
                            core.link(),
                            (*guest.ip(), guest.port()),
                            (*remote.ip(), remote.port()),
                        ) {
                            core.device.push_tx(f);
                        }
                    }
                    Err(_) => {
                        // Other ICMP errors surface here too; the guest times out.
                        continue;
                    }
                }
            }
        }
    }

    /// Drops idle flows.
    pub fn expire(&mut self, now: Instant, registry: &Registry, idle: Duration) {
        let stale: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| now.duration_since(f.last) > if f.dns { DNS_IDLE } else { idle })
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.remove(registry, &k);
        }
    }
}
