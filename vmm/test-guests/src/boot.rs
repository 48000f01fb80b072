//! The Linux zero page (`struct boot_params`) and the kernel command line.

use crate::io::{bytes, fnv1a, rd};
use crate::report::Report;

/// Maximum virtio-mmio devices the guest tracks from the command line.
pub const MAX_DEVS: usize = 8;

/// One `virtio_mmio.device=<size>@<addr>:<irq>` entry.
#[derive(Clone, Copy, Default)]
pub struct MmioDev {
    pub addr: u64,
    pub size: u64,
    pub irq: u32,
}

/// What the guest learned from the zero page.
pub struct BootInfo {
    pub zero_page: u64,
    pub cmdline: &'static str,
    pub devs: [MmioDev; MAX_DEVS],
    pub ndevs: usize,
    pub bad_dev_entries: usize,
    pub ram_top: u64,
}

const CMDLINE_MAX: usize = 4096;

impl BootInfo {
    /// Reads the zero page at `zp` (RSI at entry).
    pub fn read(zp: u64) -> BootInfo {
        let ptr = u64::from(rd::<u32>(zp + 0x228));
        let cmdline = if ptr == 0 || !crate::mem::map_ram(ptr, CMDLINE_MAX as u64) {
            ""
        } else {
            read_cstr(ptr, CMDLINE_MAX)
        };
        let mut info = BootInfo {
            zero_page: zp,
            cmdline,
            devs: [MmioDev::default(); MAX_DEVS],
            ndevs: 0,
            bad_dev_entries: 0,
            ram_top: 0,
        };
        for word in cmdline.split_ascii_whitespace() {
            if let Some(spec) = word.strip_prefix("virtio_mmio.device=") {
                match parse_dev(spec) {
                    Some(d) if info.ndevs < MAX_DEVS => {
                        info.devs[info.ndevs] = d;
                        info.ndevs += 1;
                    }
                    _ => info.bad_dev_entries += 1,
                }
            }
        }
        let (_, top) = info.e820_ram();
        info.ram_top = top;
        info
    }

    /// Total RAM and the highest RAM address from the e820 table (type 1 entries).
    pub fn e820_ram(&self) -> (u64, u64) {
        e820_ram(self.zero_page)
    }

    /// Value of `key=` on the command line.
    pub fn arg(&self, key: &str) -> Option<&'static str> {
        self.cmdline
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }

    /// Whether test `name` is listed in `tests=a,b,c`.
    pub fn wants(&self, name: &str) -> bool {
        self.arg("tests")
            .is_some_and(|t| t.split(',').any(|x| x == name))
    }
}

/// Total RAM and the highest RAM address from the zero page's e820 table (type 1).
pub fn e820_ram(zero_page: u64) -> (u64, u64) {
    let n = usize::from(rd::<u8>(zero_page + 0x1e8)).min(128);
    let mut total = 0u64;
    let mut top = 0u64;
    for i in 0..n {
        let e = zero_page + 0x2d0 + 20 * i as u64;
        let (addr, size, ty) = (rd::<u64>(e), rd::<u64>(e + 8), rd::<u32>(e + 16));
        if ty == 1 {
            total = total.wrapping_add(size);
            top = top.max(addr.wrapping_add(size));
        }
    }
    (total, top)
}

fn read_cstr(addr: u64, max: usize) -> &'static str {
    let all = bytes(addr, max);
    let len = all.iter().position(|&b| b == 0).unwrap_or(max);
    core::str::from_utf8(&all[..len]).unwrap_or("<non-utf8 cmdline>")
}

fn parse_num(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, mul) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    parse_num(num)?.checked_mul(mul)
}

/// Parses `<size>@<baseaddr>:<irq>[:<id>]` (Linux's virtio_mmio.device syntax).
pub fn parse_dev(spec: &str) -> Option<MmioDev> {
    let (size, rest) = spec.split_once('@')?;
    let (addr, rest) = rest.split_once(':')?;
    let irq = rest.split(':').next()?;
    Some(MmioDev {
        size: parse_size(size)?,
        addr: parse_num(addr)?,
        irq: irq.parse().ok()?,
    })
}

