//! `vmm-vsock-backend`: the vhost-user-vsock backend for the qemu engine
//! (`-chardev socket,id=c,path=SOCK -device vhost-user-vsock-device,chardev=c` with shared
//! guest memory). Host clients use the hybrid-vsock socket: `CONNECT <port>\n` on
//! `--uds-path`, and guest connections to host port P reach `<uds-path>_P`.
//!
//! Exit status: 0 when the frontend disconnects with `--once`; 1 on an error (one line).

#[cfg(target_os = "linux")]
mod cli {
    use std::path::PathBuf;
    use std::sync::Arc;

    use clap::Parser;
    use vmm::vhost_user::vsock::{bind, serve, VhostUserVsockError, VsockBackend};

    /// Serve virtio-vsock to QEMU over vhost-user.
    #[derive(Parser, Debug)]
    #[command(name = "vmm-vsock-backend", version)]
    struct Args {
        /// The vhost-user socket QEMU connects to (created; a stale socket file is replaced).
        #[arg(long)]
        socket: PathBuf,
        /// The hybrid-vsock host socket.
        #[arg(long)]
        uds_path: PathBuf,
        /// The guest's CID (3 or more).
        #[arg(long, default_value_t = 3)]
        guest_cid: u64,
        /// Exit when the first frontend disconnects, instead of waiting for the next one.
        #[arg(long)]
        once: bool,
    }

    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(c) = src {
            let cs = c.to_string();
            if !s.contains(&cs) {
                s.push_str(": ");
                s.push_str(&cs);
            }
            src = c.source();
        }
        s
    }

    pub fn main() -> i32 {
        vmm::logging::init("warn");
        let args = Args::parse();
        // Everything this process creates is owner-only: the vhost-user socket (bound by
        // vhost-user-backend) and the hybrid sockets. It creates no file for anyone else.
        // SAFETY: umask cannot fail; set before any thread exists.
        unsafe { libc::umask(0o077) };
        let result = VsockBackend::new(args.guest_cid, &args.uds_path)
            .map_err(Into::into)
            .and_then(|b| {
                let mut listener = bind(&args.socket)?;
                // From here on the process handles guest data: not as root, and no exec,
                // ptrace, mounts...
                sandbox::lock_down(sandbox::seccomp::Profile::Device)
                    .map_err(VhostUserVsockError::from)?;
                serve(&mut listener, &args.socket, Arc::new(b), args.once)
            });
        match result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vmm-vsock-backend: error: {}", chain(&e));
                1
            }
        }
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    std::process::exit(cli::main());
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("vmm-vsock-backend: Linux only in this build");
        std::process::exit(1);
    }
}
