//! IDT, exception reporting, the legacy PIC, the local APIC and the IOAPIC.

use crate::io::{outb, rd, wr};
use crate::mem::{alloc_pages, map_mmio};
use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub const LAPIC: u64 = 0xfee0_0000;
pub const IOAPIC: u64 = 0xfec0_0000;
pub const VEC_DEVICE: u8 = 0x40;
pub const VEC_WATCHDOG: u8 = 0x41;
pub const VEC_SERIAL: u8 = 0x42;
pub const VEC_SPURIOUS: u8 = 0xff;

const L_ID: u64 = 0x20;
const L_TPR: u64 = 0x80;
const L_EOI: u64 = 0xb0;
const L_SVR: u64 = 0xf0;
const L_ICR_LO: u64 = 0x300;
const L_ICR_HI: u64 = 0x310;
const L_LVT_TIMER: u64 = 0x320;
const L_TIMER_INIT: u64 = 0x380;
const L_TIMER_DIV: u64 = 0x3e0;

extern "C" {
    static EXC_STUBS: [u64; 32];
    fn irq_stub_64();
    fn irq_stub_65();
    fn irq_stub_66();
    fn irq_stub_255();
}

/// Device interrupts handled (vector 0x40).
pub static DEVICE_IRQS: AtomicU32 = AtomicU32::new(0);
/// InterruptStatus bits seen by the handler, ORed.
pub static DEVICE_ISR_BITS: AtomicU32 = AtomicU32::new(0);
/// COM1 interrupts handled (vector 0x42), and the IIR values they found, ORed as bits.
pub static SERIAL_IRQS: AtomicU32 = AtomicU32::new(0);
pub static SERIAL_IIR_SEEN: AtomicU32 = AtomicU32::new(0);
/// Set when the LAPIC watchdog timer fired.
pub static WATCHDOG_FIRED: AtomicU32 = AtomicU32::new(0);
/// The virtio-mmio window whose interrupt is routed to VEC_DEVICE.
pub static DEVICE_BASE: AtomicU64 = AtomicU64::new(0);

static IDT: AtomicU64 = AtomicU64::new(0);

fn set_gate(idt: u64, vec: u8, handler: u64) {
    let e = idt + 16 * u64::from(vec);
    let lo = (handler & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((handler >> 16) & 0xffff) << 48;
    wr::<u64>(e, lo);
    wr::<u64>(e + 8, handler >> 32);
}

/// Installs the IDT (exceptions 0-31, device, watchdog, spurious) and masks the PIC.
pub fn init_idt() -> bool {
    let Some(idt) = alloc_pages(1) else {
        return false;
    };
    for v in 0..32u8 {
        // SAFETY: EXC_STUBS is a 32-entry table of addresses emitted by asm.rs.
        let stub = unsafe { EXC_STUBS[usize::from(v)] };
        set_gate(idt, v, stub);
    }
    set_gate(idt, VEC_DEVICE, irq_stub_64 as *const () as u64);
    set_gate(idt, VEC_WATCHDOG, irq_stub_65 as *const () as u64);
    set_gate(idt, VEC_SERIAL, irq_stub_66 as *const () as u64);
    set_gate(idt, VEC_SPURIOUS, irq_stub_255 as *const () as u64);
    let desc: [u16; 5] = [
        4095,
        idt as u16,
        (idt >> 16) as u16,
        (idt >> 32) as u16,
        (idt >> 48) as u16,
    ];
    // SAFETY: the IDT page stays allocated for the guest's lifetime and every gate
    // points at a stub in this image.
    unsafe { asm!("lidt [{}]", in(reg) desc.as_ptr(), options(nostack, readonly)) }
    IDT.store(idt, Ordering::SeqCst);
    // Mask the 8259s so nothing arrives with their (uninitialised) vector base.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    true
}

/// Maps and software-enables the local APIC; returns this CPU's APIC id.
pub fn lapic_enable() -> Option<u32> {
    if !map_mmio(LAPIC) {
        return None;
    }
    wr::<u32>(LAPIC + L_TPR, 0);
    wr::<u32>(LAPIC + L_SVR, 0x100 | u32::from(VEC_SPURIOUS));
    Some(lapic_id())
}

pub fn lapic_id() -> u32 {
    rd::<u32>(LAPIC + L_ID) >> 24
}

pub fn eoi() {
    wr::<u32>(LAPIC + L_EOI, 0);
}

/// Arms a one-shot LAPIC timer (divide by 16) that raises VEC_WATCHDOG.
pub fn watchdog_arm(count: u32) {
    WATCHDOG_FIRED.store(0, Ordering::SeqCst);
    wr::<u32>(LAPIC + L_TIMER_DIV, 0x3);
    wr::<u32>(LAPIC + L_LVT_TIMER, u32::from(VEC_WATCHDOG));
    wr::<u32>(LAPIC + L_TIMER_INIT, count);
}

pub fn watchdog_disarm() {
    wr::<u32>(LAPIC + L_TIMER_INIT, 0);
    wr::<u32>(LAPIC + L_LVT_TIMER, 1 << 16);
}

/// Sends an IPI: `icr_lo` with destination `dest` (ignored by shorthand modes).
pub fn send_ipi(dest: u32, icr_lo: u32) {
    wr::<u32>(LAPIC + L_ICR_HI, dest << 24);
    wr::<u32>(LAPIC + L_ICR_LO, icr_lo);
    let mut tries = 0;
    while rd::<u32>(LAPIC + L_ICR_LO) & (1 << 12) != 0 && tries < 100_000 {
        tries += 1;
    }
}

fn ioapic_read(reg: u32) -> u32 {
    wr::<u32>(IOAPIC, reg);
    rd::<u32>(IOAPIC + 0x10)
}

fn ioapic_write(reg: u32, val: u32) {
    wr::<u32>(IOAPIC, reg);
    wr::<u32>(IOAPIC + 0x10, val);
}

/// Routes IOAPIC pin `pin` to `vector` on APIC id 0 (fixed, edge, active high).
/// Returns the IOAPIC's number of redirection entries, or an error.
pub fn ioapic_route(pin: u32, vector: u8) -> Result<u32, &'static str> {
    if !map_mmio(IOAPIC) {
        return Err("cannot map the IOAPIC");
    }
    let entries = ((ioapic_read(1) >> 16) & 0xff) + 1;
    if pin >= entries {
        return Err("IRQ pin beyond the IOAPIC's redirection entries");
    }
    ioapic_write(0x11 + 2 * pin, 0);
    ioapic_write(0x10 + 2 * pin, u32::from(vector));
    Ok(entries)
}

