//! vmctl's freestanding x86_64 test guest.
//!
//! Booted by the `vmm` crate's integration tests (ELF or bzImage, Linux 64-bit boot
//! protocol). It reads `tests=a,b,c` from the kernel command line, runs those checks
//! against the VMM's devices, prints one line per result on COM1
//! (`TEST <name> ok|FAIL|skip <detail>`), then `DONE pass=N fail=M`, and resets
//! through the i8042. Kernel-mode code is emulated on PVM hosts, so every check is small.
#![no_std]
#![no_main]

mod apic;
mod asm;
mod balloon;
mod blk;
mod boot;
mod devices;
mod fs;
mod fuzz;
mod hostile;
mod io;
mod irq;
mod mem;
mod net;
mod report;
mod smp;
mod vsock;

use boot::{BootInfo, MAX_DEVS};
use devices::{ID_BLK, ID_CONSOLE, ID_RNG};
use report::Report;
use virtio::Mmio;
mod virtio;

const HOSTILE: [&str; 11] = [
    "hostile_oob",
    "hostile_loop",
    "hostile_len",
    "hostile_idx",
    "hostile_ring",
    "hostile_mmio",
    "hostile_flood",
    "hostile_indirect",
    "hostile_pio",
    "hostile_unmapped",
    "hostile_setup",
];

