//! A minimal polling virtio-fs driver (FUSE requests on the request queue) and the `fs` and
//! `fs_hostile` checks, for a device sharing a host folder that holds `hello.txt`.
//!
//! - `fs`: the tag and `num_request_queues` from the config space (`fs.config`), FUSE_INIT
//!   (`fs.init`), LOOKUP of `hello.txt` (`fs.lookup`), OPEN + READ of it (`fs.read`, the
//!   content as `data=`), CREATE + WRITE of `guest.txt` with [`GUEST_TEXT`] (`fs.write`; with
//!   `fs_ro=1` on the command line CREATE must fail with EROFS instead).
//! - `fs_hostile`: a request shorter than its header, a header length that lies, a readable
//!   buffer after the writable one, a request outside RAM, a reply buffer beyond RAM and a
//!   descriptor loop must each complete with used length 0; LOOKUPs of `..` and
//!   `../secret.txt` and a garbage opcode must get FUSE errors; a good LOOKUP must still
//!   work after them (`fs.hostile.after`); then an impossible available index must make the
//!   device ask for a reset, and after the reset a fresh FUSE_INIT + LOOKUP work (`fs.reset`).

use crate::io::{bytes, rd, wr};
use crate::mem::alloc_pages;
use crate::report::Report;
use crate::virtio::{Mmio, Queue, D_NEXT, D_WRITE, F_VERSION_1};

pub const ID_FS: u32 = 26;

const LOOKUP: u32 = 1;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const INIT: u32 = 26;
const CREATE: u32 = 35;
const ROOT: u64 = 1;
const IN_HDR: u32 = 40;
const OUT_HDR: u32 = 16;
/// fuse_entry_out: nodeid, generation, timeouts, then fuse_attr (ino, size, ...).
const ENTRY_OUT: u32 = 128;
const EROFS: i32 = 30;
const ENOSYS: i32 = 38;

/// What the guest writes into `guest.txt` (the host test checks the file).
pub const GUEST_TEXT: &[u8] = b"written-by-the-vmctl-test-guest";
/// An address far outside guest RAM.
const OUTSIDE: u64 = 0x0000_7fff_0000_0000;
/// Just beyond the test VM's RAM (128 MiB), below the 32-bit gap.
const BEYOND_RAM: u64 = 0x4000_0000;
/// Per request (ms); guest code is emulated on PVM hosts.
const REQ_MS: u64 = 5000;
/// DEVICE_NEEDS_RESET in the status register.
const NEEDS_RESET: u32 = 0x40;

/// A raw descriptor: (guest address, length, flags); NEXT links are added in order.
type RawDesc = (u64, u32, u16);

struct Fs {
    q: Queue,
    /// Request at +0, a spare readable buffer at +0x800.
    req: u64,
    /// Reply buffer (one page).
    reply: u64,
    unique: u64,
}

impl Fs {
    /// Driver init (hiprio queue 0 and request queue 1), then FUSE_INIT; returns the device
    /// and the negotiated FUSE version.
    fn init(mmio: Mmio) -> Result<(Fs, u32, u32), &'static str> {
        mmio.negotiate(F_VERSION_1)?;
        let _hiprio = mmio.setup_queue(0)?;
        let q = mmio.setup_queue(1)?;
        mmio.driver_ok();
        let req = alloc_pages(1).ok_or("out of memory")?;
        let reply = alloc_pages(1).ok_or("out of memory")?;
        let mut fs = Fs {
            q,
            req,
            reply,
            unique: 0,
        };
        // fuse_init_in: major 7, minor 31, max_readahead 0, flags 0.
        let mut body = [0u8; 16];
        body[..4].copy_from_slice(&7u32.to_le_bytes());
        body[4..8].copy_from_slice(&31u32.to_le_bytes());
        let used = fs.call(INIT, 0, &[&body], 4096)?;
        if used < OUT_HDR + 8 || fs.error() != 0 {
            return Err("FUSE_INIT failed");
        }
        let (major, minor) = (fs.out::<u32>(0), fs.out::<u32>(4));
        Ok((fs, major, minor))
    }

    /// Writes a request (header + `body` parts) at `req`; returns its length.
    fn build(&mut self, opcode: u32, nodeid: u64, body: &[&[u8]]) -> u32 {
        let len = IN_HDR + body.iter().map(|b| b.len() as u32).sum::<u32>();
        self.unique += 1;
        wr::<u32>(self.req, len);
        wr::<u32>(self.req + 4, opcode);
        wr::<u64>(self.req + 8, self.unique);
        wr::<u64>(self.req + 16, nodeid);
        for off in (24..40).step_by(4) {
            wr::<u32>(self.req + off, 0);
        }
        let mut at = self.req + u64::from(IN_HDR);
        for part in body {
            for &b in *part {
                wr::<u8>(at, b);
                at += 1;
            }
        }
        len
    }

    /// One request with a `reply_len` reply buffer; returns the used length.
    fn call(
        &mut self,
        opcode: u32,
        nodeid: u64,
        body: &[&[u8]],
        reply_len: u32,
    ) -> Result<u32, &'static str> {
        let len = self.build(opcode, nodeid, body);
        wr::<u32>(self.reply + 4, 0x7fff_ffff); // poison the error field
        self.q
            .transfer(
                &[(self.req, len, false), (self.reply, reply_len, true)],
                REQ_MS,
            )
            .ok_or("request not completed")
    }

    /// fuse_out_header.error of the last reply.
    fn error(&self) -> i32 {
        rd::<i32>(self.reply + 4)
    }

    /// A field of the last reply's body, `off` bytes after the out header.
    fn out<T: Copy>(&self, off: u64) -> T {
        rd::<T>(self.reply + u64::from(OUT_HDR) + off)
    }

    /// LOOKUP `name` (NUL added) in the root: (error, nodeid, size).
    fn lookup(&mut self, name: &[u8]) -> Result<(i32, u64, u64), &'static str> {
        self.call(LOOKUP, ROOT, &[name, b"\0"], 4096)?;
        Ok((self.error(), self.out::<u64>(0), self.out::<u64>(48)))
    }

    /// Publishes a chain of raw descriptors from index 0 and waits: Some(used length).
    fn raw(&mut self, descs: &[RawDesc]) -> Option<u32> {
        let n = descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let next = if i + 1 < n { i + 1 } else { 0 };
            let flags = if i + 1 < n { flags | D_NEXT } else { flags };
            self.q.set_desc(i, addr, len, flags, next);
        }
        self.q.push_avail(0);
        self.q.notify();
        self.q.wait_used(REQ_MS).map(|(_, len)| len)
    }
}

