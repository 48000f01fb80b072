//! The KVM backend (Linux), on `kvm-ioctls`.
//!
//! x86_64 only for now: in-kernel LAPIC/IOAPIC/PIC and PIT, irqfd for device interrupts and
//! ioeventfd for virtio queue notifications, so neither costs a userspace exit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};

use kvm_bindings::{
    kvm_fpu, kvm_pit_config, kvm_regs, kvm_segment, kvm_userspace_memory_region, CpuId,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Cap, IoEventAddress, NoDatamatch, VcpuExit as KvmExit, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::{
    BootRegs, HvError, Hypervisor, IrqLine, Notifier, SegmentDesc, Vcpu, VcpuExit, VcpuKicker, Vm,
    X86BootRegs,
};

/// Where KVM puts its TSS and identity map (3 pages just below the 4 GiB boundary's
/// reserved area), as QEMU and Firecracker do; inside the MMIO gap, never RAM.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Handle to `/dev/kvm`.
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

impl Kvm {
    /// Opens `/dev/kvm` and checks the capabilities the VMM relies on.
    pub fn open() -> Result<Self, HvError> {
        let kvm = kvm_ioctls::Kvm::new().map_err(|e| HvError::Open {
            path: "/dev/kvm".into(),
            source: e.into(),
        })?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(HvError::ApiVersion(version));
        }
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(HvError::MissingCapability(name));
            }
        }
        Ok(Kvm { kvm })
    }
}

impl Hypervisor for Kvm {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn limitation(&self) -> Option<String> {
        let host = super::probe::probe();
        (host == super::probe::HostHypervisor::Pvm).then(|| host.describe())
    }

    fn create_vm(&self) -> Result<Arc<dyn Vm>, HvError> {
        let fd = self
            .kvm
            .create_vm()
            .map_err(|e| HvError::op("KVM_CREATE_VM", e))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(|e| HvError::op("KVM_SET_TSS_ADDR", e))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(|e| HvError::op("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        fd.create_irq_chip()
            .map_err(|e| HvError::op("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| HvError::op("KVM_CREATE_PIT2", e))?;
        disable_pit_reinjection(&fd)?;
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| HvError::op("KVM_GET_SUPPORTED_CPUID", e))?;
        if self.kvm.check_extension(Cap::TscDeadlineTimer) {
            set_tsc_deadline(&mut cpuid);
        }
        Ok(Arc::new(KvmVm {
            fd,
            cpuid,
            next_slot: AtomicU64::new(0),
            nested: AtomicBool::new(false),
        }))
    }
}

struct KvmVm {
    fd: VmFd,
    cpuid: CpuId,
    next_slot: AtomicU64,
    /// Whether vCPUs see VMX/SVM (when the host KVM offers them: its `nested` parameter).
    nested: AtomicBool,
}

impl Vm for KvmVm {
    fn set_nested_virt(&self, on: bool) -> Result<bool, HvError> {
        self.nested.store(on, Ordering::SeqCst);
        Ok(true)
    }

    fn map_memory(&self, mem: &GuestMemoryMmap) -> Result<(), HvError> {
        for region in mem.iter() {
            let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
            let slot = u32::try_from(slot).map_err(|_| HvError::Memory("too many slots".into()))?;
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| HvError::Memory(e.to_string()))?;
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range comes from a live GuestMemoryMmap region of exactly
            // `memory_size` bytes; the caller keeps `mem` alive as long as the VM (the VMM owns
            // both for the whole run), so KVM never sees a dangling mapping.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(|e| HvError::op("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        Ok(())
    }

    fn create_vcpu(&self, index: u8, count: u8) -> Result<Box<dyn Vcpu>, HvError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|e| HvError::op("KVM_CREATE_VCPU", e))?;
        let mut cpuid = self.cpuid.clone();
        patch_cpuid(&mut cpuid, index, count, self.nested.load(Ordering::SeqCst));
        fd.set_cpuid2(&cpuid)
            .map_err(|e| HvError::op("KVM_SET_CPUID2", e))?;
        set_lint(&fd)?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fd.set_fpu(&fpu)
            .map_err(|e| HvError::op("KVM_SET_FPU", e))?;
        static HANDLER: Once = Once::new();
        HANDLER.call_once(|| {
            extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
            // Failing to install the handler only makes kicks kill the process; report it.
            if let Err(e) = register_signal_handler(kick_signal(), noop) {
                tracing::error!("cannot install the vCPU kick signal handler: {e}");
            }
        });
        Ok(Box::new(KvmVcpu {
            fd,
            index,
            kicker: Arc::new(KvmKicker {
                thread: AtomicU64::new(0),
            }),
        }))
    }

    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>, HvError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| HvError::op("eventfd", e))?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(|e| HvError::op("KVM_IRQFD", e))?;
        Ok(Arc::new(KvmIrq { evt }))
    }

    fn register_mmio_notifier(
        &self,
        addr: u64,
        value: Option<u32>,
        notifier: &Notifier,
    ) -> Result<bool, HvError> {
        let addr = IoEventAddress::Mmio(addr);
        let r = match value {
            Some(v) => self.fd.register_ioevent(notifier.eventfd(), &addr, v),
            None => self
                .fd
                .register_ioevent(notifier.eventfd(), &addr, NoDatamatch),
        };
        r.map_err(|e| HvError::op("KVM_IOEVENTFD", e))?;
        Ok(true)
    }
}

