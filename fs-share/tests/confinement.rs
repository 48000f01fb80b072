//! Confinement attack suite, driven at the `FileSystem` boundary: exactly the requests a
//! malicious guest can send (any node id, any name, any flags), against a real host folder.
//! Every test also checks that a sentinel outside the share is unchanged.
#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_share::filesystem::{Context, FileSystem, SetattrValid};
use fs_share::fuse_abi::CreateIn;
use fs_share::{OwnerMap, PassthroughFs, ShareConfig};

const ROOT: u64 = 1;

struct Fixture {
    _tmp: tempfile::TempDir,
    share: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let share = tmp.path().join("share");
        let outside = tmp.path().join("outside");
        fs::create_dir(&share).expect("share");
        fs::create_dir(&outside).expect("outside");
        fs::write(outside.join("secret"), b"top secret").expect("secret");
        fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o600))
            .expect("chmod");
        Fixture {
            _tmp: tmp,
            share,
            outside,
        }
    }

    fn fs(&self, f: impl FnOnce(&mut ShareConfig)) -> PassthroughFs {
        let mut cfg = ShareConfig::new(&self.share);
        f(&mut cfg);
        PassthroughFs::new(cfg).expect("open share")
    }

    /// The outside folder still holds exactly `secret`, unchanged.
    fn assert_outside_intact(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("secret")],
            "outside folder was modified"
        );
        let md = fs::metadata(self.outside.join("secret")).expect("stat");
        assert_eq!(md.mode() & 0o7777, 0o600, "outside file mode changed");
        assert_eq!(
            fs::read(self.outside.join("secret")).expect("read"),
            b"top secret"
        );
    }
}

