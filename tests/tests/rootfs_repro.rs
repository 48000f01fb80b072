//! The root image packing step is reproducible: the same tree packed twice, with
//! different file mtimes and creation order, gives byte-identical squashfs images.

use std::time::Duration;

use vmctl_tests::{have, skip};

#[test]
fn test_squashfs_packing_is_byte_identical() {
    if !have("mksquashfs") {
        skip("mksquashfs is not installed (Debian package squashfs-tools)");
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
        root
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
    assert!(!da.is_empty());
    assert!(da == db, "same tree, different bytes");
    vmctl::image::rootfs::squash(&a, &ia, 1_600_000_000, &quiet).expect("squash a again");
    assert!(
        std::fs::read(&ia).expect("read") != db,
        "the epoch must be part of the image"
    );
}
