//! The table of inodes the client holds: FUSE node id → host object, with lookup counts.
//!
//! Platform-neutral: the host side of an inode (`H`) is whatever the platform passthrough
//! needs (Linux: a kernel file handle or a pinned O_PATH fd). Inodes are keyed by the host
//! (device, inode number), so a file keeps its node id across renames and hard links, and
//! the table is bounded: when `max` inodes are held, new lookups fail with ENFILE instead of
//! growing host memory without limit.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Host identity of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

pub struct InodeData<H> {
    pub id: u64,
    pub key: InodeKey,
    /// `st_mode & S_IFMT` at lookup time (an inode never changes type).
    pub file_type: u32,
    pub host: H,
}

struct Slot<H> {
    data: Arc<InodeData<H>>,
    refcount: u64,
}

struct Inner<H> {
    next_id: u64,
    by_id: HashMap<u64, Slot<H>>,
    by_key: HashMap<InodeKey, u64>,
}

pub struct InodeTable<H> {
    inner: Mutex<Inner<H>>,
    max: usize,
}

/// The FUSE root node id.
pub const ROOT_ID: u64 = 1;

impl<H> InodeTable<H> {
    /// A table holding the root inode (which is never forgotten).
    pub fn new(root_key: InodeKey, root_type: u32, root: H, max: usize) -> Self {
        let mut by_id = HashMap::new();
        let mut by_key = HashMap::new();
        by_id.insert(
            ROOT_ID,
            Slot {
                data: Arc::new(InodeData {
                    id: ROOT_ID,
                    key: root_key,
                    file_type: root_type,
                    host: root,
                }),
                refcount: 1,
            },
        );
        by_key.insert(root_key, ROOT_ID);
        InodeTable {
            inner: Mutex::new(Inner {
                next_id: ROOT_ID + 1,
                by_id,
                by_key,
            }),
            max: max.max(2),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<H>> {
        // A panic while holding the lock leaves the maps consistent (all updates are single
        // insert/remove calls), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: u64) -> io::Result<Arc<InodeData<H>>> {
        self.lock()
            .by_id
            .get(&id)
            .map(|s| s.data.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Returns the inode for `key`, adding one lookup reference. If the key is known and
    /// `same(existing host)` holds, the existing node id is reused; otherwise (a new file, or
    /// the inode number was reused by the host) a new node is created from `make()`.
    pub fn lookup(
        &self,
        key: InodeKey,
        file_type: u32,
        same: impl FnOnce(&H) -> bool,
        make: impl FnOnce() -> H,
    ) -> io::Result<Arc<InodeData<H>>> {
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(id) = inner.by_key.get(&key).copied() {
            if let Some(slot) = inner.by_id.get_mut(&id) {
                if slot.data.file_type == file_type && same(&slot.data.host) {
                    slot.refcount = slot.refcount.saturating_add(1);
                    return Ok(slot.data.clone());
                }
            }
        }
        if inner.by_id.len() >= self.max {
            return Err(io::Error::from_raw_os_error(libc::ENFILE));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let data = Arc::new(InodeData {
            id,
            key,
            file_type,
            host: make(),
        });
        inner.by_id.insert(
            id,
            Slot {
                data: data.clone(),
                refcount: 1,
            },
        );
        inner.by_key.insert(key, id);
        Ok(data)
    }

    /// Takes one lookup reference on the inode currently mapped to `key` if `live(data)`
    /// holds (the caller knows the host object is still the same one), without building a new
    /// host handle. Returns None when there is no such inode or `live` says no.
    pub fn acquire_live(
        &self,
        key: InodeKey,
        file_type: u32,
        live: impl FnOnce(&InodeData<H>) -> bool,
    ) -> Option<Arc<InodeData<H>>> {
        let mut g = self.lock();
        let inner = &mut *g;
        let id = inner.by_key.get(&key).copied()?;
        let slot = inner.by_id.get_mut(&id)?;
        if slot.data.file_type != file_type || !live(&slot.data) {
            return None;
        }
        slot.refcount = slot.refcount.saturating_add(1);
        Some(slot.data.clone())
    }

    /// Drops `count` lookup references; returns true when the inode was removed.
    pub fn forget(&self, id: u64, count: u64) -> bool {
        if id == ROOT_ID {
            return false;
        }
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(slot) = inner.by_id.get_mut(&id) else {
            return false;
        };
        slot.refcount = slot.refcount.saturating_sub(count);
        if slot.refcount > 0 {
            return false;
        }
        let key = slot.data.key;
        inner.by_id.remove(&id);
        if inner.by_key.get(&key) == Some(&id) {
            inner.by_key.remove(&key);
        }
        true
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything but the root (FUSE DESTROY / device reset).
    pub fn clear(&self) {
        let mut g = self.lock();
        g.by_id.retain(|id, _| *id == ROOT_ID);
        let root_key = g.by_id.get(&ROOT_ID).map(|s| s.data.key);
        g.by_key.retain(|k, _| Some(*k) == root_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64) -> InodeKey {
        InodeKey { dev: 1, ino }
    }

    #[test]
    fn test_inode_table_same_key_reuses_id_and_counts_refs() {
        let t = InodeTable::new(key(2), 0o040000, (), 10);
        let a = t.lookup(key(5), 0o100000, |_| true, || ()).expect("insert");
        let b = t.lookup(key(5), 0o100000, |_| true, || ()).expect("reuse");
        assert_eq!(a.id, b.id);
        assert!(!t.forget(a.id, 1));
        assert!(t.forget(a.id, 1));
        assert!(t.get(a.id).is_err());
    }

    #[test]
    fn test_inode_table_full_returns_enfile() {
        let t = InodeTable::new(key(2), 0o040000, (), 3);
        t.lookup(key(5), 0, |_| true, || ()).expect("1");
        t.lookup(key(6), 0, |_| true, || ()).expect("2");
        let e = t
            .lookup(key(7), 0, |_| true, || ())
            .err()
            .map(|e| e.raw_os_error());
        assert_eq!(e, Some(Some(libc::ENFILE)));
    }

    #[test]
    fn test_inode_table_root_is_never_forgotten() {
        let t = InodeTable::new(key(2), 0o040000, (), 3);
        assert!(!t.forget(ROOT_ID, 100));
        assert!(t.get(ROOT_ID).is_ok());
    }
}
