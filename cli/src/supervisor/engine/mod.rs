//! The one engine abstraction: what runs the VM, behind [`Engine`], with a typed end
//! ([`EngineExit`]). `builtin` runs our VMM (`vmm`, with every device in its process);
//! `qemu` runs QEMU with the device backends as separate processes. The supervisor describes
//! the guest once ([`GuestSpec`]) and never looks at which engine runs it.

mod builtin;
mod qemu;

use std::path::{Path, PathBuf};

use vmm::hv::probe::{self, HostHypervisor};

use crate::config::EngineChoice;
use crate::instance::Instance;

/// The guest's vsock CID (the first one a guest may use).
pub const GUEST_CID: u32 = 3;

/// Which engine runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Builtin,
    Qemu,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Builtin => "builtin",
            EngineKind::Qemu => "qemu",
        }
    }
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineExit {
    PowerOff,
    /// The guest rebooted.
    Reset,
    /// The guest kernel panicked.
    Panic,
    /// The engine or the vCPU failed (the cause).
    Failed(String),
}

/// A host folder shared into the guest with virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub host: PathBuf,
    pub guest: PathBuf,
    pub read_only: bool,
}

/// The guest, whichever engine runs it.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub data_disk: PathBuf,
    pub memory_mib: u64,
    pub cpus: u32,
    /// Give the guest a KVM of its own.
    pub nested: bool,
    pub shares: Vec<Share>,
    /// The agent's settings on the kernel command line.
    pub agent: guest_agent::cmdline::Config,
    /// Also forward host 127.0.0.1:PORT to the agent's Docker TCP bridge (a benchmark knob).
    pub docker_tcp: Option<(u16, u16)>,
}

/// A running VM.
pub trait Engine: Send {
    /// What runs it, for `vmctl status` ("qemu on TCG", "builtin on KVM").
    fn describe(&self) -> String;
    /// `Some` once the VM has ended.
    fn try_exit(&mut self) -> Option<EngineExit>;
    /// Ends the VM now.
    fn kill(&mut self);
}

/// Which engine to use, and why (one sentence for the user).
pub fn choose(choice: EngineChoice) -> anyhow::Result<(EngineKind, String)> {
    choose_for(choice, &probe::probe())
}

fn choose_for(choice: EngineChoice, host: &HostHypervisor) -> anyhow::Result<(EngineKind, String)> {
    match choice {
        EngineChoice::Qemu => Ok((EngineKind::Qemu, "requested".into())),
        EngineChoice::Builtin if host.boots_linux() => {
            Ok((EngineKind::Builtin, format!("requested; {}", host.describe())))
        }
        EngineChoice::Builtin => anyhow::bail!(
            "--engine builtin needs a hypervisor that boots Linux, and here {}; use --engine qemu (or auto)",
            host.describe()
        ),
        EngineChoice::Auto if host.boots_linux() && cfg!(target_os = "linux") => {
            Ok((EngineKind::Builtin, host.describe()))
        }
        EngineChoice::Auto => Ok((EngineKind::Qemu, host.describe())),
    }
}

/// Starts the VM on `kind`. Logs go to the instance's log directory; the guest's hybrid-vsock
/// socket is the instance's `vsock.sock` whichever engine runs it.
pub fn start(
    kind: EngineKind,
    inst: &Instance,
    spec: &GuestSpec,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Box<dyn Engine>> {
    match kind {
        EngineKind::Builtin => Ok(Box::new(builtin::BuiltinEngine::start(
            inst, spec, progress,
        )?)),
        EngineKind::Qemu => Ok(Box::new(qemu::QemuEngine::start(inst, spec, progress)?)),
    }
}

/// The kernel command line both engines boot with: the root image, the console, DHCP from
/// usernet, and the agent's words.
fn kernel_cmdline(spec: &GuestSpec, engine_words: &[&str]) -> anyhow::Result<String> {
    let mut words: Vec<String> = vmm::engine::qemu::args::GUEST_KERNEL_WORDS
        .iter()
        .map(|s| s.to_string())
        .collect();
    // The kernel's IP autoconfiguration does DHCP against usernet.
    words.push("ip=dhcp".into());
    words.extend(engine_words.iter().map(|s| s.to_string()));
    words.extend(spec.agent.to_words()?);
    Ok(words.join(" "))
}

/// Whether the console's last words were a kernel panic.
fn console_says_panic(console: &Path) -> bool {
    let text = crate::instance::read_tail(console, 16384);
    String::from_utf8_lossy(&text).contains("Kernel panic - not syncing")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The qemu engine names the data disk with vmm's serial and passes no `vmctl.data`
    /// word: that only works while it is the agent's default.
    #[test]
    fn test_qemu_data_disk_serial_is_the_agents_default() {
        assert_eq!(
            vmm::engine::qemu::DATA_DISK_SERIAL,
            guest_agent::cmdline::Config::default().data_serial
        );
    }

    #[test]
    fn test_auto_picks_builtin_only_where_kvm_boots_linux() {
        let kvm = HostHypervisor::Kvm { nested: false };
        let (k, why) = choose_for(EngineChoice::Auto, &kvm).expect("choice");
        assert_eq!((k, why.as_str()), (EngineKind::Builtin, "KVM"));
        let (k, why) = choose_for(EngineChoice::Auto, &HostHypervisor::Pvm).expect("choice");
        assert_eq!(k, EngineKind::Qemu);
        assert!(why.contains("PVM"), "{why}");
        assert!(choose_for(EngineChoice::Builtin, &HostHypervisor::Pvm).is_err());
        let (k, _) = choose_for(EngineChoice::Qemu, &kvm).expect("choice");
        assert_eq!(k, EngineKind::Qemu);
    }

    #[test]
    fn test_kernel_cmdline_carries_agent_words_once() {
        let spec = GuestSpec {
            kernel: "/k".into(),
            rootfs: "/r".into(),
            data_disk: "/d".into(),
            memory_mib: 512,
            cpus: 1,
            nested: false,
            shares: Vec::new(),
            agent: guest_agent::cmdline::Config {
                hostname: "box".into(),
                shares: vec![("home".into(), "/home/u".into())],
                ..Default::default()
            },
            docker_tcp: None,
        };
        let c = kernel_cmdline(&spec, &["reboot=k"]).expect("cmdline");
        let parsed = guest_agent::cmdline::Config::parse(&c);
        assert_eq!(parsed.hostname, "box");
        assert_eq!(parsed.shares, spec.agent.shares);
        assert_eq!(c.matches("vmctl.share=").count(), 1);
        assert!(c.contains(" reboot=k "), "{c}");
    }
}
