//! `Hypervisor`/`Vm`/`Vcpu` over the Windows Hypervisor Platform (x86_64 Windows 10 1809+).
//!
//! - The partition emulates local APICs (xAPIC mode, INIT/SIPI included); the IOAPIC is ours
//!   (`ioapic`), served inside the backend at `IOAPIC_ADDR`, and a device line's pulse becomes
//!   `WHvRequestInterrupt` with the vector and destination the guest programmed.
//! - Port I/O exits are completed directly (IN results written to RAX at the next `run`).
//! - MMIO exits go through WinHvEmulation's instruction emulator in two passes: a store is
//!   emulated at once (the callback captures the bytes, the device gets them as `MmioWrite`);
//!   a load is first emulated without committing registers, only to learn address and size,
//!   handed to the device model as `MmioRead`, then emulated again at the next `run` with the
//!   device's data, committing the destination register and RIP.
//! - The same x86_64 boot path as KVM sets the entry state (`BootRegs::X86_64`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use windows::Win32::System::Hypervisor::*;

use super::exits::{self, ExitClass, MemoryAccessType};
use super::ffi::{Emulator, EmulatorHost, Partition};
use super::ioapic::{self, Ioapic};
use crate::arch::x86_64::{layout, mptable};
use crate::hv::{
    BootRegs, HvError, Hypervisor, IrqLine, Notifier, SegmentDesc, Vcpu, VcpuExit, VcpuKicker, Vm,
    X86BootRegs,
};
use crate::warn_ratelimited;

/// Longest HLT sleep without a known wake-up: WHP's local APIC timer fires inside the
/// hypervisor without telling us, so a halted vCPU re-enters at least this often.
const HALT_MAX_SLEEP: Duration = Duration::from_millis(1);
const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// The Windows Hypervisor Platform.
pub struct Whp;

impl Whp {
    /// Checks that WHP is enabled and emulates local APICs.
    pub fn open() -> Result<Self, HvError> {
        if !super::ffi::hypervisor_present()? {
            return Err(HvError::MissingCapability(
                "the Windows Hypervisor Platform (enable the optional feature \
                 'Windows Hypervisor Platform' and reboot)",
            ));
        }
        if !super::ffi::has_local_apic_emulation()? {
            return Err(HvError::MissingCapability(
                "WHP local APIC emulation (Windows 10 1809 or later)",
            ));
        }
        Ok(Whp)
    }
}

impl Hypervisor for Whp {
    fn name(&self) -> &'static str {
        "whp"
    }

    fn limitation(&self) -> Option<String> {
        None
    }

    fn create_vm(&self) -> Result<Arc<dyn Vm>, HvError> {
        // The vCPU count must be fixed before memory can be mapped, which the trait does
        // before creating vCPUs: allow as many as the host has logical processors (at most
        // the MP table's 32); `create_vcpu` refuses more with a clear error.
        let max_vcpus = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(usize::from(mptable::MAX_CPUS)) as u8;
        let partition = Arc::new(Partition::create(u32::from(max_vcpus))?);
        Ok(Arc::new(WhpVm {
            max_vcpus,
            shared: Arc::new(Shared {
                partition,
                ioapic: Mutex::new(Ioapic::new(0)),
                mem: Mutex::new(None),
                wake: Mutex::new(0),
                cond: Condvar::new(),
            }),
        }))
    }
}

/// What the vCPUs and interrupt lines of one partition share.
struct Shared {
    partition: Arc<Partition>,
    ioapic: Mutex<Ioapic>,
    /// Guest RAM, for instructions the emulator runs that also touch RAM (e.g. MOVS).
    mem: Mutex<Option<GuestMemoryMmap>>,
    /// Bumped on every interrupt request and kick, to wake halted vCPUs.
    wake: Mutex<u64>,
    cond: Condvar,
}

impl Shared {
    fn ioapic(&self) -> MutexGuard<'_, Ioapic> {
        self.ioapic.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_all(&self) {
        let mut g = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.wrapping_add(1);
        self.cond.notify_all();
    }
}

struct WhpVm {
    max_vcpus: u8,
    shared: Arc<Shared>,
}

