//! `Hypervisor`/`Vm`/`Vcpu` over Hypervisor.framework (arm64 macOS 15+).
//!
//! - One VM per process (a framework rule); the framework's GICv3 (`hv_gic_create`) serves
//!   the distributor/redistributors at `arch::aarch64::layout`'s addresses and delivers the
//!   virtual timer itself, so device lines are SPIs set with `hv_gic_set_spi`.
//! - A framework vCPU belongs to the thread that created it, so `create_vcpu` returns a
//!   handle and the framework vCPU is created on the first `run`, on the thread that runs it.
//! - Guest exits: data aborts with a valid syndrome become `MmioRead`/`MmioWrite` (a load is
//!   completed at the next `run`), `hvc` calls are PSCI (CPU_ON starts a waiting vCPU thread,
//!   SYSTEM_OFF/RESET end the VM), WFI sleeps until the vtimer deadline, a device interrupt or
//!   a kick, capped at WFI_MAX_SLEEP because the in-framework GIC raises IPIs (SGIs) without
//!   telling us.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::Duration;

use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::esr::{self, Exception, MmioAccess};
use super::ffi::{self, hv_vcpu_exit_exception_t, hv_vcpu_exit_t, hv_vcpu_t, GicApi};
use super::psci::{self, PowerTable, PsciCall};
use crate::arch::aarch64::layout;
use crate::hv::{
    Aarch64BootRegs, BootRegs, HvError, Hypervisor, IrqLine, Notifier, Vcpu, VcpuExit, VcpuKicker,
    Vm,
};
use crate::warn_ratelimited;

/// The framework's default guest physical address size (no `hv_vm_config_set_ipa_size`).
pub const IPA_BITS: u32 = 36;
/// Longest WFI sleep without a known wake-up (bounds IPI latency; see the module docs).
const WFI_MAX_SLEEP: Duration = Duration::from_millis(1);
/// EL1h with D, A, I, F masked: the state the arm64 boot protocol asks for.
const PSTATE_EL1H_DAIF: u64 = 0x3c5;
/// SCTLR_EL1 reset value: MMU and caches off, RES1 bits set.
const SCTLR_EL1_RESET: u64 = 0x30d0_0800;
const CNTV_CTL_ENABLE: u64 = 1;
const CNTV_CTL_IMASK: u64 = 2;
const CNTV_CTL_ISTATUS: u64 = 4;
const XZR: u8 = 31;
const NO_VCPU: u64 = u64::MAX;

static VM_EXISTS: AtomicBool = AtomicBool::new(false);

/// Hypervisor.framework, with its GIC.
pub struct Hvf {
    gic: &'static GicApi,
}

impl Hvf {
    /// Checks that the framework has the in-framework GIC (macOS 15 or later).
    pub fn open() -> Result<Self, HvError> {
        let gic = GicApi::get().ok_or(HvError::MissingCapability(
            "the Hypervisor.framework GICv3 (hv_gic_create, macOS 15 or later)",
        ))?;
        Ok(Hvf { gic })
    }
}

impl Hypervisor for Hvf {
    fn name(&self) -> &'static str {
        "hvf"
    }

    fn limitation(&self) -> Option<String> {
        Some(format!(
            "Hypervisor.framework: arm64 guests only, at most {} GiB of RAM ({IPA_BITS}-bit guest \
             physical addresses), one VM per process",
            ((1u64 << IPA_BITS) - layout::RAM_START) >> 30
        ))
    }

    fn create_vm(&self) -> Result<Arc<dyn Vm>, HvError> {
        if VM_EXISTS.swap(true, Ordering::SeqCst) {
            return Err(HvError::MissingCapability(
                "a second VM in this process (Hypervisor.framework allows one)",
            ));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                power: PowerTable::new(1),
                irq_generation: 0,
                next_to_create: 0,
            }),
            cond: Condvar::new(),
            created: AtomicBool::new(false),
        });
        ffi::vm_create()?;
        shared.created.store(true, Ordering::SeqCst);
        let (dist, redist) = self.gic.sizes()?;
        if dist > layout::GICD_SIZE || redist != layout::GICR_STRIDE {
            return Err(HvError::Memory(format!(
                "the framework's GIC needs a {dist:#x}-byte distributor and {redist:#x}-byte \
                 redistributors; the layout has {:#x} and {:#x}",
                layout::GICD_SIZE,
                layout::GICR_STRIDE
            )));
        }
        let (spi_base, spi_count) = self.gic.spi_range()?;
        let need_end = layout::spi_intid(layout::SPI_COUNT);
        if spi_base > layout::SPI_INTID_BASE || spi_base + spi_count < need_end {
            return Err(HvError::MissingCapability(
                "a GIC with SPIs 32..96 (the framework reports fewer)",
            ));
        }
        self.gic.create(layout::GICD_BASE, layout::GICR_BASE)?;
        Ok(Arc::new(HvfVm {
            shared,
            gic: self.gic,
        }))
    }
}

