//! Fuzz entry for the FUSE request decoder: one raw `/dev/fuse`-format request (header +
//! body, guest-controlled bytes) through the real `Server` and the real confined passthrough
//! over a scratch share. Used by `fuzz/` (cargo-fuzz) and by the smoke test below: a few
//! thousand generated and mutated requests on stable Rust; nothing may panic or touch anything
//! outside the scratch share.

#[cfg(target_os = "linux")]
pub use linux::FuzzTarget;

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::path::Path;
    use std::sync::Arc;

    use fuse_backend_rs::api::server::Server;
    use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader};

    use crate::{PassthroughError, PassthroughFs, ShareConfig};

    pub struct FuzzTarget {
        pub fs: Arc<PassthroughFs>,
        server: Server<Arc<PassthroughFs>>,
        sink: File,
    }

    impl FuzzTarget {
        /// A target serving `share` (which the fuzzer may modify freely).
        pub fn new(share: &Path) -> Result<Self, PassthroughError> {
            let mut cfg = ShareConfig::new(share);
            cfg.max_inodes = 4096;
            cfg.max_open_files = 256;
            let fs = Arc::new(PassthroughFs::new(cfg)?);
            let sink = File::options()
                .write(true)
                .open("/dev/null")
                .map_err(PassthroughError::Proc)?;
            Ok(FuzzTarget {
                server: Server::new(fs.clone()),
                fs,
                sink,
            })
        }

        /// Decodes and executes one request; replies are written to /dev/null. Never panics
        /// on any input (that is what the fuzzer checks).
        pub fn run(&self, data: &[u8]) {
            let mut inbuf = data.to_vec();
            let mut outbuf = vec![0u8; 1 << 17];
            let Ok(reader) = Reader::from_fuse_buffer(FuseBuf::new(&mut inbuf)) else {
                return;
            };
            let Ok(writer) = FuseDevWriter::<()>::new(self.sink.as_raw_fd(), &mut outbuf) else {
                return;
            };
            let _ = self
                .server
                .handle_message(reader, writer.into(), None, None);
        }
    }
}

// The integration tests' request builder and RNG, shared rather than copied.
#[cfg(all(test, target_os = "linux"))]
#[path = "../tests/common/wire.rs"]
mod wire;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::fs;

    use super::wire::{fuse_request, Rng};
    use super::FuzzTarget;

    /// A well-formed request (unique 7) plus `body`.
    fn request(opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        fuse_request(opcode, 7, nodeid, body)
    }

    fn seeds() -> Vec<Vec<u8>> {
        let mut init = Vec::new();
        for x in [7u32, 38, 0, 0x0040_0000 | 0x2000] {
            init.extend_from_slice(&x.to_le_bytes());
        }
        let mut s = vec![request(26, 0, &init)]; // INIT
        for name in [&b"a\0"[..], b"..\0", b"/etc/passwd\0", b"link\0", b"d\0"] {
            s.push(request(1, 1, name)); // LOOKUP
            let mut mk = [0o755u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
            mk.extend_from_slice(name);
            s.push(request(9, 1, &mk)); // MKDIR
            let mut cr = [
                (libc::O_RDWR as u32).to_le_bytes(),
                0o4755u32.to_le_bytes(),
                0u32.to_le_bytes(),
                0u32.to_le_bytes(),
            ]
            .concat();
            cr.extend_from_slice(name);
            s.push(request(35, 1, &cr)); // CREATE
            s.push(request(10, 1, name)); // UNLINK
        }
        s.push(request(6, 1, b"target\0link\0")); // SYMLINK
        s.push(request(27, 1, &[0u8; 16])); // OPENDIR
        s.push(request(44, 1, &[0u8; 40])); // READDIRPLUS
        s.push(request(3, 1, &[0u8; 16])); // GETATTR
        s.push(request(4, 1, &[0u8; 88])); // SETATTR
        s.push(request(15, 2, &[0u8; 40])); // READ
        s.push(request(16, 2, &[0u8; 64])); // WRITE
        s.push(request(17, 1, &[])); // STATFS
        s.push(request(21, 1, b"user.x\0")); // SETXATTR (short body)
        s.push(request(45, 1, &[0u8; 24])); // RENAME2 (short)
        s.push(request(42, 1, &[0u8; 16])); // BATCH_FORGET
        s
    }

    #[test]
    fn test_fuzz_smoke_fuse_decoder_survives_mutated_requests() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let share = tmp.path().join("share");
        fs::create_dir(&share).expect("mkdir");
        fs::write(share.join("a"), b"hello").expect("write");
        std::os::unix::fs::symlink("../outside", share.join("esc")).expect("symlink");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        let target = FuzzTarget::new(&share).expect("target");
        let seeds = seeds();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut runs = 0;
        for seed in &seeds {
            target.run(seed);
            runs += 1;
        }
        // The seeds really reach the filesystem (MKDIR "d" ran; ".." and "/etc/passwd" did not).
        assert!(share.join("d").is_dir(), "seed requests were not executed");
        for _ in 0..4000 {
            let mut v = seeds[rng.below(seeds.len() as u64) as usize].clone();
            match rng.below(6) {
                0 => {
                    let i = rng.below(v.len() as u64) as usize;
                    v[i] = rng.next() as u8;
                }
                1 => v.truncate(rng.below(v.len() as u64 + 1) as usize),
                2 => v.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
                3 => {
                    // Random opcode and node id on a valid header.
                    v[4..8].copy_from_slice(&(rng.below(60) as u32).to_le_bytes());
                    v[16..24].copy_from_slice(&rng.below(8).to_le_bytes());
                }
                4 => {
                    // Lie about the length.
                    v[0..4].copy_from_slice(&(rng.next() as u32).to_le_bytes());
                }
                _ => v = (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
            }
            target.run(&v);
            runs += 1;
        }
        assert!(runs > 4000);
        assert_eq!(
            fs::read_dir(&outside).expect("readdir").count(),
            0,
            "fuzzing wrote outside the share"
        );
    }
}
