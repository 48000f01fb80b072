//! Host unix sockets that only their owner can use: created owner-only before they are
//! reachable, and each accepted peer's uid checked (`SO_PEERCRED`).
//!
//! [`bind_owner_only`] binds inside a fresh 0700 directory next to the final path, sets the
//! socket file to 0600 and links it into place (never over an existing file), so the socket is never reachable with a
//! wider mode whatever the process umask (fs-share runs with umask 0 so guest modes apply
//! exactly, and umask is process-wide, so changing it around `bind` would race other
//! threads). [`peer_allowed`] accepts the socket's owner (this process' effective uid) and
//! root, which can reach any socket anyway. The owner stays the user the process started as
//! after it gives up root ([`crate::privileges`]), so a backend moved to `nobody` still
//! serves root's supervisor and nobody else.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Errors of [`bind_owner_only`].
#[derive(Debug, thiserror::Error)]
pub enum HostSockError {
    #[error("Socket path {0} has no parent directory or file name")]
    BadPath(PathBuf),
    #[error("Cannot create the owner-only socket {path}; check that its directory exists and is writable")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl HostSockError {
    /// The underlying I/O error, for callers whose own error already names the path.
    pub fn into_io(self) -> io::Error {
        match self {
            HostSockError::Bind { source, .. } => source,
            e @ HostSockError::BadPath(_) => io::Error::new(io::ErrorKind::InvalidInput, e),
        }
    }
}

/// Binds a listening unix socket at `path` (replacing a stale socket file, never anything
/// else) that is mode 0600 from the moment it is reachable.
pub fn bind_owner_only(path: &Path) -> Result<UnixListener, HostSockError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(HostSockError::BadPath(path.to_path_buf()));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let err = |source| HostSockError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if m.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let private = private_dir(dir, name).map_err(err)?;
    let tmp = private.join("s");
    let result = (|| {
        let l = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        // link(2), unlike rename(2), never replaces what is at `path` (EEXIST).
        std::fs::hard_link(&tmp, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&private);
    result.map_err(err)
}

/// A new 0700 directory in `dir` (mkdir's mode is only ever narrowed by the umask).
fn private_dir(dir: &Path, name: &std::ffi::OsStr) -> io::Result<PathBuf> {
    for i in 0..100u32 {
        let mut n = std::ffi::OsString::from(".");
        n.push(name);
        n.push(format!(".bind-{}-{i}", std::process::id()));
        let p = dir.join(n);
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left by a crashed run of a process with the same pid: clear it, try again.
                let _ = std::fs::remove_file(p.join("s"));
                let _ = std::fs::remove_dir(&p);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from(io::ErrorKind::AlreadyExists))
}

/// The credentials (pid, uid, gid) of the process at the other end of a connected unix
/// socket, as the kernel recorded them at connect time.
#[cfg(target_os = "linux")]
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out pointers of the announced size; the kernel
    // writes at most `len` bytes; the return value is checked.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

/// The uid of the process at the other end of a connected unix socket.
#[cfg(target_os = "linux")]
pub fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    peer_cred(fd).map(|c| c.uid)
}

/// The uid of the process at the other end of a connected unix socket.
#[cfg(not(target_os = "linux"))]
pub fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let (mut uid, mut gid) = (0, 0);
    // SAFETY: `uid` and `gid` are valid out pointers; the return value is checked.
    if unsafe { libc::getpeereid(fd.as_raw_fd(), &mut uid, &mut gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(uid)
}

static OWNER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The user this process' sockets belong to: its effective uid when first asked, which
/// [`crate::privileges`] asks before giving up root.
pub fn owner_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    *OWNER.get_or_init(|| unsafe { libc::geteuid() })
}

/// Whether `uid` may use this process' sockets: the owner ([`owner_uid`]) or root.
pub fn uid_allowed(uid: u32) -> bool {
    uid == 0 || uid == owner_uid()
}

/// Whether the peer of an accepted connection may use it (see [`uid_allowed`]); a socket
/// whose peer cannot be identified is refused.
pub fn peer_allowed(fd: BorrowedFd<'_>) -> bool {
    peer_uid(fd).map(uid_allowed).unwrap_or(false)
}

