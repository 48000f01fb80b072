//! The root image packing step is reproducible: two trees with the same content, made with
//! different file mtimes and in a different order, tarred as mmdebstrap tars (sorted by
//! name, numeric owners), give byte-identical squashfs images, and the epoch is part of it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmctl_tests::{have, skip};

fn tar(dir: &Path, out: &Path) {
    let ok = Command::new("tar")
        .args([
            "--sort=name",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .expect("run tar")
        .success();
    assert!(ok, "tar failed");
}

#[test]
fn test_squashfs_packing_is_byte_identical() {
    if !have("tar2sqfs") {
        skip("tar2sqfs is not installed (Debian package squashfs-tools-ng)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mk = |name: &str, order: &[&str]| {
        let root = dir.path().join(name);
        for f in order {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, format!("content of {f}\n").repeat(100)).expect("write");
            std::thread::sleep(Duration::from_millis(15));
        }
        let t = dir.path().join(format!("{name}.tar"));
        tar(&root, &t);
        t
    };
    let a = mk("a", &["etc/x", "usr/bin/y", "var/z"]);
    let b = mk("b", &["var/z", "usr/bin/y", "etc/x"]);
    let (ia, ib) = (dir.path().join("a.sqfs"), dir.path().join("b.sqfs"));
    let quiet = |_: &str| {};
    vmctl::image::rootfs::squash(&a, &ia, 1_700_000_000, &quiet).expect("squash a");
    vmctl::image::rootfs::squash(&b, &ib, 1_700_000_000, &quiet).expect("squash b");
    let (da, db) = (
        std::fs::read(&ia).expect("read a"),
        std::fs::read(&ib).expect("read b"),
    );
    // The image holds the tree: listed back with squashfs-tools-ng's sqfs2tar.
    let listing = Command::new("sh")
        .arg("-c")
        .arg("sqfs2tar \"$0\" | tar -t")
        .arg(&ia)
        .output()
        .expect("sqfs2tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in ["etc/x", "usr/bin/y", "var/z"] {
        assert!(
            listing.contains(f),
            "{f} missing from the image:\n{listing}"
        );
    }
    assert!(da == db, "same tree, different bytes");
    vmctl::image::rootfs::squash(&a, &ia, 1_600_000_000, &quiet).expect("squash a again");
    assert!(
        std::fs::read(&ia).expect("read") != db,
        "the epoch must be part of the image"
    );
}
