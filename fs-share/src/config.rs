//! What a share is and how it behaves: the options `fs-share serve`/`mount` expose.

use std::path::PathBuf;
use std::time::Duration;

/// How much the client (guest or host kernel) may cache.
///
/// - `None`: every read/write goes to the host (`FOPEN_DIRECT_IO`), attributes and names are
///   re-validated on every access (timeouts 0). Use when the host changes files constantly.
/// - `Auto` (default): names and attributes are trusted for 1 s, file data is cached and
///   dropped when the file's size or mtime changed at the next open (`AUTO_INVAL_DATA`).
///   Host edits become visible within ~1 s, which matches Docker Desktop's "cached" mode.
/// - `Always`: names/attributes trusted for a day, file data and directory listings kept
///   across opens (`FOPEN_KEEP_CACHE`, `FOPEN_CACHE_DIR`). Fastest; only correct when the
///   guest is the only writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum CachePolicy {
    None,
    #[default]
    Auto,
    Always,
}

impl CachePolicy {
    pub fn timeout(self) -> Duration {
        match self {
            CachePolicy::None => Duration::ZERO,
            CachePolicy::Auto => Duration::from_secs(1),
            CachePolicy::Always => Duration::from_secs(86_400),
        }
    }
}

/// Who owns what the guest creates.
///
/// - `ShareOwner` (default): files and directories the guest creates belong to the owner of
///   the shared folder on the host (the host user), whatever uid the guest process had;
///   guest `chown` requests are accepted and ignored. This is what a Docker Desktop user
///   expects of a home-folder share, and it is the only mode that works when the server runs
///   unprivileged.
/// - `Identity`: guest uids/gids are host uids/gids (created files get the caller's uid/gid,
///   `chown` is applied). Needs a root server; what POSIX test suites expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum OwnerMap {
    #[default]
    ShareOwner,
    Identity,
}

/// Everything that defines one share.
#[derive(Clone, Debug)]
pub struct ShareConfig {
    /// Host folder to share; nothing outside it is ever reachable.
    pub shared_dir: PathBuf,
    /// Refuse every modification with EROFS.
    pub readonly: bool,
    pub cache: CachePolicy,
    pub owner_map: OwnerMap,
    /// Keep setuid/setgid bits the guest sets on files. Off by default: with a root server a
    /// guest could otherwise plant a setuid-root binary in the user's home. Off also means the
    /// bits are dropped whenever the guest modifies a file's data (as an unprivileged local
    /// writer would see), whatever the client's kill-priv flags say.
    pub allow_setuid: bool,
    /// Let the guest create character/block device nodes (and overlayfs whiteouts, through
    /// RENAME_WHITEOUT). Off by default: a device node the guest creates would give host
    /// users access to host devices.
    pub allow_devices: bool,
    /// Most inodes the guest may hold (each costs ~200 bytes of host memory); beyond it
    /// lookups fail with ENFILE.
    pub max_inodes: usize,
    /// Most O_PATH fds kept open for inodes (an LRU; evicted ones are reopened from kernel
    /// file handles). Ignored, i.e. one fd per inode bounded by `max_inodes`, where file
    /// handles cannot be reopened (unprivileged server or a filesystem without handles).
    pub max_inode_fds: usize,
    /// Most files/directories the guest may hold open at once; beyond it open fails ENFILE.
    pub max_open_files: usize,
}

impl ShareConfig {
    pub fn new(shared_dir: impl Into<PathBuf>) -> Self {
        ShareConfig {
            shared_dir: shared_dir.into(),
            readonly: false,
            cache: CachePolicy::default(),
            owner_map: OwnerMap::default(),
            allow_setuid: false,
            allow_devices: false,
            max_inodes: 1 << 20,
            max_inode_fds: 16384,
            max_open_files: 8192,
        }
    }
}
