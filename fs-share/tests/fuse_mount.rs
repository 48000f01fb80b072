//! `fs-share mount` through the real /dev/fuse: basic I/O, read-only, unmount behaviour and
//! the pjdfstest suite compared case by case with the native filesystem.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::FuseMount;

fn can_mount() -> bool {
    if !common::is_root() {
        common::skip("FUSE mounts with allow_other need root");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        common::skip("no /dev/fuse");
        return false;
    }
    true
}

#[test]
fn test_mount_roundtrip_and_exit_on_unmount() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let share = tmp.path().join("share");
    fs::create_dir(&share).expect("mkdir");
    fs::write(share.join("host.txt"), b"from host").expect("write");
    let mnt = tmp.path().join("mnt");
    let m = FuseMount::start(&share, &mnt, &["--cache", "none"]);

    assert_eq!(fs::read(mnt.join("host.txt")).expect("read"), b"from host");
    fs::create_dir_all(mnt.join("a/b/c")).expect("mkdir -p");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(mnt.join("a/b/c/big"), &big).expect("write big");
    assert_eq!(
        fs::read(share.join("a/b/c/big")).expect("host sees it"),
        big
    );
    fs::rename(mnt.join("a/b/c/big"), mnt.join("a/moved")).expect("rename");
    assert_eq!(
        fs::read(mnt.join("a/moved")).expect("read moved").len(),
        big.len()
    );
    std::os::unix::fs::symlink("../outside", mnt.join("link")).expect("symlink");
    assert_eq!(
        fs::read_link(share.join("link")).expect("readlink"),
        Path::new("../outside")
    );
    // A host change is visible at once with --cache none.
    fs::write(share.join("host.txt"), b"changed").expect("host write");
    assert_eq!(fs::read(mnt.join("host.txt")).expect("read"), b"changed");
    let mut names: Vec<_> = fs::read_dir(&mnt)
        .expect("readdir")
        .map(|e| e.expect("e").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, ["a", "host.txt", "link"]);
    let st = m.unmount_and_wait();
    assert!(
        st.success(),
        "fs-share mount must exit cleanly on unmount: {st}"
    );
}

#[test]
fn test_mount_readonly_refuses_writes() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let share = tmp.path().join("share");
    fs::create_dir(&share).expect("mkdir");
    fs::write(share.join("f"), b"keep").expect("write");
    let mnt = tmp.path().join("mnt");
    let _m = FuseMount::start(&share, &mnt, &["--readonly"]);
    assert_eq!(fs::read(mnt.join("f")).expect("read"), b"keep");
    for r in [
        fs::write(mnt.join("f"), b"x"),
        fs::write(mnt.join("new"), b"x"),
        fs::create_dir(mnt.join("d")),
        fs::remove_file(mnt.join("f")),
        fs::rename(mnt.join("f"), mnt.join("g")),
    ] {
        let e = r.expect_err("write on a read-only share");
        assert!(
            e.raw_os_error() == Some(libc::EROFS) || e.kind() == ErrorKind::ReadOnlyFilesystem,
            "{e}"
        );
    }
    assert_eq!(fs::read(share.join("f")).expect("read"), b"keep");
}

