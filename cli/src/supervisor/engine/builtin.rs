//! The builtin engine: our VMM (`vmm`, a sibling program) runs the VM with every device in
//! its own process — virtio-blk for the root image and the data disk, virtio-net with
//! usernet's NAT in-process, virtio-vsock on the instance's hybrid socket, virtio-fs served
//! by fs-share in-process, a balloon with free page reporting — and writes how the VM ended
//! to an exit report (`vmm::builtin::ExitReport`).
//!
//! It runs as a process of its own rather than a thread of the supervisor so that a VMM
//! failure cannot take the supervisor (and with it the forwarded sockets) down, and so that
//! it can be sandboxed on its own.

use std::path::PathBuf;

use anyhow::Context;
use vmm::builtin::{ExitReport, VmExit};

use super::{kernel_cmdline, Engine, EngineExit, GuestSpec, GUEST_CID};
use crate::instance::Instance;
use crate::supervisor::backends::{sibling_program, Backend};

/// What the kernel needs on this machine: the i8042 reset line for reboots, and no PCI probe
/// (every device is virtio-mmio, announced on the command line by `vmm`).
const MACHINE_WORDS: &[&str] = &[
    "reboot=k",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.dumbkbd",
    "pci=off",
];

pub struct BuiltinEngine {
    process: Backend,
    report: PathBuf,
    log: PathBuf,
    describe: String,
}

impl BuiltinEngine {
    pub fn start(
        inst: &Instance,
        spec: &GuestSpec,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<Self> {
        // The machine has no ACPI power button or sleep register: the agent powers off by
        // resetting, and a reset after our stop request is the power-off.
        let mut spec = spec.clone();
        spec.agent.poweroff_by_reset = true;
        let cmdline = kernel_cmdline(&spec, MACHINE_WORDS).context("kernel command line")?;
        let report = inst.dir.join("vmm-exit.json");
        let _ = std::fs::remove_file(&report);
        let console = inst.log("console");
        std::fs::File::create(&console).with_context(|| format!("create {}", console.display()))?;
        let mut args: Vec<String> = vec![
            "--kernel".into(),
            spec.kernel.display().to_string(),
            "--cmdline".into(),
            cmdline,
            "--disk".into(),
            format!("{},ro", spec.rootfs.display()),
            "--disk".into(),
            format!(
                "{},serial={}",
                spec.data_disk.display(),
                spec.agent.data_serial
            ),
            "--mem".into(),
            spec.memory_mib.to_string(),
            "--cpus".into(),
            spec.cpus.to_string(),
            "--serial".into(),
            console.display().to_string(),
            "--net".into(),
            "user".into(),
            "--vsock".into(),
            format!("{GUEST_CID},{}", inst.vsock_sock().display()),
            "--exit-report".into(),
            report.display().to_string(),
            // Memory the guest frees (a container exiting) goes back to the host.
            "--balloon".into(),
        ];
        for share in &spec.shares {
            progress(&format!("sharing {}", share.host.display()));
            args.push("--fs".into());
            let mut v = format!("{},{}", share.tag, share.host.display());
            if share.read_only {
                v.push_str(",ro");
            }
            args.push(v);
        }
        if spec.nested {
            args.push("--nested".into());
        }
        if spec.docker_tcp.is_some() {
            tracing::warn!(
                "VMCTL_DOCKER_TCP_PORT is a qemu-engine knob; the builtin engine ignores it"
            );
        }
        progress("booting the VM");
        let log = inst.log("vmm");
        // The VMM binds the instance's vsock socket once the VM is built: that is when it is
        // up (or it failed, and its log says why).
        let process = Backend::start(
            "vmm",
            &sibling_program("vmm")?,
            &args,
            &log,
            &inst.vsock_sock(),
        )?;
        Ok(BuiltinEngine {
            process,
            report,
            log,
            describe: format!("builtin ({})", vmm::hv::probe::probe().describe()),
        })
    }
}

impl Engine for BuiltinEngine {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn try_exit(&mut self) -> Option<EngineExit> {
        let status = self.process.try_status()?;
        let report = std::fs::read_to_string(&self.report)
            .ok()
            .and_then(|s| serde_json::from_str::<ExitReport>(&s).ok());
        Some(match report {
            Some(ExitReport::Guest {
                how: VmExit::PowerOff,
            }) => EngineExit::PowerOff,
            Some(ExitReport::Guest { how: VmExit::Reset }) => EngineExit::Reset,
            Some(ExitReport::Guest { how: VmExit::Panic }) => EngineExit::Panic,
            Some(ExitReport::Crashed { detail }) => {
                EngineExit::Failed(format!("the guest crashed the vCPU: {detail}"))
            }
            Some(ExitReport::Error { detail }) => EngineExit::Failed(detail),
            None => EngineExit::Failed(format!(
                "vmm {} (no exit report)",
                crate::supervisor::backends::describe_exit(status, &self.log)
            )),
        })
    }

    fn kill(&mut self) {
        self.process.kill();
    }
}