fn ctx() -> Context {
    Context::default()
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn create_args(mode: u32) -> CreateIn {
    CreateIn {
        flags: (libc::O_RDWR) as u32,
        mode,
        umask: 0,
        fuse_flags: 0,
    }
}

#[test]
fn test_lookup_dotdot_and_paths_are_refused() {
    let fx = Fixture::new();
    let fs = fx.fs(|_| {});
    for name in [c"..", c".", c"../outside", c"/etc/passwd", c"a/b", c""] {
        let r = fs.lookup(&ctx(), ROOT, name);
        assert!(r.is_err(), "lookup {name:?} must fail");
    }
    fx.assert_outside_intact();
}

#[test]
fn test_symlinks_out_of_share_are_never_followed() {
    let fx = Fixture::new();
    std::os::unix::fs::symlink("../outside", fx.share.join("rel")).expect("symlink");
    std::os::unix::fs::symlink(&fx.outside, fx.share.join("abs")).expect("symlink");
    std::os::unix::fs::symlink(fx.outside.join("secret"), fx.share.join("file")).expect("symlink");
    let fs = fx.fs(|_| {});
    for link in [c"rel", c"abs", c"file"] {
        let e = fs
            .lookup(&ctx(), ROOT, link)
            .expect("lookup of the link itself");
        assert_eq!(
            e.attr.st_mode & libc::S_IFMT,
            libc::S_IFLNK,
            "{link:?} must stay a symlink"
        );
        // Walking through it, opening it, or changing it must not reach the target.
        assert!(
            fs.lookup(&ctx(), e.inode, c"secret").is_err(),
            "{link:?}/secret reachable"
        );
        assert!(fs.open(&ctx(), e.inode, libc::O_RDONLY as u32, 0).is_err());
        assert!(fs.opendir(&ctx(), e.inode, 0).is_err());
        assert!(fs
            .create(&ctx(), e.inode, c"pwned", create_args(0o644))
            .is_err());
        assert!(fs.mkdir(&ctx(), e.inode, c"pwned", 0o755, 0).is_err());
        let mut attr = e.attr;
        attr.st_mode = 0o777;
        attr.st_size = 0;
        let _ = fs.setattr(&ctx(), e.inode, attr, None, SetattrValid::MODE);
        let _ = fs.setattr(&ctx(), e.inode, attr, None, SetattrValid::SIZE);
        let _ = fs.setxattr(&ctx(), e.inode, c"user.x", b"1", 0);
        assert!(fs.readlink(&ctx(), e.inode).is_ok());
    }
    fx.assert_outside_intact();
}

#[test]
fn test_proc_magic_links_are_not_followed() {
    let fx = Fixture::new();
    std::os::unix::fs::symlink("/proc/self/root", fx.share.join("procroot")).expect("symlink");
    std::os::unix::fs::symlink("/proc/self/cwd", fx.share.join("proccwd")).expect("symlink");
    let fs = fx.fs(|_| {});
    for link in [c"procroot", c"proccwd"] {
        let e = fs.lookup(&ctx(), ROOT, link).expect("lookup");
        assert_eq!(e.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
        assert!(fs.lookup(&ctx(), e.inode, c"etc").is_err());
        assert!(fs.open(&ctx(), e.inode, libc::O_RDONLY as u32, 0).is_err());
    }
    fx.assert_outside_intact();
}

/// A host process swaps a directory for a symlink to the outside as fast as it can while
/// the "guest" walks, creates, opens and lists through it: nothing may land outside.
#[test]
fn test_symlink_swap_race_stays_inside() {
    let fx = Fixture::new();
    let d = fx.share.join("d");
    fs::create_dir(&d).expect("mkdir");
    fs::write(d.join("secret"), b"inside").expect("write");
    let link_tmp = fx.share.join("d.link");
    let dir_tmp = fx.share.join("d.dir");
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, d, outside) = (stop.clone(), d.clone(), fx.outside.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // d <-> symlink(outside), atomically via rename.
                let _ = fs::remove_file(&link_tmp);
                let _ = std::os::unix::fs::symlink(&outside, &link_tmp);
                let _ = fs::rename(&d, &dir_tmp);
                let _ = fs::rename(&link_tmp, &d);
                let _ = fs::remove_file(&d);
                let _ = fs::rename(&dir_tmp, &d);
                i += 1;
            }
            i
        })
    };
    let fs = fx.fs(|_| {});
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut attempts = 0u64;
    while Instant::now() < deadline {
        attempts += 1;
        let Ok(e) = fs.lookup(&ctx(), ROOT, c"d") else {
            continue;
        };
        if let Ok(s) = fs.lookup(&ctx(), e.inode, c"secret") {
            if let Ok((Some(h), _, _)) = fs.open(&ctx(), s.inode, libc::O_RDONLY as u32, 0) {
                let _ = fs.release(&ctx(), s.inode, 0, h, false, false, None);
            }
            fs.forget(&ctx(), s.inode, 1);
        }
        if let Ok((en, Some(h), _, _)) = fs.create(&ctx(), e.inode, c"new", create_args(0o644)) {
            let _ = fs.release(&ctx(), en.inode, 0, h, false, false, None);
            let _ = fs.unlink(&ctx(), e.inode, c"new");
            fs.forget(&ctx(), en.inode, 1);
        }
        if let Ok(m) = fs.mkdir(&ctx(), e.inode, c"sub", 0o755, 0) {
            let _ = fs.rmdir(&ctx(), e.inode, c"sub");
            fs.forget(&ctx(), m.inode, 1);
        }
        fs.forget(&ctx(), e.inode, 1);
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    eprintln!("race: {attempts} guest walks against {swaps} swaps");
    assert!(swaps > 10 && attempts > 10, "the race did not run");
    fx.assert_outside_intact();
}

#[test]
fn test_bogus_node_ids_and_handles_are_refused() {
    let fx = Fixture::new();
    fs::write(fx.share.join("a"), b"a").expect("write");
    fs::write(fx.share.join("b"), b"b").expect("write");
    let fs = fx.fs(|_| {});
    for id in [0, 2, 999, u64::MAX] {
        assert!(fs.getattr(&ctx(), id, None).is_err());
        assert!(fs.lookup(&ctx(), id, c"a").is_err());
        assert!(fs.link(&ctx(), id, ROOT, c"x").is_err());
    }
    let a = fs.lookup(&ctx(), ROOT, c"a").expect("a");
    let b = fs.lookup(&ctx(), ROOT, c"b").expect("b");
    let (h, _, _) = fs
        .open(&ctx(), a.inode, libc::O_RDONLY as u32, 0)
        .expect("open");
    let h = h.expect("handle");
    // A handle used with another inode, or a forged handle, is refused.
    assert_eq!(
        errno(
            fs.fsync(&ctx(), b.inode, false, h)
                .expect_err("cross-inode")
        ),
        libc::EBADF
    );
    assert_eq!(
        errno(
            fs.fsync(&ctx(), a.inode, false, h + 1000)
                .expect_err("forged")
        ),
        libc::EBADF
    );
    fs.release(&ctx(), a.inode, 0, h, false, false, None)
        .expect("release");
    fx.assert_outside_intact();
}

