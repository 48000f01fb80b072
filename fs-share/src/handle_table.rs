//! Open files and directories, bounded: at most `max` at once, then ENFILE.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

pub struct HandleTable<V> {
    inner: Mutex<(u64, HashMap<u64, Arc<V>>)>,
    max: usize,
}

impl<V> HandleTable<V> {
    pub fn new(max: usize) -> Self {
        HandleTable {
            inner: Mutex::new((1, HashMap::new())),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (u64, HashMap<u64, Arc<V>>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails with ENFILE before the caller opens anything when the table is full.
    pub fn check_room(&self) -> io::Result<()> {
        if self.lock().1.len() >= self.max {
            Err(io::Error::from_raw_os_error(libc::ENFILE))
        } else {
            Ok(())
        }
    }

    pub fn insert(&self, v: V) -> io::Result<u64> {
        let mut g = self.lock();
        if g.1.len() >= self.max {
            return Err(io::Error::from_raw_os_error(libc::ENFILE));
        }
        let id = g.0;
        g.0 += 1;
        g.1.insert(id, Arc::new(v));
        Ok(id)
    }

    pub fn get(&self, id: u64) -> io::Result<Arc<V>> {
        self.lock()
            .1
            .get(&id)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    pub fn remove(&self, id: u64) -> io::Result<Arc<V>> {
        self.lock()
            .1
            .remove(&id)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    pub fn len(&self) -> usize {
        self.lock().1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        self.lock().1.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_handle_table_full_returns_enfile() {
        let t = HandleTable::new(2);
        let a = t.insert(1).expect("1");
        t.insert(2).expect("2");
        assert_eq!(
            t.insert(3).err().and_then(|e| e.raw_os_error()),
            Some(libc::ENFILE)
        );
        t.remove(a).expect("remove");
        t.insert(4).expect("room again");
    }
}