/// `boot`: zero page sanity, command line, e820 and initrd checksum.
pub fn test_boot(info: &BootInfo, r: &mut Report) {
    let zp = info.zero_page;
    let flag = rd::<u16>(zp + 0x1fe);
    let hdrs = rd::<u32>(zp + 0x202);
    if flag == 0xaa55 && hdrs == 0x5372_6448 {
        r.ok(
            "boot.params",
            format_args!(
                "zero_page={:#x} boot_flag={:#x} version={:#x}",
                zp,
                flag,
                rd::<u16>(zp + 0x206)
            ),
        );
    } else {
        r.fail(
            "boot.params",
            format_args!("boot_flag={flag:#x} header={hdrs:#x}"),
        );
    }
    r.ok("boot.cmdline", format_args!("{}", info.cmdline));
    let (total, top) = info.e820_ram();
    let n = rd::<u8>(zp + 0x1e8);
    if n == 0 || total == 0 {
        r.fail("boot.e820", format_args!("entries={n} ram_total={total}"));
    } else {
        r.ok(
            "boot.e820",
            format_args!("entries={n} ram_total={total} ram_top={top:#x}"),
        );
    }
    // Every entry as start-end:type (end exclusive), for the host to check the layout.
    crate::print!("TEST boot.e820map ok map=");
    for i in 0..usize::from(n).min(128) {
        let e = zp + 0x2d0 + 20 * i as u64;
        let (addr, size, ty) = (rd::<u64>(e), rd::<u64>(e + 8), rd::<u32>(e + 16));
        let sep = if i == 0 { "" } else { "," };
        crate::print!("{sep}{addr:#x}-{:#x}:{ty}", addr.wrapping_add(size));
    }
    crate::io::Serial::byte(b'\n');
    r.pass += 1;
    let image = u64::from(rd::<u32>(zp + 0x218)) | (u64::from(rd::<u32>(zp + 0xc0)) << 32);
    let size = u64::from(rd::<u32>(zp + 0x21c)) | (u64::from(rd::<u32>(zp + 0xc4)) << 32);
    if size == 0 {
        r.skip("boot.initrd", format_args!("no initrd"));
    } else if image.checked_add(size).is_none_or(|end| end > top) {
        r.fail(
            "boot.initrd",
            format_args!("addr={image:#x} size={size} beyond RAM top {top:#x}"),
        );
    } else if !crate::mem::map_ram(image, size) {
        r.fail("boot.initrd", format_args!("cannot map {image:#x}+{size}"));
    } else {
        let sum = fnv1a(bytes(image, size as usize));
        r.ok(
            "boot.initrd",
            format_args!("addr={image:#x} size={size} fnv1a64={sum:016x}"),
        );
    }
    if info.bad_dev_entries > 0 {
        r.fail(
            "boot.virtio_cmdline",
            format_args!("{} unparsable entries", info.bad_dev_entries),
        );
    }
    test_ram_backed(zp, r);
}

/// Each e820 RAM entry above 1 MiB is really memory: a pattern written to its first
/// and last 8 bytes reads back (then the old value is restored). An entry the VMM
/// advertised but did not back would turn these accesses into MMIO exits.
fn test_ram_backed(zp: u64, r: &mut Report) {
    let n = usize::from(rd::<u8>(zp + 0x1e8)).min(128);
    let mut probes = 0u32;
    for i in 0..n {
        let e = zp + 0x2d0 + 20 * i as u64;
        let (addr, size, ty) = (rd::<u64>(e), rd::<u64>(e + 8), rd::<u32>(e + 16));
        if ty != 1 || addr < 0x10_0000 || size < 16 {
            continue;
        }
        for at in [addr, addr + size - 8] {
            if !crate::mem::map_ram(at, 8) {
                return r.fail("boot.ram", format_args!("cannot map {at:#x}"));
            }
            let old = rd::<u64>(at);
            let pattern = 0x5a5a_0000_0000_0000 | at;
            crate::io::wr::<u64>(at, pattern);
            let back = rd::<u64>(at);
            crate::io::wr::<u64>(at, old);
            if back != pattern {
                return r.fail(
                    "boot.ram",
                    format_args!("{at:#x} read back {back:#x}, wrote {pattern:#x}"),
                );
            }
            probes += 1;
        }
    }
    r.check("boot.ram", probes > 0, format_args!("probes={probes}"));
}