#[no_mangle]
extern "C" fn guest_main(zero_page: u64) -> ! {
    println!("BOOT vmctl-test-guest");
    mem::init(boot::e820_ram(zero_page).1);
    let info = BootInfo::read(zero_page);
    let mut r = Report::default();
    if !apic::init_idt() {
        r.fail("idt", format_args!("out of memory"));
    }
    if info.wants("boot") {
        boot::test_boot(&info, &mut r);
    }
    let mut ids = [0u32; MAX_DEVS];
    if !devices::discover(&info, &mut ids) {
        r.fail("virtio", format_args!("cannot map the virtio windows"));
    }
    if info.wants("virtio") {
        devices::test_virtio(&info, &mut r);
    }
    let first = |id: u32| (0..info.ndevs).find(|&i| ids[i] == id);
    let mmio = |i: usize| Mmio {
        base: info.devs[i].addr,
    };
    if info.wants("blk") {
        let mut any = false;
        for i in (0..info.ndevs).filter(|&i| ids[i] == ID_BLK) {
            blk::test_blk(i, mmio(i), &mut r);
            any = true;
        }
        if !any {
            r.fail(
                "blk",
                format_args!("no virtio-blk device (id 2) on the command line"),
            );
        }
    }
    if info.wants("blk_strict") {
        match first(ID_BLK) {
            Some(i) => blk::test_blk_strict(i, mmio(i), &mut r),
            None => r.fail("blk.strict", format_args!("no virtio-blk device")),
        }
    }
    for name in ["rng", "console", "irq", "irq_evidx"] {
        if !info.wants(name) {
            continue;
        }
        let id = match name {
            "rng" => ID_RNG,
            "console" => ID_CONSOLE,
            _ => ID_BLK,
        };
        match first(id) {
            Some(i) => match name {
                "rng" => devices::test_rng(mmio(i), &mut r),
                "console" => devices::test_console(mmio(i), &mut r),
                "irq" => irq::test_irq(i, info.devs[i], &mut r),
                _ => irq::test_irq_evidx(i, info.devs[i], &mut r),
            },
            None => r.fail(name, format_args!("no virtio device with id {id}")),
        }
    }
    if info.wants("mptable") || info.wants("smp") || info.wants("smp_blk") {
        let cpus = smp::test_mptable(&mut r);
        if info.wants("smp_blk") {
            let mut disks = [0u64; MAX_DEVS];
            let mut n = 0;
            for i in (0..info.ndevs).filter(|&i| ids[i] == ID_BLK) {
                disks[n] = info.devs[i].addr;
                n += 1;
            }
            smp::test_smp_blk(cpus, &disks[..n], &mut r);
        } else if info.wants("smp") {
            smp::test_smp(cpus, &mut r);
        }
    }
    if info.wants("smp_spin") {
        smp::AP_SPIN.store(1, core::sync::atomic::Ordering::SeqCst);
        let cpus = smp::test_mptable(&mut r);
        smp::test_smp(cpus, &mut r);
    }
    for mode in HOSTILE {
        if info.wants(mode) {
            let id = match info.arg("hostile_dev") {
                Some("rng") => ID_RNG,
                Some("console") => ID_CONSOLE,
                Some("vsock") => devices::ID_VSOCK,
                _ => ID_BLK,
            };
            match first(id) {
                Some(i) if id == ID_BLK => hostile::run(mode, mmio(i), &mut r),
                Some(i) => hostile::run_other(mode, id, mmio(i), &mut r),
                None => r.fail(mode, format_args!("no virtio device with id {id}")),
            }
        }
    }
    if info.wants("fuzz") {
        let seed = info
            .arg("fuzz_seed")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        let iters = info
            .arg("fuzz_iters")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(2000);
        match first(ID_BLK) {
            Some(i) => fuzz::test_fuzz(mmio(i), seed, iters, &mut r),
            None => r.fail("fuzz", format_args!("no virtio-blk device")),
        }
    }
    if let Some(ms) = info.arg("idle").and_then(|v| v.parse::<u64>().ok()) {
        // Stay up for `ms` (benchmarks sample the VMM's memory meanwhile).
        io::delay_ms(ms.min(60_000));
    }
    if info.wants("timer") {
        irq::test_timer(&mut r);
    }
    if info.wants("serial_irq") {
        irq::test_serial_irq(&mut r);
    }
    if info.wants("serial_rx") {
        io::test_serial_rx(&mut r);
    }
    if info.wants("int3") {
        extern "C" {
            fn int3_site();
        }
        // Real KVM delivers #BP to the IDT (FATAL vector=3); PVM cannot emulate int3 in
        // guest kernel mode and the VMM must report the failure at this address.
        println!("INT3 at {:#x}", int3_site as *const () as u64);
        // SAFETY: int3_site is `int3; ret`; the #BP handler reports and resets.
        unsafe { int3_site() }
    }
    if info.wants("triplefault") {
        extern "C" {
            fn triple_fault() -> !;
        }
        println!("TRIPLEFAULT now");
        // SAFETY: deliberately shuts the vCPU down; nothing after it runs.
        unsafe { triple_fault() }
    }
    if info.wants("vsock") {
        match first(vsock::ID_VSOCK) {
            Some(i) => vsock::test_vsock(&info, mmio(i), &mut r),
            None => r.fail("vsock", format_args!("no virtio-vsock device (id 19)")),
        }
    }
    for name in ["net", "net_down", "hostile_net"] {
        if info.wants(name) {
            match first(net::ID_NET) {
                Some(i) => match name {
                    "net" => net::test_net(mmio(i), &mut r),
                    "net_down" => net::test_net_down(mmio(i), &mut r),
                    _ => net::test_hostile_net(mmio(i), &mut r),
                },
                None => r.fail(name, format_args!("no virtio-net device (id 1)")),
            }
        }
    }
    for name in ["balloon", "balloon_hostile", "balloon_rss"] {
        if info.wants(name) {
            match first(balloon::ID_BALLOON) {
                Some(i) => match name {
                    "balloon" => balloon::test_balloon(mmio(i), &mut r),
                    "balloon_hostile" => balloon::test_balloon_hostile(&info, mmio(i), &mut r),
                    _ => balloon::test_balloon_rss(&info, mmio(i), &mut r),
                },
                None => r.fail(name, format_args!("no virtio-balloon device (id 5)")),
            }
        }
    }
    for name in ["fs", "fs_hostile"] {
        if info.wants(name) {
            match first(fs::ID_FS) {
                Some(i) if name == "fs" => {
                    fs::test_fs(mmio(i), info.arg("fs_ro") == Some("1"), &mut r)
                }
                Some(i) => fs::test_fs_hostile(mmio(i), &mut r),
                None => r.fail(name, format_args!("no virtio-fs device (id 26)")),
            }
        }
    }
    if info.wants("fault") {
        // A #UD on purpose: the IDT handler reports it (a guest-side crash test).
        // SAFETY: ud2 raises #UD, handled by guest_exception, which resets.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) }
    }
    r.done();
    io::reset()
}

#[panic_handler]
fn panic(p: &core::panic::PanicInfo<'_>) -> ! {
    println!("FATAL panic {}", p.message());
    println!("DONE pass=0 fail=1");
    io::reset()
}
