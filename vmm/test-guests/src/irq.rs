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
