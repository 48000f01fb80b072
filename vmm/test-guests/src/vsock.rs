//! virtio-vsock driver (polling, stream sockets) and the `vsock` test.
//!
//! Command line: `vsock_port=P` (the host test listens at `<socket>_P`; nothing listens at
//! P+1), `vsock_listen=Q` (the guest port the host test connects to with `CONNECT Q`),
//! `vsock_token=T` (a per-run word the messages carry). Results, in this order (the host
//! connects first, so its packets never cross the guest-initiated exchanges):
//! - `vsock.init`: device found, `cid=` from the config space;
//! - `vsock.accept`: host → guest Q: REQUEST/RESPONSE, echoes what arrives until the host
//!   closes; ports other than Q are refused with RST (`refused=` counts them);
//! - `vsock.connect`: guest → host P: REQUEST/RESPONSE, a message, its echo, clean close;
//! - `vsock.refused`: guest → host P+1 (no listener) gets RST.

use crate::boot::BootInfo;
use crate::io::{bytes, deadline, expired, rd, wr};
use crate::mem::alloc_pages;
use crate::report::Report;
use crate::virtio::{Mmio, Queue, D_WRITE};

pub const ID_VSOCK: u32 = 19;

const HDR: usize = 44;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const HOST_CID: u64 = 2;
/// Our receive buffer per connection, as advertised.
const BUF_ALLOC: u32 = 4096;
/// rx buffers posted: descriptors 0..RX_BUFS, each one page.
const RX_BUFS: u16 = 8;
/// Wall-clock budget for each wait (guest code is emulated on PVM hosts: be generous).
const WAIT_MS: u64 = 20_000;
const GUEST_PORT: u32 = 40_000;

#[derive(Clone, Copy, Default)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    op: u16,
    flags: u32,
}

fn read_hdr(a: u64) -> Hdr {
    Hdr {
        src_cid: rd::<u64>(a),
        dst_cid: rd::<u64>(a + 8),
        src_port: rd::<u32>(a + 16),
        dst_port: rd::<u32>(a + 20),
        len: rd::<u32>(a + 24),
        op: rd::<u16>(a + 30),
        flags: rd::<u32>(a + 32),
    }
}

struct Vsock {
    cid: u64,
    rx: Queue,
    tx: Queue,
    rx_pages: u64,
    tx_page: u64,
    /// Bytes of payload consumed on the current connection (our fwd_cnt).
    fwd_cnt: u32,
}

/// A received packet, copied out of its rx buffer (which is re-posted at once).
struct Pkt {
    h: Hdr,
    data: [u8; 256],
}

impl Vsock {
    fn init(mmio: Mmio) -> Result<Vsock, &'static str> {
        mmio.negotiate(0)?;
        let mut rx = mmio.setup_queue(0)?;
        let tx = mmio.setup_queue(1)?;
        let _event = mmio.setup_queue(2)?;
        mmio.driver_ok();
        let cid = u64::from(mmio.r32(0x100)) | (u64::from(mmio.r32(0x104)) << 32);
        let rx_pages = alloc_pages(u64::from(RX_BUFS)).ok_or("out of memory")?;
        let tx_page = alloc_pages(1).ok_or("out of memory")?;
        for i in 0..RX_BUFS.min(rx.size) {
            rx.set_desc(i, rx_pages + 4096 * u64::from(i), 4096, D_WRITE, 0);
            rx.push_avail(i);
        }
        rx.notify();
        Ok(Vsock {
            cid,
            rx,
            tx,
            rx_pages,
            tx_page,
            fwd_cnt: 0,
        })
    }

    /// Sends one packet (header + `data`) on descriptor 0 of the tx queue and waits for it.
    fn send(
        &mut self,
        op: u16,
        src: u32,
        dst: u32,
        flags: u32,
        data: &[u8],
    ) -> Result<(), &'static str> {
        let a = self.tx_page;
        wr::<u64>(a, self.cid);
        wr::<u64>(a + 8, HOST_CID);
        wr::<u32>(a + 16, src);
        wr::<u32>(a + 20, dst);
        wr::<u32>(a + 24, data.len() as u32);
        wr::<u16>(a + 28, 1); // stream
        wr::<u16>(a + 30, op);
        wr::<u32>(a + 32, flags);
        wr::<u32>(a + 36, BUF_ALLOC);
        wr::<u32>(a + 40, self.fwd_cnt);
        for (i, &b) in data.iter().enumerate() {
            wr::<u8>(a + (HDR + i) as u64, b);
        }
        self.tx
            .transfer(&[(a, (HDR + data.len()) as u32, false)], WAIT_MS)
            .map(|_| ())
            .ok_or("tx not completed")
    }

    /// Waits for the next rx packet (CREDIT_* packets are answered/skipped here).
    fn recv(&mut self, ms: u64) -> Result<Pkt, &'static str> {
        let d = deadline(ms);
        loop {
            if let Some((id, len)) = self.rx.pop_used() {
                let a = self.rx_pages + 4096 * u64::from(id as u16 % RX_BUFS);
                let h = read_hdr(a);
                let mut p = Pkt { h, data: [0; 256] };
                let n = (h.len as usize)
                    .min(p.data.len())
                    .min((len as usize).saturating_sub(HDR));
                p.data[..n].copy_from_slice(bytes(a + HDR as u64, n));
                self.rx.push_avail(id as u16);
                self.rx.notify();
                if h.dst_cid != self.cid || h.src_cid != HOST_CID {
                    return Err("rx packet with wrong CIDs");
                }
                match h.op {
                    OP_CREDIT_UPDATE => continue,
                    OP_CREDIT_REQUEST => {
                        self.send(OP_CREDIT_UPDATE, h.dst_port, h.src_port, 0, &[])?;
                        continue;
                    }
                    _ => return Ok(p),
                }
            }
            if expired(d) {
                return Err("no rx packet before the timeout");
            }
            core::hint::spin_loop();
        }
    }
}

