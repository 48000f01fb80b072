//! A DHCPv4 server for the single guest: OFFER/ACK with address, netmask, router, DNS,
//! lease time and MTU. smoltcp only ships a DHCP *client*, so the server logic is here;
//! packet parsing and emission use `smoltcp::wire::DhcpRepr`.

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, Ipv4Address};

use crate::config::Config;

/// DHCP lease time offered to the guest, seconds.
const LEASE_SECS: u32 = 86400;
/// DHCP option 26: interface MTU.
const OPT_MTU: u8 = 26;

/// Answers one DHCP message from the guest; `None` when it needs no answer or is malformed.
pub fn handle(config: &Config, request: &[u8]) -> Option<Vec<u8>> {
    let packet = DhcpPacket::new_checked(request).ok()?;
    let req = DhcpRepr::parse(&packet).ok()?;
    let reply_type = match req.message_type {
        DhcpMessageType::Discover => DhcpMessageType::Offer,
        DhcpMessageType::Request => {
            let wanted = req
                .requested_ip
                .or_else(|| (!req.client_ip.is_unspecified()).then_some(req.client_ip));
            match wanted {
                Some(ip) if ip != config.guest_ip => DhcpMessageType::Nak,
                _ => DhcpMessageType::Ack,
            }
        }
        _ => return None,
    };
    let mtu = (config.mtu as u16).to_be_bytes();
    let extra = [DhcpOption {
        kind: OPT_MTU,
        data: &mtu,
    }];
    let ack = reply_type != DhcpMessageType::Nak;
    let mut dns: heapless::Vec<Ipv4Address, 3> = heapless::Vec::new();
    if ack {
        // A full Vec cannot happen with one entry; ignore the impossible error.
        let _ = dns.push(config.dns_ip);
    }
    let reply = DhcpRepr {
        message_type: reply_type,
        transaction_id: req.transaction_id,
        secs: 0,
        client_hardware_address: req.client_hardware_address,
        client_ip: Ipv4Address::UNSPECIFIED,
        your_ip: if ack {
            config.guest_ip
        } else {
            Ipv4Address::UNSPECIFIED
        },
        server_ip: config.gateway_ip,
        router: ack.then_some(config.gateway_ip),
        subnet_mask: ack.then_some(config.netmask()),
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast: req.broadcast,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(config.gateway_ip),
        parameter_request_list: None,
        dns_servers: ack.then_some(dns),
        max_size: None,
        lease_duration: ack.then_some(LEASE_SECS),
        renew_duration: ack.then_some(LEASE_SECS / 2),
        rebind_duration: ack.then_some(LEASE_SECS * 7 / 8),
        additional_options: if ack { &extra } else { &[] },
    };
    let mut out = vec![0u8; reply.buffer_len()];
    let mut pkt = DhcpPacket::new_unchecked(&mut out[..]);
    reply.emit(&mut pkt).ok()?;
    Some(out)
}