struct KvmIrq {
    evt: EventFd,
}

impl IrqLine for KvmIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }
}

struct KvmKicker {
    /// pthread_t of the thread running the vCPU, 0 before the first run.
    thread: AtomicU64,
}

impl VcpuKicker for KvmKicker {
    fn kick(&self) {
        let t = self.thread.load(Ordering::Acquire);
        if t != 0 {
            // SAFETY: `t` is the pthread_t recorded by the vCPU thread itself; the vCPU thread
            // lives as long as the VM run loop that owns this kicker's user. A signal with a
            // no-op handler only makes KVM_RUN return EINTR.
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }
}

struct KvmVcpu {
    fd: VcpuFd,
    index: u8,
    kicker: Arc<KvmKicker>,
}

/// Sets the APIC id of this vCPU in CPUID and says we are a hypervisor guest.
fn patch_cpuid(cpuid: &mut CpuId, index: u8, count: u8, nested: bool) {
    const VMX: u32 = 1 << 5; // CPUID.1:ECX
    const SVM: u32 = 1 << 2; // CPUID.80000001h:ECX
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processor count.
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(index) << 24)
                    | (u32::from(count.max(1)) << 16);
                entry.ecx |= 1 << 31; // hypervisor present
                if !nested {
                    entry.ecx &= !VMX;
                }
            }
            0x8000_0001 if !nested => entry.ecx &= !SVM,
            0xb => entry.edx = u32::from(index), // x2APIC id
            _ => {}
        }
    }
}

/// Announces the TSC-deadline LAPIC timer (CPUID.1:ECX[24]), which KVM emulates but leaves
/// out of KVM_GET_SUPPORTED_CPUID. Without it Linux calibrates the LAPIC timer against the PIT;
/// on a slow (nested) vCPU that calibration went wrong and the guest's timer never fired
/// again (seen in the nested bed: no interrupt injected after the switch to the LAPIC timer,
/// boot spinning forever). With it the timer runs off the TSC, whose rate kvm-clock gives.
fn set_tsc_deadline(cpuid: &mut CpuId) {
    const TSC_DEADLINE: u32 = 1 << 24;
    for entry in cpuid.as_mut_slice() {
        if entry.function == 1 {
            entry.ecx |= TSC_DEADLINE;
        }
    }
}

vmm_sys_util::ioctl_io_nr!(KVM_REINJECT_CONTROL, kvm_bindings::KVMIO, 0x71);

/// Turns off KVM's catch-up of PIT ticks the guest did not take in time (QEMU's
/// `lost_tick_policy=discard`). With reinjection on, a guest that runs slowly (nested, or on a
/// loaded host) is handed every missed tick back to back and spends its time in the timer
/// interrupt — measured in the nested test bed: a 1000 Hz guest kernel made no progress after
/// its timer was routed. Linux keeps time with kvm-clock, not by counting PIT ticks.
fn disable_pit_reinjection(fd: &VmFd) -> Result<(), HvError> {
    let ctl = kvm_bindings::kvm_reinject_control {
        pit_reinject: 0,
        ..Default::default()
    };
    // SAFETY: KVM_REINJECT_CONTROL reads one kvm_reinject_control, which lives for the call;
    // the fd is a VM with a PIT (created just before).
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(fd, KVM_REINJECT_CONTROL(), &ctl) };
    if r < 0 {
        return Err(HvError::op(
            "KVM_REINJECT_CONTROL",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// LINT0 as ExtINT and LINT1 as NMI, as a PC's BIOS leaves them.
fn set_lint(fd: &VcpuFd) -> Result<(), HvError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7;
    const MODE_NMI: u32 = 0x4;
    let mut lapic = fd
        .get_lapic()
        .map_err(|e| HvError::op("KVM_GET_LAPIC", e))?;
    for (reg, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|b| *b as u8).collect();
        let mut v = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    fd.set_lapic(&lapic)
        .map_err(|e| HvError::op("KVM_SET_LAPIC", e))
}

fn kvm_segment(s: &SegmentDesc) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: u8::from(s.present),
        dpl: s.dpl,
        db: u8::from(s.db),
        s: u8::from(s.s),
        l: u8::from(s.long),
        g: u8::from(s.granularity),
        avl: 0,
        unusable: u8::from(!s.present),
        padding: 0,
    }
}