/// `vsock`: see the module comment.
pub fn test_vsock(info: &BootInfo, mmio: Mmio, r: &mut Report) {
    let num = |k: &str| info.arg(k).and_then(|v| v.parse::<u32>().ok());
    let (Some(port), Some(listen)) = (num("vsock_port"), num("vsock_listen")) else {
        return r.fail(
            "vsock.init",
            format_args!("vsock_port= and vsock_listen= are required"),
        );
    };
    let token = info.arg("vsock_token").unwrap_or("none").as_bytes();
    let mut v = match Vsock::init(mmio) {
        Ok(v) => v,
        Err(e) => return r.fail("vsock.init", format_args!("{e}")),
    };
    r.ok("vsock.init", format_args!("cid={}", v.cid));

    match accept(&mut v, listen) {
        Ok((n, refused)) => r.ok(
            "vsock.accept",
            format_args!("port={listen} echoed={n} refused={refused}"),
        ),
        Err(e) => r.fail("vsock.accept", format_args!("{e}")),
    }
    match connect(&mut v, port, token) {
        Ok(fwd) => r.ok("vsock.connect", format_args!("port={port} echoed={fwd}")),
        Err(e) => r.fail("vsock.connect", format_args!("{e}")),
    }
    let refused = (|| -> Result<u16, &'static str> {
        v.send(OP_REQUEST, GUEST_PORT + 1, port + 1, 0, &[])?;
        Ok(v.recv(WAIT_MS)?.h.op)
    })();
    match refused {
        Ok(OP_RST) => r.ok("vsock.refused", format_args!("port={}", port + 1)),
        Ok(op) => r.fail("vsock.refused", format_args!("got op {op}, want RST")),
        Err(e) => r.fail("vsock.refused", format_args!("{e}")),
    }
}

/// Guest → host: connect, send `guest-hello <token>`, read the echo, close.
fn connect(v: &mut Vsock, port: u32, token: &[u8]) -> Result<u32, &'static str> {
    v.fwd_cnt = 0;
    v.send(OP_REQUEST, GUEST_PORT, port, 0, &[])?;
    let p = v.recv(WAIT_MS)?;
    if p.h.op != OP_RESPONSE || p.h.src_port != port || p.h.dst_port != GUEST_PORT {
        return Err("no RESPONSE to REQUEST");
    }
    let mut msg = [0u8; 128];
    let prefix = b"guest-hello ";
    let n = prefix.len() + token.len().min(msg.len() - prefix.len());
    msg[..prefix.len()].copy_from_slice(prefix);
    msg[prefix.len()..n].copy_from_slice(&token[..n - prefix.len()]);
    v.send(OP_RW, GUEST_PORT, port, 0, &msg[..n])?;
    let mut got = 0usize;
    let mut echo = [0u8; 128];
    while got < n {
        let p = v.recv(WAIT_MS)?;
        if p.h.op != OP_RW {
            return Err("connection ended before the echo");
        }
        let len = (p.h.len as usize).min(n - got);
        echo[got..got + len].copy_from_slice(&p.data[..len]);
        got += len;
        v.fwd_cnt = v.fwd_cnt.wrapping_add(p.h.len);
    }
    if echo[..n] != msg[..n] {
        return Err("echo differs from the message");
    }
    v.send(OP_SHUTDOWN, GUEST_PORT, port, 3, &[])?;
    // The host answers a full shutdown with RST (SHUTDOWN from its side may come first).
    loop {
        let p = v.recv(WAIT_MS)?;
        match p.h.op {
            OP_RST => return Ok(n as u32),
            OP_SHUTDOWN | OP_RW => continue,
            _ => return Err("unexpected packet while closing"),
        }
    }
}

/// Host → guest: waits for REQUESTs; refuses ports other than `listen`, accepts `listen`,
/// echoes its data until the host shuts down. Returns (bytes echoed, requests refused).
fn accept(v: &mut Vsock, listen: u32) -> Result<(u32, u32), &'static str> {
    let mut refused = 0;
    let (peer, local) = loop {
        let p = v.recv(WAIT_MS)?;
        if p.h.op != OP_REQUEST {
            continue;
        }
        if p.h.dst_port != listen {
            v.send(OP_RST, p.h.dst_port, p.h.src_port, 0, &[])?;
            refused += 1;
            continue;
        }
        break (p.h.src_port, p.h.dst_port);
    };
    v.fwd_cnt = 0;
    v.send(OP_RESPONSE, local, peer, 0, &[])?;
    let mut echoed = 0u32;
    loop {
        let p = v.recv(WAIT_MS)?;
        if p.h.src_port != peer || p.h.dst_port != local {
            continue;
        }
        match p.h.op {
            OP_RW => {
                let n = (p.h.len as usize).min(p.data.len());
                v.fwd_cnt = v.fwd_cnt.wrapping_add(p.h.len);
                v.send(OP_RW, local, peer, 0, &p.data[..n])?;
                echoed += n as u32;
            }
            OP_SHUTDOWN => {
                if p.h.flags & 2 != 0 {
                    // The host will send no more: close our side too, and wait for its RST.
                    v.send(OP_SHUTDOWN, local, peer, 3, &[])?;
                }
            }
            OP_RST => return Ok((echoed, refused)),
            _ => return Err("unexpected packet on the accepted connection"),
        }
    }
}
