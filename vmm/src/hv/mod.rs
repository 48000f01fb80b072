//! The hypervisor abstraction: `Hypervisor` → `Vm` → `Vcpu`.
//!
//! The device model and the boot code talk only to these traits, so KVM (Linux),
//! Hypervisor.framework (macOS) and WHP (Windows) differ only in their backend module.
//! A backend is picked at run time with [`Hypervisor::is_available`]-style probes.

#[cfg(target_os = "linux")]
pub mod kvm;
// hvf and whp hold platform-neutral decoding (unit-tested on every host); their FFI and
// backend submodules are cfg'd to macOS and Windows inside.
pub mod hvf;
pub mod probe;
pub mod whp;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

/// Errors of a hypervisor backend.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("Cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Hypervisor API version {0} is not supported")]
    ApiVersion(i32),
    #[error("Hypervisor lacks required capability {0}")]
    MissingCapability(&'static str),
    #[error("{op} failed: {source}")]
    Op {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Guest memory layout is not supported: {0}")]
    Memory(String),
}

impl HvError {
    /// Wraps an OS error of the hypervisor call `op`.
    pub fn op(op: &'static str, source: impl Into<std::io::Error>) -> Self {
        HvError::Op {
            op,
            source: source.into(),
        }
    }
}

/// What stopped a vCPU. Data of I/O exits borrows the backend's exit buffer, so the device
/// model reads/writes it in place without copies.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// Port read: fill the slice.
    IoIn(u16, &'a mut [u8]),
    /// Port write.
    IoOut(u16, &'a [u8]),
    /// MMIO read: fill the slice.
    MmioRead(u64, &'a mut [u8]),
    /// MMIO write.
    MmioWrite(u64, &'a [u8]),
    /// The vCPU executed HLT with no interrupt pending (only when the irqchip is in user space).
    Halt,
    /// The guest asked for a reset (triple fault or a reset system event).
    Reset,
    /// The guest powered off (a shutdown system event).
    PowerOff,
    /// The run was interrupted by [`VcpuKicker::kick`] or a signal; call `run` again.
    Interrupted,
    /// The hypervisor could not continue the guest: the VM has crashed.
    Crashed(String),
    /// An exit the device model does not handle; reported and ignored.
    Unhandled(String),
}

/// Initial registers for a direct kernel boot, in hypervisor-neutral form.
#[derive(Debug, Clone)]
pub enum BootRegs {
    /// x86_64 Linux 64-bit boot protocol: long mode, identity-mapped page tables.
    X86_64(X86BootRegs),
    /// arm64 Linux boot protocol: EL1h, MMU off, `x0` = device tree address.
    Aarch64(Aarch64BootRegs),
}

/// arm64 register state at kernel entry (Documentation/arch/arm64/booting.rst).
#[derive(Debug, Clone, Default)]
pub struct Aarch64BootRegs {
    /// The kernel's entry point (its load address).
    pub pc: u64,
    /// Guest physical address of the flattened device tree.
    pub fdt: u64,
}

/// x86_64 register state at a 64-bit kernel entry.
#[derive(Debug, Clone, Default)]
pub struct X86BootRegs {
    pub rip: u64,
    pub rsp: u64,
    pub rsi: u64,
    pub cr3: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub idt_base: u64,
    pub idt_limit: u16,
    /// The GDT entries, to derive the hidden parts of segment registers.
    pub code_segment: SegmentDesc,
    pub data_segment: SegmentDesc,
    pub tss_segment: SegmentDesc,
}

/// A segment register as loaded from a GDT entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct SegmentDesc {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// Type (4 bits), S, DPL, P, AVL, L, DB, G as in the descriptor.
    pub type_: u8,
    pub s: bool,
    pub dpl: u8,
    pub present: bool,
    pub long: bool,
    pub db: bool,
    pub granularity: bool,
}

/// A way to pulse an interrupt line of the VM from any thread.
pub trait IrqLine: Send + Sync {
    /// Raises the interrupt (edge) on the line.
    fn trigger(&self) -> std::io::Result<()>;
}

/// A way to make a running vCPU return [`VcpuExit::Interrupted`] from another thread.
pub trait VcpuKicker: Send + Sync {
    fn kick(&self);
}

/// One virtual CPU. Owned and run by one thread.
pub trait Vcpu: Send {
    /// Sets registers for a direct kernel boot. On the boot CPU only; application processors
    /// wait for the guest to start them (INIT/SIPI on x86).
    fn set_boot_regs(&mut self, regs: &BootRegs) -> Result<(), HvError>;
    /// Runs until the next exit.
    fn run(&mut self) -> Result<VcpuExit<'_>, HvError>;
    /// The vCPU's state for a crash report (instruction pointer, the backend's error detail).
    fn crash_report(&mut self) -> String;
    /// A handle that interrupts `run` from another thread.
    fn kicker(&self) -> Arc<dyn VcpuKicker>;
}

/// A fast path for queue notifications: guest writes of `value` (when given) to the MMIO
/// address signal `notifier` without leaving the hypervisor, where the backend can do so.
/// An eventfd on Linux (KVM's ioeventfd signals it), the portable notifier elsewhere.
pub type Notifier = crate::sys::event::EventNotifier;

/// A virtual machine: memory, vCPUs and interrupt routing.
pub trait Vm: Send + Sync {
    /// Maps all regions of `mem` into the guest physical address space.
    fn map_memory(&self, mem: &GuestMemoryMmap) -> Result<(), HvError>;
    /// Creates vCPU `index` (0 is the boot CPU) for a VM with `count` vCPUs.
    fn create_vcpu(&self, index: u8, count: u8) -> Result<Box<dyn Vcpu>, HvError>;
    /// An edge-triggered interrupt line for GSI `gsi`.
    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>, HvError>;
    /// Registers a notification fast path (see [`Notifier`]); `Ok(false)` when the backend has
    /// none, in which case the MMIO write exit path signals the notifier.
    fn register_mmio_notifier(
        &self,
        addr: u64,
        value: Option<u32>,
        notifier: &Notifier,
    ) -> Result<bool, HvError>;
    /// Shows (or hides) the CPU's virtualization extensions to vCPUs created after this call,
    /// so the guest can run a hypervisor of its own. `Ok(false)` when the backend cannot.
    fn set_nested_virt(&self, _on: bool) -> Result<bool, HvError> {
        Ok(false)
    }
}

/// An available hypervisor.
pub trait Hypervisor {
    /// A short name for messages (`kvm`, `hvf`, `whp`).
    fn name(&self) -> &'static str;
    /// Something the user should know about this hypervisor (e.g. "PVM: no Linux guests").
    fn limitation(&self) -> Option<String>;
    fn create_vm(&self) -> Result<Arc<dyn Vm>, HvError>;
}

/// Opens the platform's hypervisor.
pub fn open() -> Result<Box<dyn Hypervisor>, HvError> {
    #[cfg(target_os = "linux")]
    {
        Ok(Box::new(kvm::Kvm::open()?))
    }
    #[cfg(all(target_os = "macos", target_arch = "aarch64"))]
    {
        Ok(Box::new(hvf::Hvf::open()?))
    }
    #[cfg(all(windows, target_arch = "x86_64"))]
    {
        Ok(Box::new(whp::Whp::open()?))
    }
    #[cfg(not(any(
        target_os = "linux",
        all(target_os = "macos", target_arch = "aarch64"),
        all(windows, target_arch = "x86_64")
    )))]
    {
        Err(HvError::MissingCapability(
            "a hypervisor backend for this OS and CPU (KVM on Linux, Hypervisor.framework on \
             arm64 macOS, WHP on x86_64 Windows)",
        ))
    }
}
