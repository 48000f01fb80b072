//! `FileSystem` (the FUSE-decode ↔ filesystem boundary) for the Linux passthrough.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FOPEN_IN_KILL_SUIDGID, WRITE_KILL_PRIV,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

use super::ops;
use super::passthrough::{err, OpenFile, PassthroughFs};
use crate::config::{CachePolicy, OwnerMap};

/// Open flags we pass through to the host; everything else (O_CREAT, O_NOFOLLOW, O_DIRECT,
/// O_PATH, O_TMPFILE…) is dropped or set by us.
const OPEN_FLAGS_KEPT: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_NOATIME
    | libc::O_TRUNC
    | libc::O_LARGEFILE;

const RENAME_FLAGS: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;

fn is_write_open(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Xattrs that would grant host privileges (file capabilities) or steer host overlayfs
/// mounts (`trusted.*`); refused unless the share allows setuid.
fn is_privileged_xattr(name: &CStr) -> bool {
    let b = name.to_bytes();
    b == b"security.capability" || b.starts_with(b"trusted.")
}

/// Clears setuid (and setgid when group-executable, as the kernel does) on a regular file
/// about to be modified. Two callers: HANDLE_KILLPRIV_V2 (the client asks us to drop the bits
/// when an unprivileged writer modifies a file) and `PassthroughFs::kill_priv_on_modify` (a
/// share without `allow_setuid` drops them on every modification, whatever the client says).
/// A root server holds CAP_FSETID, so the host kernel would keep them: we clear them
/// ourselves (the host kernel still drops `security.capability` on every write). Works on an
/// O_PATH fd. Negotiating KILLPRIV_V2 lets the client set SB_NOSEC, which saves a GETXATTR
/// round trip per write.
fn kill_suidgid(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let st = ops::fstat(fd)?;
    let mode = st.st_mode;
    let sgid_exec = mode & libc::S_ISGID != 0 && mode & libc::S_IXGRP != 0;
    if mode & libc::S_IFMT == libc::S_IFREG && (mode & libc::S_ISUID != 0 || sgid_exec) {
        let mut new = mode & 0o7777 & !libc::S_ISUID;
        if sgid_exec {
            new &= !libc::S_ISGID;
        }
        ops::chmod_fd(fd, new)?;
    }
    Ok(())
}

/// The only inodes the server ever opens for I/O are regular files (directories through
/// OPENDIR). Anything else is refused with the errno a local open of it would give where that
/// makes sense (EISDIR, ELOOP for O_NOFOLLOW, ENXIO for a socket); FIFOs and devices are
/// refused with EACCES: opening them on the guest's behalf could block a worker forever (a
/// FIFO without a peer) or reach host devices.
fn require_regular(mode: u32) -> io::Result<()> {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Ok(()),
        libc::S_IFDIR => Err(err(libc::EISDIR)),
        libc::S_IFLNK => Err(err(libc::ELOOP)),
        libc::S_IFSOCK => Err(err(libc::ENXIO)),
        _ => Err(err(libc::EACCES)),
    }
}

impl PassthroughFs {
    /// Drops setuid/setgid before a file's contents change (write, truncate, O_TRUNC,
    /// fallocate) when the share does not allow setuid, or when the client asked for it
    /// (`client_asked`: FUSE kill-priv flags). Without this a root server (CAP_FSETID) would
    /// let the guest rewrite a host setuid binary and keep its bits.
    fn kill_priv_on_modify(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        client_asked: bool,
    ) -> io::Result<()> {
        if client_asked || !self.cfg.allow_setuid {
            kill_suidgid(fd)?;
        }
        Ok(())
    }

    fn open_opts(&self, dir: bool) -> OpenOptions {
        match (self.cfg.cache, dir) {
            (CachePolicy::None, false) => OpenOptions::DIRECT_IO,
            (CachePolicy::Always, false) => OpenOptions::KEEP_CACHE,
            (CachePolicy::Always, true) => OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR,
            _ => OpenOptions::empty(),
        }
    }

    fn handle_for(&self, inode: u64, handle: u64) -> io::Result<Arc<OpenFile>> {
        let h = self.handles.get(handle)?;
        if h.inode != inode {
            return Err(err(libc::EBADF));
        }
        Ok(h)
    }

