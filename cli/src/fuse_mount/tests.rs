//! The host bridge against the guest agent's FUSE server (`fs_share::transport::stream`, what
//! `ServeFs` runs) over a real socket pair, through a REAL kernel FUSE mount: every file
//! operation below goes host syscall → kernel FUSE → `/dev/fuse` → bridge → stream → server →
//! confined passthrough over a temp "guest root", and back. No VM needed; root needed to
//! mount (CI runs as root).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fs_share::{PassthroughFs, ShareConfig};
use sha2::{Digest, Sha256};

use super::*;

/// More than the agent's one worker: the bridge must cope with replies in any order.
const SERVER_WORKERS: usize = 4;

/// The whole test must finish within this; the watchdog then unmounts and aborts, so a hung
/// FUSE request can neither hang CI nor leave a mount behind.
const WATCHDOG: Duration = Duration::from_secs(120);

fn skip_reason() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    // Root mounts directly; anyone else needs rw access to /dev/fuse and fusermount3.
    check_prerequisites(Path::new("/"))
        .err()
        .map(|e| e.to_string())
}

/// What a user runs to end a mount: `fusermount3 -u` (root falls back to umount(2)).
fn user_unmount(mnt: &Path) {
    if crate::host_tools::on_path("fusermount3") {
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .status()
            .expect("run fusermount3");
        assert!(st.success(), "fusermount3 -u: {st:?}");
    } else {
        let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::umount2(c.as_ptr(), 0) }, 0, "umount");
    }
}

/// A guest root served by the agent's stream server, mounted by the host bridge.
struct Mounted {
    _dir: tempfile::TempDir,
    guest: PathBuf,
    mnt: PathBuf,
    stopper: Stopper,
    bridge: Option<JoinHandle<Outcome>>,
    server: Option<JoinHandle<Result<(), StreamError>>>,
}

impl Mounted {
    fn new(read_only: bool) -> Mounted {
        let dir = tempfile::tempdir().expect("tempdir");
        let guest = dir.path().join("guest");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&guest).expect("guest root");
        fs::create_dir(&mnt).expect("mount point");
        fs::write(dir.path().join("secret"), "outside the share").expect("secret");
        fs::write(guest.join("hello"), "from-guest\n").expect("hello");
        watchdog(mnt.clone());
        let (host_end, guest_end) = UnixStream::pair().expect("socketpair");
        let mut cfg = ShareConfig::new(&guest);
        cfg.readonly = read_only;
        let server = std::thread::spawn(move || {
            let fs = Arc::new(PassthroughFs::new(cfg).expect("share"));
            let input = guest_end.try_clone().expect("clone");
            stream::serve(fs, input, guest_end, SERVER_WORKERS)
        });
        let mount = FuseMount::mount(&mnt, "vmctl-test", read_only).expect("mount");
        let stopper = mount.stopper();
        let bridge = std::thread::spawn(move || mount.serve(host_end));
        Mounted {
            _dir: dir,
            guest,
            mnt,
            stopper,
            bridge: Some(bridge),
            server: Some(server),
        }
    }

    /// Stops the bridge; returns how the bridge and the server ended.
    fn stop(&mut self) -> (Outcome, Result<(), StreamError>) {
        self.stopper.stop();
        self.join()
    }

    fn join(&mut self) -> (Outcome, Result<(), StreamError>) {
        let b = self.bridge.take().expect("bridge").join().expect("bridge");
        let s = self.server.take().expect("server").join().expect("server");
        (b, s)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.bridge.is_some() {
            self.stopper.stop();
            let _ = self.bridge.take().map(|h| h.join());
        }
        let _ = self.server.take().map(|h| h.join());
    }
}

fn watchdog(mnt: PathBuf) {
    std::thread::spawn(move || {
        std::thread::sleep(WATCHDOG);
        eprintln!("watchdog: test ran past {WATCHDOG:?}; unmounting and aborting");
        if let Ok(c) = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()) {
            // SAFETY: `c` is a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        std::process::abort();
    });
}

