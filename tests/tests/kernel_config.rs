//! The built guest kernel's .config has every option dockerd needs (moby's
//! check-config.sh list, kernel-config/docker-required.txt), and the check really fails,
//! naming each option, when one is missing. The kernel starts from allnoconfig, so an
//! option of the fragments whose dependencies are unmet would silently vanish: every
//! explicit fragment line must be in the built .config.

use vmctl::image::kernel;
use vmctl_tests::kernel_or_skip;

#[test]
fn test_kernel_config_has_every_docker_option() {
    let Some(k) = kernel_or_skip() else { return };
    kernel::check_config(&k.config).expect("the built kernel passes the Docker config check");
}

/// Every explicit line of the fragments that the built `.config` lacks ("frag: line").
fn lost_fragment_lines(fragments: &[(&str, String)], built: &str) -> (usize, Vec<String>) {
    let built: std::collections::HashSet<&str> = built.lines().collect();
    let mut lost = Vec::new();
    let mut checked = 0;
    for (frag, text) in fragments {
        for line in text.lines() {
            let off = line
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
                .filter(|k| k.starts_with("CONFIG_"));
            if !line.starts_with("CONFIG_") && off.is_none() {
                continue;
            }
            checked += 1;
            // "# CONFIG_X is not set" may also be absent when X's menu is off.
            let kept = match off {
                Some(key) => !built.iter().any(|l| l.starts_with(&format!("{key}="))),
                None => built.contains(line),
            };
            if !kept {
                lost.push(format!("{frag}: {line}"));
            }
        }
    }
    (checked, lost)
}

#[test]
fn test_kernel_config_keeps_every_fragment_option() {
    let Some(k) = kernel_or_skip() else { return };
    let built = std::fs::read_to_string(&k.config).expect("read .config");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-config");
    let fragments: Vec<(&str, String)> = [
        "common/core.config",
        "common/base.config",
        "x86_64/guest.config",
    ]
    .into_iter()
    .map(|f| {
        (
            f,
            std::fs::read_to_string(dir.join(f)).expect("read fragment"),
        )
    })
    .collect();
    let (checked, lost) = lost_fragment_lines(&fragments, &built);
    assert!(checked > 150, "only {checked} fragment lines found");
    assert!(
        lost.is_empty(),
        "fragment options the build dropped: {lost:#?}"
    );
    // The check sees a dropped option and one that is on although asked off.
    let broken = built
        .replace("CONFIG_VIRTIO_FS=y\n", "")
        .replace("# CONFIG_CPU_FREQ is not set", "CONFIG_CPU_FREQ=y");
    let (_, lost) = lost_fragment_lines(&fragments, &broken);
    assert_eq!(
        lost,
        [
            "common/base.config: CONFIG_VIRTIO_FS=y",
            "x86_64/guest.config: # CONFIG_CPU_FREQ is not set"
        ],
        "the fragment check misses a dropped option"
    );
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