struct State {
    power: PowerTable,
    /// Bumped on every device interrupt, to wake vCPUs sleeping in WFI.
    irq_generation: u64,
    /// Framework vCPUs are created in index order (see `create_in_order`).
    next_to_create: u8,
}

/// What the VM's vCPU threads share. Destroys the framework VM when the last user is gone
/// (vCPUs hold a reference, so that is after every vCPU).
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    created: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking vCPU thread leaves consistent data (plain values); keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_all(&self) {
        let mut s = self.lock();
        s.irq_generation = s.irq_generation.wrapping_add(1);
        self.cond.notify_all();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.created.load(Ordering::SeqCst) {
            ffi::vm_destroy();
        }
        VM_EXISTS.store(false, Ordering::SeqCst);
    }
}

struct HvfVm {
    shared: Arc<Shared>,
    gic: &'static GicApi,
}

impl Vm for HvfVm {
    fn map_memory(&self, mem: &GuestMemoryMmap) -> Result<(), HvError> {
        for region in mem.iter() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| HvError::Memory(e.to_string()))?;
            let len = usize::try_from(region.len())
                .map_err(|_| HvError::Memory("region larger than the address space".into()))?;
            // SAFETY: the range is a live GuestMemoryMmap region of exactly `len` bytes; the
            // VMM keeps `mem` alive for as long as the VM (it owns both for the whole run).
            unsafe { ffi::vm_map(host, region.start_addr().raw_value(), len) }?;
        }
        Ok(())
    }

    fn create_vcpu(&self, index: u8, count: u8) -> Result<Box<dyn Vcpu>, HvError> {
        layout::check_cpus(count)
            .map_err(|_| HvError::MissingCapability("that many vCPUs (1 to 16)"))?;
        if index >= count {
            return Err(HvError::MissingCapability(
                "a vCPU index beyond the vCPU count",
            ));
        }
        {
            let mut s = self.shared.lock();
            if s.power.state(count - 1).is_none() {
                s.power = PowerTable::new(count);
            }
        }
        Ok(Box::new(HvfVcpu {
            index,
            shared: self.shared.clone(),
            kicker: Arc::new(HvfKicker {
                vcpu: AtomicU64::new(NO_VCPU),
                kicked: AtomicBool::new(false),
                shared: self.shared.clone(),
            }),
            hv: None,
            boot: None,
            pending_load: None,
            buf: [0; 8],
            vtimer_masked: false,
            last_exit: None,
            booted: false,
        }))
    }

    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>, HvError> {
        if gsi >= layout::SPI_COUNT {
            return Err(HvError::MissingCapability("an SPI beyond the layout's 64"));
        }
        Ok(Arc::new(HvfIrq {
            intid: layout::spi_intid(gsi),
            gic: self.gic,
            shared: self.shared.clone(),
        }))
    }

    /// Hypervisor.framework has no in-kernel notification: the MMIO write exit signals it.
    fn register_mmio_notifier(
        &self,
        _addr: u64,
        _value: Option<u32>,
        _notifier: &Notifier,
    ) -> Result<bool, HvError> {
        Ok(false)
    }
}

/// An edge-triggered SPI: raise and lower the line, then wake sleeping vCPUs.
struct HvfIrq {
    intid: u32,
    gic: &'static GicApi,
    shared: Arc<Shared>,
}

