//! In-process tests of the frame input path (no root needed): DHCP, hostile frames
//! (truncated headers, bad checksums, fragment floods, SYN floods, ARP storms). The fuzz
//! smoke run of the cargo-fuzz entry point is a unit test in `src/fuzz.rs`.

mod common;

use std::net::{Ipv4Addr, TcpListener};

use common::frames::*;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, EthernetFrame, Ipv4Packet, TcpControl,
    TcpPacket,
};
use usernet::{Config, Limits, UserNet};

fn drain(net: &mut UserNet) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(f) = net.take_frame() {
        out.push(f);
    }
    out
}

#[test]
fn test_dhcp_offer_ack_nak() {
    let mut net = UserNet::new(isolated()).expect("net");
    net.receive_frame(&dhcp(DhcpMessageType::Discover, None));
    net.process();
    let out = drain(&mut net);
    let offer = out.iter().find_map(|f| parse_dhcp(f)).expect("offer");
    assert_eq!(offer.0, DhcpMessageType::Offer);
    assert_eq!(offer.1, GUEST);
    assert_eq!(offer.2, Some(GW));
    assert_eq!(offer.3, vec![Ipv4Addr::new(10, 0, 2, 3)]);
    // The MTU option (26) carries 65520.
    assert!(
        out[0].windows(4).any(|w| w == [26, 2, 0xff, 0xf0]),
        "MTU option"
    );
    net.receive_frame(&dhcp(DhcpMessageType::Request, Some(GUEST)));
    net.process();
    let ack = drain(&mut net)
        .iter()
        .find_map(|f| parse_dhcp(f))
        .expect("ack");
    assert_eq!(ack.0, DhcpMessageType::Ack);
    assert_eq!(ack.1, GUEST);
    net.receive_frame(&dhcp(
        DhcpMessageType::Request,
        Some(Ipv4Addr::new(10, 0, 2, 99)),
    ));
    net.process();
    let nak = drain(&mut net)
        .iter()
        .find_map(|f| parse_dhcp(f))
        .expect("nak");
    assert_eq!(nak.0, DhcpMessageType::Nak);
}

#[test]
fn test_arp_for_gateway_answered_and_storm_bounded() {
    let mut net = UserNet::new(isolated()).expect("net");
    net.receive_frame(&arp_request(GW, GUEST));
    net.process();
    let out = drain(&mut net);
    let reply = out
        .iter()
        .find_map(|f| {
            let e = EthernetFrame::new_checked(&f[..]).ok()?;
            let a = ArpPacket::new_checked(e.payload()).ok()?;
            ArpRepr::parse(&a).ok()
        })
        .expect("ARP reply");
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        ..
    } = reply
    else {
        panic!("not IPv4 ARP");
    };
    assert_eq!(operation, ArpOperation::Reply);
    assert_eq!(source_protocol_addr, GW);
    assert_eq!(source_hardware_addr.0, net.config().gateway_mac);
    // A storm without anyone draining replies: queues stay bounded.
    let lim = Limits::default();
    for i in 0..50_000u32 {
        let sender = Ipv4Addr::new(10, 0, 2, (i % 200) as u8 + 20);
        let target = if i % 2 == 0 {
            GW
        } else {
            Ipv4Addr::from(0x0a00_0000 | i)
        };
        net.receive_frame(&arp_request(target, sender));
        if i % 5000 == 0 {
            net.process();
        }
    }
    net.process();
    let queued = drain(&mut net).len();
    assert!(queued <= lim.max_tx_frames, "{queued} frames queued");
    // Nobody else's address is answered (no proxy ARP: the guest's DAD probes must pass).
    net.receive_frame(&arp_request(GUEST, Ipv4Addr::UNSPECIFIED));
    net.receive_frame(&arp_request(Ipv4Addr::new(10, 0, 2, 77), GUEST));
    net.process();
    assert!(
        drain(&mut net).is_empty(),
        "ARP answered for a foreign address"
    );
}

