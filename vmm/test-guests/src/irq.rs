//! `irq`: a virtio-blk completion delivered as a real interrupt through the IOAPIC.

use crate::apic::{
    ioapic_route, lapic_enable, wait_for_interrupt, watchdog_arm, watchdog_disarm, DEVICE_BASE,
    DEVICE_IRQS, DEVICE_ISR_BITS, VEC_DEVICE, WATCHDOG_FIRED,
};
use crate::blk::{Blk, S_OK, T_IN};
use crate::boot::MmioDev;
use crate::report::Report;
use crate::virtio::Mmio;
use core::sync::atomic::Ordering;

/// About 3 s of LAPIC timer at KVM's 1 GHz APIC bus, divided by 16.
const WATCHDOG_COUNT: u32 = 200_000_000;

pub fn test_irq(n: usize, dev: MmioDev, r: &mut Report) {
    let Some(apic_id) = lapic_enable() else {
        return r.fail("irq", format_args!("cannot map the local APIC"));
    };
    let entries = match ioapic_route(dev.irq, VEC_DEVICE) {
        Ok(e) => e,
        Err(e) => return r.fail("irq", format_args!("dev={n} irq={} {e}", dev.irq)),
    };
    let mut b = match Blk::init(Mmio { base: dev.addr }) {
        Ok(b) => b,
        Err(e) => return r.fail("irq", format_args!("dev={n} blk init: {e}")),
    };
    DEVICE_BASE.store(dev.addr, Ordering::SeqCst);
    DEVICE_IRQS.store(0, Ordering::SeqCst);
    DEVICE_ISR_BITS.store(0, Ordering::SeqCst);
    watchdog_arm(WATCHDOG_COUNT);
    b.header(T_IN, 0);
    b.q.submit(&[
        (b.meta, 16, false),
        (b.data, 512, true),
        (b.meta + 0x10, 1, true),
    ]);
    let mut halts = 0u32;
    while DEVICE_IRQS.load(Ordering::SeqCst) == 0 && WATCHDOG_FIRED.load(Ordering::SeqCst) == 0 {
        wait_for_interrupt();
        halts += 1;
    }
    watchdog_disarm();
    let irqs = DEVICE_IRQS.load(Ordering::SeqCst);
    let isr = DEVICE_ISR_BITS.load(Ordering::SeqCst);
    let used = b.q.pop_used().is_some();
    let st = b.status();
    r.check(
        "irq",
        irqs >= 1 && isr & 1 != 0 && used && st == S_OK,
        format_args!(
            "dev={n} gsi={} vector={VEC_DEVICE:#x} apic_id={apic_id} ioapic_entries={entries} irqs={irqs} isr={isr:#x} used={} status={st} halts={halts} watchdog={}",
            dev.irq,
            used as u8,
            WATCHDOG_FIRED.load(Ordering::SeqCst)
        ),
    );
}

/// VIRTIO_RING_F_EVENT_IDX.
const F_EVENT_IDX: u64 = 1 << 29;
/// About 300 ms of LAPIC timer (1 GHz bus / 16).
const SHORT_WATCH: u32 = 18_750_000;

/// One read of sector 0; waits for the device interrupt or the watchdog. Returns
/// (interrupts seen, request completed).
fn read_and_wait(b: &mut Blk, watch: u32) -> (u32, bool) {
    DEVICE_IRQS.store(0, Ordering::SeqCst);
    watchdog_arm(watch);
    b.header(T_IN, 0);
    b.q.submit(&[
        (b.meta, 16, false),
        (b.data, 512, true),
        (b.meta + 0x10, 1, true),
    ]);
    while DEVICE_IRQS.load(Ordering::SeqCst) == 0 && WATCHDOG_FIRED.load(Ordering::SeqCst) == 0 {
        wait_for_interrupt();
    }
    watchdog_disarm();
    // Give a late interrupt no chance to count for the next step.
    let used = b.q.wait_used(1000).is_some();
    (
        DEVICE_IRQS.load(Ordering::SeqCst),
        used && b.status() == S_OK,
    )
}

/// `irq_evidx`: with VIRTIO_RING_F_EVENT_IDX the device interrupts only when the used
/// index passes the driver's `used_event`.
pub fn test_irq_evidx(n: usize, dev: MmioDev, r: &mut Report) {
    if lapic_enable().is_none() {
        return r.fail("irq.evidx", format_args!("cannot map the local APIC"));
    }
    if let Err(e) = ioapic_route(dev.irq, VEC_DEVICE) {
        return r.fail("irq.evidx", format_args!("dev={n} irq={} {e}", dev.irq));
    }
    let mut b = match Blk::init_with(Mmio { base: dev.addr }, F_EVENT_IDX) {
        Ok(b) => b,
        Err(e) => return r.fail("irq.evidx", format_args!("dev={n} blk init: {e}")),
    };
    if !b.has(F_EVENT_IDX) {
        return r.skip(
            "irq.evidx",
            format_args!("dev={n} VIRTIO_RING_F_EVENT_IDX not offered"),
        );
    }
    DEVICE_BASE.store(dev.addr, Ordering::SeqCst);
    let used_event = b.q.avail + 4 + 2 * u64::from(b.q.size);
    // used_event = 0: the first completion (used idx 0 -> 1) must interrupt.
    crate::io::wr::<u16>(used_event, 0);
    let (first, ok1) = read_and_wait(&mut b, WATCHDOG_COUNT);
    // used_event = 100: completion 1 -> 2 must not.
    crate::io::wr::<u16>(used_event, 100);
    let (second, ok2) = read_and_wait(&mut b, SHORT_WATCH);
    // used_event = 2: completion 2 -> 3 passes it and must interrupt again.
    crate::io::wr::<u16>(used_event, 2);
    let (third, ok3) = read_and_wait(&mut b, WATCHDOG_COUNT);
    r.check(
        "irq.evidx",
        first >= 1 && second == 0 && third >= 1 && ok1 && ok2 && ok3,
        format_args!(
            "dev={n} irqs_at_event0={first} irqs_suppressed={second} irqs_at_event2={third} completed={}",
            (ok1 && ok2 && ok3) as u8
        ),
    );
}

