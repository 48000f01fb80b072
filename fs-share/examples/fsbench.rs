//! Filesystem micro-benchmark run by `bench/fs-share.sh` natively and inside the test guest
//! (on fs-share's and virtiofsd's virtio-fs mounts). Prints `RESULT <metric> <value>` lines.
//! Micro rows (sequential and random I/O, create/stat/unlink, a 10k-entry walk), then a
//! project-like workload: 20k source files unpacked into the share, stat'ed like `find`,
//! searched like `grep -r`, deleted like `rm -rf`.
//!
//! Usage: [FSBENCH_DROP_CACHES=1] fsbench DIR        (DIR/tree must hold the 10k-file tree made by `fsbench --mktree`)
//!        fsbench --mktree DIR

#[cfg(unix)]
fn main() -> std::io::Result<()> {
    imp::main()
}

#[cfg(not(unix))]
fn main() {
    eprintln!("fsbench needs a unix host or guest");
}

#[cfg(unix)]
mod imp {
    use std::fs::{self, File, OpenOptions};
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::time::{Duration, Instant};

    const SEQ_MB: usize = 64;
    const SMALL_FILES: usize = 1000;
    const TREE_DIRS: usize = 100;
    const TREE_FILES: usize = 100;
    const PROJECT_DIRS: usize = 400;
    const PROJECT_FILES: usize = 50;
    /// One file in this many holds the word the `grep -r` row looks for.
    const NEEDLE_EVERY: usize = 97;

    /// Drops the page cache, only inside the test guest (FSBENCH_DROP_CACHES=1): never on a
    /// shared host.
    fn drop_caches() {
        if std::env::var_os("FSBENCH_DROP_CACHES").is_some() {
            let _ = fs::write("/proc/sys/vm/drop_caches", "3");
        }
    }

    fn result(name: &str, v: f64) {
        println!("RESULT {name} {v:.1}");
    }

    fn mktree(dir: &Path) -> std::io::Result<()> {
        for d in 0..TREE_DIRS {
            let sub = dir.join(format!("tree/d{d:03}"));
            fs::create_dir_all(&sub)?;
            for f in 0..TREE_FILES {
                fs::write(sub.join(format!("f{f:03}.rs")), b"fn main() {}\n")?;
            }
        }
        Ok(())
    }

    fn walk(dir: &Path, n: &mut usize) -> std::io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let md = fs::symlink_metadata(e.path())?;
            *n += 1;
            if md.is_dir() {
                walk(&e.path(), n)?;
            }
        }
        Ok(())
    }

    /// A source file of 256 B to 8 KiB (sizes spread by a fixed sequence, like a real tree).
    fn source_file(i: usize) -> Vec<u8> {
        let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        x ^= x >> 29;
        let size = 256 + (x % (8192 - 256)) as usize;
        let mut text = Vec::with_capacity(size + 64);
        if i % NEEDLE_EVERY == 0 {
            text.extend_from_slice(b"// FIXME-NEEDLE: revisit\n");
        }
        let mut line = 0;
        while text.len() < size {
            text.extend_from_slice(
                format!("pub fn item_{i}_{line}() -> u32 {{ {line} }}\n").as_bytes(),
            );
            line += 1;
        }
        text
    }

    /// `grep -rl` for `needle`: every file read whole; returns how many files hold it.
    fn grep(dir: &Path, needle: &[u8], hits: &mut usize) -> std::io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                grep(&path, needle, hits)?;
            } else if fs::read(&path)?.windows(needle.len()).any(|w| w == needle) {
                *hits += 1;
            }
        }
        Ok(())
    }

    /// The project-like rows: unpack, find/stat, grep -r, rm -rf of 20k files.
    fn project(dir: &Path) -> std::io::Result<()> {
        let root = dir.join("project");
        let t = Instant::now();
        let mut bytes = 0usize;
        for d in 0..PROJECT_DIRS {
            let sub = root.join(format!("src/m{d:03}"));
            fs::create_dir_all(&sub)?;
            for f in 0..PROJECT_FILES {
                let text = source_file(d * PROJECT_FILES + f);
                bytes += text.len();
                fs::write(sub.join(format!("f{f:02}.rs")), text)?;
            }
        }
        result("project_unpack_20k_ms", t.elapsed().as_secs_f64() * 1000.0);
        eprintln!(
            "project tree: {} files, {} MiB",
            PROJECT_DIRS * PROJECT_FILES,
            bytes >> 20
        );

        drop_caches();
        let t = Instant::now();
        let mut n = 0;
        walk(&root, &mut n)?;
        result("project_find_stat_ms", t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(n, PROJECT_DIRS * (PROJECT_FILES + 1) + 1);

        drop_caches();
        let t = Instant::now();
        let mut hits = 0;
        grep(&root, b"FIXME-NEEDLE", &mut hits)?;
        result("project_grep_r_ms", t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(hits, (PROJECT_DIRS * PROJECT_FILES).div_ceil(NEEDLE_EVERY));

        let t = Instant::now();
        fs::remove_dir_all(&root)?;
        result("project_rm_rf_ms", t.elapsed().as_secs_f64() * 1000.0);
        Ok(())
    }

    pub fn main() -> std::io::Result<()> {
        let args: Vec<String> = std::env::args().collect();
        if args.len() == 3 && args[1] == "--mktree" {
            return mktree(Path::new(&args[2]));
        }
        let Some(dir) = args.get(1).map(Path::new) else {
            eprintln!("usage: fsbench DIR | fsbench --mktree DIR");
            std::process::exit(2);
        };
        let seq = dir.join("seq.bin");
        let chunk = vec![0x5au8; 1 << 20];

        let t = Instant::now();
        let mut f = File::create(&seq)?;
        for _ in 0..SEQ_MB {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
        drop(f);
        result("seq_write_MBps", SEQ_MB as f64 / t.elapsed().as_secs_f64());

        drop_caches();
        let t = Instant::now();
        let mut f = File::open(&seq)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, SEQ_MB << 20);
        result("seq_read_MBps", SEQ_MB as f64 / t.elapsed().as_secs_f64());

        drop_caches();
        let f = OpenOptions::new().read(true).open(&seq)?;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut page = [0u8; 4096];
        let blocks = ((SEQ_MB << 20) / 4096) as u64;
        let t = Instant::now();
        let mut ops = 0u64;
        while t.elapsed() < Duration::from_secs(3) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.read_exact_at(&mut page, (x % blocks) * 4096)?;
            ops += 1;
        }
        result("rand_read_4k_IOPS", ops as f64 / t.elapsed().as_secs_f64());
        fs::remove_file(&seq)?;

        let small = dir.join("small");
        fs::create_dir_all(&small)?;
        let names: Vec<_> = (0..SMALL_FILES)
            .map(|i| small.join(format!("s{i}")))
            .collect();
        let t = Instant::now();
        for p in &names {
            File::create(p)?;
        }
        result("create_ops", SMALL_FILES as f64 / t.elapsed().as_secs_f64());
        drop_caches();
        let t = Instant::now();
        for p in &names {
            fs::metadata(p)?;
        }
        result("stat_ops", SMALL_FILES as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for p in &names {
            fs::remove_file(p)?;
        }
        result("unlink_ops", SMALL_FILES as f64 / t.elapsed().as_secs_f64());

        drop_caches();
        let t = Instant::now();
        let mut n = 0;
        walk(&dir.join("tree"), &mut n)?;
        let secs = t.elapsed().as_secs_f64();
        result("tree_walk_10k_ms", secs * 1000.0);
        result("tree_walk_entries", n as f64);

        project(dir)
    }
}
