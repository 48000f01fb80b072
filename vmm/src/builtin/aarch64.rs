//! The arm64 machine of the builtin engine (Hypervisor.framework): the 16550 UART on the MMIO
//! bus at `layout::UART_BASE`, virtio-mmio devices in `layout::virtio_slot`s, and a device tree
//! that describes them (no i8042, no MP tables: PSCI starts and resets the vCPUs).

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::vcpu::Buses;
use super::{BuiltinError, ExitSignal, VmConfig};
use crate::arch::aarch64::boot::{self, BootConfig};
use crate::arch::aarch64::layout::{self, LayoutError};
use crate::devices::legacy::{self, SerialDevice};
use crate::hv::hvf::IPA_BITS;
use crate::hv::{BootRegs, Vm};

/// What can go wrong laying out and booting the arm64 machine.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
}

/// How many virtio-mmio devices fit, and what limits them (for the error message).
pub const MAX_VIRTIO_DEVICES: usize = layout::MAX_VIRTIO_DEVICES as usize;
pub const VIRTIO_LIMIT: &str = "interrupt layout";
/// Size of each virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = layout::VIRTIO_MMIO_SIZE;

pub fn check_cpus(cpus: u8) -> Result<(), ArchError> {
    Ok(layout::check_cpus(cpus)?)
}

pub fn ram_ranges(mem_size: u64) -> Result<Vec<(GuestAddress, usize)>, ArchError> {
    Ok(vec![layout::ram_range(mem_size, IPA_BITS)?])
}

/// Nothing is loaded before the devices exist: `boot::prepare` places kernel, initrd and
/// device tree together once the device count is known.
pub struct Loaded;

pub fn load(_mem: &GuestMemoryMmap, _cfg: &VmConfig, _mem_size: u64) -> Result<Loaded, ArchError> {
    Ok(Loaded)
}

/// The UART on the MMIO bus.
pub fn add_legacy(
    vm: &dyn Vm,
    buses: &mut Buses,
    out: legacy::SerialOut,
    _exit: &Arc<ExitSignal>,
) -> Result<Arc<Mutex<SerialDevice>>, BuiltinError> {
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        vm.irq_line(layout::UART_SPI)?,
        out,
    )));
    buses
        .mmio
        .insert(layout::UART_BASE, legacy::COM_LEN, serial.clone())?;
    Ok(serial)
}

/// MMIO base and interrupt line (SPI) of virtio device `i`.
pub fn virtio_slot(i: usize) -> Result<(u64, u32), ArchError> {
    Ok(layout::virtio_slot(i)?)
}

/// Loads kernel and initrd and writes the device tree describing the UART and the
/// `virtio.len()` virtio devices; returns the boot vCPU's registers.
pub fn boot_regs(
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    mem_size: u64,
    _loaded: Loaded,
    virtio: &[(u64, u32)],
) -> Result<BootRegs, ArchError> {
    let regs = boot::prepare(
        mem,
        &BootConfig {
            kernel: &cfg.kernel,
            initrd: cfg.initrd.as_deref(),
            cmdline: &cfg.cmdline,
            cpus: cfg.cpus,
            mem_size,
            uart: true,
            virtio_devices: virtio.len(),
        },
    )?;
    Ok(BootRegs::Aarch64(regs))
}
