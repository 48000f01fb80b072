//! The Linux passthrough: state and confinement helpers. The `FileSystem` trait methods are
//! in `fs_impl.rs`.
//!
//! Confinement model (how nothing outside the shared folder is ever reached):
//! 1. The share root is opened once (O_PATH). Every other inode is reached *only* by
//!    `openat2(parent_fd, name, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)`
//!    with `name` a single validated component (`crate::name::validate`), so `..`, absolute or
//!    relative symlinks, symlinks swapped in by a racing host process and /proc magic links
//!    are never followed, by construction rather than by checking paths.
//! 2. All other syscalls are `*at` calls on such a parent fd plus one component, or operate on
//!    our own inode fd (AT_EMPTY_PATH or `/proc/self/fd/N`), never on a guest path.
//! 3. Symlinks are stored and read back, never followed; only regular files and directories
//!    are ever opened for I/O (a guest OPEN of a device/fifo/socket inode is refused).
//! 4. Device nodes (mknod, RENAME_WHITEOUT) and setuid/setgid bits are refused/stripped
//!    unless the share allows them; without `allow_setuid` the server also drops the bits of
//!    a file before every write, truncate, O_TRUNC open and fallocate, whatever kill-priv
//!    flags the client sends (a root server holds CAP_FSETID, so the kernel would keep them).
//!    CREATE of an existing name opens it O_PATH and checks its type before a real open.
//! 5. Read-only shares refuse every modifying op with EROFS before touching the host.
//!
//! File-descriptor budget: an inode holds a kernel file handle (`name_to_handle_at`) and its
//! O_PATH fd lives in an LRU of `max_inode_fds`; evicted fds are reopened with
//! `open_by_handle_at`. Where handles cannot be reopened (no CAP_DAC_READ_SEARCH, or a
//! filesystem without export support) each inode pins its fd and the inode table bound
//! (`max_inodes`) is the fd bound. Open files are bounded by `max_open_files`.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuse_backend_rs::api::filesystem::Entry;
use lru::LruCache;

use super::ops;
use crate::config::{OwnerMap, ShareConfig};
use crate::handle_table::HandleTable;
use crate::inode_table::{InodeData, InodeKey, InodeTable, ROOT_ID};
use crate::PassthroughError;

/// The host side of one inode.
pub struct HostInode {
    /// Reopens the inode when its fd was evicted from the LRU.
    handle: Option<ops::FileHandle>,
    /// Set when the inode cannot be reopened from a handle: the fd stays open for the inode's
    /// lifetime (bounded by the inode table size).
    pinned: Option<Arc<OwnedFd>>,
}

/// An open file or directory.
pub struct OpenFile {
    pub inode: u64,
    pub file: File,
    /// Serialises lseek+getdents on directory handles.
    pub dir_lock: Mutex<()>,
}

pub struct PassthroughFs {
    pub(super) cfg: ShareConfig,
    pub(super) proc_fd: OwnedFd,
    pub(super) inodes: InodeTable<HostInode>,
    fd_cache: Mutex<LruCache<u64, Arc<OwnedFd>>>,
    /// One fd per mount seen under the share, the anchor for `open_by_handle_at`.
    mounts: Mutex<HashMap<i32, Arc<OwnedFd>>>,
    pub(super) handles: HandleTable<OpenFile>,
    use_handles: AtomicBool,
    /// Server runs as root: ownership can be set with chown.
    privileged: bool,
    /// Owner of the share root, for `OwnerMap::ShareOwner`.
    share_owner: (u32, u32),
}

pub(super) fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

