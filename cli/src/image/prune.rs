//! Old builds in the cache. Every change of the guest agent makes a new root image (~90 MB),
//! so without pruning `~/.cache/vmctl/rootfs` grows by one image per agent build. Each use of
//! a cached build is recorded (its directory's mtime is bumped); after a new build, entries
//! beyond the [`KEEP`] most recently used that have not been used for [`MAX_AGE`] are removed.
//! A running VM keeps its image open, and any build used within MAX_AGE stays, so an instance
//! started from it can still restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Builds always kept, most recently used first.
pub const KEEP: usize = 3;
/// Builds used within this long are kept too.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Records that the cached build in `dir` was just used.
pub fn touch(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Removes the build directories under `root` (named by their input hash; staging and
/// temporary directories of builds in progress are left alone) that are neither among the
/// `keep` most recently used nor used within `max_age`. Returns the removed directories and
/// the bytes freed.
pub fn prune(root: &Path, keep: usize, max_age: Duration) -> (Vec<PathBuf>, u64) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return (Vec::new(), 0);
    };
    let mut builds: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_dir()
                .then(|| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), e.path()))
        })
        .collect();
    builds.sort_by_key(|b| std::cmp::Reverse(b.0));
    let now = SystemTime::now();
    let mut removed = Vec::new();
    let mut freed = 0;
    for (used, dir) in builds.into_iter().skip(keep) {
        let age = now.duration_since(used).unwrap_or_default();
        if age < max_age {
            continue;
        }
        let size = dir_size(&dir);
        if std::fs::remove_dir_all(&dir).is_ok() {
            freed += size;
            removed.push(dir);
        }
    }
    (removed, freed)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|es| {
            es.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| if m.is_dir() { 0 } else { m.len() })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(root: &Path, hash: &str, days_ago: u64) -> PathBuf {
        let d = root.join(hash);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("rootfs.squashfs"), vec![0u8; 1000]).unwrap();
        let t = SystemTime::now() - Duration::from_secs(days_ago * 24 * 3600);
        std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
        d
    }

    #[test]
    fn test_prune_keeps_recent_and_newest_removes_old() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let fresh = build(root, "00000000000000a1", 0);
        let week_old = [
            build(root, "00000000000000b1", 10),
            build(root, "00000000000000b2", 11),
            build(root, "00000000000000b3", 12),
            build(root, "00000000000000b4", 13),
            build(root, "00000000000000b5", 14),
        ];
        let recent = build(root, "00000000000000c1", 2);
        // Not builds: left alone whatever their age.
        let staging = build(root, "staging-00000000000000d1", 30);
        let (removed, freed) = prune(root, KEEP, MAX_AGE);
        // Kept: the 3 most recently used (fresh, recent, b1) and nothing else; b2..b5 go.
        assert_eq!(removed.len(), 4, "{removed:?}");
        assert_eq!(freed, 4000);
        for d in [&fresh, &recent, &week_old[0], &staging] {
            assert!(d.exists(), "{d:?} kept");
        }
        for d in &week_old[1..] {
            assert!(!d.exists(), "{d:?} removed");
        }
    }

    #[test]
    fn test_touch_makes_a_build_recent() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let old: Vec<_> = (0..5)
            .map(|i| build(root, &format!("{i:016x}"), 20 + i))
            .collect();
        touch(&old[4]);
        let _ = prune(root, 1, MAX_AGE);
        assert!(old[4].exists());
        assert_eq!(std::fs::read_dir(root).unwrap().count(), 1);
    }
}
