//! The in-process virtio-fs device seen from the test guest on the real /dev/kvm: the guest
//! drives FUSE over the virtqueues (INIT, LOOKUP, OPEN, READ, CREATE, WRITE) against a
//! temporary shared folder, then hostile chains; the host checks the files on disk.

mod common;

use common::{guest_elf, require_kvm, run_seed, VmSpec};
use std::path::Path;

/// What the guest writes into `guest.txt` (mirrors the guest's `fs::GUEST_TEXT`).
const GUEST_TEXT: &[u8] = b"written-by-the-vmctl-test-guest";

/// A temp dir holding `share/` (with `hello.txt`, whose content is returned) and a
/// `secret.txt` outside the share.
fn make_share(dir: &Path) -> String {
    let share = dir.join("share");
    std::fs::create_dir(&share).expect("create share");
    let content = format!("hello-from-the-host-{:016x}", run_seed());
    std::fs::write(share.join("hello.txt"), &content).expect("write hello.txt");
    std::fs::write(dir.join("secret.txt"), b"outside").expect("write secret.txt");
    content
}

/// The test guest running `tests` with `--fs <fs>`.
fn spec(tests: &str, fs: &str) -> VmSpec {
    let mut spec = VmSpec::guest(&guest_elf(), tests);
    spec.extra = vec!["--fs".into(), fs.into()];
    spec
}

#[test]
fn test_fs_guest_reads_host_file_and_writes_back() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let content = make_share(dir.path());
    let share = dir.path().join("share");
    let run = spec("virtio,fs", &format!("hostshare,{}", share.display())).run();
    run.assert_guest_passed();
    let ids: Vec<String> = run
        .named("virtio.dev")
        .iter()
        .map(|l| l.get("id").to_string())
        .collect();
    assert_eq!(ids, ["4", "26"], "rng, then fs\n{}", run.dump());
    let cfg = run.ok("fs.config");
    assert_eq!(cfg.get("tag"), "hostshare", "{}", run.dump());
    assert_eq!(cfg.get("queues"), "1", "{}", run.dump());
    assert_eq!(run.ok("fs.init").get("major"), "7", "{}", run.dump());
    let lookup = run.ok("fs.lookup");
    assert_eq!(
        lookup.get("size"),
        content.len().to_string(),
        "{}",
        run.dump()
    );
    assert_eq!(run.ok("fs.read").get("data"), content, "{}", run.dump());
    run.ok("fs.write");
    let written = std::fs::read(share.join("guest.txt")).expect("guest.txt on the host");
    assert_eq!(written, GUEST_TEXT, "{}", run.dump());
}

#[test]
fn test_fs_readonly_share_create_erofs_nothing_written() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let content = make_share(dir.path());
    let share = dir.path().join("share");
    let mut spec = spec("fs", &format!("ro,{},ro", share.display()));
    spec.cmdline.push_str(" fs_ro=1");
    let run = spec.run();
    run.assert_guest_passed();
    assert_eq!(run.ok("fs.config").get("tag"), "ro", "{}", run.dump());
    assert_eq!(run.ok("fs.read").get("data"), content, "{}", run.dump());
    run.ok("fs.write");
    assert!(
        !share.join("guest.txt").exists(),
        "a read-only share was written\n{}",
        run.dump()
    );
}

#[test]
fn test_fs_hostile_chains_device_survives_and_share_stays_confined() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    make_share(dir.path());
    let share = dir.path().join("share");
    let run = spec("fs_hostile", &format!("h,{}", share.display())).run();
    run.assert_guest_passed();
    for name in [
        "fs.hostile.short",
        "fs.hostile.len",
        "fs.hostile.order",
        "fs.hostile.oob",
        "fs.hostile.beyond_ram",
        "fs.hostile.loop",
        "fs.hostile.dotdot",
        "fs.hostile.escape",
        "fs.hostile.opcode",
        "fs.hostile.after",
        "fs.reset",
    ] {
        run.ok(name);
    }
    // Nothing escaped the share: the folder above it holds what the test put there.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read temp dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["secret.txt", "share"], "{}", run.dump());
    assert_eq!(
        std::fs::read(dir.path().join("secret.txt")).expect("secret"),
        b"outside"
    );
}

#[test]
fn test_fs_bad_flag_refused_before_boot() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in [
        format!("{},{}", "t".repeat(37), dir.path().display()),
        format!("tag,{}", dir.path().join("missing").display()),
    ] {
        let run = spec("boot", &bad).run();
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(if bad.contains("missing") { 1 } else { 2 }),
            "{}",
            run.dump()
        );
        assert!(!run.serial.contains("BOOT"), "{}", run.dump());
    }
}