impl IrqLine for HvfIrq {
    fn trigger(&self) -> std::io::Result<()> {
        let r = self
            .gic
            .set_spi(self.intid, true)
            .and_then(|()| self.gic.set_spi(self.intid, false));
        self.shared.wake_all();
        r.map_err(std::io::Error::other)
    }
}

struct HvfKicker {
    vcpu: AtomicU64,
    kicked: AtomicBool,
    shared: Arc<Shared>,
}

impl VcpuKicker for HvfKicker {
    fn kick(&self) {
        self.kicked.store(true, Ordering::SeqCst);
        // Under the lock, so a vCPU about to wait cannot miss it.
        self.shared.wake_all();
        let v = self.vcpu.load(Ordering::SeqCst);
        if v != NO_VCPU {
            ffi::vcpus_exit(v);
        }
    }
}

/// What one exception asks of `run`.
enum Step {
    Continue,
    MmioRead(u64, usize),
    MmioWrite(u64, usize),
    PowerOff,
    Reset,
    Crashed(String),
}

struct HvfVcpu {
    index: u8,
    shared: Arc<Shared>,
    kicker: Arc<HvfKicker>,
    /// The framework vCPU, its exit record and the thread that owns both.
    hv: Option<(hv_vcpu_t, *const hv_vcpu_exit_t, ThreadId)>,
    boot: Option<Aarch64BootRegs>,
    /// An MMIO load handed to the device model, completed at the next `run`.
    pending_load: Option<MmioAccess>,
    buf: [u8; 8],
    vtimer_masked: bool,
    last_exit: Option<hv_vcpu_exit_exception_t>,
    /// The entry state (boot registers or a CPU_ON) has been applied.
    booted: bool,
}

// SAFETY: the only non-Send field is the framework's exit-record pointer. It is created in
// `run` on the thread that runs the vCPU, and every framework call checks it is made on that
// thread (`owner`) and fails otherwise, so moving the handle between threads cannot make a
// framework vCPU be used from a thread that does not own it.
unsafe impl Send for HvfVcpu {}

enum Start {
    Running,
    New(u64, u64),
    Kicked,
}

impl HvfVcpu {
    fn owner(&self) -> Result<(hv_vcpu_t, *const hv_vcpu_exit_t), HvError> {
        match self.hv {
            Some((v, e, t)) if t == std::thread::current().id() => Ok((v, e)),
            Some(_) => Err(HvError::op(
                "hv_vcpu_run",
                std::io::Error::other("vCPU used from a thread that did not create it"),
            )),
            None => Err(HvError::op(
                "hv_vcpu_run",
                std::io::Error::other("vCPU not created"),
            )),
        }
    }

