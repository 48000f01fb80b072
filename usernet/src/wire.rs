//! Building the frames that usernet writes by hand (UDP, ICMP, TCP RST, DHCP replies).
//!
//! smoltcp's sockets only cover TCP here; these replies come from NAT tables rather than
//! sockets, so they are emitted directly with `smoltcp::wire` packet setters.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket,
};

/// Ethernet + IPv4 header lengths (no IP options are ever emitted).
pub const ETH_HDR: usize = 14;
pub const IPV4_HDR: usize = 20;
pub const UDP_HDR: usize = 8;

/// Link-layer endpoints of a frame towards the guest.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// Writes an Ethernet + IPv4 header into `frame` (which must be `ETH_HDR + IPV4_HDR +
/// payload_len` long) and fills the IPv4 checksum. Returns the IP payload slice.
fn ipv4_frame(
    frame: &mut [u8],
    link: Link,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
) -> &mut [u8] {
    let ip_len = frame.len() - ETH_HDR;
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    eth.set_src_addr(EthernetAddress(link.src_mac));
    eth.set_dst_addr(EthernetAddress(link.dst_mac));
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[ETH_HDR..]);
    ip.set_version(4);
    ip.set_header_len(IPV4_HDR as u8);
    ip.set_dscp(0);
    ip.set_ecn(0);
    ip.set_total_len(ip_len as u16);
    ip.set_ident(0);
    ip.clear_flags();
    ip.set_dont_frag(true);
    ip.set_frag_offset(0);
    ip.set_hop_limit(64);
    ip.set_next_header(proto);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    &mut frame[ETH_HDR + IPV4_HDR..]
}

/// A UDP datagram from `src` to `dst` carrying `payload`, or `None` if it does not fit `mtu`.
pub fn udp_frame(
    link: Link,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
    mtu: usize,
) -> Option<Vec<u8>> {
    let ip_len = IPV4_HDR + UDP_HDR + payload.len();
    if ip_len > mtu {
        return None;
    }
    let mut frame = vec![0u8; ETH_HDR + ip_len];
    let body = ipv4_frame(&mut frame, link, src.0, dst.0, IpProtocol::Udp);
    let mut udp = UdpPacket::new_unchecked(body);
    udp.set_src_port(src.1);
    udp.set_dst_port(dst.1);
    udp.set_len((UDP_HDR + payload.len()) as u16);
    udp.payload_mut().copy_from_slice(payload);
    udp.fill_checksum(&IpAddress::Ipv4(src.0), &IpAddress::Ipv4(dst.0));
    Some(frame)
}

/// An ICMP message (`icmp` is the whole ICMP message; its checksum is recomputed here).
pub fn icmp_frame(link: Link, src: Ipv4Addr, dst: Ipv4Addr, icmp: &[u8]) -> Option<Vec<u8>> {
    if icmp.len() < 8 {
        return None;
    }
    let mut frame = vec![0u8; ETH_HDR + IPV4_HDR + icmp.len()];
    let body = ipv4_frame(&mut frame, link, src, dst, IpProtocol::Icmp);
    body.copy_from_slice(icmp);
    body[2] = 0;
    body[3] = 0;
    let sum = !internet_checksum(body);
    body[2..4].copy_from_slice(&sum.to_be_bytes());
    Some(frame)
}

/// ICMP "port unreachable" from `remote` telling the guest its UDP datagram from `guest`
/// was refused. The quoted original header is rebuilt from the flow (the datagram itself
/// is long gone when the host socket reports ECONNREFUSED); the guest matches on it.
pub fn icmp_port_unreachable(
    link: Link,
    guest: (Ipv4Addr, u16),
    remote: (Ipv4Addr, u16),
) -> Option<Vec<u8>> {
    let mut msg = [0u8; 8 + IPV4_HDR + UDP_HDR];
    msg[0] = 3; // destination unreachable
    msg[1] = 3; // port unreachable
    let orig = &mut msg[8..8 + IPV4_HDR];
    orig[0] = 0x45;
    orig[2..4].copy_from_slice(&((IPV4_HDR + UDP_HDR) as u16).to_be_bytes());
    orig[8] = 64;
    orig[9] = 17;
    orig[12..16].copy_from_slice(&guest.0.octets());
    orig[16..20].copy_from_slice(&remote.0.octets());
    let sum = !internet_checksum(orig);
    orig[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut msg[8 + IPV4_HDR..];
    udp[0..2].copy_from_slice(&guest.1.to_be_bytes());
    udp[2..4].copy_from_slice(&remote.1.to_be_bytes());
    udp[4..6].copy_from_slice(&(UDP_HDR as u16).to_be_bytes());
    icmp_frame(link, remote.0, guest.0, &msg)
}

/// A TCP RST answering a segment from `guest` to `remote` (RFC 793 reset generation).
pub fn tcp_rst_frame(
    link: Link,
    remote: (Ipv4Addr, u16),
    guest: (Ipv4Addr, u16),
    seq: Option<u32>,
    ack: Option<u32>,
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: remote.1,
        dst_port: guest.1,
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(seq.unwrap_or(0) as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let mut frame = vec![0u8; ETH_HDR + IPV4_HDR + repr.header_len()];
    let body = ipv4_frame(&mut frame, link, remote.0, guest.0, IpProtocol::Tcp);
    let mut tcp = TcpPacket::new_unchecked(body);
    repr.emit(
        &mut tcp,
        &IpAddress::Ipv4(remote.0),
        &IpAddress::Ipv4(guest.0),
        &ChecksumCapabilities::default(),
    );
    frame
}

/// RFC 1071 one's-complement sum (not inverted).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: Link = Link {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
    };

    #[test]
    fn test_udp_frame_valid_checksums() {
        let f = udp_frame(
            LINK,
            (Ipv4Addr::new(10, 0, 2, 3), 53),
            (Ipv4Addr::new(10, 0, 2, 15), 4000),
            b"hello",
            1500,
        )
        .expect("fits");
        let eth = EthernetFrame::new_checked(&f[..]).expect("eth");
        let ip = Ipv4Packet::new_checked(eth.payload()).expect("ip");
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).expect("udp");
        assert!(udp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
        assert_eq!(udp.payload(), b"hello");
        assert!(udp_frame(
            LINK,
            (Ipv4Addr::LOCALHOST, 1),
            (Ipv4Addr::LOCALHOST, 1),
            &[0; 1500],
            1500
        )
        .is_none());
    }

    #[test]
    fn test_icmp_checksum_verifies() {
        let msg = [0u8, 0, 0xff, 0xff, 0, 1, 0, 2, b'x', b'y', b'z'];
        let f = icmp_frame(
            LINK,
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::new(10, 0, 2, 15),
            &msg,
        )
        .expect("frame");
        let icmp = &f[ETH_HDR + IPV4_HDR..];
        assert_eq!(internet_checksum(icmp), 0xffff);
    }
}
