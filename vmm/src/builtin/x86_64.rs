//! The x86_64 machine of the builtin engine: a PC-like layout with COM1 and an i8042 (for
//! the reset line) on the port bus, virtio-mmio devices announced on the kernel command line
//! and routed to IOAPIC pins, MP tables for the vCPUs, and the 64-bit Linux boot protocol.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vm_superio::I8042Device;

use super::vcpu::Buses;
use super::{BuiltinError, ExitSignal, VmConfig, VmExit};
use crate::arch::x86_64::{boot, layout, mptable, regs};
use crate::devices::cmos;
use crate::devices::legacy::{self, ResetTrigger, SerialDevice, I8042};
use crate::hv::{BootRegs, Vm};

/// What can go wrong laying out and booting the x86_64 machine.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
}

/// How many virtio-mmio devices fit, and what limits them (for the error message).
pub const MAX_VIRTIO_DEVICES: usize = layout::MAX_VIRTIO_IRQS as usize;
pub const VIRTIO_LIMIT: &str = "IOAPIC";
/// Size of each virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = layout::VIRTIO_MMIO_SIZE;

pub fn check_cpus(cpus: u8) -> Result<(), ArchError> {
    if cpus == 0 || cpus > mptable::MAX_CPUS {
        return Err(mptable::MptableError::CpuCount(cpus).into());
    }
    Ok(())
}

pub fn ram_ranges(mem_size: u64) -> Result<Vec<(GuestAddress, usize)>, ArchError> {
    Ok(layout::ram_ranges(mem_size))
}

/// The kernel and initrd, loaded before the devices are built (so a bad kernel is reported
/// first).
pub struct Loaded {
    kernel: boot::LoadedKernel,
    initrd: Option<(u64, u64)>,
}

pub fn load(mem: &GuestMemoryMmap, cfg: &VmConfig, mem_size: u64) -> Result<Loaded, ArchError> {
    let kernel = boot::load_kernel(mem, &cfg.kernel)?;
    let initrd = match &cfg.initrd {
        Some(p) => Some(boot::load_initrd(mem, mem_size, &kernel, p)?),
        None => None,
    };
    Ok(Loaded { kernel, initrd })
}

/// COM1 and the i8042 (whose reset line ends the VM) on the port bus.
pub fn add_legacy(
    vm: &dyn Vm,
    buses: &mut Buses,
    out: legacy::SerialOut,
    exit: &Arc<ExitSignal>,
) -> Result<Arc<Mutex<SerialDevice>>, BuiltinError> {
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        vm.irq_line(layout::COM1_IRQ)?,
        out,
    )));
    buses
        .pio
        .insert(legacy::COM1_PORT, legacy::COM_LEN, serial.clone())?;
    let reset_exit = exit.clone();
    let i8042 = I8042(I8042Device::new(ResetTrigger(Box::new(move || {
        reset_exit.set(Ok(VmExit::Reset))
    }))));
    buses.pio.insert(
        legacy::I8042_PORT,
        legacy::I8042_LEN,
        Arc::new(Mutex::new(i8042)),
    )?;
    buses.pio.insert(
        cmos::CMOS_PORT,
        cmos::CMOS_LEN,
        Arc::new(Mutex::new(cmos::Cmos::default())),
    )?;
    Ok(serial)
}

/// MMIO base and interrupt line (GSI) of virtio device `i`.
pub fn virtio_slot(i: usize) -> Result<(u64, u32), ArchError> {
    Ok((
        layout::VIRTIO_MMIO_START + i as u64 * layout::VIRTIO_MMIO_SIZE,
        layout::virtio_irq(i as u32),
    ))
}

/// Writes the command line (announcing the virtio devices), zero page and MP tables, and
/// returns the boot vCPU's long-mode registers.
pub fn boot_regs(
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    mem_size: u64,
    loaded: Loaded,
    virtio: &[(u64, u32)],
) -> Result<BootRegs, ArchError> {
    let mut cmdline = cfg.cmdline.clone();
    for (base, irq) in virtio {
        cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
    }
    let cmdline = boot::cmdline(&cmdline)?;
    let zero_page =
        boot::write_boot_params(mem, mem_size, &loaded.kernel, &cmdline, loaded.initrd)?;
    mptable::setup(mem, cfg.cpus)?;
    Ok(BootRegs::X86_64(regs::setup_long_mode(
        mem,
        loaded.kernel.entry,
        zero_page,
    )?))
}