impl Vm for WhpVm {
    fn map_memory(&self, mem: &GuestMemoryMmap) -> Result<(), HvError> {
        for region in mem.iter() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| HvError::Memory(e.to_string()))?;
            // SAFETY: the range is a live GuestMemoryMmap region of exactly `len()` bytes; the
            // VMM keeps `mem` alive for as long as the VM, and `Shared` holds a clone too.
            unsafe {
                self.shared
                    .partition
                    .map(host, region.start_addr().raw_value(), region.len())
            }?;
        }
        *self.shared.mem.lock().unwrap_or_else(|p| p.into_inner()) = Some(mem.clone());
        Ok(())
    }

    fn create_vcpu(&self, index: u8, count: u8) -> Result<Box<dyn Vcpu>, HvError> {
        if count == 0 || count > self.max_vcpus || index >= count {
            return Err(HvError::op(
                "WHvCreateVirtualProcessor",
                std::io::Error::other(format!(
                    "vCPU {index} of {count} requested; this host's WHP partition allows 1 to {}",
                    self.max_vcpus
                )),
            ));
        }
        self.shared.partition.create_vp(u32::from(index))?;
        Ok(Box::new(WhpVcpu {
            index: u32::from(index),
            shared: self.shared.clone(),
            emulator: Emulator::new()?,
            kicker: Arc::new(WhpKicker {
                index: u32::from(index),
                kicked: AtomicBool::new(false),
                shared: self.shared.clone(),
            }),
            ctx: WHV_RUN_VP_EXIT_CONTEXT::default(),
            pending: None,
            buf: [0; 8],
        }))
    }

    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>, HvError> {
        if gsi as usize >= ioapic::PINS {
            return Err(HvError::MissingCapability("an IOAPIC pin beyond 23"));
        }
        Ok(Arc::new(WhpIrq {
            pin: gsi,
            shared: self.shared.clone(),
        }))
    }

    /// WHP has no notification fast path: the MMIO write exit signals it.
    fn register_mmio_notifier(
        &self,
        _addr: u64,
        _value: Option<u32>,
        _notifier: &Notifier,
    ) -> Result<bool, HvError> {
        Ok(false)
    }
}

/// One IOAPIC input pin.
struct WhpIrq {
    pin: u32,
    shared: Arc<Shared>,
}

impl IrqLine for WhpIrq {
    fn trigger(&self) -> std::io::Result<()> {
        // A masked pin drops the edge, as the 82093AA does.
        let Some(route) = self.shared.ioapic().route(self.pin) else {
            return Ok(());
        };
        let kind = match route.delivery_mode {
            0 => WHvX64InterruptTypeFixed,
            1 => WHvX64InterruptTypeLowestPriority,
            4 => WHvX64InterruptTypeNmi,
            5 => WHvX64InterruptTypeInit,
            other => {
                warn_ratelimited!(
                    "whp: IOAPIC pin {} uses delivery mode {other}, which has no local APIC \
                     equivalent here; dropped",
                    self.pin
                );
                return Ok(());
            }
        };
        let ctl = WHV_INTERRUPT_CONTROL {
            // Delivered as edge: device lines are pulses, so no Remote IRR/EOI round trip.
            _bitfield: exits::interrupt_control_bits(kind.0 as u8, route.logical, false),
            Destination: u32::from(route.destination),
            Vector: u32::from(route.vector),
        };
        let r = self.shared.partition.request_interrupt(&ctl);
        self.shared.wake_all();
        r.map_err(std::io::Error::other)
    }
}

struct WhpKicker {
    index: u32,
    kicked: AtomicBool,
    shared: Arc<Shared>,
}

impl VcpuKicker for WhpKicker {
    fn kick(&self) {
        self.kicked.store(true, Ordering::SeqCst);
        self.shared.wake_all();
        self.shared.partition.cancel_vp(self.index);
    }
}

/// An exit handed to the device model that the next `run` completes.
enum Pending {
    /// IN: write the data to RAX, continue at `next_rip`.
    PortIn {
        size: usize,
        rax: u64,
        next_rip: u64,
    },
    /// An MMIO load: emulate the instruction again with the data.
    MmioRead {
        vp: WHV_VP_EXIT_CONTEXT,
        access: WHV_MEMORY_ACCESS_CONTEXT,
        len: usize,
    },
}

/// One MMIO access seen by the emulator.
#[derive(Clone, Copy)]
struct MmioSeen {
    gpa: u64,
    len: usize,
    write: bool,
}

/// The emulator's view of the VM while it runs one instruction.
struct Host<'a> {
    shared: &'a Shared,
    index: u32,
    commit: bool,
    /// Data for the (single) MMIO load, on the second pass.
    supply: Option<[u8; 8]>,
    seen: Option<MmioSeen>,
    captured: [u8; 8],
    error: Option<&'static str>,
}

