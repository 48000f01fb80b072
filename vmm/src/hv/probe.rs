//! The one hypervisor probe: can this host's hypervisor boot an unmodified Linux guest?
//!
//! Every caller asks here — the qemu engine (KVM or TCG), vmctl's engine choice (builtin or
//! qemu), the KVM backend's start-up note and the tests — so the answer and its wording are
//! the same everywhere.

use std::path::Path;

/// What the host offers for running a Linux guest with hardware virtualization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHypervisor {
    /// A KVM (hardware, or nested under another hypervisor) that boots unmodified kernels;
    /// `nested` tells whether it lets its guests have a KVM of their own.
    Kvm { nested: bool },
    /// `/dev/kvm` is PVM (`kvm_pvm`): small freestanding guests run, Linux does not (its
    /// kernel mode is emulated instruction by instruction).
    Pvm,
    /// Hypervisor.framework (macOS) or Windows Hypervisor Platform.
    Platform(&'static str),
    /// Nothing usable, and why (missing device, no permission).
    Unusable(String),
}

impl HostHypervisor {
    /// Whether an unmodified Linux kernel can boot on it (the builtin engine, QEMU `-accel kvm`).
    pub fn boots_linux(&self) -> bool {
        matches!(
            self,
            HostHypervisor::Kvm { .. } | HostHypervisor::Platform(_)
        )
    }

    /// One phrase for users: what was found.
    pub fn describe(&self) -> String {
        match self {
            HostHypervisor::Kvm { nested: true } => "KVM with nested virtualization".into(),
            HostHypervisor::Kvm { nested: false } => "KVM".into(),
            HostHypervisor::Pvm => {
                "/dev/kvm is PVM (kvm_pvm), which cannot boot an unmodified Linux kernel".into()
            }
            HostHypervisor::Platform(name) => (*name).into(),
            HostHypervisor::Unusable(why) => why.clone(),
        }
    }
}

/// Probes this host.
pub fn probe() -> HostHypervisor {
    #[cfg(target_os = "macos")]
    {
        HostHypervisor::Platform("Hypervisor.framework")
    }
    #[cfg(windows)]
    {
        HostHypervisor::Platform("Windows Hypervisor Platform")
    }
    #[cfg(not(any(target_os = "macos", windows)))]
    {
        probe_in(Path::new("/"))
    }
}

/// Probes a Linux host whose `/dev` and `/sys` are under `root` (normally `/`; tests use a
/// prepared tree).
pub fn probe_in(root: &Path) -> HostHypervisor {
    let kvm = root.join("dev/kvm");
    if !kvm.exists() {
        return HostHypervisor::Unusable(
            "no /dev/kvm (virtualization off in the firmware, or kvm_intel/kvm_amd not loaded)"
                .into(),
        );
    }
    if root.join("sys/module/kvm_pvm").exists() {
        return HostHypervisor::Pvm;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&kvm)
    {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (add your user to the kvm group: sudo usermod -aG kvm $USER, then log in again)"
        } else {
            ""
        };
        return HostHypervisor::Unusable(format!("cannot open /dev/kvm: {e}{hint}"));
    }
    let nested = ["kvm_amd", "kvm_intel"].iter().any(|m| {
        std::fs::read_to_string(root.join(format!("sys/module/{m}/parameters/nested")))
            .is_ok_and(|v| matches!(v.trim(), "1" | "Y" | "y"))
    });
    HostHypervisor::Kvm { nested }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for (path, content) in files {
            let p = d.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, content).expect("write");
        }
        d
    }

    #[test]
    fn test_probe_without_kvm_device_is_unusable() {
        let d = tree(&[]);
        let p = probe_in(d.path());
        assert!(matches!(&p, HostHypervisor::Unusable(w) if w.contains("no /dev/kvm")));
        assert!(!p.boots_linux());
    }

    #[test]
    fn test_probe_pvm_module_cannot_boot_linux() {
        let d = tree(&[("dev/kvm", ""), ("sys/module/kvm_pvm/refcnt", "1")]);
        let p = probe_in(d.path());
        assert_eq!(p, HostHypervisor::Pvm);
        assert!(!p.boots_linux());
        assert!(p.describe().contains("PVM"));
    }

    #[test]
    fn test_probe_kvm_reports_nesting() {
        let d = tree(&[
            ("dev/kvm", ""),
            ("sys/module/kvm_amd/parameters/nested", "1\n"),
        ]);
        assert_eq!(probe_in(d.path()), HostHypervisor::Kvm { nested: true });
        let d = tree(&[
            ("dev/kvm", ""),
            ("sys/module/kvm_intel/parameters/nested", "N\n"),
        ]);
        let p = probe_in(d.path());
        assert_eq!(p, HostHypervisor::Kvm { nested: false });
        assert!(p.boots_linux());
    }

    #[test]
    fn test_probe_this_host_agrees_with_pvm_module() {
        let p = probe();
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(p, HostHypervisor::Pvm);
        } else {
            assert_ne!(p, HostHypervisor::Pvm);
        }
    }
}
