//! Fuzz entry for the FUSE request decoder: one raw `/dev/fuse`-format request (header +
//! body, guest-controlled bytes) through the real `Server` and the real confined passthrough
//! over a scratch share. Used by `fuzz/` (cargo-fuzz) and by the fuzz-smoke test.

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