impl KvmVcpu {
    fn set_x86_boot_regs(&mut self, r: &X86BootRegs) -> Result<(), HvError> {
        const X86_CR0_PE: u64 = 0x1;
        const X86_CR0_PG: u64 = 0x8000_0000;
        const X86_CR4_PAE: u64 = 0x20;
        const EFER_LME: u64 = 0x100;
        const EFER_LMA: u64 = 0x400;
        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(|e| HvError::op("KVM_GET_SREGS", e))?;
        sregs.gdt.base = r.gdt_base;
        sregs.gdt.limit = r.gdt_limit;
        sregs.idt.base = r.idt_base;
        sregs.idt.limit = r.idt_limit;
        sregs.cs = kvm_segment(&r.code_segment);
        let data = kvm_segment(&r.data_segment);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = kvm_segment(&r.tss_segment);
        sregs.cr3 = r.cr3;
        sregs.cr4 |= X86_CR4_PAE;
        sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
        self.fd
            .set_sregs(&sregs)
            .map_err(|e| HvError::op("KVM_SET_SREGS", e))?;
        let regs = kvm_regs {
            rflags: 0x2,
            rip: r.rip,
            rsp: r.rsp,
            rbp: r.rsp,
            rsi: r.rsi,
            ..Default::default()
        };
        self.fd
            .set_regs(&regs)
            .map_err(|e| HvError::op("KVM_SET_REGS", e))
    }
}

impl Vcpu for KvmVcpu {
    fn set_boot_regs(&mut self, regs: &BootRegs) -> Result<(), HvError> {
        match regs {
            BootRegs::X86_64(r) => self.set_x86_boot_regs(r),
            BootRegs::Aarch64(_) => Err(HvError::MissingCapability(
                "arm64 guests (this KVM backend runs x86_64 guests only)",
            )),
        }
    }

    fn run(&mut self) -> Result<VcpuExit<'_>, HvError> {
        if self.kicker.thread.load(Ordering::Relaxed) == 0 {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            self.kicker.thread.store(me as u64, Ordering::Release);
        }
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                KvmExit::IoIn(port, data) => VcpuExit::IoIn(port, data),
                KvmExit::IoOut(port, data) => VcpuExit::IoOut(port, data),
                KvmExit::MmioRead(addr, data) => VcpuExit::MmioRead(addr, data),
                KvmExit::MmioWrite(addr, data) => VcpuExit::MmioWrite(addr, data),
                KvmExit::Hlt => VcpuExit::Halt,
                KvmExit::Shutdown => VcpuExit::Reset,
                KvmExit::SystemEvent(kind, _) => match kind {
                    KVM_SYSTEM_EVENT_RESET => VcpuExit::Reset,
                    KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::PowerOff,
                    KVM_SYSTEM_EVENT_CRASH => VcpuExit::Crashed("guest reported a crash".into()),
                    other => VcpuExit::Unhandled(format!("system event {other}")),
                },
                KvmExit::InternalError => VcpuExit::Crashed("KVM internal error".into()),
                KvmExit::FailEntry(reason, cpu) => VcpuExit::Crashed(format!(
                    "KVM entry failure (hardware reason {reason:#x}, cpu {cpu})"
                )),
                KvmExit::Intr => VcpuExit::Interrupted,
                other => VcpuExit::Unhandled(format!("{other:?}")),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VcpuExit::Interrupted)
            }
            Err(e) => Err(HvError::op("KVM_RUN", e)),
        }
    }

    fn crash_report(&mut self) -> String {
        let mut out = format!("vCPU {}", self.index);
        let run = self.fd.get_kvm_run();
        if run.exit_reason == kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
            // SAFETY: exit_reason says the `internal` member of the union is the valid one.
            let internal = unsafe { run.__bindgen_anon_1.internal };
            let what = match internal.suberror {
                kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
                kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "simultaneous exceptions",
                kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failure",
                _ => "internal error",
            };
            out.push_str(&format!(", {what} (suberror {})", internal.suberror));
        }
        match self.fd.get_regs() {
            Ok(regs) => out.push_str(&format!(", RIP {:#x}, RSP {:#x}", regs.rip, regs.rsp)),
            Err(e) => out.push_str(&format!(", registers unavailable ({e})")),
        }
        out
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.kicker.clone()
    }
}
