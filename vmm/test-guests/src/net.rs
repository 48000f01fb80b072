//! A minimal polling virtio-net driver and the `net`, `net_down` and `hostile_net` checks,
//! meant for a device whose backend is usernet (gateway 10.0.2.2, DHCP offering 10.0.2.15).
//!
//! - `net`: MAC from the config space, link up, an ARP request for the gateway answered on
//!   the receive queue (`gw_mac=`), a DHCP DISCOVER answered by an OFFER (`offer=`).
//! - `net_down`: for a backend that breaks the stream after the first frame: sends an ARP
//!   request and expects no reply, the link reported down in the config space (`link=down`),
//!   a config-change interrupt status bit (`config_irq=`) and a device that still completes
//!   transmit chains (`tx_after=1`).
//! - `hostile_net`: transmit chains that are too short, header-only, oversized, outside
//!   memory or device-writable must each complete; a receive buffer shorter than header +
//!   1514 bytes gets its frame dropped (used length 0); then an ARP round trip still works.

use crate::io::{bytes, deadline, expired, rd, wr};
use crate::mem::alloc_pages;
use crate::report::Report;
use crate::virtio::{Buf, Mmio, Queue, D_WRITE, R_INT_ACK, R_INT_STATUS};

pub const ID_NET: u32 = 1;

const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const HDR: usize = 12;
const RX_BUFS: u16 = 8;
const RX_BUF_LEN: u32 = 2048;
/// Wall-clock budget for each reply (guest code is emulated on PVM hosts: be generous).
const WAIT_MS: u64 = 20_000;

const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const GW_IP: [u8; 4] = [10, 0, 2, 2];
const BROADCAST: [u8; 6] = [0xff; 6];

struct Net {
    mmio: Mmio,
    mac: [u8; 6],
    rx: Queue,
    tx: Queue,
    rx_pages: u64,
    tx_page: u64,
}

/// Writes `data` at `addr`.
fn put(addr: u64, data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        wr::<u8>(addr + i as u64, b);
    }
}

fn be16(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}