#[test]
fn test_mount_host_change_visible_within_auto_cache_timeout() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let share = tmp.path().join("share");
    fs::create_dir(&share).expect("mkdir");
    fs::write(share.join("f"), b"v1").expect("write");
    let mnt = tmp.path().join("mnt");
    let _m = FuseMount::start(&share, &mnt, &[]);
    assert_eq!(fs::read(mnt.join("f")).expect("read"), b"v1");
    fs::write(share.join("f"), b"version2").expect("host write");
    fs::write(share.join("new"), b"n").expect("host create");
    let t0 = Instant::now();
    loop {
        let ok = fs::read(mnt.join("f")).ok().as_deref() == Some(&b"version2"[..])
            && mnt.join("new").exists();
        if ok {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "host change not visible after 3 s (auto = 1 s)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("host change visible after {:?}", t0.elapsed());
}

/// pjdfstest on native ext4 and on the FUSE mount (same backing filesystem, same config):
/// no case that passes natively may fail on the share. Runs with the trusted-guest POSIX
/// profile (identity ownership, setuid and device nodes allowed) because pjdfstest chowns to
/// other users and creates device nodes; the default profile refuses those on purpose
/// (see tests/confinement.rs).
#[test]
fn test_mount_pjdfstest_matches_native() {
    if !can_mount() {
        return;
    }
    let bin = match common::pjdfstest() {
        Ok(b) => b,
        Err(e) => {
            common::skip(&e);
            return;
        }
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = tmp.path().join("pjdfstest.toml");
    fs::write(&cfg, common::PJDFSTEST_CONFIG).expect("config");
    let native = tmp.path().join("native");
    let share = tmp.path().join("share");
    for d in [&native, &share] {
        fs::create_dir(d).expect("mkdir");
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let native_res = common::run_pjdfstest(&bin, &cfg, &native);
    let mnt = tmp.path().join("mnt");
    let m = FuseMount::start(
        &share,
        &mnt,
        &[
            "--owner-map",
            "identity",
            "--allow-setuid",
            "--allow-devices",
        ],
    );
    let share_res = common::run_pjdfstest(&bin, &cfg, &mnt);
    drop(m);
    let count = |r: &std::collections::BTreeMap<String, String>, k: &str| {
        r.values().filter(|v| *v == k).count()
    };
    eprintln!(
        "pjdfstest native: {} ok, {} failed, {} skipped; fs-share: {} ok, {} failed, {} skipped",
        count(&native_res, "ok"),
        count(&native_res, "FAILED"),
        count(&native_res, "skipped"),
        count(&share_res, "ok"),
        count(&share_res, "FAILED"),
        count(&share_res, "skipped"),
    );
    assert!(
        native_res.len() > 300,
        "pjdfstest did not run natively ({} cases)",
        native_res.len()
    );
    let mut regressions = Vec::new();
    for (name, res) in &native_res {
        let on_share = share_res.get(name).map(String::as_str).unwrap_or("missing");
        if res == "ok" && on_share != "ok" {
            eprintln!("  {name}: native ok, fs-share {on_share}");
            // Skipped (not failed) on FUSE because glibc's pathconf(_PC_LINK_MAX) does not
            // know FUSE's f_type; the suite cannot run the case, nothing fails.
            if name == "link::link_count_max" && on_share == "skipped" {
                continue;
            }
            regressions.push(format!("{name} ({on_share})"));
        }
    }
    assert!(
        regressions.is_empty(),
        "cases passing natively but not on fs-share: {regressions:?}"
    );
}

/// Through the real kernel FUSE client: a root writer has CAP_FSETID, so the client sends no
/// kill-priv flag with its WRITE, and before the server-side rule a root server kept the
/// setuid/setgid bits of a host binary the writer had just rewritten.
#[test]
fn test_mount_root_write_to_setuid_file_clears_the_bits() {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let share = tmp.path().join("share");
    fs::create_dir(&share).expect("mkdir");
    let prog = share.join("prog");
    fs::write(&prog, b"#!/bin/sh\n").expect("write");
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o6755)).expect("chmod");
    let mnt = tmp.path().join("mnt");
    let m = FuseMount::start(&share, &mnt, &["--cache", "none"]);
    let mode = |p: &Path| fs::metadata(p).expect("stat").mode() & 0o7777;
    assert_eq!(
        mode(&mnt.join("prog")),
        0o6755,
        "bits visible through the mount"
    );
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("prog"))
        .expect("open for append");
    f.write_all(b"echo pwned\n").expect("write");
    drop(f);
    assert_eq!(mode(&prog), 0o755, "the host file kept setuid/setgid");
    assert!(fs::read(&prog).expect("read").ends_with(b"echo pwned\n"));
    let st = m.unmount_and_wait();
    assert!(st.success(), "{st}");
}