fn is_mounted(mnt: &Path) -> bool {
    let target = mnt.canonicalize().unwrap_or_else(|_| mnt.to_path_buf());
    let target = target.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

fn sha(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn test_mount_file_ops_reach_the_guest_root() {
    if let Some(r) = skip_reason() {
        eprintln!("skipped: {r}");
        return;
    }
    let mut m = Mounted::new(false);
    assert!(is_mounted(&m.mnt));
    let (g, mnt) = (m.guest.clone(), m.mnt.clone());

    // The guest's file, read on the host.
    assert_eq!(
        fs::read_to_string(mnt.join("hello")).expect("read"),
        "from-guest\n"
    );
    // create/write on the host → in the guest root.
    fs::write(mnt.join("new.txt"), "from-host").expect("create");
    assert_eq!(
        fs::read_to_string(g.join("new.txt")).expect("guest"),
        "from-host"
    );
    // append through an open file, then read back through the mount.
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("new.txt"))
            .expect("open");
        f.write_all(b"+more").expect("append");
    }
    assert_eq!(
        fs::read_to_string(mnt.join("new.txt")).expect("read"),
        "from-host+more"
    );
    // rename
    fs::rename(mnt.join("new.txt"), mnt.join("renamed.txt")).expect("rename");
    assert!(!g.join("new.txt").exists());
    assert!(g.join("renamed.txt").exists());
    // mkdir + a file inside + readdir
    fs::create_dir(mnt.join("sub")).expect("mkdir");
    fs::write(mnt.join("sub/a"), "a").expect("create in sub");
    assert!(g.join("sub").is_dir());
    let mut names: Vec<String> = fs::read_dir(&mnt)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["hello", "renamed.txt", "sub"]);
    // unlink + rmdir
    fs::remove_file(mnt.join("sub/a")).expect("unlink");
    fs::remove_dir(mnt.join("sub")).expect("rmdir");
    fs::remove_file(mnt.join("renamed.txt")).expect("unlink");
    assert!(!g.join("sub").exists() && !g.join("renamed.txt").exists());
    // Missing files are ENOENT, not a hang or a bridge error.
    assert_eq!(errno(fs::metadata(mnt.join("missing"))), Some(libc::ENOENT));

    // 1 MiB (plus a tail, so the last request is partial) round trip, by hash, both ways.
    let big: Vec<u8> = (0..(1 << 20) + 12_345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let t = Instant::now();
    fs::write(mnt.join("big"), &big).expect("write big");
    let mut back = Vec::new();
    fs::File::open(mnt.join("big"))
        .expect("open big")
        .read_to_end(&mut back)
        .expect("read big");
    eprintln!(
        "1 MiB written and read back through the mount in {:?}",
        t.elapsed()
    );
    assert_eq!(sha(&back), sha(&big));
    assert_eq!(sha(&fs::read(g.join("big")).expect("guest big")), sha(&big));
    fs::write(g.join("big2"), &big).expect("guest writes big");
    assert_eq!(
        sha(&fs::read(mnt.join("big2")).expect("read big2")),
        sha(&big)
    );

    // Concurrent clients (the server's 4 workers answer out of order; FUSE matches replies by
    // their unique id): 8 threads, each its own 300 KiB file, written and read back.
    let writers: Vec<_> = (0..8u8)
        .map(|t| {
            let path = mnt.join(format!("par{t}"));
            std::thread::spawn(move || {
                let data: Vec<u8> = (0..300_000u32).map(|i| (i as u8) ^ t).collect();
                for _ in 0..3 {
                    fs::write(&path, &data).expect("parallel write");
                    assert_eq!(sha(&fs::read(&path).expect("parallel read")), sha(&data));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("parallel client");
    }

    let (bridge, server) = m.stop();
    assert_eq!(bridge.expect("bridge"), Ended::Stopped);
    server.expect("server ends cleanly when the host closes the stream");
    assert!(!is_mounted(&mnt), "stop must unmount");
}

#[test]
fn test_mount_read_only_refuses_changes_with_erofs() {
    if let Some(r) = skip_reason() {
        eprintln!("skipped: {r}");
        return;
    }
    let m = Mounted::new(true);
    let mnt = m.mnt.clone();
    assert_eq!(
        fs::read_to_string(mnt.join("hello")).expect("read"),
        "from-guest\n"
    );
    assert_eq!(errno(fs::write(mnt.join("x"), "x")), Some(libc::EROFS));
    assert_eq!(
        errno(fs::OpenOptions::new().write(true).open(mnt.join("hello"))),
        Some(libc::EROFS)
    );
    assert_eq!(errno(fs::create_dir(mnt.join("d"))), Some(libc::EROFS));
    assert_eq!(errno(fs::remove_file(mnt.join("hello"))), Some(libc::EROFS));
    assert_eq!(
        fs::read_to_string(m.guest.join("hello")).expect("guest file intact"),
        "from-guest\n"
    );
}

#[test]
fn test_mount_symlinks_and_dotdot_stay_inside_the_share() {
    if let Some(r) = skip_reason() {
        eprintln!("skipped: {r}");
        return;
    }
    let m = Mounted::new(false);
    let (g, mnt) = (m.guest.clone(), m.mnt.clone());
    // Guest symlinks pointing out of the share come back as links, never followed by the
    // server: reading one through the mount resolves it on the *host*, where the kernel
    // starts over from the host root (the link's text is all the server hands out).
    symlink("../secret", g.join("up")).expect("symlink");
    symlink("/etc", g.join("abs")).expect("symlink");
    let meta = fs::symlink_metadata(mnt.join("up")).expect("lstat");
    assert!(meta.file_type().is_symlink());
    assert_eq!(
        fs::read_link(mnt.join("up")).expect("readlink"),
        Path::new("../secret")
    );
    assert_eq!(
        fs::read_link(mnt.join("abs")).expect("readlink"),
        Path::new("/etc")
    );
    // `..` at the mount's root is the host's parent directory (the kernel resolves it; it is
    // never sent to the server): listing mnt/.. shows the temp dir, not anything served.
    let parent: Vec<_> = fs::read_dir(mnt.join(".."))
        .expect("readdir ..")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(parent.iter().any(|n| n == "secret"));
    // A symlink created through the mount is stored as a link in the guest root.
    symlink("../../x", mnt.join("made")).expect("symlink via mount");
    assert_eq!(
        fs::read_link(g.join("made")).expect("guest readlink"),
        Path::new("../../x")
    );
    // The share root's inode is the guest root's, not its parent's.
    assert_eq!(
        fs::metadata(&mnt).expect("stat").ino(),
        fs::metadata(&g).expect("stat").ino()
    );
}

#[test]
fn test_mount_ends_with_unmounted_on_umount_and_peer_closed_when_guest_goes() {
    if let Some(r) = skip_reason() {
        eprintln!("skipped: {r}");
        return;
    }
    // `fusermount3 -u` (or `umount`): the bridge sees ENODEV.
    let mut m = Mounted::new(false);
    assert_eq!(
        fs::read_to_string(m.mnt.join("hello")).expect("read"),
        "from-guest\n"
    );
    user_unmount(&m.mnt);
    let (bridge, server) = m.join();
    assert_eq!(bridge.expect("bridge"), Ended::Unmounted);
    server.expect("server");
    assert!(!is_mounted(&m.mnt));

    // The guest side goes away (VM stopped): a bridge whose stream closes unmounts itself.
    let dir = tempfile::tempdir().expect("tempdir");
    watchdog(dir.path().to_path_buf());
    let (host_end, guest_end) = UnixStream::pair().expect("pair");
    let mount = FuseMount::mount(dir.path(), "vmctl-test", false).expect("mount");
    let bridge = std::thread::spawn(move || mount.serve(host_end));
    drop(guest_end);
    assert_eq!(
        bridge.join().expect("join").expect("bridge"),
        Ended::PeerClosed
    );
    assert!(!is_mounted(dir.path()));
}

#[test]
fn test_mount_refuses_missing_or_file_mount_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f");
    fs::write(&file, "").expect("file");
    assert!(matches!(
        check_prerequisites(&dir.path().join("nope")),
        Err(FuseMountError::NoMountPoint(_))
    ));
    assert!(matches!(
        check_prerequisites(&file),
        Err(FuseMountError::NotADirectory(_))
    ));
}