#[test]
fn test_device_nodes_are_refused_and_never_opened() {
    let fx = Fixture::new();
    let fs = fx.fs(|_| {});
    let e = fs.mknod(&ctx(), ROOT, c"sda", libc::S_IFBLK | 0o666, 0x0800, 0);
    assert_eq!(errno(e.expect_err("block device")), libc::EPERM);
    let e = fs.mknod(&ctx(), ROOT, c"mem", libc::S_IFCHR | 0o666, 0x0101, 0);
    assert_eq!(errno(e.expect_err("char device")), libc::EPERM);
    assert!(!fx.share.join("sda").exists() && !fx.share.join("mem").exists());
    // A fifo may be created but is never opened by the server (no hang, no host access).
    let f = fs
        .mknod(&ctx(), ROOT, c"fifo", libc::S_IFIFO | 0o666, 0, 0)
        .expect("fifo");
    assert_eq!(
        errno(
            fs.open(&ctx(), f.inode, libc::O_RDONLY as u32, 0)
                .expect_err("open fifo")
        ),
        libc::EACCES
    );
    if common::is_root() {
        // A device node the *host* put in the share is not opened either.
        let c = std::ffi::CString::new(fx.share.join("null").as_os_str().as_encoded_bytes())
            .expect("c");
        // SAFETY: NUL-terminated path; creates /dev/null's twin inside the temp share.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(rc, 0);
        let n = fs.lookup(&ctx(), ROOT, c"null").expect("lookup");
        assert_eq!(
            errno(
                fs.open(&ctx(), n.inode, libc::O_RDWR as u32, 0)
                    .expect_err("open dev")
            ),
            libc::EACCES
        );
    } else {
        common::skip("host-made device node case needs root (mknod)");
    }
    fx.assert_outside_intact();
}

#[test]
fn test_setuid_bits_and_file_caps_are_stripped() {
    let fx = Fixture::new();
    let fs = fx.fs(|_| {});
    let (e, h, _, _) = fs
        .create(&ctx(), ROOT, c"suid", create_args(libc::S_IFREG | 0o6755))
        .expect("create");
    fs.release(&ctx(), e.inode, 0, h.expect("h"), false, false, None)
        .expect("release");
    let mode = fs::metadata(fx.share.join("suid")).expect("stat").mode();
    assert_eq!(
        mode & 0o7777,
        0o755,
        "setuid/setgid must be stripped on create"
    );
    let mut attr = e.attr;
    attr.st_mode = 0o4755;
    fs.setattr(&ctx(), e.inode, attr, None, SetattrValid::MODE)
        .expect("chmod");
    assert_eq!(
        fs::metadata(fx.share.join("suid")).expect("stat").mode() & 0o7777,
        0o755
    );
    let r = fs.setxattr(&ctx(), e.inode, c"security.capability", &[1, 0, 0, 2], 0);
    assert_eq!(errno(r.expect_err("file caps")), libc::EPERM);
    let r = fs.setxattr(&ctx(), e.inode, c"trusted.overlay.opaque", b"y", 0);
    assert_eq!(errno(r.expect_err("trusted xattr")), libc::EPERM);
    // With allow_setuid (trusted guests), bits are kept.
    let fs2 = fx.fs(|c| c.allow_setuid = true);
    let e2 = fs2.lookup(&ctx(), ROOT, c"suid").expect("lookup");
    fs2.setattr(&ctx(), e2.inode, attr, None, SetattrValid::MODE)
        .expect("chmod");
    assert_eq!(
        fs::metadata(fx.share.join("suid")).expect("stat").mode() & 0o7777,
        0o4755
    );
    fx.assert_outside_intact();
}