#[test]
fn test_truncated_and_corrupt_frames_are_dropped() {
    let mut net = UserNet::new(isolated()).expect("net");
    let samples = [
        tcp_syn(40000, GW, 9, 1),
        udp((GUEST, 5000), (GW, 9), b"x"),
        dhcp(DhcpMessageType::Discover, None),
        arp_request(GW, GUEST),
    ];
    for s in &samples {
        for len in 0..s.len() {
            net.receive_frame(&s[..len]);
        }
    }
    net.process();
    drain(&mut net);
    // Bad checksums: every single-byte corruption of the IP/TCP/UDP headers.
    let before = net.stats().rx_dropped;
    for s in &samples[..2] {
        for i in 14..s.len() {
            let mut f = s.clone();
            f[i] ^= 0x5a;
            net.receive_frame(&f);
        }
    }
    net.process();
    drain(&mut net);
    let dropped = net.stats().rx_dropped - before;
    assert!(dropped > 40, "only {dropped} corrupt frames dropped");
    assert_eq!(net.stats().tcp_pending, 0);
}

#[test]
fn test_fragment_flood_is_dropped_without_state() {
    let mut net = UserNet::new(isolated()).expect("net");
    let base = udp((GUEST, 5000), (GW, 9), &[7u8; 1000]);
    for i in 0..20_000u16 {
        let mut f = base.clone();
        // More-fragments + offset, fresh ident: a reassembly-table filler.
        f[14 + 4..14 + 6].copy_from_slice(&i.to_be_bytes());
        f[14 + 6] = 0x20 | ((i >> 8) as u8 & 0x1f);
        f[14 + 7] = i as u8;
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.fill_checksum();
        net.receive_frame(&f);
    }
    net.process();
    assert_eq!(net.stats().rx_dropped, 20_000);
    assert_eq!(net.stats().udp_flows, 0);
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn test_syn_flood_is_bounded() {
    // A host listener that never accepts, with a tiny backlog: most connects hang, so
    // the pending table fills up; beyond its limit the guest gets RSTs.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let limits = Limits {
        max_pending_connects: 64,
        max_tcp_connections: 128,
        tcp_buffer: 64 * 1024,
        ..Limits::default()
    };
    let mut net = UserNet::new(Config {
        limits,
        ..isolated()
    })
    .expect("net");
    let rss0 = rss_kib();
    let mut rsts = 0;
    for i in 0..20_000u32 {
        let sport = 1024 + (i % 60_000) as u16;
        net.receive_frame(&tcp_syn(sport, GW, port, i.wrapping_mul(7919)));
        if i % 256 == 0 {
            let mut ready = Vec::new();
            net.wait(Some(std::time::Duration::ZERO), &mut ready)
                .expect("wait");
            net.process();
            for f in drain(&mut net) {
                let e = EthernetFrame::new_checked(&f[..]).expect("eth");
                if let Ok(ip) = Ipv4Packet::new_checked(e.payload()) {
                    if let Ok(t) = TcpPacket::new_checked(ip.payload()) {
                        rsts += usize::from(t.rst());
                    }
                }
            }
            let s = net.stats();
            assert!(s.tcp_pending <= 64, "pending {}", s.tcp_pending);
            assert!(s.tcp_connections + s.tcp_pending <= 128);
        }
    }
    assert!(rsts > 10_000, "only {rsts} RSTs for 20000 SYNs");
    let grown = rss_kib().saturating_sub(rss0);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    drop(l);
}