    fn new_node(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode_after: Option<u32>,
        make: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> io::Result<()>,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        crate::name::validate(name)?;
        let (_, dir) = self.inode(parent)?;
        make(dir.as_fd())?;
        let fd = ops::open_beneath(dir.as_fd(), name, libc::O_PATH, 0)?;
        self.set_owner(fd.as_fd(), dir.as_fd(), ctx.uid, ctx.gid, mode_after)?;
        self.entry_for(fd)
    }

    fn do_readdir(
        &self,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if size == 0 {
            return Ok(());
        }
        let h = self.handle_for(inode, handle)?;
        let mut buf = Vec::new();
        {
            let _g = h.dir_lock.lock().unwrap_or_else(|e| e.into_inner());
            ops::getdents(h.file.as_fd(), offset, &mut buf, size.min(1 << 20) as usize)?;
        }
        let mut rest = &buf[..];
        let mut added_any = false;
        // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name (NUL-terminated).
        while rest.len() >= 19 {
            let ino = u64::from_ne_bytes(rest[0..8].try_into().map_err(|_| err(libc::EIO))?);
            let off = u64::from_ne_bytes(rest[8..16].try_into().map_err(|_| err(libc::EIO))?);
            let reclen = u16::from_ne_bytes([rest[16], rest[17]]) as usize;
            let dtype = rest[18];
            if reclen < 19 || reclen > rest.len() {
                return Err(err(libc::EIO));
            }
            let raw = &rest[19..reclen];
            let name = raw.split(|b| *b == 0).next().unwrap_or(raw);
            rest = &rest[reclen..];
            if name == b"." || name == b".." || name.is_empty() {
                continue;
            }
            let res = add(DirEntry {
                ino,
                offset: off,
                type_: u32::from(dtype),
                name,
            });
            match res {
                Ok(0) => break,
                Ok(_) => added_any = true,
                Err(e) if !added_any => return Err(e),
                Err(_) => break,
            }
        }
        Ok(())
    }
}