#[test]
fn test_readonly_share_refuses_every_write() {
    let fx = Fixture::new();
    fs::write(fx.share.join("f"), b"data").expect("write");
    fs::create_dir(fx.share.join("d")).expect("mkdir");
    let fs = fx.fs(|c| c.readonly = true);
    let f = fs.lookup(&ctx(), ROOT, c"f").expect("lookup");
    let d = fs.lookup(&ctx(), ROOT, c"d").expect("lookup");
    let rofs = |r: std::io::Result<()>, what: &str| {
        assert_eq!(r.map_err(errno), Err(libc::EROFS), "{what}")
    };
    rofs(
        fs.create(&ctx(), ROOT, c"n", create_args(0o644)).map(drop),
        "create",
    );
    rofs(fs.mkdir(&ctx(), ROOT, c"n", 0o755, 0).map(drop), "mkdir");
    rofs(
        fs.mknod(&ctx(), ROOT, c"n", libc::S_IFIFO | 0o644, 0, 0)
            .map(drop),
        "mknod",
    );
    rofs(fs.symlink(&ctx(), c"x", ROOT, c"n").map(drop), "symlink");
    rofs(fs.link(&ctx(), f.inode, ROOT, c"n").map(drop), "link");
    rofs(fs.unlink(&ctx(), ROOT, c"f"), "unlink");
    rofs(fs.rmdir(&ctx(), ROOT, c"d"), "rmdir");
    rofs(fs.rename(&ctx(), ROOT, c"f", ROOT, c"g", 0), "rename");
    rofs(
        fs.setattr(&ctx(), f.inode, f.attr, None, SetattrValid::SIZE)
            .map(drop),
        "truncate",
    );
    rofs(
        fs.setattr(&ctx(), d.inode, d.attr, None, SetattrValid::MODE)
            .map(drop),
        "chmod",
    );
    rofs(fs.setxattr(&ctx(), f.inode, c"user.a", b"1", 0), "setxattr");
    rofs(fs.removexattr(&ctx(), f.inode, c"user.a"), "removexattr");
    rofs(
        fs.open(&ctx(), f.inode, libc::O_RDWR as u32, 0).map(drop),
        "open rw",
    );
    rofs(
        fs.open(&ctx(), f.inode, (libc::O_RDONLY | libc::O_TRUNC) as u32, 0)
            .map(drop),
        "open trunc",
    );
    let (h, _, _) = fs
        .open(&ctx(), f.inode, libc::O_RDONLY as u32, 0)
        .expect("open ro works");
    let h = h.expect("h");
    rofs(fs.fallocate(&ctx(), f.inode, h, 0, 0, 100), "fallocate");
    assert_eq!(fs::read(fx.share.join("f")).expect("read"), b"data");
    assert!(fx.share.join("d").is_dir());
    fx.assert_outside_intact();
}

#[test]
fn test_hard_links_stay_inside_and_keep_node_ids() {
    let fx = Fixture::new();
    fs::write(fx.share.join("f"), b"x").expect("write");
    let fs = fx.fs(|_| {});
    let f = fs.lookup(&ctx(), ROOT, c"f").expect("lookup");
    let l = fs.link(&ctx(), f.inode, ROOT, c"l").expect("link");
    assert_eq!(f.inode, l.inode, "a hard link is the same node");
    assert!(fs.link(&ctx(), f.inode, ROOT, c"../escape").is_err());
    assert!(fs.link(&ctx(), f.inode, ROOT, c"/tmp/escape").is_err());
    // Inodes survive renames: guest rename and host rename.
    fs.rename(&ctx(), ROOT, c"f", ROOT, c"g", 0)
        .expect("rename");
    assert_eq!(fs.lookup(&ctx(), ROOT, c"g").expect("g").inode, f.inode);
    fs::rename(fx.share.join("g"), fx.share.join("h")).expect("host rename");
    assert_eq!(fs.lookup(&ctx(), ROOT, c"h").expect("h").inode, f.inode);
    fx.assert_outside_intact();
}

fn owner(p: &Path) -> (u32, u32) {
    let md = fs::symlink_metadata(p).expect("stat");
    (md.uid(), md.gid())
}