impl EmulatorHost for Host<'_> {
    fn memory(&mut self, gpa: u64, write: bool, data: &mut [u8]) -> bool {
        let ioapic_base = u64::from(layout::IOAPIC_ADDR);
        if (ioapic_base..ioapic_base + ioapic::MMIO_SIZE).contains(&gpa) {
            let mut io = self.shared.ioapic();
            if write {
                io.write(gpa - ioapic_base, data);
            } else {
                io.read(gpa - ioapic_base, data);
            }
            return true;
        }
        let ram = self.shared.mem.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mem) = ram
            .as_ref()
            .filter(|m| m.address_in_range(GuestAddress(gpa)))
        {
            let r = if write {
                mem.write_slice(data, GuestAddress(gpa))
            } else {
                mem.read_slice(data, GuestAddress(gpa))
            };
            return r.is_ok();
        }
        if self.seen.is_some() || data.len() > 8 {
            self.error = Some("the instruction makes more than one MMIO access");
            return false;
        }
        self.seen = Some(MmioSeen {
            gpa,
            len: data.len(),
            write,
        });
        if write {
            self.captured[..data.len()].copy_from_slice(data);
        } else {
            let src = self.supply.unwrap_or([0; 8]);
            data.copy_from_slice(&src[..data.len()]);
        }
        true
    }

    fn partition(&self) -> &Partition {
        &self.shared.partition
    }

    fn vp_index(&self) -> u32 {
        self.index
    }

    fn commit_registers(&self) -> bool {
        self.commit
    }
}

struct WhpVcpu {
    index: u32,
    shared: Arc<Shared>,
    emulator: Emulator,
    kicker: Arc<WhpKicker>,
    ctx: WHV_RUN_VP_EXIT_CONTEXT,
    pending: Option<Pending>,
    buf: [u8; 8],
}

/// What one exit asks of `run`.
enum Step {
    Continue,
    PortIn(u16, usize),
    PortOut(u16, usize),
    MmioRead(u64, usize),
    MmioWrite(u64, usize),
    Exit(VcpuExit<'static>),
}

fn reg64(v: u64) -> WHV_REGISTER_VALUE {
    WHV_REGISTER_VALUE { Reg64: v }
}

fn segment(s: &SegmentDesc) -> WHV_REGISTER_VALUE {
    WHV_REGISTER_VALUE {
        Segment: WHV_X64_SEGMENT_REGISTER {
            Base: s.base,
            Limit: s.limit,
            Selector: s.selector,
            Anonymous: WHV_X64_SEGMENT_REGISTER_0 {
                Attributes: exits::segment_attributes(s),
            },
        },
    }
}

fn table(base: u64, limit: u16) -> WHV_REGISTER_VALUE {
    WHV_REGISTER_VALUE {
        Table: WHV_X64_TABLE_REGISTER {
            Pad: [0; 3],
            Limit: limit,
            Base: base,
        },
    }
}

impl WhpVcpu {
    fn get64(&self, names: &[WHV_REGISTER_NAME]) -> Result<Vec<u64>, HvError> {
        let mut values = vec![WHV_REGISTER_VALUE::default(); names.len()];
        self.shared
            .partition
            .get_regs(self.index, names, &mut values)?;
        // SAFETY: the names asked for are all 64-bit registers, so Reg64 is the valid member.
        Ok(values.iter().map(|v| unsafe { v.Reg64 }).collect())
    }

    fn set(
        &self,
        names: &[WHV_REGISTER_NAME],
        values: &[WHV_REGISTER_VALUE],
    ) -> Result<(), HvError> {
        self.shared.partition.set_regs(self.index, names, values)
    }

