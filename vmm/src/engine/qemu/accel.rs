//! KVM or TCG: use KVM only when it can run a Linux guest.

use std::path::Path;

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The chosen accelerator and why, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Decide from what `root` (normally `/`) shows: KVM when it boots Linux, else TCG.
pub fn choose_in(root: &Path) -> AccelChoice {
    let host = crate::hv::probe::probe_in(root);
    if host.boots_linux() {
        AccelChoice {
            accel: Accel::Kvm,
            reason: format!("{}: using KVM", host.describe()),
        }
    } else {
        AccelChoice {
            accel: Accel::Tcg,
            reason: format!("{}: using TCG (software emulation)", host.describe()),
        }
    }
}

/// Decide for this host.
pub fn choose() -> AccelChoice {
    choose_in(Path::new("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_choose_tcg_without_kvm_device() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = choose_in(d.path());
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("no /dev/kvm"), "{}", c.reason);
    }

    #[test]
    fn test_choose_tcg_on_pvm() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("dev")).expect("mkdir");
        std::fs::write(d.path().join("dev/kvm"), b"").expect("write");
        std::fs::create_dir_all(d.path().join("sys/module/kvm_pvm")).expect("mkdir");
        let c = choose_in(d.path());
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("PVM"), "{}", c.reason);
    }

    #[test]
    fn test_choose_matches_this_host() {
        let c = choose();
        let kvm = crate::hv::probe::probe().boots_linux();
        assert_eq!(c.accel == Accel::Kvm, kvm, "{}", c.reason);
    }
}
