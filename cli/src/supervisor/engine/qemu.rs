//! The qemu engine: QEMU plus the device backends as processes of their own (usernet over
//! `-netdev stream`, the vsock backend and one fs-share per share over vhost-user).

use anyhow::Context;
use vmm::engine::qemu::{Net, QemuConfig, QemuVm};

use super::{console_says_panic, kernel_cmdline, Engine, EngineExit, GuestSpec, GUEST_CID};
use crate::instance::Instance;
use crate::supervisor::backends::{sibling_program, Backend};

pub struct QemuEngine {
    vm: QemuVm,
    describe: String,
    console: std::path::PathBuf,
    backends: Vec<Backend>,
}

impl QemuEngine {
    pub fn start(
        inst: &Instance,
        spec: &GuestSpec,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<Self> {
        let mut backends = Vec::new();
        progress("starting usernet");
        let net_sock = inst.dir.join("net.sock");
        let mut net_args = vec![
            "stream".to_string(),
            "--socket".into(),
            net_sock.display().to_string(),
        ];
        if let Some((host, guest)) = spec.docker_tcp {
            net_args.push("--forward".into());
            net_args.push(format!("tcp:127.0.0.1:{host}:{guest}"));
        }
        backends.push(Backend::start(
            "usernet",
            &sibling_program("usernet")?,
            &net_args,
            &inst.log("usernet"),
            &net_sock,
        )?);

        progress("starting the vsock backend");
        let vhost_vsock = inst.dir.join("vhost-vsock.sock");
        backends.push(Backend::start(
            "vsock",
            &sibling_program("vmm-vsock-backend")?,
            &[
                "--socket".into(),
                vhost_vsock.display().to_string(),
                "--uds-path".into(),
                inst.vsock_sock().display().to_string(),
                "--guest-cid".into(),
                GUEST_CID.to_string(),
            ],
            &inst.log("vsock"),
            &vhost_vsock,
        )?);

        let mut fs_shares = Vec::new();
        for share in &spec.shares {
            progress(&format!("sharing {}", share.host.display()));
            let sock = inst.dir.join(format!("fs-{}.sock", share.tag));
            let mut args = vec![
                "serve".to_string(),
                "--socket".into(),
                sock.display().to_string(),
                "--tag".into(),
                share.tag.clone(),
                "--shared-dir".into(),
                share.host.display().to_string(),
                // Host file events, relayed to the guest by `supervisor::host_events`.
                "--events-socket".into(),
                crate::supervisor::host_events::events_sock(inst, &share.tag)
                    .display()
                    .to_string(),
            ];
            if share.read_only {
                args.push("--readonly".into());
            }
            backends.push(Backend::start(
                &format!("fs-share {}", share.tag),
                &sibling_program("fs-share")?,
                &args,
                &inst.log(&format!("fs-{}", share.tag)),
                &sock,
            )?);
            fs_shares.push((share.tag.clone(), sock));
        }

        let console = inst.log("console");
        let mut qc = QemuConfig::new(spec.kernel.clone(), spec.rootfs.clone(), console.clone());
        qc.data_disk = Some(spec.data_disk.clone());
        qc.memory_mib = u32::try_from(spec.memory_mib).unwrap_or(u32::MAX);
        qc.cpus = spec.cpus;
        qc.nested = spec.nested;
        qc.net = Net::Stream { socket: net_sock };
        qc.vsock = Some((vhost_vsock, GUEST_CID));
        qc.fs_shares = fs_shares;
        qc.qmp_socket = Some(inst.dir.join("qmp.sock"));
        qc.cmdline = Some(kernel_cmdline(spec, &[]).context("kernel command line")?);
        // QEMU's own seccomp sandbox where it has one; VMCTL_SECCOMP=off leaves it off.
        qc.sandbox = std::env::var_os("VMCTL_SECCOMP").is_none_or(|v| v != "off")
            && vmm::engine::qemu::args::qemu_supports_sandbox(&qc.qemu);
        // Started as root: QEMU gives up root once its devices are open, like the backends.
        #[cfg(target_os = "linux")]
        {
            qc.run_as = run_as(&qc.qemu)?;
        }
        progress("booting the VM");
        let vm = QemuVm::start(&qc, None)?;
        let describe = format!("qemu on {}", vm.accel().accel.as_str().to_uppercase());
        Ok(QemuEngine {
            vm,
            describe,
            console,
            backends,
        })
    }
}

/// Whether the guest's last words on the console were a reboot (not a power-off).
fn console_says_reboot(console: &std::path::Path) -> bool {
    let tail = crate::instance::read_tail(console, 4096);
    let tail = String::from_utf8_lossy(&tail);
    match (
        tail.rfind("reboot: Restarting system"),
        tail.rfind("reboot: Power down"),
    ) {
        (Some(r), Some(p)) => r > p,
        (Some(_), None) => true,
        _ => false,
    }
}

impl Engine for QemuEngine {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    /// QEMU runs with `-no-reboot`, so any end of the guest ends the process; what kind of
    /// end it was is read from the guest's last console words (QEMU's exit status does not
    /// say).
    fn try_exit(&mut self) -> Option<EngineExit> {
        // A device backend that died takes the VM's disk/network/vsock with it: end the VM
        // and say which backend and how.
        for b in &mut self.backends {
            if let Some(st) = b.try_status() {
                let why = crate::supervisor::backends::describe_exit(st, &b.log);
                tracing::error!("the {} backend {why}", b.name);
                self.vm.kill();
                return Some(EngineExit::Failed(format!("the {} backend {why}", b.name)));
            }
        }
        let status = self.vm.try_exit()?;
        Some(if console_says_panic(&self.console) {
            EngineExit::Panic
        } else if console_says_reboot(&self.console) {
            EngineExit::Reset
        } else if status.success() {
            EngineExit::PowerOff
        } else {
            EngineExit::Failed(format!(
                "QEMU exited ({status}); see {}",
                self.console.with_extension("qemu.log").display()
            ))
        })
    }

    fn kill(&mut self) {
        self.vm.kill();
    }
}

/// The user QEMU becomes when vmctl runs as root (`None` for a user, who has nothing to
/// give up). A QEMU that cannot change its user is refused rather than left as root.
#[cfg(target_os = "linux")]
fn run_as(qemu: &std::path::Path) -> anyhow::Result<Option<vmm::engine::qemu::args::RunAs>> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let user = vmm::privileges::backend_user()?;
    let Some(option) = vmm::engine::qemu::args::qemu_run_as_option(qemu) else {
        anyhow::bail!(
            "{} cannot change its user (-runas/-run-with), and vmctl does not run QEMU as \
             root; run vmctl as an ordinary user, or use a QEMU that has -run-with",
            qemu.display()
        );
    };
    Ok(Some(vmm::engine::qemu::args::RunAs {
        user: user.name,
        option,
    }))
}