#[test]
fn test_owner_map_share_owner_vs_identity() {
    if !common::is_root() {
        common::skip("ownership mapping needs a root server (chown)");
        return;
    }
    let fx = Fixture::new();
    std::os::unix::fs::chown(&fx.share, Some(4321), Some(4322)).expect("chown share");
    let guest = Context {
        uid: 1234,
        gid: 1235,
        pid: 1,
    };
    let fs = fx.fs(|c| c.owner_map = OwnerMap::ShareOwner);
    fs.mkdir(&guest, ROOT, c"d", 0o755, 0).expect("mkdir");
    fs.symlink(&guest, c"t", ROOT, c"s").expect("symlink");
    let (e, h, _, _) = fs
        .create(&guest, ROOT, c"f", create_args(0o644))
        .expect("create");
    fs.release(&guest, e.inode, 0, h.expect("h"), false, false, None)
        .expect("release");
    for n in ["d", "s", "f"] {
        assert_eq!(
            owner(&fx.share.join(n)),
            (4321, 4322),
            "{n} must belong to the share owner"
        );
    }
    let fs = fx.fs(|c| c.owner_map = OwnerMap::Identity);
    fs.mkdir(&guest, ROOT, c"d2", 0o755, 0).expect("mkdir");
    assert_eq!(owner(&fx.share.join("d2")), (1234, 1235));
    fx.assert_outside_intact();
}

#[test]
fn test_readdirplus_lists_without_dot_entries() {
    let fx = Fixture::new();
    for i in 0..50 {
        fs::write(fx.share.join(format!("f{i}")), b"").expect("write");
    }
    let fs = fx.fs(|_| {});
    let (h, _) = fs.opendir(&ctx(), ROOT, 0).expect("opendir");
    let h = h.expect("h");
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let mut got = 0;
        fs.readdirplus(&ctx(), ROOT, h, 4096, off, &mut |d, e| {
            names.push(String::from_utf8_lossy(d.name).into_owned());
            assert_ne!(e.inode, 0);
            off = d.offset;
            got += 1;
            Ok(1)
        })
        .expect("readdirplus");
        if got == 0 {
            break;
        }
    }
    names.sort();
    assert_eq!(names.len(), 50);
    assert!(!names.iter().any(|n| n == "." || n == ".."));
    fs.releasedir(&ctx(), ROOT, 0, h).expect("releasedir");
}

/// HANDLE_KILLPRIV_V2: a truncate flagged KILL_SUIDGID by the client (unprivileged caller)
/// clears setuid even though the server itself holds CAP_FSETID (writes use the same helper).
#[test]
fn test_killpriv_truncate_clears_setuid() {
    let fx = Fixture::new();
    let fs = fx.fs(|c| c.allow_setuid = true);
    let (e, h, _, _) = fs
        .create(&ctx(), ROOT, c"prog", create_args(libc::S_IFREG | 0o4755))
        .expect("create");
    let h = h.expect("h");
    assert_eq!(
        fs::metadata(fx.share.join("prog")).expect("stat").mode() & 0o7777,
        0o4755
    );
    // A plain truncate through setattr with KILL_SUIDGID clears it too.
    let mut attr = e.attr;
    attr.st_size = 0;
    fs.setattr(
        &ctx(),
        e.inode,
        attr,
        Some(h),
        SetattrValid::SIZE | SetattrValid::KILL_SUIDGID,
    )
    .expect("truncate");
    assert_eq!(
        fs::metadata(fx.share.join("prog")).expect("stat").mode() & 0o7777,
        0o755
    );
    fs.release(&ctx(), e.inode, 0, h, false, false, None)
        .expect("release");
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").mode() & 0o7777
}

/// A setuid+setgid executable the *host* put in the share (mode 06755).
fn host_setuid_file(p: &Path) {
    fs::write(p, b"#!/bin/sh\necho hi\n").expect("write");
    fs::set_permissions(p, fs::Permissions::from_mode(0o6755)).expect("chmod");
    assert_eq!(mode_of(p), 0o6755, "test setup: bits set");
}