impl PassthroughFs {
    /// Opens the share. Fails if `shared_dir` is not a directory we can open.
    pub fn new(cfg: ShareConfig) -> Result<Self, PassthroughError> {
        let root = ops::open_root(&cfg.shared_dir)
            .map_err(|e| PassthroughError::OpenShare(cfg.shared_dir.clone(), e))?;
        let st = ops::fstat(root.as_fd())
            .map_err(|e| PassthroughError::OpenShare(cfg.shared_dir.clone(), e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(PassthroughError::NotADirectory(cfg.shared_dir.clone()));
        }
        let proc_fd = ops::open_proc_self_fd().map_err(PassthroughError::Proc)?;
        ops::set_umask(0);
        ops::raise_nofile_limit();
        let privileged = ops::geteuid() == 0;

        // Handles are usable when the root's own handle reopens (needs CAP_DAC_READ_SEARCH).
        // open_by_handle_at wants a real (not O_PATH) fd on the mount: a directory opened
        // O_RDONLY, kept per mount in `mounts`.
        let mut mounts = HashMap::new();
        let root_handle = ops::name_to_handle(root.as_fd()).ok();
        if let Some(h) = &root_handle {
            if let Ok(dirfd) = ops::reopen(
                proc_fd.as_fd(),
                root.as_fd(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            ) {
                if ops::open_by_handle(dirfd.as_fd(), h, libc::O_PATH).is_ok() {
                    mounts.insert(h.mount_id, Arc::new(dirfd));
                }
            }
        }
        let use_handles = !mounts.is_empty();
        tracing::info!(
            share = %cfg.shared_dir.display(),
            use_handles,
            privileged,
            "opened share"
        );
        let key = InodeKey {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let root = Arc::new(root);
        let host = HostInode {
            handle: None,
            pinned: Some(root),
        };
        let cap = NonZeroUsize::new(cfg.max_inode_fds.max(16)).unwrap_or(NonZeroUsize::MIN);
        Ok(PassthroughFs {
            inodes: InodeTable::new(key, libc::S_IFDIR, host, cfg.max_inodes),
            handles: HandleTable::new(cfg.max_open_files),
            fd_cache: Mutex::new(LruCache::new(cap)),
            mounts: Mutex::new(mounts),
            use_handles: AtomicBool::new(use_handles),
            privileged,
            share_owner: (st.st_uid, st.st_gid),
            proc_fd,
            cfg,
        })
    }

    pub fn config(&self) -> &ShareConfig {
        &self.cfg
    }

    /// Inodes currently held by the client.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// Files and directories currently open.
    pub fn open_file_count(&self) -> usize {
        self.handles.len()
    }

    /// The O_PATH fd of an inode: pinned, cached, or reopened from its file handle.
    pub(super) fn inode_fd(&self, data: &InodeData<HostInode>) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = &data.host.pinned {
            return Ok(fd.clone());
        }
        if let Some(fd) = self.cache().get(&data.id) {
            return Ok(fd.clone());
        }
        let handle = data.host.handle.as_ref().ok_or_else(|| err(libc::ESTALE))?;
        let mount = self
            .mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&handle.mount_id)
            .cloned()
            .ok_or_else(|| err(libc::ESTALE))?;
        let fd = Arc::new(ops::open_by_handle(mount.as_fd(), handle, libc::O_PATH)?);
        self.cache().put(data.id, fd.clone());
        Ok(fd)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<u64, Arc<OwnedFd>>> {
        self.fd_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn inode(&self, id: u64) -> io::Result<(Arc<InodeData<HostInode>>, Arc<OwnedFd>)> {
        let data = self.inodes.get(id)?;
        let fd = self.inode_fd(&data)?;
        Ok((data, fd))
    }

    pub(super) fn check_writable(&self) -> io::Result<()> {
        if self.cfg.readonly {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// Registers the inode behind `fd` (freshly opened beneath the share) and returns its
    /// FUSE entry with one lookup reference taken.
    pub(super) fn entry_for(&self, fd: OwnedFd) -> io::Result<Entry> {
        let st = ops::fstat(fd.as_fd())?;
        let key = InodeKey {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        let ftype = st.st_mode & libc::S_IFMT;
        let timeout = self.cfg.cache.timeout();
        // Fast path: a known inode whose fd we still hold open (pinned or in the LRU) cannot
        // have been replaced by a new file with the same inode number, so it is the same
        // inode: no file handle needed. Saves a syscall on most lookups.
        let known = self.inodes.acquire_live(key, ftype, |d| {
            d.host.pinned.is_some() || self.cache().get(&d.id).is_some()
        });
        if let Some(data) = known {
            return Ok(Entry {
                inode: data.id,
                generation: 0,
                attr: st,
                attr_flags: 0,
                attr_timeout: timeout,
                entry_timeout: timeout,
            });
        }
        let mut handle = if self.use_handles.load(Ordering::Relaxed) {
            ops::name_to_handle(fd.as_fd()).ok()
        } else {
            None
        };
        if let Some(h) = &handle {
            let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
            if let std::collections::hash_map::Entry::Vacant(slot) = mounts.entry(h.mount_id) {
                // A mount inside the share: anchor it with this inode if it is a directory,
                // else pin the inode's fd (a bind-mounted file).
                let anchor = (ftype == libc::S_IFDIR).then(|| {
                    ops::reopen(
                        self.proc_fd.as_fd(),
                        fd.as_fd(),
                        libc::O_RDONLY | libc::O_DIRECTORY,
                    )
                });
                match anchor {
                    Some(Ok(dirfd)) => {
                        slot.insert(Arc::new(dirfd));
                    }
                    _ => handle = None,
                }
            }
        }
        let fd = Arc::new(fd);
        let pinned = handle.is_none().then(|| fd.clone());
        let handle_for_cmp = handle.clone();
        let data = self.inodes.lookup(
            key,
            ftype,
            |h| h.handle == handle_for_cmp,
            || HostInode { handle, pinned },
        )?;
        if data.host.pinned.is_none() && data.id != ROOT_ID {
            self.cache().put(data.id, fd);
        }
        Ok(Entry {
            inode: data.id,
            generation: 0,
            attr: st,
            attr_flags: 0,
            attr_timeout: timeout,
            entry_timeout: timeout,
        })
    }

    /// Looks `name` up beneath `parent` without following anything.
    pub(super) fn lookup_name(&self, parent: u64, name: &CStr) -> io::Result<Entry> {
        crate::name::validate(name)?;
        let (_, dir) = self.inode(parent)?;
        let fd = ops::open_beneath(dir.as_fd(), name, libc::O_PATH, 0)?;
        self.entry_for(fd)
    }

    pub(super) fn forget_one(&self, id: u64, count: u64) {
        if self.inodes.forget(id, count) {
            self.cache().pop(&id);
        }
    }

    /// The mode the guest may set: setuid/setgid stripped from non-directories unless the
    /// share allows them (a setgid *directory* only propagates group ownership: harmless).
    pub(super) fn allowed_mode(&self, mode: u32) -> u32 {
        if self.cfg.allow_setuid || mode & libc::S_IFMT == libc::S_IFDIR {
            mode
        } else {
            mode & !(libc::S_ISUID | libc::S_ISGID)
        }
    }

    /// Gives a node the guest just created its owner (see `OwnerMap`), then restores
    /// setuid/setgid bits that chown cleared.
    pub(super) fn set_owner(
        &self,
        fd: BorrowedFd<'_>,
        parent_fd: BorrowedFd<'_>,
        uid: u32,
        gid: u32,
        mode_after: Option<u32>,
    ) -> io::Result<()> {
        if !self.privileged {
            // Unprivileged: the node already belongs to the user running the server.
            return Ok(());
        }
        let (uid, gid) = match self.cfg.owner_map {
            OwnerMap::Identity => (uid, gid),
            OwnerMap::ShareOwner => self.share_owner,
        };
        // In a setgid directory, the group comes from the directory (the kernel already did it).
        let parent = ops::fstat(parent_fd)?;
        let gid = if parent.st_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            gid
        };
        ops::fchown(fd, uid, gid)?;
        if let Some(mode) = mode_after {
            if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
                ops::chmod_fd(fd, mode & 0o7777)?;
            }
        }
        Ok(())
    }

    pub(super) fn owner_map(&self) -> OwnerMap {
        self.cfg.owner_map
    }

    /// The server runs as root (can chown, reopen file handles, mount with allow_other).
    pub fn privileged(&self) -> bool {
        self.privileged
    }

    /// Drops everything the client held (FUSE DESTROY / device reset).
    pub fn reset(&self) {
        self.handles.clear();
        self.inodes.clear();
        self.cache().clear();
    }

    /// Open host fds held for inodes (the LRU plus pinned ones are bounded as documented).
    pub fn cached_inode_fds(&self) -> usize {
        self.cache().len()
    }
}
