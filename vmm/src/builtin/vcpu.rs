//! The vCPU loop: run the guest, dispatch its I/O exits to the buses, report its end.

use crate::devices::bus::Bus;
use crate::hv::{Vcpu, VcpuExit};
use crate::warn_ratelimited;

use super::{ExitSignal, VmExit};

pub(crate) struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

pub(crate) fn run_loop(mut vcpu: Box<dyn Vcpu>, buses: &Buses, exit: &ExitSignal) {
    loop {
        if exit.stopping() {
            return;
        }
        let crash = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !buses.pio.read(u64::from(port), data) {
                    tracing::debug!("read of unhandled port {port:#x}");
                    data.fill(0xff);
                }
                continue;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !buses.pio.write(u64::from(port), data) {
                    tracing::debug!("write to unhandled port {port:#x}");
                }
                continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !buses.mmio.read(addr, data) {
                    warn_ratelimited!("read of unmapped MMIO {addr:#x}");
                    data.fill(0xff);
                }
                continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !buses.mmio.write(addr, data) {
                    warn_ratelimited!("write to unmapped MMIO {addr:#x}");
                }
                continue;
            }
            Ok(VcpuExit::Halt) | Ok(VcpuExit::Interrupted) => continue,
            Ok(VcpuExit::Unhandled(what)) => {
                warn_ratelimited!("unhandled vCPU exit: {what}");
                continue;
            }
            Ok(VcpuExit::Reset) => {
                exit.set(Ok(VmExit::Reset));
                return;
            }
            Ok(VcpuExit::PowerOff) => {
                exit.set(Ok(VmExit::PowerOff));
                return;
            }
            Ok(VcpuExit::Crashed(reason)) => reason,
            Err(e) => format!("{e}"),
        };
        let report = vcpu.crash_report();
        exit.set(Err(format!("{crash} ({report})")));
        return;
    }
}