/// Without `allow_setuid`, a truncate drops setuid/setgid even when the client sends no
/// KILL_SUIDGID (a hostile guest never will; a root server keeps the bits otherwise).
#[test]
fn test_truncate_clears_setuid_whatever_the_client_flags() {
    let fx = Fixture::new();
    let prog = fx.share.join("prog");
    host_setuid_file(&prog);
    let fs = fx.fs(|_| {});
    let e = fs.lookup(&ctx(), ROOT, c"prog").expect("lookup");
    let mut attr = e.attr;
    attr.st_size = 3;
    fs.setattr(&ctx(), e.inode, attr, None, SetattrValid::SIZE)
        .expect("truncate by inode");
    assert_eq!(mode_of(&prog), 0o755, "truncate kept setuid/setgid");
    assert_eq!(fs::metadata(&prog).expect("stat").len(), 3);
    // Through an open handle too.
    host_setuid_file(&prog);
    let (h, _, _) = fs
        .open(&ctx(), e.inode, libc::O_RDWR as u32, 0)
        .expect("open");
    let h = h.expect("h");
    fs.setattr(&ctx(), e.inode, attr, Some(h), SetattrValid::SIZE)
        .expect("ftruncate");
    assert_eq!(mode_of(&prog), 0o755, "ftruncate kept setuid/setgid");
    fs.release(&ctx(), e.inode, 0, h, false, false, None)
        .expect("release");
    // A share that allows setuid keeps them unless the client asks.
    host_setuid_file(&prog);
    let fs2 = fx.fs(|c| c.allow_setuid = true);
    let e2 = fs2.lookup(&ctx(), ROOT, c"prog").expect("lookup");
    fs2.setattr(&ctx(), e2.inode, attr, None, SetattrValid::SIZE)
        .expect("truncate");
    assert_eq!(mode_of(&prog), 0o6755, "allow_setuid keeps the bits");
    fx.assert_outside_intact();
}

/// OPEN and CREATE (of an existing name) with O_TRUNC, and FALLOCATE, drop the bits before
/// the data changes when setuid is not allowed; a plain open does not.
#[test]
fn test_open_create_o_trunc_and_fallocate_clear_setuid_whatever_the_client_flags() {
    let fx = Fixture::new();
    let prog = fx.share.join("prog");
    host_setuid_file(&prog);
    let fs = fx.fs(|_| {});
    let e = fs.lookup(&ctx(), ROOT, c"prog").expect("lookup");
    let (h, _, _) = fs
        .open(&ctx(), e.inode, (libc::O_WRONLY | libc::O_TRUNC) as u32, 0)
        .expect("open O_TRUNC");
    fs.release(&ctx(), e.inode, 0, h.expect("h"), false, false, None)
        .expect("release");
    assert_eq!(mode_of(&prog), 0o755, "OPEN O_TRUNC kept setuid/setgid");
    assert_eq!(fs::metadata(&prog).expect("stat").len(), 0);

    host_setuid_file(&prog);
    let args = CreateIn {
        flags: (libc::O_WRONLY | libc::O_TRUNC) as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (ce, h, _, _) = fs
        .create(&ctx(), ROOT, c"prog", args)
        .expect("create existing");
    fs.release(&ctx(), ce.inode, 0, h.expect("h"), false, false, None)
        .expect("release");
    assert_eq!(mode_of(&prog), 0o755, "CREATE O_TRUNC kept setuid/setgid");

    host_setuid_file(&prog);
    let (h, _, _) = fs
        .open(&ctx(), e.inode, libc::O_RDWR as u32, 0)
        .expect("open");
    let h = h.expect("h");
    assert_eq!(mode_of(&prog), 0o6755, "a plain open changes nothing");
    fs.fallocate(&ctx(), e.inode, h, 0, 0, 4096)
        .expect("fallocate");
    assert_eq!(mode_of(&prog), 0o755, "FALLOCATE kept setuid/setgid");
    fs.release(&ctx(), e.inode, 0, h, false, false, None)
        .expect("release");

    // allow_setuid: kept without the client's flag, dropped with it.
    host_setuid_file(&prog);
    let fs2 = fx.fs(|c| c.allow_setuid = true);
    let e2 = fs2.lookup(&ctx(), ROOT, c"prog").expect("lookup");
    let trunc = (libc::O_WRONLY | libc::O_TRUNC) as u32;
    let (h, _, _) = fs2.open(&ctx(), e2.inode, trunc, 0).expect("open");
    fs2.release(&ctx(), e2.inode, 0, h.expect("h"), false, false, None)
        .expect("release");
    assert_eq!(mode_of(&prog), 0o6755);
    let (h, _, _) = fs2
        .open(
            &ctx(),
            e2.inode,
            trunc,
            fs_share::fuse_abi::FOPEN_IN_KILL_SUIDGID,
        )
        .expect("open");
    fs2.release(&ctx(), e2.inode, 0, h.expect("h"), false, false, None)
        .expect("release");
    assert_eq!(mode_of(&prog), 0o755);
    fx.assert_outside_intact();
}

/// Runs `f` on another thread and fails the test if it has not returned within 5 s (a
/// server call blocked in open(2) of a FIFO would never return).
fn within_5s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{what} did not return within 5 s: the server blocked"))
}

