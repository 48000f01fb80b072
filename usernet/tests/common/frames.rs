//! Frame builders shared by the in-process tests.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};
use usernet::Config;

pub const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x15];
pub const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

pub fn isolated() -> Config {
    Config {
        outbound: false,
        resolv_conf: "/nonexistent/resolv.conf".into(),
        ..Config::default()
    }
}

pub fn eth(dst: [u8; 6], proto: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut f[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(dst),
        ethertype: proto,
    }
    .emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    f
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: payload.len(),
        hop_limit: 64,
    };
    let mut b = vec![0u8; 20 + payload.len()];
    let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
    repr.emit(&mut p, &ChecksumCapabilities::default());
    p.payload_mut().copy_from_slice(payload);
    eth([0x52, 0x55, 0x0a, 0, 2, 2], EthernetProtocol::Ipv4, &b)
}

pub fn tcp_syn(src_port: u16, dst: Ipv4Addr, dst_port: u16, seq: u32) -> Vec<u8> {
    let repr = TcpRepr {
        src_port,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: None,
        window_len: 64240,
        window_scale: Some(7),
        max_seg_size: Some(1460),
        sack_permitted: true,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let mut b = vec![0u8; repr.header_len()];
    let mut p = TcpPacket::new_unchecked(&mut b[..]);
    repr.emit(
        &mut p,
        &IpAddress::Ipv4(GUEST),
        &IpAddress::Ipv4(dst),
        &ChecksumCapabilities::default(),
    );
    ipv4(GUEST, dst, IpProtocol::Tcp, &b)
}

pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    };
    let mut b = vec![0u8; 8 + payload.len()];
    let mut p = UdpPacket::new_unchecked(&mut b[..]);
    repr.emit(
        &mut p,
        &IpAddress::Ipv4(src.0),
        &IpAddress::Ipv4(dst.0),
        payload.len(),
        |buf| buf.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    ipv4(src.0, dst.0, IpProtocol::Udp, &b)
}

pub fn dhcp(kind: DhcpMessageType, requested: Option<Ipv4Addr>) -> Vec<u8> {
    let repr = DhcpRepr {
        message_type: kind,
        transaction_id: 0x1234_5678,
        secs: 0,
        client_hardware_address: EthernetAddress(GUEST_MAC),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: true,
        requested_ip: requested,
        client_identifier: Some(EthernetAddress(GUEST_MAC)),
        server_identifier: None,
        parameter_request_list: Some(&[1, 3, 6, 26]),
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut b = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut b[..]))
        .expect("emit dhcp");
    udp((Ipv4Addr::UNSPECIFIED, 68), (Ipv4Addr::BROADCAST, 67), &b)
}

pub fn arp_request(target: Ipv4Addr, sender: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: sender,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut b = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut b[..]));
    eth([0xff; 6], EthernetProtocol::Arp, &b)
}

/// Parses a DHCP reply frame: (message type, your_ip, router, DNS servers).
pub fn parse_dhcp(
    f: &[u8],
) -> Option<(DhcpMessageType, Ipv4Addr, Option<Ipv4Addr>, Vec<Ipv4Addr>)> {
    let eth = EthernetFrame::new_checked(f).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    if udp.src_port() != 67 {
        return None;
    }
    let pkt = DhcpPacket::new_checked(udp.payload()).ok()?;
    let r = DhcpRepr::parse(&pkt).ok()?;
    Some((
        r.message_type,
        r.your_ip,
        r.router,
        r.dns_servers.map(|d| d.to_vec()).unwrap_or_default(),
    ))
}

/// A guest TCP segment without options (ACK, RST, FIN…): `ack` sets the ACK flag.
pub fn tcp_segment(
    src_port: u16,
    dst: (Ipv4Addr, u16),
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port,
        dst_port: dst.1,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64240,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let mut b = vec![0u8; repr.header_len()];
    let mut p = TcpPacket::new_unchecked(&mut b[..]);
    repr.emit(
        &mut p,
        &IpAddress::Ipv4(GUEST),
        &IpAddress::Ipv4(dst.0),
        &ChecksumCapabilities::default(),
    );
    ipv4(GUEST, dst.0, IpProtocol::Tcp, &b)
}

/// A TCP segment for the guest, reduced to what the tests look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentToGuest {
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub seq: u32,
}

/// Parses a frame for the guest as a TCP segment.
pub fn parse_tcp(f: &[u8]) -> Option<SegmentToGuest> {
    let eth = EthernetFrame::new_checked(f).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let t = TcpPacket::new_checked(ip.payload()).ok()?;
    Some(SegmentToGuest {
        src: ip.src_addr(),
        src_port: t.src_port(),
        dst_port: t.dst_port(),
        syn: t.syn(),
        ack: t.ack(),
        rst: t.rst(),
        seq: t.seq_number().0 as u32,
    })
}