    fn set_x86_boot_regs(&self, r: &X86BootRegs) -> Result<(), HvError> {
        let cur = self.get64(&[WHvX64RegisterCr0, WHvX64RegisterCr4, WHvX64RegisterEfer])?;
        let names = [
            WHvX64RegisterCr0,
            WHvX64RegisterCr3,
            WHvX64RegisterCr4,
            WHvX64RegisterEfer,
            WHvX64RegisterGdtr,
            WHvX64RegisterIdtr,
            WHvX64RegisterCs,
            WHvX64RegisterDs,
            WHvX64RegisterEs,
            WHvX64RegisterFs,
            WHvX64RegisterGs,
            WHvX64RegisterSs,
            WHvX64RegisterTr,
            WHvX64RegisterRflags,
            WHvX64RegisterRip,
            WHvX64RegisterRsp,
            WHvX64RegisterRbp,
            WHvX64RegisterRsi,
        ];
        let data = segment(&r.data_segment);
        let values = [
            reg64(cur[0] | X86_CR0_PE | X86_CR0_PG),
            reg64(r.cr3),
            reg64(cur[1] | X86_CR4_PAE),
            reg64(cur[2] | EFER_LME | EFER_LMA),
            table(r.gdt_base, r.gdt_limit),
            table(r.idt_base, r.idt_limit),
            segment(&r.code_segment),
            data,
            data,
            data,
            data,
            data,
            segment(&r.tss_segment),
            reg64(0x2),
            reg64(r.rip),
            reg64(r.rsp),
            reg64(r.rsp),
            reg64(r.rsi),
        ];
        self.set(&names, &values)
    }

    /// Finishes the exit handed to the device model by the previous `run`.
    fn complete_pending(&mut self) -> Result<Option<String>, HvError> {
        match self.pending.take() {
            None => Ok(None),
            Some(Pending::PortIn {
                size,
                rax,
                next_rip,
            }) => {
                let rax = exits::port_in_rax(rax, size, &self.buf[..size]);
                self.set(
                    &[WHvX64RegisterRax, WHvX64RegisterRip],
                    &[reg64(rax), reg64(next_rip)],
                )?;
                Ok(None)
            }
            Some(Pending::MmioRead { vp, access, len }) => {
                let mut supply = [0u8; 8];
                supply[..len].copy_from_slice(&self.buf[..len]);
                let mut host = Self::host(&self.shared, self.index, true, Some(supply));
                let status = self.emulator.try_mmio(&mut host, &vp, &access)?;
                Ok(exits::emulator_status(status).err().map(|why| {
                    format!("cannot complete the MMIO load at {:#x}: {why}", access.Gpa)
                }))
            }
        }
    }

    fn host(shared: &Shared, index: u32, commit: bool, supply: Option<[u8; 8]>) -> Host<'_> {
        Host {
            shared,
            index,
            commit,
            supply,
            seen: None,
            captured: [0; 8],
            error: None,
        }
    }

    fn port_io(&mut self) -> Result<Step, HvError> {
        // SAFETY: the exit reason is X64IoPortAccess, so IoPortAccess is the valid member.
        let io = unsafe { self.ctx.Anonymous.IoPortAccess };
        // SAFETY: every bit pattern of the info union is a valid u32.
        let info = unsafe { io.AccessInfo.AsUINT32 };
        let Some(access) = exits::decode_port_access(info) else {
            return Ok(Step::Exit(VcpuExit::Crashed(format!(
                "port I/O exit with an invalid access size ({info:#x})"
            ))));
        };
        if access.string {
            return Ok(Step::Exit(VcpuExit::Crashed(format!(
                "string port I/O (INS/OUTS) on port {:#x} is not supported",
                io.PortNumber
            ))));
        }
        let vp = self.ctx.VpContext;
        let next_rip = vp.Rip + exits::instruction_length(vp._bitfield);
        if access.write {
            self.buf = io.Rax.to_le_bytes();
            self.set(&[WHvX64RegisterRip], &[reg64(next_rip)])?;
            Ok(Step::PortOut(io.PortNumber, access.size))
        } else {
            self.buf = [0; 8];
            self.pending = Some(Pending::PortIn {
                size: access.size,
                rax: io.Rax,
                next_rip,
            });
            Ok(Step::PortIn(io.PortNumber, access.size))
        }
    }

