//! Port I/O, MMIO accessors, the TSC clock and COM1 output.

use core::arch::asm;
use core::fmt;

/// Writes one byte to an I/O port.
pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the guest owns the machine.
    unsafe { asm!("out dx, al", in("dx") port, in("al") val, options(nostack, preserves_flags)) }
}

/// Reads one byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let val: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") val, options(nostack, preserves_flags)) }
    val
}

/// Reads a `T`-sized value at physical address `addr` (identity mapped) with one access.
pub fn rd<T: Copy>(addr: u64) -> T {
    // SAFETY: the guest runs with physical = virtual for RAM and the mapped MMIO windows;
    // callers pass addresses inside those (device registers or guest-owned memory).
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

/// Writes a `T`-sized value at physical address `addr` with one access.
pub fn wr<T: Copy>(addr: u64, val: T) {
    // SAFETY: as for `rd`.
    unsafe { core::ptr::write_volatile(addr as *mut T, val) }
}

/// Fills `len` bytes at `addr` with `byte`.
pub fn fill(addr: u64, byte: u8, len: usize) {
    // SAFETY: callers pass guest-owned RAM (allocated pages or buffers).
    unsafe { core::ptr::write_bytes(addr as *mut u8, byte, len) }
}

/// A byte slice over guest-physical memory.
pub fn bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: callers pass RAM that stays mapped for the guest's lifetime and that no
    // one writes while the slice is used (device buffers after completion).
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// Time-stamp counter.
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the TSC.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Assumed TSC ticks per millisecond for timeouts (no calibration source is needed
/// precisely: a 1 GHz TSC makes the timeouts 3x longer, which is harmless).
const TSC_PER_MS: u64 = 3_000_000;

/// A deadline `ms` milliseconds from now.
pub fn deadline(ms: u64) -> u64 {
    rdtsc().wrapping_add(ms * TSC_PER_MS)
}

/// Whether `deadline` has passed.
pub fn expired(deadline: u64) -> bool {
    rdtsc() >= deadline
}

/// Spins for roughly `ms` milliseconds.
pub fn delay_ms(ms: u64) {
    let d = deadline(ms);
    while !expired(d) {
        core::hint::spin_loop();
    }
}

const COM1: u16 = 0x3f8;

/// COM1 (8250) output, polling LSR.THRE before each byte.
pub struct Serial;

impl Serial {
    pub fn byte(b: u8) {
        let mut tries = 0u32;
        while inb(COM1 + 5) & 0x20 == 0 && tries < 100_000 {
            tries += 1;
        }
        outb(COM1, b);
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            Serial::byte(b);
        }
        Ok(())
    }
}

/// `serial_rx`: read one line from COM1 (host stdin) by polling LSR.DR, echo it.
pub fn test_serial_rx(r: &mut crate::report::Report) {
    crate::println!("SERIAL waiting for a line");
    let mut line = [0u8; 64];
    let mut n = 0;
    let d = deadline(20_000);
    while n < line.len() && !expired(d) {
        if inb(COM1 + 5) & 1 == 0 {
            core::hint::spin_loop();
            continue;
        }
        let b = inb(COM1);
        if b == b'\n' {
            let text = core::str::from_utf8(&line[..n]).unwrap_or("<non-utf8>");
            return r.ok("serial.rx", format_args!("got={text} len={n}"));
        }
        line[n] = b;
        n += 1;
    }
    r.fail(
        "serial.rx",
        format_args!("no full line within 20 s ({n} bytes)"),
    );
}

/// Formats `bytes` as lowercase hex.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in self.0 {
            let pair = [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]];
            f.write_str(core::str::from_utf8(&pair).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::io::Serial, format_args!($($arg)*));
    }};
}

/// Prints a line to COM1.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::io::Serial::byte(b'\n');
    }};
}

/// Resets the machine through the i8042 (pulse the CPU reset line).
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    loop {
        // SAFETY: halting with interrupts off only stops this vCPU.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) }
    }
}

/// FNV-1a 64 over `data`.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