/// CREATE without O_EXCL on a name that exists must look at its type before opening it: a
/// FIFO the guest made would otherwise block the worker forever (no writer/reader), a device
/// would be opened on the host.
#[test]
fn test_create_on_existing_special_files_is_refused_without_opening_them() {
    let fx = Fixture::new();
    let fs = Arc::new(fx.fs(|_| {}));
    fs.mknod(&ctx(), ROOT, c"fifo", libc::S_IFIFO | 0o666, 0, 0)
        .expect("guest-made fifo");
    let _sock = std::os::unix::net::UnixListener::bind(fx.share.join("sock")).expect("bind");
    fs::create_dir(fx.share.join("dir")).expect("mkdir");
    std::os::unix::fs::symlink("fifo", fx.share.join("link")).expect("symlink");
    let mut cases = vec![
        (c"fifo", libc::O_WRONLY, libc::EACCES),
        (c"fifo", libc::O_RDONLY, libc::EACCES),
        (c"fifo", libc::O_RDWR | libc::O_TRUNC, libc::EACCES),
        (c"sock", libc::O_WRONLY, libc::ENXIO),
        (c"dir", libc::O_RDONLY, libc::EISDIR),
        (c"link", libc::O_WRONLY, libc::ELOOP),
    ];
    if common::is_root() {
        let c = std::ffi::CString::new(fx.share.join("null").as_os_str().as_encoded_bytes())
            .expect("c");
        // SAFETY: NUL-terminated path; creates /dev/null's twin inside the temp share.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(rc, 0);
        cases.push((c"null", libc::O_WRONLY, libc::EACCES));
    } else {
        common::skip("the host-made device node case needs root (mknod)");
    }
    for (name, flags, want) in cases {
        let fs = fs.clone();
        let r = within_5s(&format!("CREATE {name:?}"), move || {
            let args = CreateIn {
                flags: flags as u32,
                mode: 0o644,
                umask: 0,
                fuse_flags: 0,
            };
            fs.create(&ctx(), ROOT, name, args).map(drop)
        });
        assert_eq!(
            r.map_err(errno),
            Err(want),
            "CREATE {name:?} flags {flags:#o}"
        );
    }
    assert_eq!(fs.open_file_count(), 0, "nothing was left open");
    // The server still answers.
    fs.lookup(&ctx(), ROOT, c"dir").expect("lookup after");
    fx.assert_outside_intact();
}

/// RENAME_WHITEOUT makes the host kernel leave a 0:0 character device behind: refused
/// (EINVAL) unless the share allows device nodes.
#[test]
fn test_rename_whiteout_is_refused_unless_devices_are_allowed() {
    let fx = Fixture::new();
    fs::write(fx.share.join("a"), b"a").expect("write");
    let fs = fx.fs(|_| {});
    let r = fs.rename(&ctx(), ROOT, c"a", ROOT, c"b", libc::RENAME_WHITEOUT);
    assert_eq!(r.map_err(errno), Err(libc::EINVAL));
    assert_eq!(fs::read(fx.share.join("a")).expect("a is untouched"), b"a");
    assert!(!fx.share.join("b").exists());
    // Combined with another flag it is refused just the same.
    let r = fs.rename(
        &ctx(),
        ROOT,
        c"a",
        ROOT,
        c"b",
        libc::RENAME_WHITEOUT | libc::RENAME_NOREPLACE,
    );
    assert_eq!(r.map_err(errno), Err(libc::EINVAL));
    if common::is_root() {
        let fs2 = fx.fs(|c| c.allow_devices = true);
        fs2.rename(&ctx(), ROOT, c"a", ROOT, c"b", libc::RENAME_WHITEOUT)
            .expect("allowed with allow_devices");
        let md = fs::symlink_metadata(fx.share.join("a")).expect("whiteout");
        assert_eq!(
            md.mode() & libc::S_IFMT,
            libc::S_IFCHR,
            "a whiteout is a chardev"
        );
        assert_eq!(md.rdev(), 0);
        assert_eq!(fs::read(fx.share.join("b")).expect("b"), b"a");
    } else {
        common::skip("the allow_devices half needs root (CAP_MKNOD for whiteouts)");
    }
    fx.assert_outside_intact();
}