#[test]
fn test_udp_flow_expires_when_idle() {
    let host = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = host.local_addr().expect("addr").port();
    let limits = Limits {
        udp_idle_timeout: std::time::Duration::from_millis(300),
        ..Limits::default()
    };
    let mut net = UserNet::new(Config {
        limits,
        ..isolated()
    })
    .expect("net");
    net.receive_frame(&udp((GUEST, 5000), (GW, port), b"ping"));
    net.process();
    let mut buf = [0u8; 16];
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let (n, from) = host.recv_from(&mut buf).expect("datagram via NAT");
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(net.stats().udp_flows, 1);
    // The reply travels back to the guest, from the gateway address.
    host.send_to(b"pong", from).expect("reply");
    let mut got = None;
    for _ in 0..100 {
        let mut ready = Vec::new();
        net.wait(Some(std::time::Duration::from_millis(20)), &mut ready)
            .expect("wait");
        net.process();
        if let Some(f) = net.take_frame() {
            got = Some(f);
            break;
        }
    }
    let f = got.expect("reply frame");
    let e = EthernetFrame::new_checked(&f[..]).expect("eth");
    let ip = Ipv4Packet::new_checked(e.payload()).expect("ip");
    assert_eq!(ip.src_addr(), GW);
    assert_eq!(ip.dst_addr(), GUEST);
    assert!(f.ends_with(b"pong"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    net.process();
    assert_eq!(net.stats().udp_flows, 0, "idle flow not expired");
}

/// Runs the stack for `ms` milliseconds and returns every TCP segment it sent the guest.
fn run_for(net: &mut UserNet, ms: u64) -> Vec<SegmentToGuest> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut out = Vec::new();
    while std::time::Instant::now() < deadline {
        let mut ready = Vec::new();
        net.wait(Some(std::time::Duration::from_millis(10)), &mut ready)
            .expect("wait");
        net.process();
        out.extend(drain(net).iter().filter_map(|f| parse_tcp(f)));
    }
    out
}

/// A host listener on 127.0.0.1 that accepts and holds every connection (so the kernel's
/// backlog never fills); the streams live until the test ends.
fn holding_listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
            c.store(held.len(), std::sync::atomic::Ordering::SeqCst);
        }
    });
    (port, count)
}

fn outbound() -> Config {
    Config {
        resolv_conf: "/nonexistent/resolv.conf".into(),
        ..Config::default()
    }
}

/// A stack that knows the guest's MAC (the guest asked for the gateway's), so smoltcp can
/// answer SYNs without an ARP round trip first.
fn net_with_arp(config: Config) -> UserNet {
    let mut net = UserNet::new(config).expect("net");
    net.receive_frame(&arp_request(GW, GUEST));
    net.process();
    drain(&mut net);
    net
}

/// The gateway reaches the host's loopback unless `allow_host_loopback` is off, and a guest
/// cannot get around that by sending to 127.0.0.1 directly (it never could get anything on
/// the host's loopback that way: 127/8 is only reachable through the gateway).
#[test]
fn test_host_loopback_via_gateway_can_be_turned_off_and_not_bypassed() {
    let (port, _) = holding_listener();
    for allow in [true, false] {
        let mut net = net_with_arp(Config {
            allow_host_loopback: allow,
            ..outbound()
        });
        net.receive_frame(&tcp_syn(40000, GW, port, 1000));
        net.receive_frame(&tcp_syn(40001, Ipv4Addr::LOCALHOST, port, 2000));
        net.receive_frame(&tcp_syn(40002, Ipv4Addr::new(127, 9, 9, 9), port, 3000));
        let segs = run_for(&mut net, 300);
        let reply = |sport: u16| {
            segs.iter()
                .find(|s| s.dst_port == sport)
                .copied()
                .unwrap_or_else(|| panic!("no reply to port {sport}: {segs:?}"))
        };
        let gw = reply(40000);
        if allow {
            assert!(gw.syn && gw.ack && !gw.rst, "gateway: {gw:?}");
        } else {
            assert!(gw.rst && !gw.syn, "gateway with host loopback off: {gw:?}");
        }
        for sport in [40001, 40002] {
            let s = reply(sport);
            assert!(s.rst && !s.syn, "direct loopback must be refused: {s:?}");
        }
    }
}

