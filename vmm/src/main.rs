//! `vmm`: run one VM on this machine's hypervisor with the builtin engine.
//!
//! Exit status: 0 when the guest resets or powers off; 1 when the VM cannot start (the cause
//! on one line); 2 when the guest crashes (with the vCPU state).

#[cfg(any(target_os = "linux", all(target_os = "macos", target_arch = "aarch64")))]
mod cli {
    use std::path::PathBuf;

    use clap::Parser;
    use vmm::builtin::{
        self, BuiltinError, DiskConfig, FsConfig, NetConfig, SerialConfig, VmConfig, VsockConfig,
    };
    use vmm::hv::HvError;

    /// Boot a Linux kernel (x86_64 ELF vmlinux or bzImage, arm64 Image) in a microVM.
    #[derive(Parser, Debug)]
    #[command(name = "vmm", version)]
    struct Args {
        /// Kernel image: an x86_64 ELF vmlinux or a bzImage; an arm64 `Image` on arm64.
        #[arg(long)]
        kernel: PathBuf,
        /// Initial ramdisk.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Kernel command line (virtio-mmio devices are appended to it).
        #[arg(long, default_value = builtin::DEFAULT_CMDLINE)]
        cmdline: String,
        /// Raw disk image, as PATH, then ,ro for read-only and ,serial=ID for the ID the guest
        /// reads; repeat for more disks (vda, vdb, …).
        #[arg(long = "disk", value_name = "PATH[,ro][,serial=ID]")]
        disks: Vec<DiskConfig>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 256)]
        mem: u64,
        /// Number of vCPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u8,
        /// Where COM1 goes: stdio, none, or a file path.
        #[arg(long, default_value = "stdio")]
        serial: SerialConfig,
        /// Add a virtio-console whose output is appended to this file.
        #[arg(long)]
        console: Option<PathBuf>,
        /// Leave out the virtio-rng device.
        #[arg(long)]
        no_rng: bool,
        /// Add a virtio-vsock device for guest CID (3 or more) with its host unix socket PATH
        /// (hybrid vsock: `CONNECT <port>` on PATH; guest connections to port P reach PATH_P).
        #[arg(long, value_name = "CID,PATH")]
        vsock: Option<VsockConfig>,
        /// Add a virtio-net device: `user` runs usernet's NAT in this process (DHCP, DNS, NAT
        /// to the host's network); `stream:PATH` connects to a QEMU `-netdev stream` unix socket
        /// (e.g. `usernet stream --socket PATH`).
        #[arg(long, value_name = "user|stream:PATH[,mac=52:54:00:12:34:56]")]
        net: Option<NetConfig>,
        /// Let the guest run a hypervisor of its own (the CPU's VMX/SVM, where the host KVM
        /// allows nesting).
        #[arg(long)]
        nested: bool,
        /// Write how the VM ended to this file as one JSON object (`vmm::builtin::ExitReport`),
        /// for a supervisor that runs `vmm` as a child process.
        #[arg(long, value_name = "PATH")]
        exit_report: Option<PathBuf>,
        /// Add a virtio-balloon device with free page reporting, so memory the guest frees
        /// is given back to the host.
        #[arg(long)]
        balloon: bool,
        /// Share a host folder with virtio-fs under TAG (the guest mounts it with
        /// `mount -t virtiofs TAG /mnt`); `,ro` makes it read-only. Repeat for more folders.
        #[arg(long = "fs", value_name = "TAG,DIR[,ro]")]
        fs: Vec<FsConfig>,
    }

    fn report(path: Option<&PathBuf>, r: &builtin::ExitReport) {
        let Some(path) = path else { return };
        let json = serde_json::to_string(r).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("vmm: cannot write the exit report {}: {e}", path.display());
        }
    }

    fn hint(e: &BuiltinError) -> Option<&'static str> {
        match e {
            BuiltinError::Hypervisor(HvError::Open { source, .. }) => match source.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    Some("add your user to the 'kvm' group (sudo usermod -aG kvm $USER) and log in again")
                }
                std::io::ErrorKind::NotFound => {
                    Some("enable virtualization in the firmware and load kvm_intel or kvm_amd, or use the qemu engine")
                }
                _ => None,
            },
            BuiltinError::Memory { .. } => Some("lower --mem"),
            _ => None,
        }
    }

    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(c) = src {
            let cs = c.to_string();
            if !s.contains(&cs) {
                s.push_str(": ");
                s.push_str(&cs);
            }
            src = c.source();
        }
        s
    }

    pub fn main() -> i32 {
        vmm::logging::init("warn,virtio_queue=off");
        let args = Args::parse();
        let cfg = VmConfig {
            kernel: args.kernel,
            initrd: args.initrd,
            cmdline: args.cmdline,
            disks: args.disks,
            mem_mib: args.mem,
            cpus: args.cpus,
            serial: args.serial,
            console: args.console,
            rng: !args.no_rng,
            vsock: args.vsock,
            net: args.net,
            nested: args.nested,
            balloon: args.balloon,
            fs: args.fs,
        };
        let exit_report = args.exit_report.as_ref();
        // Started as root: keep only what serving in-process virtio-fs shares needs (the
        // file capabilities; none without shares), in every set including the bounding set.
        // Capabilities are per thread, so this comes before any thread starts; the process
        // stays uid 0 so it still opens root's disks, sockets and /dev/kvm by ownership.
        #[cfg(target_os = "linux")]
        {
            let keep = if cfg.fs.is_empty() {
                Default::default()
            } else {
                vmm::privileges::file_server_capabilities(false, false)
            };
            if let Err(e) = vmm::privileges::keep_file_capabilities(&keep) {
                let detail = chain(&e);
                eprintln!("vmm: error: {detail}");
                report(exit_report, &builtin::ExitReport::Error { detail });
                return 1;
            }
        }
        // The VMM handles guest data from here on: no exec, ptrace, mounts, module loads...
        #[cfg(target_os = "linux")]
        if let Err(e) = vmm::seccomp::apply(vmm::seccomp::Profile::Device) {
            let detail = chain(&e);
            eprintln!("vmm: error: {detail}");
            report(exit_report, &builtin::ExitReport::Error { detail });
            return 1;
        }
        match builtin::run(&cfg) {
            Ok(how) => {
                tracing::info!("guest {how:?}");
                report(exit_report, &builtin::ExitReport::Guest { how });
                0
            }
            Err(BuiltinError::Crashed(detail)) => {
                eprintln!("vmm: guest crashed: {detail}");
                report(exit_report, &builtin::ExitReport::Crashed { detail });
                2
            }
            Err(e) => {
                let detail = match hint(&e) {
                    Some(h) => format!("{}; {h}", chain(&e)),
                    None => chain(&e),
                };
                eprintln!("vmm: error: {detail}");
                report(exit_report, &builtin::ExitReport::Error { detail });
                1
            }
        }
    }
}

#[cfg(any(target_os = "linux", all(target_os = "macos", target_arch = "aarch64")))]
fn main() {
    std::process::exit(cli::main());
}

#[cfg(not(any(target_os = "linux", all(target_os = "macos", target_arch = "aarch64"))))]
fn main() {
    eprintln!(
        "vmm: the builtin engine runs on Linux (KVM) and arm64 macOS (Hypervisor.framework); \
         on this host its virtio device model does not build (virtio-queue needs unix)"
    );
    std::process::exit(1);
}