/// Exception frame as pushed by the stubs: vector, error code, then the CPU frame.
#[no_mangle]
extern "C" fn guest_exception(frame: *const u64) -> ! {
    // SAFETY: the stub passes its stack pointer; the 7 words above it are the vector,
    // the error code and the CPU's interrupt frame.
    let f = unsafe { core::slice::from_raw_parts(frame, 7) };
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) }
    crate::println!(
        "FATAL exception vector={} error={:#x} rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} cr2={:#x}",
        f[0],
        f[1],
        f[2],
        f[3],
        f[4],
        f[5],
        cr2
    );
    crate::println!("DONE pass=0 fail=1");
    crate::io::reset()
}

#[no_mangle]
extern "C" fn guest_irq(vector: u32) {
    match vector {
        0x40 => {
            let base = DEVICE_BASE.load(Ordering::SeqCst);
            if base != 0 {
                let isr = rd::<u32>(base + crate::virtio::R_INT_STATUS);
                wr::<u32>(base + crate::virtio::R_INT_ACK, isr);
                DEVICE_ISR_BITS.fetch_or(isr, Ordering::SeqCst);
            }
            DEVICE_IRQS.fetch_add(1, Ordering::SeqCst);
            eoi();
        }
        0x41 => {
            WATCHDOG_FIRED.store(1, Ordering::SeqCst);
            eoi();
        }
        0x42 => {
            // Reading IIR acknowledges a THR-empty interrupt; the main loop drains RX.
            let iir = crate::io::inb(0x3fa);
            SERIAL_IIR_SEEN.fetch_or(1 << (iir & 0xf), Ordering::SeqCst);
            SERIAL_IRQS.fetch_add(1, Ordering::SeqCst);
            eoi();
        }
        _ => {}
    }
}

/// `sti; hlt; cli`: waits for one interrupt with interrupts otherwise off.
pub fn wait_for_interrupt() {
    // SAFETY: the IDT is installed; `sti` takes effect after `hlt` begins, so an
    // interrupt pending now wakes the halt instead of being lost.
    unsafe { asm!("sti; hlt; cli", options(nomem, nostack)) }
}