/// Link-local and metadata destinations get a RST at once; no host connect is attempted.
#[test]
fn test_link_local_and_metadata_are_refused_without_a_host_connect() {
    let mut net = UserNet::new(outbound()).expect("net");
    let dsts = [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(169, 254, 170, 2),
        Ipv4Addr::new(169, 254, 1, 1),
        Ipv4Addr::new(100, 100, 100, 200),
    ];
    for (i, dst) in dsts.iter().enumerate() {
        net.receive_frame(&tcp_syn(41000 + i as u16, *dst, 80, 1));
        net.receive_frame(&udp((GUEST, 42000 + i as u16), (*dst, 80), b"GET"));
    }
    assert_eq!(net.stats().tcp_pending, 0, "a host connect was started");
    assert_eq!(net.stats().udp_flows, 0, "a host UDP flow was opened");
    let segs: Vec<_> = drain(&mut net)
        .iter()
        .filter_map(|f| parse_tcp(f))
        .collect();
    for (i, dst) in dsts.iter().enumerate() {
        let s = segs
            .iter()
            .find(|s| s.dst_port == 41000 + i as u16)
            .unwrap_or_else(|| panic!("no RST for {dst}: {segs:?}"));
        assert!(s.rst && s.src == *dst, "{dst}: {s:?}");
    }
}

/// Thousands of connections: buffers shrink, the total stays within the budget, the SYNs
/// that do not fit get no RST (the guest retransmits) and get in once a connection closes.
#[test]
fn test_tcp_buffer_budget_bounds_memory_and_defers_connections() {
    let (port, accepted) = holding_listener();
    let budget = 4 << 20;
    let limits = Limits {
        tcp_buffer: 256 * 1024,
        tcp_buffer_budget: budget,
        max_pending_connects: 4096,
        max_tcp_connections: 4096,
        ..Limits::default()
    };
    let mut net = net_with_arp(Config {
        limits,
        ..outbound()
    });
    let n = 2000u16;
    for i in 0..n {
        net.receive_frame(&tcp_syn(20000 + i, GW, port, u32::from(i) * 1000));
        if i % 64 == 0 {
            run_for(&mut net, 0);
        }
        let s = net.stats();
        assert!(s.tcp_buffer_reserved <= budget, "{s:?}");
    }
    let segs = run_for(&mut net, 1500);
    let s = net.stats();
    // One per connection (smoltcp retransmits SYN-ACKs the guest does not acknowledge).
    let mut synacks: Vec<SegmentToGuest> = Vec::new();
    for seg in segs.iter().filter(|s| s.syn && s.ack) {
        if !synacks.iter().any(|s| s.dst_port == seg.dst_port) {
            synacks.push(*seg);
        }
    }
    assert!(segs.iter().all(|s| !s.rst), "a deferred SYN was refused");
    assert!(s.tcp_buffer_bytes <= budget, "{s:?}");
    assert!(s.tcp_buffer_bytes > budget / 2, "{s:?}");
    // At least budget/2 / 32 KiB connections always fit; never more than budget / 32 KiB.
    assert!(
        (64..=128).contains(&synacks.len()),
        "{} connections: {s:?}",
        synacks.len()
    );
    assert_eq!(s.tcp_connections, synacks.len());
    assert_eq!(s.tcp_deferred, u64::from(n) - synacks.len() as u64, "{s:?}");
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= synacks.len());
    // The guest closes one connection (handshake completed, then RST) ...
    let first = synacks[0];
    let isn = u32::from(first.dst_port - 20000) * 1000;
    let peer = (GW, port);
    net.receive_frame(&tcp_segment(
        first.dst_port,
        peer,
        TcpControl::None,
        isn + 1,
        Some(first.seq.wrapping_add(1)),
    ));
    run_for(&mut net, 50);
    net.receive_frame(&tcp_segment(
        first.dst_port,
        peer,
        TcpControl::Rst,
        isn + 1,
        None,
    ));
    run_for(&mut net, 100);
    assert_eq!(net.stats().tcp_connections, synacks.len() - 1);
    // ... and a retransmitted SYN that was deferred now gets in.
    let waiting = (20000..20000 + n)
        .find(|p| !synacks.iter().any(|s| s.dst_port == *p))
        .expect("a deferred port");
    net.receive_frame(&tcp_syn(
        waiting,
        GW,
        port,
        u32::from(waiting - 20000) * 1000,
    ));
    let segs = run_for(&mut net, 500);
    assert!(
        segs.iter().any(|s| s.dst_port == waiting && s.syn && s.ack),
        "the retransmitted SYN did not get in: {segs:?} {:?}",
        net.stats()
    );
    assert!(net.stats().tcp_buffer_bytes <= budget);
}