/// `fs`: config space, INIT, LOOKUP, OPEN + READ, CREATE + WRITE.
pub fn test_fs(mmio: Mmio, read_only: bool, r: &mut Report) {
    let mut tag = [0u8; 36];
    for (i, b) in tag.iter_mut().enumerate() {
        *b = rd::<u8>(mmio.base + 0x100 + i as u64);
    }
    let tag_len = tag.iter().position(|&b| b == 0).unwrap_or(36);
    let tag = core::str::from_utf8(&tag[..tag_len]).unwrap_or("<non-utf8>");
    let queues = mmio.r32(0x100 + 36);
    r.check(
        "fs.config",
        tag_len > 0 && queues >= 1,
        format_args!("tag={tag} queues={queues}"),
    );
    let mut fs = match Fs::init(mmio) {
        Ok((fs, major, minor)) => {
            r.ok("fs.init", format_args!("major={major} minor={minor}"));
            fs
        }
        Err(e) => return r.fail("fs.init", format_args!("{e}")),
    };
    let (err, node, size) = match fs.lookup(b"hello.txt") {
        Ok(v) => v,
        Err(e) => return r.fail("fs.lookup", format_args!("{e}")),
    };
    r.check(
        "fs.lookup",
        err == 0 && node > ROOT,
        format_args!("error={err} nodeid={node} size={size}"),
    );
    if err != 0 {
        return;
    }
    read_file(&mut fs, node, r);
    write_file(&mut fs, read_only, r);
}

/// OPEN (O_RDONLY) + READ of `node`; reports the content.
fn read_file(fs: &mut Fs, node: u64, r: &mut Report) {
    let opened = fs.call(OPEN, node, &[&[0u8; 8]], 4096);
    let (err, fh) = (fs.error(), fs.out::<u64>(0));
    if opened.is_err() || err != 0 {
        return r.fail("fs.read", format_args!("open error={err}"));
    }
    let read = io_in(fh, 0, 256);
    match fs.call(READ, node, &[&read], OUT_HDR + 256) {
        Ok(used) if fs.error() == 0 && used >= OUT_HDR => {
            let data = bytes(fs.reply + u64::from(OUT_HDR), (used - OUT_HDR) as usize);
            let text = core::str::from_utf8(data)
                .ok()
                .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or("<not-printable>");
            r.ok("fs.read", format_args!("len={} data={text}", data.len()));
        }
        Ok(used) => r.fail("fs.read", format_args!("error={} used={used}", fs.error())),
        Err(e) => r.fail("fs.read", format_args!("{e}")),
    }
}

/// fuse_read_in / fuse_write_in: fh, offset, size, then zeros.
fn io_in(fh: u64, offset: u64, size: u32) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[..8].copy_from_slice(&fh.to_le_bytes());
    b[8..16].copy_from_slice(&offset.to_le_bytes());
    b[16..20].copy_from_slice(&size.to_le_bytes());
    b
}