/// Creates `dir` (and its parents) and makes `dir` itself 0700.
pub fn private_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Test helper: connects to `path` as `nobody` (a `perl` child with uid/gid 65534), sends
/// `send`, and reports what happened: `connect-error: …`, `eof`, `read-error: …` or
/// `data: …`. Needs root; `None` when it cannot run here (reason printed).
#[doc(hidden)]
pub fn connect_as_nobody(path: &Path, send: &str) -> Option<String> {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: connecting as another user needs root");
        return None;
    }
    const SCRIPT: &str = r#"
        use IO::Socket::UNIX;
        $SIG{PIPE} = 'IGNORE';
        alarm 10;
        my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or do { print "connect-error: $!\n"; exit 0 };
        syswrite($s, $ARGV[1]);
        my $buf = '';
        my $n = sysread($s, $buf, 4096);
        if (!defined $n) { print "read-error: $!\n" }
        elsif ($n == 0) { print "eof\n" }
        else { print "data: $buf\n" }
    "#;
    let out = std::process::Command::new("perl")
        .args(["-MIO::Socket::UNIX", "-e", SCRIPT])
        .arg(path)
        .arg(send)
        .uid(65534)
        .gid(65534)
        .output();
    match out {
        Ok(o) => Some(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Err(e) => {
            eprintln!("skipped: cannot run perl as nobody: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    /// A temp dir any user may enter, so only the socket's own mode and the peer check stand
    /// between `nobody` and the socket.
    fn open_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        d
    }

    #[test]
    fn test_bind_owner_only_is_0600_whatever_the_umask_and_replaces_stale_sockets() {
        let d = open_dir();
        let p = d.path().join("a.sock");
        // SAFETY: umask cannot fail; restored below (this test binary's other tests do not
        // depend on the umask).
        let old = unsafe { libc::umask(0) };
        let l = bind_owner_only(&p);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let l = l.expect("bind");
        assert_eq!(std::fs::metadata(&p).expect("stat").mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .expect("readdir")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("a.sock")]);
        // The listener is the one at the path.
        let mut c = std::os::unix::net::UnixStream::connect(&p).expect("connect");
        let (mut s, _) = l.accept().expect("accept");
        c.write_all(b"x").expect("write");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("read");
        drop(l);
        // A stale socket is replaced; a regular file is not.
        bind_owner_only(&p).expect("rebind over a stale socket");
        let f = d.path().join("file");
        std::fs::write(&f, b"keep").expect("write");
        assert!(bind_owner_only(&f).is_err());
        assert_eq!(std::fs::read(&f).expect("read"), b"keep");
    }

    #[test]
    fn test_other_uid_cannot_connect_and_is_refused_by_the_peer_check() {
        let d = open_dir();
        let p = d.path().join("b.sock");
        let l = bind_owner_only(&p).expect("bind");
        let Some(r) = connect_as_nobody(&p, "hi") else {
            return;
        };
        assert!(r.starts_with("connect-error: Permission denied"), "{r}");
        // Even where the mode is wrong (0666), the peer check tells nobody from the owner.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let server = std::thread::spawn(move || {
            let mut verdicts = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = l.accept().expect("accept");
                let ok = peer_allowed(s.as_fd());
                if ok {
                    let _ = s.write_all(b"welcome");
                }
                verdicts.push(ok);
            }
            verdicts
        });
        let r = connect_as_nobody(&p, "hi").expect("ran before");
        assert!(r == "eof" || r.starts_with("read-error"), "{r}");
        let mut c = std::os::unix::net::UnixStream::connect(&p).expect("owner connects");
        let mut got = String::new();
        c.read_to_string(&mut got).expect("read");
        assert_eq!(got, "welcome");
        assert_eq!(server.join().expect("server"), vec![false, true]);
    }

    #[test]
    fn test_private_dir_all_is_0700() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x/y");
        private_dir_all(&p).expect("mkdir");
        assert_eq!(std::fs::metadata(&p).expect("stat").mode() & 0o777, 0o700);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir_all(&p).expect("again");
        assert_eq!(std::fs::metadata(&p).expect("stat").mode() & 0o777, 0o700);
    }
}
