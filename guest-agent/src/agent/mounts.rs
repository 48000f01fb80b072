//! Filesystems: the early API mounts, a writable /etc over the read-only root, the data
//! disk (formatted on first boot) for Docker's state, and virtio-fs shares.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::sys::{self, mount};
use tracing::info;

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// Where the data disk is mounted; Docker's and containerd's state and the logs live on it.
pub const DATA_DIR: &str = "/var/lib/vmctl";

fn ensure(dir: &str) {
    let _ = fs::create_dir_all(dir);
}

fn try_mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    ensure(target);
    if let Err(e) = mount(src, target, fstype, flags, data) {
        if e.raw_os_error() != Some(libc::EBUSY) {
            info!("mount {fstype} on {target}: {e}");
        }
    }
}

/// Mount /proc, /sys, /dev, /run, /tmp, cgroup2 and friends.
pub fn early() {
    try_mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, "");
    try_mount("sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, "");
    try_mount("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755");
    try_mount(
        "devpts",
        "/dev/pts",
        "devpts",
        NOSUID | NOEXEC,
        "gid=5,mode=0620,ptmxmode=0666",
    );
    try_mount("shm", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777");
    try_mount("tmpfs", "/run", "tmpfs", NOSUID | NODEV, "mode=0755");
    try_mount("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, "mode=1777");
    try_mount(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID | NODEV | NOEXEC,
        "nsdelegate",
    );
    try_mount("bpf", "/sys/fs/bpf", "bpf", NOSUID | NODEV | NOEXEC, "");
    try_mount(
        "debugfs",
        "/sys/kernel/debug",
        "debugfs",
        NOSUID | NODEV | NOEXEC,
        "",
    );
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    let _ = std::os::unix::fs::symlink("/run", "/var/run");
    ensure("/run/lock");
}

/// Overlay a tmpfs-backed writable layer on a read-only directory of the root image.
pub fn writable_overlay(dir: &str) {
    let name = dir.trim_start_matches('/').replace('/', "-");
    let upper = format!("/run/vmctl/overlay/{name}/upper");
    let work = format!("/run/vmctl/overlay/{name}/work");
    ensure(&upper);
    ensure(&work);
    let opts = format!("lowerdir={dir},upperdir={upper},workdir={work}");
    if let Err(e) = mount("overlay", dir, "overlay", 0, &opts) {
        info!("overlay on {dir}: {e}");
    }
}

/// The block device whose virtio serial is `serial`, if any.
pub fn find_disk(serial: &str) -> Option<PathBuf> {
    let entries = fs::read_dir("/sys/block").ok()?;
    for e in entries.flatten() {
        let dev = e.file_name();
        let s = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        if s.trim() == serial {
            return Some(Path::new("/dev").join(dev));
        }
    }
    None
}

/// Whether `dev` holds an ext2/3/4 superblock (magic 0xEF53 at byte 1080).
pub fn has_ext4(dev: &Path) -> io::Result<bool> {
    let mut f = fs::File::open(dev)?;
    f.seek(SeekFrom::Start(1080))?;
    let mut magic = [0u8; 2];
    f.read_exact(&mut magic)?;
    Ok(magic == [0x53, 0xef])
}

/// Size in bytes of the ext4 filesystem whose superblock (the 1024 bytes at offset 1024
/// of the device) is `sb`: blocks count × block size. `None` for a malformed superblock.
pub fn ext4_size(sb: &[u8]) -> Option<u64> {
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(sb.get(o..o + 4)?.try_into().ok()?)) };
    const INCOMPAT_64BIT: u32 = 0x80;
    let lo = u64::from(u32_at(0x4)?);
    let log = u32_at(0x18)?;
    if log > 6 {
        return None;
    }
    let hi = if u32_at(0x60)? & INCOMPAT_64BIT != 0 {
        u64::from(u32_at(0x150)?)
    } else {
        0
    };
    ((hi << 32) | lo).checked_mul(1024u64 << log)
}

/// Whether the device (or image file) `dev` has room past its ext4 filesystem worth growing
/// into: more than 1 MiB (what resize2fs leaves over is less).
pub fn ext4_can_grow(dev: &Path) -> io::Result<bool> {
    let mut f = fs::File::open(dev)?;
    let dev_len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(1024))?;
    let mut sb = [0u8; 1024];
    f.read_exact(&mut sb)?;
    let fs_len = ext4_size(&sb)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad ext4 superblock"))?;
    Ok(dev_len > fs_len.saturating_add(1 << 20))
}