const FUSE_MKNOD: u32 = 8;
const FUSE_LOOKUP: u32 = 1;
const FUSE_OPEN: u32 = 14;
const FUSE_WRITE: u32 = 16;
const FUSE_CREATE: u32 = 35;

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// A raw client on the stream transport with ONE worker: CREATE of a guest-made FIFO gets an
/// error reply, and the next request is still served (before the fix it blocked the only
/// worker forever and the session read timed out).
#[test]
fn test_raw_create_on_guest_fifo_does_not_block_the_single_worker() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let share = tmp.path().join("share");
    fs::create_dir(&share).expect("share");
    fs::write(share.join("file"), b"x").expect("file");
    let mut s = common::StreamSession::start(ShareConfig::new(&share), 1);
    let mut mknod = words(&[libc::S_IFIFO | 0o666, 0, 0, 0]);
    mknod.extend(common::fuse_name("fifo"));
    let (err, _) = s.call(FUSE_MKNOD, ROOT, &mknod);
    assert_eq!(err, 0, "MKNOD fifo");
    for flags in [libc::O_WRONLY, libc::O_RDONLY] {
        let mut create = words(&[flags as u32, 0o644, 0, 0]);
        create.extend(common::fuse_name("fifo"));
        let (err, _) = s.call(FUSE_CREATE, ROOT, &create);
        assert_eq!(err, -libc::EACCES, "CREATE fifo flags {flags:#o}");
    }
    let (err, body) = s.call(FUSE_LOOKUP, ROOT, &common::fuse_name("file"));
    assert_eq!(err, 0, "the worker still serves");
    assert_eq!(
        common::entry_nodeid_and_mode(&body).1 & libc::S_IFMT,
        libc::S_IFREG
    );
    s.finish().expect("clean end");
}

/// A raw WRITE without WRITE_KILL_PRIV to a host setuid file: the bits are dropped anyway
/// when the share does not allow setuid, and kept (unless the client asks) when it does.
#[test]
fn test_raw_write_clears_setuid_whatever_the_client_flags() {
    for allow_setuid in [false, true] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let share = tmp.path().join("share");
        fs::create_dir(&share).expect("share");
        let prog = share.join("prog");
        host_setuid_file(&prog);
        let mut cfg = ShareConfig::new(&share);
        cfg.allow_setuid = allow_setuid;
        let mut s = common::StreamSession::start(cfg, 2);
        let (err, body) = s.call(FUSE_LOOKUP, ROOT, &common::fuse_name("prog"));
        assert_eq!(err, 0);
        let (node, _) = common::entry_nodeid_and_mode(&body);
        let (err, body) = s.call(FUSE_OPEN, node, &words(&[libc::O_RDWR as u32, 0]));
        assert_eq!(err, 0, "OPEN");
        let mut fh = [0u8; 8];
        fh.copy_from_slice(&body[0..8]);
        let write = |write_flags: u32| {
            // fuse_write_in: fh, offset, size, write_flags, lock_owner, flags, padding.
            let mut w = fh.to_vec();
            w.extend(0u64.to_ne_bytes());
            w.extend(words(&[4, write_flags]));
            w.extend(0u64.to_ne_bytes());
            w.extend(words(&[0, 0]));
            w.extend(b"evil");
            w
        };
        let (err, _) = s.call(FUSE_WRITE, node, &write(0));
        assert_eq!(err, 0, "WRITE");
        assert_eq!(&fs::read(&prog).expect("read")[..4], b"evil");
        let want = if allow_setuid { 0o6755 } else { 0o755 };
        assert_eq!(mode_of(&prog), want, "allow_setuid={allow_setuid}");
        let (err, _) = s.call(
            FUSE_WRITE,
            node,
            &write(fs_share::fuse_abi::WRITE_KILL_PRIV),
        );
        assert_eq!(err, 0, "WRITE kill-priv");
        assert_eq!(mode_of(&prog), 0o755, "the client's flag is honoured");
        s.finish().expect("clean end");
    }
}