impl Net {
    fn init(mmio: Mmio) -> Result<Net, &'static str> {
        Self::init_with(mmio, RX_BUF_LEN)
    }

    /// Like `init`, with the first receive buffer `first_rx_len` bytes long.
    fn init_with(mmio: Mmio, first_rx_len: u32) -> Result<Net, &'static str> {
        let (_, neg) = mmio.negotiate(F_MAC | F_STATUS | F_MTU)?;
        if neg & (F_MAC | F_STATUS | F_MTU) != F_MAC | F_STATUS | F_MTU {
            return Err("MAC, STATUS and MTU not all offered");
        }
        let mut rx = mmio.setup_queue(0)?;
        let tx = mmio.setup_queue(1)?;
        mmio.driver_ok();
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = rd::<u8>(mmio.base + 0x100 + i as u64);
        }
        let rx_pages = alloc_pages(u64::from(RX_BUFS)).ok_or("out of memory")?;
        let tx_page = alloc_pages(1).ok_or("out of memory")?;
        for i in 0..RX_BUFS.min(rx.size) {
            let len = if i == 0 { first_rx_len } else { RX_BUF_LEN };
            rx.set_desc(i, rx_pages + 4096 * u64::from(i), len, D_WRITE, 0);
            rx.push_avail(i);
        }
        rx.notify();
        Ok(Net {
            mmio,
            mac,
            rx,
            tx,
            rx_pages,
            tx_page,
        })
    }

    fn link_up(&self) -> bool {
        rd::<u16>(self.mmio.base + 0x106) & 1 == 1
    }

    fn mtu(&self) -> u16 {
        rd::<u16>(self.mmio.base + 0x10a)
    }

    /// Sends the Ethernet frame already written at `tx_page + HDR` (`len` bytes).
    fn send(&mut self, len: usize) -> Result<(), &'static str> {
        for i in 0..HDR {
            wr::<u8>(self.tx_page + i as u64, 0);
        }
        self.tx
            .transfer(&[(self.tx_page, (HDR + len) as u32, false)], WAIT_MS)
            .map(|_| ())
            .ok_or("transmit not completed")
    }

    /// Writes an Ethernet header at the frame start; returns the payload address.
    fn eth(&self, dst: [u8; 6], ethertype: u16) -> u64 {
        let f = self.tx_page + HDR as u64;
        put(f, &dst);
        put(f + 6, &self.mac);
        put(f + 12, &be16(ethertype));
        f + 14
    }

    fn send_arp_request(&mut self, target: [u8; 4]) -> Result<(), &'static str> {
        let p = self.eth(BROADCAST, 0x0806);
        put(p, &[0, 1, 8, 0, 6, 4, 0, 1]);
        put(p + 8, &self.mac);
        put(p + 14, &GUEST_IP);
        put(p + 18, &[0; 6]);
        put(p + 24, &target);
        self.send(14 + 28)
    }

    fn send_dhcp_discover(&mut self, xid: u32) -> Result<(), &'static str> {
        const BOOTP: usize = 300;
        let ip = self.eth(BROADCAST, 0x0800);
        let total = 20 + 8 + BOOTP;
        let mut iph = [0u8; 20];
        iph[0] = 0x45;
        iph[2..4].copy_from_slice(&be16(total as u16));
        iph[8] = 64;
        iph[9] = 17;
        iph[16..20].copy_from_slice(&[255; 4]);
        let sum = checksum(&iph);
        iph[10..12].copy_from_slice(&be16(sum));
        put(ip, &iph);
        let udp = ip + 20;
        put(udp, &be16(68));
        put(udp + 2, &be16(67));
        put(udp + 4, &be16((8 + BOOTP) as u16));
        put(udp + 6, &[0, 0]); // no checksum (allowed for IPv4)
        let b = udp + 8;
        for i in 0..BOOTP {
            wr::<u8>(b + i as u64, 0);
        }
        put(b, &[1, 1, 6, 0]);
        put(b + 4, &xid.to_be_bytes());
        put(b + 10, &be16(0x8000)); // broadcast reply
        put(b + 28, &self.mac);
        put(b + 236, &[0x63, 0x82, 0x53, 0x63, 53, 1, 1, 255]);
        self.send(14 + total)
    }

    /// Waits for a received frame `accept` likes; returns what it extracted. Every buffer is
    /// re-posted at once.
    fn recv<T>(&mut self, ms: u64, mut accept: impl FnMut(&[u8]) -> Option<T>) -> Option<T> {
        let d = deadline(ms);
        loop {
            if let Some((id, len)) = self.rx.pop_used() {
                let i = id as u16 % RX_BUFS;
                let a = self.rx_pages + 4096 * u64::from(i);
                let n = (len as usize).min(RX_BUF_LEN as usize);
                let got = if n > HDR {
                    accept(bytes(a + HDR as u64, n - HDR))
                } else {
                    None
                };
                self.rx.push_avail(i);
                self.rx.notify();
                if got.is_some() {
                    return got;
                }
            }
            if expired(d) {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    /// An ARP request for the gateway and the sender MAC of its reply.
    fn arp_gateway(&mut self, ms: u64) -> Result<Option<[u8; 6]>, &'static str> {
        self.send_arp_request(GW_IP)?;
        let mac = self.mac;
        Ok(self.recv(ms, |f| {
            if f.len() < 42 || f[12..14] != [8, 6] || f[20..22] != [0, 2] || f[28..32] != GW_IP {
                return None;
            }
            if f[32..38] != mac {
                return None;
            }
            let mut m = [0u8; 6];
            m.copy_from_slice(&f[22..28]);
            Some(m)
        }))
    }
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let hi = u32::from(c[0]) << 8;
        let lo = c.get(1).map(|&b| u32::from(b)).unwrap_or(0);
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The DHCP OFFER's yiaddr for `xid`.
fn dhcp_offer(f: &[u8], xid: u32) -> Option<[u8; 4]> {
    // Ethernet(14) + IPv4 without options(20) + UDP(8) + BOOTP.
    if f.len() < 14 + 20 + 8 + 240 || f[12..14] != [8, 0] || f[14] != 0x45 || f[23] != 17 {
        return None;
    }
    let udp = &f[34..];
    if udp[2..4] != be16(68) {
        return None;
    }
    let b = &udp[8..];
    if b[0] != 2 || b[4..8] != xid.to_be_bytes() || b[236..240] != [0x63, 0x82, 0x53, 0x63] {
        return None;
    }
    // Options: look for 53 (message type) = 2 (OFFER).
    let mut o = &b[240..];
    let mut offer = false;
    while let [code, rest @ ..] = o {
        match code {
            255 => break,
            0 => o = rest,
            _ => {
                let [len, rest @ ..] = rest else { break };
                let len = usize::from(*len);
                if rest.len() < len {
                    break;
                }
                if *code == 53 && len == 1 && rest[0] == 2 {
                    offer = true;
                }
                o = &rest[len..];
            }
        }
    }
    let mut ip = [0u8; 4];
    ip.copy_from_slice(&b[16..20]);
    offer.then_some(ip)
}

struct Mac([u8; 6]);
impl core::fmt::Display for Mac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

struct Ip([u8; 4]);
impl core::fmt::Display for Ip {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let a = self.0;
        write!(f, "{}.{}.{}.{}", a[0], a[1], a[2], a[3])
    }
}

/// `net`: ARP for the gateway and a DHCP DISCOVER/OFFER through the device.
pub fn test_net(mmio: Mmio, r: &mut Report) {
    let mut n = match Net::init(mmio) {
        Ok(n) => n,
        Err(e) => return r.fail("net", format_args!("init: {e}")),
    };
    if !n.link_up() {
        return r.fail("net", format_args!("link down at start"));
    }
    let gw = match n.arp_gateway(WAIT_MS) {
        Ok(Some(m)) => m,
        Ok(None) => return r.fail("net", format_args!("no ARP reply from the gateway")),
        Err(e) => return r.fail("net", format_args!("arp: {e}")),
    };
    let xid = 0x5eed_0001;
    if let Err(e) = n.send_dhcp_discover(xid) {
        return r.fail("net", format_args!("dhcp: {e}"));
    }
    match n.recv(WAIT_MS, |f| dhcp_offer(f, xid)) {
        Some(ip) => r.ok(
            "net",
            format_args!(
                "mac={} gw_mac={} offer={} mtu={} link=up",
                Mac(n.mac),
                Mac(gw),
                Ip(ip),
                n.mtu()
            ),
        ),
        None => r.fail("net", format_args!("no DHCP OFFER")),
    }
}

/// `net_down`: the backend breaks the stream; the link must go down and the device live on.
pub fn test_net_down(mmio: Mmio, r: &mut Report) {
    let mut n = match Net::init(mmio) {
        Ok(n) => n,
        Err(e) => return r.fail("net_down", format_args!("init: {e}")),
    };
    let reply = match n.arp_gateway(3000) {
        Ok(m) => m.is_some(),
        Err(e) => return r.fail("net_down", format_args!("arp: {e}")),
    };
    let d = deadline(WAIT_MS);
    while n.link_up() && !expired(d) {
        core::hint::spin_loop();
    }
    let config_irq = mmio.r32(R_INT_STATUS) & 2 != 0;
    mmio.w32(R_INT_ACK, mmio.r32(R_INT_STATUS));
    // The device still completes transmit chains (dropping the frames).
    let tx_after = n.send_arp_request(GW_IP).is_ok();
    let link = if n.link_up() { "up" } else { "down" };
    r.check(
        "net_down",
        !reply && link == "down" && tx_after,
        format_args!(
            "link={link} arp_reply={} config_irq={} tx_after={}",
            u8::from(reply),
            u8::from(config_irq),
            u8::from(tx_after)
        ),
    );
}

/// `hostile_net`: malformed transmit chains, a receive buffer too short for a full frame
/// (the frame put there is dropped: used length 0), then a normal ARP round trip.
pub fn test_hostile_net(mmio: Mmio, r: &mut Report) {
    let mut n = match Net::init_with(mmio, 100) {
        Ok(n) => n,
        Err(e) => return r.fail("hostile_net", format_args!("init: {e}")),
    };
    let big = match alloc_pages(20) {
        Some(p) => p,
        None => return r.fail("hostile_net", format_args!("out of memory")),
    };
    // A valid ARP request in the tx page, so only the chain shape is wrong.
    let _ = n.eth(BROADCAST, 0x0806);
    let t = n.tx_page;
    let cases: [(&str, &[Buf]); 6] = [
        ("short", &[(t, 8, false)]),
        ("header_only", &[(t, HDR as u32, false)]),
        ("oversized", &[(big, 20 * 4096, false)]),
        ("outside_memory", &[(0xffff_0000_0000, 64, false)]),
        ("writable", &[(t, (HDR + 42) as u32, true)]),
        ("mixed", &[(t, (HDR + 42) as u32, false), (big, 64, true)]),
    ];
    let mut completed = 0;
    for (name, bufs) in cases {
        if n.tx.transfer(bufs, WAIT_MS).is_none() {
            return r.fail(
                "hostile_net",
                format_args!("{name} chain never completed (device stuck)"),
            );
        }
        completed += 1;
    }
    // The first ARP reply lands in the 100-byte buffer: dropped, returned with length 0.
    if let Err(e) = n.send_arp_request(GW_IP) {
        return r.fail("hostile_net", format_args!("arp: {e}"));
    }
    let rx_short = match n.rx.wait_used(WAIT_MS) {
        Some((0, 0)) => 1,
        Some((id, len)) => {
            return r.fail(
                "hostile_net",
                format_args!("short rx buffer: used id={id} len={len}, want id=0 len=0"),
            )
        }
        None => return r.fail("hostile_net", format_args!("short rx buffer never used")),
    };
    match n.arp_gateway(WAIT_MS) {
        Ok(Some(gw)) => r.ok(
            "hostile_net",
            format_args!(
                "completed={completed} rx_short_dropped={rx_short} gw_mac={} link=up",
                Mac(gw)
            ),
        ),
        Ok(None) => r.fail(
            "hostile_net",
            format_args!("completed={completed} but no ARP reply afterwards"),
        ),
        Err(e) => r.fail("hostile_net", format_args!("arp: {e}")),
    }
}