/// CREATE `guest.txt` + WRITE of GUEST_TEXT (on a read-only share: CREATE gets EROFS).
fn write_file(fs: &mut Fs, read_only: bool, r: &mut Report) {
    let mut create = [0u8; 16];
    create[..4].copy_from_slice(&0o102u32.to_le_bytes()); // O_RDWR | O_CREAT
    create[4..8].copy_from_slice(&0o100_644u32.to_le_bytes());
    if let Err(e) = fs.call(CREATE, ROOT, &[&create, b"guest.txt\0"], 4096) {
        return r.fail("fs.write", format_args!("create: {e}"));
    }
    let err = fs.error();
    if read_only {
        return r.check(
            "fs.write",
            err == -EROFS,
            format_args!("read_only=1 create_error={err} (expect -{EROFS})"),
        );
    }
    if err != 0 {
        return r.fail("fs.write", format_args!("create_error={err}"));
    }
    let node = fs.out::<u64>(0);
    let fh = fs.out::<u64>(u64::from(ENTRY_OUT));
    let write = io_in(fh, 0, GUEST_TEXT.len() as u32);
    match fs.call(WRITE, node, &[&write, GUEST_TEXT], 4096) {
        Ok(_) => {
            let (err, written) = (fs.error(), fs.out::<u32>(0));
            r.check(
                "fs.write",
                err == 0 && written as usize == GUEST_TEXT.len(),
                format_args!("create_error=0 write_error={err} written={written}"),
            );
        }
        Err(e) => r.fail("fs.write", format_args!("write: {e}")),
    }
}

/// `fs_hostile`: malformed chains and escapes, then recovery (see the module doc).
pub fn test_fs_hostile(mmio: Mmio, r: &mut Report) {
    let mut fs = match Fs::init(mmio) {
        Ok((fs, _, _)) => fs,
        Err(e) => return r.fail("fs.hostile", format_args!("init: {e}")),
    };
    let (req, reply) = (fs.req, fs.reply);
    let len = fs.build(LOOKUP, ROOT, &[b"hello.txt\0"]);
    // Each case: name, descriptors; the device must complete it with used length 0.
    let cases: [(&str, &[RawDesc]); 6] = [
        ("fs.hostile.short", &[(req, 20, 0), (reply, 4096, D_WRITE)]),
        (
            // The chain holds 4 bytes more than the header's `len` says.
            "fs.hostile.len",
            &[(req, len + 4, 0), (reply, 4096, D_WRITE)],
        ),
        // The request split around the reply buffer: lengths agree, order does not.
        (
            "fs.hostile.order",
            &[
                (req, len - 5, 0),
                (reply, 4096, D_WRITE),
                (req + u64::from(len) - 5, 5, 0),
            ],
        ),
        (
            "fs.hostile.oob",
            &[(OUTSIDE, len, 0), (reply, 4096, D_WRITE)],
        ),
        (
            "fs.hostile.beyond_ram",
            &[(req, len, 0), (BEYOND_RAM, 4096, D_WRITE)],
        ),
        ("fs.hostile.loop", &[]),
    ];
    for (name, descs) in cases {
        let used = if descs.is_empty() {
            // Descriptor 0 chains to itself.
            fs.q.set_desc(0, req, len, D_NEXT, 0);
            fs.q.push_avail(0);
            fs.q.notify();
            fs.q.wait_used(REQ_MS).map(|(_, l)| l)
        } else {
            fs.raw(descs)
        };
        r.check(
            name,
            used == Some(0),
            format_args!("used={} (expect 0)", used.map_or(-1, i64::from)),
        );
    }
    for (name, path) in [
        ("fs.hostile.dotdot", &b".."[..]),
        ("fs.hostile.escape", &b"../secret.txt"[..]),
    ] {
        match fs.lookup(path) {
            Ok((err, _, _)) => {
                r.check(name, err < 0, format_args!("error={err} (expect an error)"))
            }
            Err(e) => r.fail(name, format_args!("{e}")),
        }
    }
    let garbage = fs.call(0xdead, ROOT, &[&[0x55u8; 24]], 4096);
    r.check(
        "fs.hostile.opcode",
        garbage.is_ok() && fs.error() == -ENOSYS,
        format_args!("error={} (expect -{ENOSYS})", fs.error()),
    );
    let after = fs.lookup(b"hello.txt");
    r.check(
        "fs.hostile.after",
        matches!(after, Ok((0, n, _)) if n > ROOT),
        format_args!(
            "lookup_error={} status={:#x}",
            after.map_or(-1, |v| v.0),
            mmio.status()
        ),
    );
    // An available index 1000 entries ahead: no correct driver does that.
    let bogus = fs.q.next_avail.wrapping_add(1000);
    wr::<u16>(fs.q.avail + 2, bogus);
    fs.q.notify();
    let d = crate::io::deadline(REQ_MS);
    while mmio.status() & NEEDS_RESET == 0 && !crate::io::expired(d) {
        core::hint::spin_loop();
    }
    let flagged = mmio.status() & NEEDS_RESET != 0;
    let again = Fs::init(mmio).and_then(|(mut f, _, _)| f.lookup(b"hello.txt"));
    r.check(
        "fs.reset",
        flagged && matches!(again, Ok((0, n, _)) if n > ROOT),
        format_args!(
            "needs_reset={} lookup_after_reset={}",
            flagged as u8,
            again.map_or(-1, |v| v.0)
        ),
    );
}