    /// Waits until this vCPU is powered on (the boot CPU is from the start).
    fn wait_powered(&self) -> Start {
        let mut s = self.shared.lock();
        loop {
            if self.kicker.kicked.swap(false, Ordering::SeqCst) {
                return Start::Kicked;
            }
            if let Some((entry, context)) = s.power.take_start(self.index) {
                return Start::New(entry, context);
            }
            if s.power.state(self.index) == Some(psci::Power::On) {
                return Start::Running;
            }
            s = self.shared.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Points the vCPU at `pc` with `x0` in the boot protocol's entry state.
    fn enter(&self, vcpu: hv_vcpu_t, pc: u64, x0: u64) -> Result<(), HvError> {
        ffi::set_sys_reg(vcpu, ffi::HV_SYS_REG_SCTLR_EL1, SCTLR_EL1_RESET)?;
        for r in 1..4 {
            ffi::set_reg(vcpu, ffi::HV_REG_X0 + r, 0)?;
        }
        ffi::set_reg(vcpu, ffi::HV_REG_X0, x0)?;
        ffi::set_reg(vcpu, ffi::HV_REG_PC, pc)?;
        ffi::set_reg(vcpu, ffi::HV_REG_CPSR, PSTATE_EL1H_DAIF)
    }

    /// Creates this vCPU's framework vCPU once every lower-numbered one exists, so creation
    /// order (which the framework's GIC may use to pair vCPUs with redistributors) always
    /// matches the MPIDR order the device tree gives, whatever order the threads start in.
    /// False when kicked while waiting.
    fn create_in_order(&mut self) -> Result<bool, HvError> {
        let mut s = self.shared.lock();
        while s.next_to_create != self.index {
            if self.kicker.kicked.swap(false, Ordering::SeqCst) {
                return Ok(false);
            }
            s = self.shared.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        let created = ffi::vcpu_create().and_then(|(vcpu, exit)| {
            self.hv = Some((vcpu, exit, std::thread::current().id()));
            self.kicker.vcpu.store(vcpu, Ordering::SeqCst);
            ffi::set_sys_reg(vcpu, ffi::HV_SYS_REG_MPIDR_EL1, layout::mpidr(self.index))
        });
        // Let the next vCPU go on even if this one failed: its own error ends the VM.
        s.next_to_create = s.next_to_create.saturating_add(1);
        self.shared.cond.notify_all();
        drop(s);
        created.map(|()| true)
    }

    /// Makes sure a powered-on framework vCPU exists; false when kicked while waiting.
    fn ensure_running(&mut self) -> Result<bool, HvError> {
        if self.hv.is_none() && !self.create_in_order()? {
            return Ok(false);
        }
        let start = match self.wait_powered() {
            Start::Kicked => return Ok(false),
            Start::Running if self.booted => return Ok(true),
            Start::Running => match &self.boot {
                Some(b) => (b.pc, b.fdt),
                None => {
                    return Err(HvError::op(
                        "hv_vcpu_create",
                        std::io::Error::other("the boot vCPU has no boot registers"),
                    ))
                }
            },
            Start::New(entry, context) => (entry, context),
        };
        let (vcpu, _) = self.owner()?;
        self.enter(vcpu, start.0, start.1)?;
        self.booted = true;
        Ok(true)
    }

    fn advance_pc(vcpu: hv_vcpu_t) -> Result<(), HvError> {
        let pc = ffi::get_reg(vcpu, ffi::HV_REG_PC)?;
        ffi::set_reg(vcpu, ffi::HV_REG_PC, pc.wrapping_add(4))
    }

    /// Finishes an MMIO load: the device model filled `buf`.
    fn complete_load(&mut self, vcpu: hv_vcpu_t) -> Result<(), HvError> {
        if let Some(acc) = self.pending_load.take() {
            if acc.reg != XZR {
                let v = esr::load_result(&acc, &self.buf[..acc.len.min(8)]);
                ffi::set_reg(vcpu, ffi::HV_REG_X0 + u32::from(acc.reg), v)?;
            }
            Self::advance_pc(vcpu)?;
        }
        Ok(())
    }

    /// Unmasks the vtimer once the guest has dealt with it (only reached if the framework ever
    /// reports VTIMER_ACTIVATED despite its GIC, which handles the timer itself).
    fn sync_vtimer(&mut self, vcpu: hv_vcpu_t) -> Result<(), HvError> {
        if self.vtimer_masked {
            let ctl = ffi::get_sys_reg(vcpu, ffi::HV_SYS_REG_CNTV_CTL_EL0)?;
            let firing = CNTV_CTL_ENABLE | CNTV_CTL_ISTATUS;
            if ctl & (firing | CNTV_CTL_IMASK) != firing {
                ffi::set_vtimer_mask(vcpu, false)?;
                self.vtimer_masked = false;
            }
        }
        Ok(())
    }

    /// WFI: sleeps until the guest's virtual timer is due, a device interrupt, a kick, or
    /// WFI_MAX_SLEEP.
    fn wait_for_interrupt(&self, vcpu: hv_vcpu_t) -> Result<(), HvError> {
        let ctl = ffi::get_sys_reg(vcpu, ffi::HV_SYS_REG_CNTV_CTL_EL0)?;
        let mut sleep = WFI_MAX_SLEEP;
        if ctl & (CNTV_CTL_ENABLE | CNTV_CTL_IMASK) == CNTV_CTL_ENABLE {
            let cval = ffi::get_sys_reg(vcpu, ffi::HV_SYS_REG_CNTV_CVAL_EL0)?;
            let now = ffi::host_counter().wrapping_sub(ffi::vtimer_offset(vcpu)?);
            if cval <= now {
                return Ok(());
            }
            sleep = sleep.min(Duration::from_nanos(ffi::ticks_to_nanos(cval - now)));
        }
        let s = self.shared.lock();
        let generation = s.irq_generation;
        let kicked = &self.kicker.kicked;
        let _ = self
            .shared
            .cond
            .wait_timeout_while(s, sleep, |s| {
                s.irq_generation == generation && !kicked.load(Ordering::SeqCst)
            })
            .map_err(|_| ());
        Ok(())
    }

    fn psci(&mut self, vcpu: hv_vcpu_t) -> Result<Step, HvError> {
        let mut x = [0u64; 4];
        for (i, r) in x.iter_mut().enumerate() {
            *r = ffi::get_reg(vcpu, ffi::HV_REG_X0 + i as u32)?;
        }
        let ret = match psci::decode(x) {
            PsciCall::SmcccVersion => psci::SMCCC_1_1,
            PsciCall::SmcccArchFeatures(_) => psci::NOT_SUPPORTED,
            PsciCall::Version => psci::VERSION_1_0,
            PsciCall::CpuSuspend => {
                self.wait_for_interrupt(vcpu)?;
                psci::SUCCESS
            }
            PsciCall::CpuOff => {
                self.shared.lock().power.cpu_off(self.index);
                return Ok(Step::Continue);
            }
            PsciCall::CpuOn {
                target,
                entry,
                context,
            } => {
                let r = self.shared.lock().power.cpu_on(target, entry, context);
                self.shared.wake_all();
                r
            }
            PsciCall::AffinityInfo { target, level } => {
                self.shared.lock().power.affinity_info(target, level)
            }
            PsciCall::MigrateInfoType => psci::TOS_NOT_PRESENT,
            PsciCall::SystemOff => return Ok(Step::PowerOff),
            PsciCall::SystemReset => return Ok(Step::Reset),
            PsciCall::Features(f) => psci::features(f),
            PsciCall::Unknown(f) => {
                warn_ratelimited!("hvf: unknown hvc call {f:#x}");
                psci::NOT_SUPPORTED
            }
        };
        // PSCI results are signed; x0 carries their two's complement.
        ffi::set_reg(vcpu, ffi::HV_REG_X0, ret as u64)?;
        Ok(Step::Continue)
    }

    fn exception(&mut self, vcpu: hv_vcpu_t, e: hv_vcpu_exit_exception_t) -> Result<Step, HvError> {
        let addr = e.physical_address;
        Ok(match esr::decode(e.syndrome) {
            Exception::Mmio(acc) if acc.write => {
                let value = if acc.reg == XZR {
                    0
                } else {
                    ffi::get_reg(vcpu, ffi::HV_REG_X0 + u32::from(acc.reg))?
                };
                let (bytes, n) = esr::store_bytes(&acc, value);
                self.buf = bytes;
                Self::advance_pc(vcpu)?;
                Step::MmioWrite(addr, n)
            }
            Exception::Mmio(acc) => {
                self.pending_load = Some(acc);
                self.buf = [0; 8];
                Step::MmioRead(addr, acc.len.min(8))
            }
            // The preferred return of an HVC is the next instruction: no PC change.
            Exception::Hvc(_) => self.psci(vcpu)?,
            Exception::Smc(_) => {
                ffi::set_reg(vcpu, ffi::HV_REG_X0, psci::NOT_SUPPORTED as u64)?;
                Self::advance_pc(vcpu)?;
                Step::Continue
            }
            Exception::SysReg(acc) => {
                warn_ratelimited!(
                    "hvf: guest {} unemulated system register {:#x}; reads as zero, writes are ignored",
                    if acc.read { "read" } else { "wrote" },
                    acc.encoding
                );
                if acc.read && acc.reg != XZR {
                    ffi::set_reg(vcpu, ffi::HV_REG_X0 + u32::from(acc.reg), 0)?;
                }
                Self::advance_pc(vcpu)?;
                Step::Continue
            }
            Exception::Wfi => {
                Self::advance_pc(vcpu)?;
                self.wait_for_interrupt(vcpu)?;
                Step::Continue
            }
            Exception::Wfe => {
                Self::advance_pc(vcpu)?;
                std::thread::yield_now();
                Step::Continue
            }
            Exception::UndecodableDataAbort { write } => Step::Crashed(format!(
                "guest {} {addr:#x} with an instruction the hardware does not describe \
                 (load/store pair, writeback or SIMD register); it cannot be emulated",
                if write { "wrote" } else { "read" }
            )),
            Exception::InstructionAbort => {
                Step::Crashed(format!("guest executed from {addr:#x}, which is not RAM"))
            }
            other => Step::Crashed(format!("unexpected guest exception: {}", other.describe())),
        })
    }
}

impl Vcpu for HvfVcpu {
    fn set_boot_regs(&mut self, regs: &BootRegs) -> Result<(), HvError> {
        match regs {
            BootRegs::Aarch64(r) => {
                self.boot = Some(r.clone());
                Ok(())
            }
            BootRegs::X86_64(_) => Err(HvError::MissingCapability(
                "x86_64 guests (Hypervisor.framework on arm64 runs arm64 guests)",
            )),
        }
    }

    fn run(&mut self) -> Result<VcpuExit<'_>, HvError> {
        loop {
            if self.kicker.kicked.swap(false, Ordering::SeqCst) {
                return Ok(VcpuExit::Interrupted);
            }
            let powered = self.shared.lock().power.state(self.index) == Some(psci::Power::On);
            if !powered || !self.booted {
                if !self.ensure_running()? {
                    return Ok(VcpuExit::Interrupted);
                }
                continue;
            }
            let (vcpu, exit) = self.owner()?;
            self.complete_load(vcpu)?;
            self.sync_vtimer(vcpu)?;
            ffi::vcpu_run(vcpu)?;
            let ex = ffi::read_exit(exit);
            let step = match ex.reason {
                ffi::HV_EXIT_REASON_CANCELED => return Ok(VcpuExit::Interrupted),
                ffi::HV_EXIT_REASON_VTIMER_ACTIVATED => {
                    self.vtimer_masked = true;
                    continue;
                }
                ffi::HV_EXIT_REASON_EXCEPTION => {
                    self.last_exit = Some(ex.exception);
                    self.exception(vcpu, ex.exception)?
                }
                other => Step::Crashed(format!("Hypervisor.framework exit reason {other}")),
            };
            return Ok(match step {
                Step::Continue => continue,
                Step::MmioRead(addr, n) => VcpuExit::MmioRead(addr, &mut self.buf[..n]),
                Step::MmioWrite(addr, n) => VcpuExit::MmioWrite(addr, &self.buf[..n]),
                Step::PowerOff => VcpuExit::PowerOff,
                Step::Reset => VcpuExit::Reset,
                Step::Crashed(why) => VcpuExit::Crashed(why),
            });
        }
    }

    fn crash_report(&mut self) -> String {
        let mut out = format!("vCPU {}", self.index);
        match self.owner() {
            Ok((vcpu, _)) => {
                for (name, reg) in [("PC", ffi::HV_REG_PC), ("CPSR", ffi::HV_REG_CPSR)] {
                    match ffi::get_reg(vcpu, reg) {
                        Ok(v) => out.push_str(&format!(", {name} {v:#x}")),
                        Err(e) => out.push_str(&format!(", {name} unavailable ({e})")),
                    }
                }
            }
            Err(e) => out.push_str(&format!(", registers unavailable ({e})")),
        }
        if let Some(e) = self.last_exit {
            out.push_str(&format!(
                ", last exception ESR {:#x} at IPA {:#x} ({})",
                e.syndrome,
                e.physical_address,
                esr::decode(e.syndrome).describe()
            ));
        }
        out
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.kicker.clone()
    }
}

impl Drop for HvfVcpu {
    fn drop(&mut self) {
        // Only the owning thread may destroy a framework vCPU; a handle dropped elsewhere
        // leaves it to hv_vm_destroy.
        if let Ok((vcpu, _)) = self.owner() {
            self.kicker.vcpu.store(NO_VCPU, Ordering::SeqCst);
            ffi::vcpu_destroy(vcpu);
        }
    }
}