/// `timer`: a one-shot LAPIC timer of 100 ms (KVM's 1 GHz APIC bus / 16) wakes `hlt`;
/// the TSC measures how long it took.
pub fn test_timer(r: &mut Report) {
    if lapic_enable().is_none() {
        return r.fail("timer", format_args!("cannot map the local APIC"));
    }
    let t0 = crate::io::rdtsc();
    watchdog_arm(6_250_000);
    let mut halts = 0u32;
    while WATCHDOG_FIRED.load(Ordering::SeqCst) == 0 && halts < 100_000 {
        wait_for_interrupt();
        halts += 1;
    }
    let cycles = crate::io::rdtsc().wrapping_sub(t0);
    watchdog_disarm();
    r.check(
        "timer",
        WATCHDOG_FIRED.load(Ordering::SeqCst) == 1,
        format_args!("lapic_count=6250000 divide=16 tsc_cycles={cycles} halts={halts}"),
    );
}

/// `serial_irq`: COM1 on IRQ 4 (IOAPIC pin 4 -> vector 0x42), as Linux's 8250 driver
/// runs it: THR-empty interrupts for output and data-ready interrupts for input (the
/// host test writes a line to the VMM's stdin).
pub fn test_serial_irq(r: &mut Report) {
    use crate::apic::{SERIAL_IIR_SEEN, SERIAL_IRQS, VEC_SERIAL};
    use crate::io::{inb, outb};
    if lapic_enable().is_none() {
        return r.fail("serial.irq", format_args!("cannot map the local APIC"));
    }
    if let Err(e) = ioapic_route(4, VEC_SERIAL) {
        return r.fail("serial.irq", format_args!("irq 4: {e}"));
    }
    crate::println!("SERIAL waiting for a line");
    SERIAL_IRQS.store(0, Ordering::SeqCst);
    // DTR | RTS | OUT2 (OUT2 gates the UART interrupt on PCs), then THR-empty interrupts.
    outb(0x3fc, 0x0b);
    outb(0x3f9, 0x02);
    watchdog_arm(WATCHDOG_COUNT);
    while SERIAL_IRQS.load(Ordering::SeqCst) == 0 && WATCHDOG_FIRED.load(Ordering::SeqCst) == 0 {
        wait_for_interrupt();
    }
    watchdog_disarm();
    let thri = SERIAL_IRQS.load(Ordering::SeqCst);
    // Now data-ready interrupts only (after draining what already arrived): each wakes
    // us to drain RBR until a newline. The host sends its line after the marker.
    while inb(0x3fd) & 1 != 0 {
        inb(0x3f8);
    }
    outb(0x3f9, 0x01);
    crate::println!("SERIAL irq armed");
    let mut line = [0u8; 64];
    let (mut n, mut rx_irqs, mut got_line) = (0usize, 0u32, false);
    let d = crate::io::deadline(20_000);
    while !got_line && !crate::io::expired(d) {
        let before = SERIAL_IRQS.load(Ordering::SeqCst);
        watchdog_arm(WATCHDOG_COUNT);
        // Interrupts only (no LSR polling): input that arrived while interrupts were
        // off is still delivered at the next `sti; hlt`.
        while SERIAL_IRQS.load(Ordering::SeqCst) == before
            && WATCHDOG_FIRED.load(Ordering::SeqCst) == 0
        {
            wait_for_interrupt();
        }
        watchdog_disarm();
        if SERIAL_IRQS.load(Ordering::SeqCst) != before {
            rx_irqs += 1;
        }
        while inb(0x3fd) & 1 != 0 {
            let b = inb(0x3f8);
            if b == b'\n' {
                got_line = true;
                break;
            }
            if n < line.len() {
                line[n] = b;
                n += 1;
            }
        }
    }
    outb(0x3f9, 0x00);
    let text = core::str::from_utf8(&line[..n]).unwrap_or("<non-utf8>");
    r.check(
        "serial.irq",
        thri >= 1 && rx_irqs >= 1 && got_line,
        format_args!(
            "thri_irqs={thri} rx_irqs={rx_irqs} iir_seen={:#x} got={text}",
            SERIAL_IIR_SEEN.load(Ordering::SeqCst)
        ),
    );
}
