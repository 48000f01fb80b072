//! In-process tests of the frame input path (no root needed): DHCP, hostile frames
//! (truncated headers, bad checksums, fragment floods, SYN floods, ARP storms) and a fuzz
//! smoke run of the same entry point the cargo-fuzz target uses.

mod common;

use std::net::{Ipv4Addr, TcpListener};

use common::frames::*;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, EthernetFrame, IpProtocol, Ipv4Packet,
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

/// Byte-level mutations of valid frames, fed through the fuzz entry point.
#[test]
fn test_fuzz_smoke_frame_input() {
    let seeds = [
        tcp_syn(40000, GW, 9, 1),
        udp((GUEST, 5000), (GW, 9), b"hello"),
        udp(
            (GUEST, 5353),
            (Ipv4Addr::new(10, 0, 2, 3), 53),
            &[
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
            ],
        ),
        dhcp(DhcpMessageType::Discover, None),
        dhcp(DhcpMessageType::Request, Some(GUEST)),
        arp_request(GW, GUEST),
        ipv4(GUEST, GW, IpProtocol::Icmp, &[8, 0, 0xf7, 0xfe, 0, 1, 0, 0]),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut n = 0;
    for round in 0..4000 {
        let seed = &seeds[round % seeds.len()];
        let mut f = seed.clone();
        match rnd() % 4 {
            0 => {
                for _ in 0..1 + rnd() % 4 {
                    let i = (rnd() as usize) % f.len();
                    f[i] ^= 1 << (rnd() % 8);
                }
            }
            1 => f.truncate((rnd() as usize) % f.len()),
            2 => {
                let i = 14 + (rnd() as usize) % (f.len() - 14);
                f[i] = rnd() as u8;
            }
            _ => f.extend((0..rnd() % 64).map(|_| rnd() as u8)),
        }
        if round % 8 == 0 {
            usernet::fuzz::fuzz_frame(&f);
        } else {
            usernet::fuzz::fuzz_frames(&f);
        }
        n += 1;
    }
    assert_eq!(n, 4000);
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