impl FileSystem for PassthroughFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        let mut opts = FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::HANDLE_KILLPRIV_V2
            // O_TRUNC comes with OPEN (one request instead of OPEN + SETATTR).
            | FsOptions::ATOMIC_O_TRUNC
            // Direct I/O requests may be in flight together.
            | FsOptions::ASYNC_DIO;
        // READDIRPLUS returns entries the client may cache; with timeout 0 (cache none) they
        // are stale at once and every entry would be looked up twice, so it is off there.
        match self.cfg.cache {
            CachePolicy::Auto => {
                opts |= FsOptions::AUTO_INVAL_DATA
                    | FsOptions::DO_READDIRPLUS
                    | FsOptions::READDIRPLUS_AUTO
            }
            CachePolicy::Always => {
                opts |= FsOptions::CACHE_SYMLINKS
                    | FsOptions::DO_READDIRPLUS
                    | FsOptions::READDIRPLUS_AUTO
            }
            CachePolicy::None => {}
        }
        Ok(opts)
    }

    fn destroy(&self) {
        self.reset();
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.lookup_name(parent, name)
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.forget_one(inode, count);
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.forget_one(inode, count);
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let (_, fd) = self.inode(inode)?;
        Ok((ops::fstat(fd.as_fd())?, self.cfg.cache.timeout()))
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.check_writable()?;
        let (data, fd) = self.inode(inode)?;
        let open = handle.and_then(|h| self.handle_for(inode, h).ok());
        let is_link = data.file_type == libc::S_IFLNK;
        if valid.contains(SetattrValid::MODE) {
            if is_link {
                return Err(err(libc::EOPNOTSUPP));
            }
            let mode = self.allowed_mode(data.file_type | (attr.st_mode & 0o7777)) & 0o7777;
            ops::chmod_fd(fd.as_fd(), mode)?;
        }
        if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
            let uid = if valid.contains(SetattrValid::UID) {
                attr.st_uid
            } else {
                u32::MAX
            };
            let gid = if valid.contains(SetattrValid::GID) {
                attr.st_gid
            } else {
                u32::MAX
            };
            match self.owner_map() {
                OwnerMap::Identity => ops::fchown(fd.as_fd(), uid, gid)?,
                // Files stay owned by the share owner; the request is accepted and ignored.
                OwnerMap::ShareOwner if self.privileged() => {}
                OwnerMap::ShareOwner => {}
            }
        }
        if valid.contains(SetattrValid::SIZE) {
            if data.file_type == libc::S_IFDIR {
                return Err(err(libc::EISDIR));
            }
            if data.file_type != libc::S_IFREG {
                return Err(err(libc::EINVAL));
            }
            // A mode set in the same request is the client's explicit choice (and was
            // filtered by `allowed_mode` above); otherwise the bits go before the data changes.
            if !valid.contains(SetattrValid::MODE) {
                self.kill_priv_on_modify(fd.as_fd(), valid.contains(SetattrValid::KILL_SUIDGID))?;
            }
            let size = attr.st_size;
            match &open {
                Some(h) => ops::ftruncate(h.file.as_fd(), size)?,
                None => ops::truncate_fd(fd.as_fd(), size)?,
            }
        }
        if valid.intersects(SetattrValid::ATIME | SetattrValid::MTIME) {
            let ts = |set: bool, now: bool, sec: i64, nsec: i64| libc::timespec {
                tv_sec: if set && !now { sec } else { 0 },
                tv_nsec: if !set {
                    libc::UTIME_OMIT
                } else if now {
                    libc::UTIME_NOW
                } else {
                    nsec
                },
            };
            let times = [
                ts(
                    valid.contains(SetattrValid::ATIME),
                    valid.contains(SetattrValid::ATIME_NOW),
                    attr.st_atime,
                    attr.st_atime_nsec,
                ),
                ts(
                    valid.contains(SetattrValid::MTIME),
                    valid.contains(SetattrValid::MTIME_NOW),
                    attr.st_mtime,
                    attr.st_mtime_nsec,
                ),
            ];
            ops::utimens(&self.proc_fd, fd.as_fd(), is_link, &times)?;
        }
        Ok((ops::fstat(fd.as_fd())?, self.cfg.cache.timeout()))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let (data, fd) = self.inode(inode)?;
        if data.file_type != libc::S_IFLNK {
            return Err(err(libc::EINVAL));
        }
        ops::readlink(fd.as_fd())
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.new_node(ctx, parent, name, None, |dir| {
            ops::symlinkat(linkname, dir, name)
        })
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let ftype = mode & libc::S_IFMT;
        match ftype {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK | 0 => {}
            libc::S_IFCHR | libc::S_IFBLK if self.cfg.allow_devices => {}
            libc::S_IFCHR | libc::S_IFBLK => return Err(err(libc::EPERM)),
            _ => return Err(err(libc::EINVAL)),
        }
        let perm = self.allowed_mode(mode & !umask) & 0o7777;
        self.new_node(ctx, parent, name, Some(perm), |dir| {
            ops::mknodat(dir, name, ftype | perm, u64::from(rdev))
        })
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let perm = mode & !umask & 0o7777;
        self.new_node(ctx, parent, name, Some(perm), |dir| {
            ops::mkdirat(dir, name, perm)
        })
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        crate::name::validate(name)?;
        let (_, dir) = self.inode(parent)?;
        ops::unlinkat(dir.as_fd(), name, 0)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        crate::name::validate(name)?;
        let (_, dir) = self.inode(parent)?;
        ops::unlinkat(dir.as_fd(), name, libc::AT_REMOVEDIR)
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        crate::name::validate(oldname)?;
        crate::name::validate(newname)?;
        if flags & !RENAME_FLAGS != 0 {
            return Err(err(libc::EINVAL));
        }
        // RENAME_WHITEOUT leaves a 0:0 character device (an overlayfs whiteout) in place of
        // the source: a device node, so only where the share allows device nodes.
        if flags & libc::RENAME_WHITEOUT != 0 && !self.cfg.allow_devices {
            return Err(err(libc::EINVAL));
        }
        let (_, old) = self.inode(olddir)?;
        let (_, new) = self.inode(newdir)?;
        ops::renameat2(old.as_fd(), oldname, new.as_fd(), newname, flags)
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.check_writable()?;
        crate::name::validate(newname)?;
        let (data, fd) = self.inode(inode)?;
        let (_, dir) = self.inode(newparent)?;
        ops::link_fd(
            self.proc_fd.as_fd(),
            fd.as_fd(),
            data.file_type == libc::S_IFLNK,
            dir.as_fd(),
            newname,
        )?;
        self.lookup_name(newparent, newname)
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let flags = flags as i32 & OPEN_FLAGS_KEPT;
        if self.cfg.readonly && is_write_open(flags) {
            return Err(err(libc::EROFS));
        }
        let (data, fd) = self.inode(inode)?;
        // The type of an inode never changes, and `fd` is an O_PATH fd of this very inode
        // (fstat'ed when it entered the table): checked before anything is opened.
        require_regular(data.file_type)?;
        self.handles.check_room()?;
        if flags & libc::O_TRUNC != 0 {
            self.kill_priv_on_modify(fd.as_fd(), fuse_flags & FOPEN_IN_KILL_SUIDGID != 0)?;
        }
        let file = File::from(ops::reopen(self.proc_fd.as_fd(), fd.as_fd(), flags)?);
        let h = self.handles.insert(OpenFile {
            inode,
            file,
            dir_lock: Mutex::new(()),
        })?;
        Ok((Some(h), self.open_opts(false), None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.check_writable()?;
        crate::name::validate(name)?;
        let (_, dir) = self.inode(parent)?;
        self.handles.check_room()?;
        let guest = args.flags as i32;
        let flags = guest & OPEN_FLAGS_KEPT;
        let perm = self.allowed_mode(libc::S_IFREG | (args.mode & !args.umask)) & 0o7777;
        // O_CREAT|O_EXCL never opens an existing name (a FIFO, device or socket there makes
        // it fail with EEXIST). An existing name is opened O_PATH first (no side effect, never
        // blocks), its type checked, and only a regular file is reopened with the real flags.
        let (file, created) = match ops::open_beneath(
            dir.as_fd(),
            name,
            flags | libc::O_CREAT | libc::O_EXCL,
            perm,
        ) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && guest & libc::O_EXCL == 0 => {
                let path = ops::open_beneath(dir.as_fd(), name, libc::O_PATH, 0)?;
                require_regular(ops::fstat(path.as_fd())?.st_mode)?;
                if flags & libc::O_TRUNC != 0 {
                    self.kill_priv_on_modify(
                        path.as_fd(),
                        args.fuse_flags & FOPEN_IN_KILL_SUIDGID != 0,
                    )?;
                }
                (
                    ops::reopen(self.proc_fd.as_fd(), path.as_fd(), flags)?,
                    false,
                )
            }
            Err(e) => return Err(e),
        };
        if created {
            self.set_owner(file.as_fd(), dir.as_fd(), ctx.uid, ctx.gid, Some(perm))?;
        }
        let path_fd = ops::reopen(self.proc_fd.as_fd(), file.as_fd(), libc::O_PATH)?;
        let entry = self.entry_for(path_fd)?;
        let h = match self.handles.insert(OpenFile {
            inode: entry.inode,
            file: File::from(file),
            dir_lock: Mutex::new(()),
        }) {
            Ok(h) => h,
            Err(e) => {
                self.forget_one(entry.inode, 1);
                return Err(e);
            }
        };
        Ok((entry, Some(h), self.open_opts(false), None))
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let h = self.handle_for(inode, handle)?;
        // SAFETY: `h` keeps the fd open for this whole scope and ManuallyDrop never closes it;
        // the File is only a borrowed view so fuse-backend-rs can pread into guest memory.
        let mut f = ManuallyDrop::new(unsafe { File::from_raw_fd(h.file.as_raw_fd()) });
        w.write_from(&mut *f, size as usize, offset)
    }

    fn write(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.check_writable()?;
        let h = self.handle_for(inode, handle)?;
        self.kill_priv_on_modify(h.file.as_fd(), fuse_flags & WRITE_KILL_PRIV != 0)?;
        // SAFETY: as in `read`: a non-owning view of an fd kept open by `h`.
        let mut f = ManuallyDrop::new(unsafe { File::from_raw_fd(h.file.as_raw_fd()) });
        r.read_to(&mut *f, size as usize, offset)
    }

    fn flush(&self, _ctx: &Context, inode: u64, handle: u64, _lock_owner: u64) -> io::Result<()> {
        self.handle_for(inode, handle).map(drop)
    }

    fn fsync(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let h = self.handle_for(inode, handle)?;
        ops::fsync(h.file.as_fd(), datasync)
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.check_writable()?;
        let h = self.handle_for(inode, handle)?;
        self.kill_priv_on_modify(h.file.as_fd(), false)?;
        ops::fallocate(h.file.as_fd(), mode, offset, length)
    }

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.handle_for(inode, handle)?;
        self.handles.remove(handle).map(drop)
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let (_, fd) = self.inode(inode)?;
        ops::fstatvfs(fd.as_fd())
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.check_writable()?;
        if is_privileged_xattr(name) && !self.cfg.allow_setuid {
            return Err(err(libc::EPERM));
        }
        let (data, fd) = self.inode(inode)?;
        if data.file_type == libc::S_IFLNK {
            return Err(err(libc::EPERM));
        }
        ops::setxattr(fd.as_fd(), name, value, flags)
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let (data, fd) = self.inode(inode)?;
        if data.file_type == libc::S_IFLNK {
            return Err(err(libc::ENODATA));
        }
        if size == 0 {
            let n = ops::getxattr(fd.as_fd(), name, &mut [])?;
            return Ok(GetxattrReply::Count(n as u32));
        }
        let mut buf = vec![0u8; size.min(1 << 16) as usize];
        let n = ops::getxattr(fd.as_fd(), name, &mut buf)?;
        buf.truncate(n);
        Ok(GetxattrReply::Value(buf))
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let (data, fd) = self.inode(inode)?;
        if data.file_type == libc::S_IFLNK {
            return Ok(if size == 0 {
                ListxattrReply::Count(0)
            } else {
                ListxattrReply::Names(Vec::new())
            });
        }
        if size == 0 {
            let n = ops::listxattr(fd.as_fd(), &mut [])?;
            return Ok(ListxattrReply::Count(n as u32));
        }
        let mut buf = vec![0u8; size.min(1 << 16) as usize];
        let n = ops::listxattr(fd.as_fd(), &mut buf)?;
        buf.truncate(n);
        Ok(ListxattrReply::Names(buf))
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.check_writable()?;
        if is_privileged_xattr(name) && !self.cfg.allow_setuid {
            return Err(err(libc::EPERM));
        }
        let (data, fd) = self.inode(inode)?;
        if data.file_type == libc::S_IFLNK {
            return Err(err(libc::EPERM));
        }
        ops::removexattr(fd.as_fd(), name)
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let (data, fd) = self.inode(inode)?;
        if data.file_type != libc::S_IFDIR {
            return Err(err(libc::ENOTDIR));
        }
        self.handles.check_room()?;
        let file = File::from(ops::reopen(
            self.proc_fd.as_fd(),
            fd.as_fd(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?);
        let h = self.handles.insert(OpenFile {
            inode,
            file,
            dir_lock: Mutex::new(()),
        })?;
        Ok((Some(h), self.open_opts(true)))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(inode, handle, size, offset, &mut |dirent| {
            let mut name = dirent.name.to_vec();
            name.push(0);
            let cname = CStr::from_bytes_with_nul(&name).map_err(|_| err(libc::EIO))?;
            let entry = match self.lookup_name(inode, cname) {
                Ok(e) => e,
                // Raced with a host unlink: skip the entry, keep listing.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(1),
                Err(e) => return Err(e),
            };
            let id = entry.inode;
            let n = add_entry(dirent, entry)?;
            if n == 0 {
                self.forget_one(id, 1);
            }
            Ok(n)
        })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.fsync(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.handle_for(inode, handle)?;
        self.handles.remove(handle).map(drop)
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let h = self.handle_for(inode, handle)?;
        ops::lseek(h.file.as_fd(), offset, whence)
    }
}