    fn mmio(&mut self) -> Result<Step, HvError> {
        // SAFETY: the exit reason is MemoryAccess, so MemoryAccess is the valid member.
        let access = unsafe { self.ctx.Anonymous.MemoryAccess };
        let vp = self.ctx.VpContext;
        // SAFETY: every bit pattern of the info union is a valid u32.
        let kind = exits::decode_memory_access(unsafe { access.AccessInfo.AsUINT32 });
        let commit = match kind {
            Some(MemoryAccessType::Write) => true,
            Some(MemoryAccessType::Read) => false,
            _ => {
                return Ok(Step::Exit(VcpuExit::Crashed(format!(
                    "guest executed from {:#x}, which is not RAM",
                    access.Gpa
                ))))
            }
        };
        let ioapic_base = u64::from(layout::IOAPIC_ADDR);
        // The IOAPIC is ours: its loads need no second pass.
        let commit = commit || (ioapic_base..ioapic_base + ioapic::MMIO_SIZE).contains(&access.Gpa);
        let mut host = Self::host(&self.shared, self.index, commit, None);
        let status = self.emulator.try_mmio(&mut host, &vp, &access)?;
        let (seen, captured, error) = (host.seen, host.captured, host.error);
        if let Err(why) = exits::emulator_status(status) {
            return Ok(Step::Exit(VcpuExit::Crashed(format!(
                "cannot emulate the MMIO access at {:#x}: {}",
                access.Gpa,
                error.unwrap_or(why)
            ))));
        }
        Ok(match seen {
            None => Step::Continue,
            Some(s) if s.write => {
                self.buf = captured;
                Step::MmioWrite(s.gpa, s.len)
            }
            Some(s) => {
                self.buf = [0; 8];
                self.pending = Some(Pending::MmioRead {
                    vp,
                    access,
                    len: s.len,
                });
                Step::MmioRead(s.gpa, s.len)
            }
        })
    }

    /// HLT: sleep until an interrupt request, a kick, or HALT_MAX_SLEEP.
    fn halt(&self) {
        let g = self.shared.wake.lock().unwrap_or_else(|p| p.into_inner());
        let seen = *g;
        let kicked = &self.kicker.kicked;
        let _ = self
            .shared
            .cond
            .wait_timeout_while(g, HALT_MAX_SLEEP, |g| {
                *g == seen && !kicked.load(Ordering::SeqCst)
            })
            .map_err(|_| ());
    }
}

impl Vcpu for WhpVcpu {
    fn set_boot_regs(&mut self, regs: &BootRegs) -> Result<(), HvError> {
        match regs {
            BootRegs::X86_64(r) => self.set_x86_boot_regs(r),
            BootRegs::Aarch64(_) => Err(HvError::MissingCapability(
                "arm64 guests (WHP runs x86_64 guests)",
            )),
        }
    }

    fn run(&mut self) -> Result<VcpuExit<'_>, HvError> {
        loop {
            if self.kicker.kicked.swap(false, Ordering::SeqCst) {
                return Ok(VcpuExit::Interrupted);
            }
            if let Some(crash) = self.complete_pending()? {
                return Ok(VcpuExit::Crashed(crash));
            }
            self.shared.partition.run_vp(self.index, &mut self.ctx)?;
            let reason = self.ctx.ExitReason.0;
            let step = match exits::classify(reason) {
                ExitClass::PortIo => self.port_io()?,
                ExitClass::Mmio => self.mmio()?,
                ExitClass::Halt => {
                    self.halt();
                    Step::Continue
                }
                ExitClass::Canceled => Step::Exit(VcpuExit::Interrupted),
                ExitClass::Resume => Step::Continue,
                ExitClass::Reset => Step::Exit(VcpuExit::Reset),
                ExitClass::Crash(why) => Step::Exit(VcpuExit::Crashed(why.to_string())),
                ExitClass::Unexpected => {
                    Step::Exit(VcpuExit::Unhandled(exits::reason_name(reason)))
                }
            };
            return Ok(match step {
                Step::Continue => continue,
                Step::PortIn(port, n) => VcpuExit::IoIn(port, &mut self.buf[..n]),
                Step::PortOut(port, n) => VcpuExit::IoOut(port, &self.buf[..n]),
                Step::MmioRead(addr, n) => VcpuExit::MmioRead(addr, &mut self.buf[..n]),
                Step::MmioWrite(addr, n) => VcpuExit::MmioWrite(addr, &self.buf[..n]),
                Step::Exit(e) => e,
            });
        }
    }

    fn crash_report(&mut self) -> String {
        let mut out = format!(
            "vCPU {}, last exit {}",
            self.index,
            exits::reason_name(self.ctx.ExitReason.0)
        );
        match self.get64(&[WHvX64RegisterRip, WHvX64RegisterRsp]) {
            Ok(r) => out.push_str(&format!(", RIP {:#x}, RSP {:#x}", r[0], r[1])),
            Err(e) => out.push_str(&format!(", registers unavailable ({e})")),
        }
        out
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.kicker.clone()
    }
}

impl Drop for WhpVcpu {
    fn drop(&mut self) {
        self.shared.partition.delete_vp(self.index);
    }
}