/// Grows the mounted data filesystem to its disk (`disk_size` raised on the host): online,
/// with resize2fs, only when the disk is larger than the filesystem.
fn grow_if_needed(dev: &Path) {
    let d = dev.display().to_string();
    match ext4_can_grow(dev) {
        Ok(true) => {
            info!("growing the data filesystem on {d} to the disk's size");
            match Command::new("resize2fs").arg(&d).output() {
                Ok(o) if o.status.success() => info!("data filesystem grown"),
                Ok(o) => info!(
                    "resize2fs {d} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => info!("cannot run resize2fs: {e}"),
            }
        }
        Ok(false) => {}
        Err(e) => info!("cannot read the data filesystem's size on {d}: {e}"),
    }
}

/// Mount the data disk at [`DATA_DIR`] (formatting it on first boot) and bind its
/// subdirectories over /var/lib/docker, /var/lib/containerd and /var/log. Without a data
/// disk those stay on tmpfs (state is lost at shutdown), which is logged.
pub fn data_disk(serial: &str) {
    ensure(DATA_DIR);
    let mounted = match find_disk(serial) {
        Some(dev) => mount_data(&dev),
        None => {
            info!("no data disk with serial {serial}: Docker state is kept in memory only");
            false
        }
    };
    if !mounted {
        try_mount("tmpfs", DATA_DIR, "tmpfs", NOSUID | NODEV, "mode=0755");
    }
    for (sub, target) in [
        ("docker", "/var/lib/docker"),
        ("containerd", "/var/lib/containerd"),
        ("log", "/var/log"),
    ] {
        let src = format!("{DATA_DIR}/{sub}");
        ensure(&src);
        ensure(target);
        if let Err(e) = mount(&src, target, "", libc::MS_BIND, "") {
            info!("bind {src} on {target}: {e}");
        }
    }
}

fn mount_data(dev: &Path) -> bool {
    let d = dev.display().to_string();
    match has_ext4(dev) {
        Ok(true) => {}
        Ok(false) => {
            info!("formatting data disk {d} (first boot)");
            let st = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "vmctl-data", "-m", "0"])
                .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,discard"])
                .arg(&d)
                .status();
            if !matches!(st, Ok(s) if s.success()) {
                info!("mkfs.ext4 {d} failed: {st:?}");
                return false;
            }
        }
        Err(e) => {
            info!("cannot read data disk {d}: {e}");
            return false;
        }
    }
    match mount(&d, DATA_DIR, "ext4", NOSUID | NODEV, "discard") {
        Ok(()) => {
            grow_if_needed(dev);
            true
        }
        Err(e) => {
            info!("mount {d} on {DATA_DIR}: {e}");
            false
        }
    }
}

/// Mount a virtio-fs tag at `path`.
pub fn share(tag: &str, path: &str) -> io::Result<()> {
    make_mount_point(path)?;
    mount(tag, path, "virtiofs", NODEV, "")
}

/// Creates `path` for a share. The root file system is read-only, so when a folder on the
/// way cannot be created there (a share at `/mnt/src` or `/home/alice`, as on the host), a
/// tmpfs goes over the deepest existing ancestor first (`/mnt`, `/home`), which the image
/// ships empty. Shares directly under `/` need their top folder in the image.
fn make_mount_point(path: &str) -> io::Result<()> {
    match fs::create_dir_all(path) {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            let mut ancestor = std::path::Path::new(path);
            while !ancestor.exists() {
                ancestor = ancestor.parent().unwrap_or(std::path::Path::new("/"));
            }
            let ancestor = ancestor.to_string_lossy().into_owned();
            if ancestor == "/" {
                return Err(e);
            }
            info!("share {path}: read-only root, a tmpfs over {ancestor} holds its mount point");
            mount(
                "tmpfs",
                &ancestor,
                "tmpfs",
                NODEV | libc::MS_NOSUID,
                "mode=755",
            )?;
            fs::create_dir_all(path)
        }
        other => other,
    }
}

/// Unmount the data disk's users and the disk itself (best effort), then sync.
pub fn unmount_all() {
    for t in [
        "/var/log",
        "/var/lib/containerd",
        "/var/lib/docker",
        DATA_DIR,
    ] {
        if let Err(e) = sys::umount(t, 0) {
            // Busy: remount read-only so the journal is clean.
            if sys::mount("", t, "", libc::MS_REMOUNT | libc::MS_RDONLY, "").is_err() {
                info!("umount {t}: {e}");
            }
        }
    }
    sys::sync();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have(tool: &str) -> bool {
        ["/sbin", "/usr/sbin", "/bin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists())
    }

    #[test]
    fn test_ext4_grow_detected_on_a_real_image_and_cleared_by_resize2fs() {
        if !have("mkfs.ext4") || !have("resize2fs") {
            eprintln!("skipped: mkfs.ext4/resize2fs (e2fsprogs) not installed on this host");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("data.img");
        fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        // The same options the agent formats the data disk with.
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "vmctl-data", "-m", "0"])
            .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        let mut sb = [0u8; 1024];
        let mut f = fs::File::open(&img).unwrap();
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.read_exact(&mut sb).unwrap();
        assert_eq!(ext4_size(&sb), Some(64 << 20));
        assert!(!ext4_can_grow(&img).unwrap());

        // disk_size raised on the host: the file grows, the filesystem does not yet.
        fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        assert!(ext4_can_grow(&img).unwrap());
        let st = Command::new("resize2fs")
            .arg("-f")
            .arg(&img)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        assert!(!ext4_can_grow(&img).unwrap());

        assert_eq!(ext4_size(&[0u8; 10]), None, "short superblock");
        let mut bad = [0u8; 1024];
        bad[0x18] = 40;
        assert_eq!(ext4_size(&bad), None, "absurd block size");
    }
}
