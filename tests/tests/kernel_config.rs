//! The built guest kernel's .config has every option dockerd needs (moby's
//! check-config.sh list, kernel-config/docker-required.txt), and the check really fails,
//! naming each option, when one is missing.

use vmctl::image::kernel;
use vmctl_tests::kernel_or_skip;

#[test]
fn test_kernel_config_has_every_docker_option() {
    let Some(k) = kernel_or_skip() else { return };
    kernel::check_config(&k.config).expect("the built kernel passes the Docker config check");
}

#[test]
fn test_kernel_config_check_names_missing_options() {
    let Some(k) = kernel_or_skip() else { return };
    let text = std::fs::read_to_string(&k.config).expect("read .config");
    let broken: String = text
        .lines()
        .filter(|l| *l != "CONFIG_VETH=y" && *l != "CONFIG_OVERLAY_FS=y")
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(
        broken.len(),
        text.len(),
        "the built config should have VETH and OVERLAY_FS"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("config");
    std::fs::write(&p, broken).expect("write");
    let err = kernel::check_config(&p)
        .expect_err("a config without VETH/OVERLAY_FS must fail")
        .to_string();
    assert!(err.contains("missing: CONFIG_VETH"), "{err}");
    assert!(err.contains("missing: CONFIG_OVERLAY_FS"), "{err}");
    assert!(err.contains("2 option(s) missing"), "{err}");
}
