//! `guest-agent`: PID 1 inside the vmctl VM.
//!
//! Owns the guest side: mounts, cgroup2, network, clock, starting containerd and dockerd,
//! and the control protocol with the host over vsock (ready/health, exec, shutdown,
//! port-listen events) plus the Docker socket bridge (vsock port 2375).
//!
//! Run as PID 1 it boots the guest (see `agent::boot`). Run otherwise it only accepts
//! `--serve-unix PATH`, which serves the control protocol on a unix socket without any
//! PID-1 duty: the host tests use it to exercise the protocol server for real.

mod agent;

fn main() {
    agent::log::init();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if pid == 1 {
        agent::boot::run();
    }
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve-unix") if args.len() == 3 => {
            if let Err(e) = agent::server::serve_unix(std::path::Path::new(&args[2])) {
                eprintln!("guest-agent: {e}");
                std::process::exit(1);
            }
        }
        Some("--version") => println!("guest-agent {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!("usage: guest-agent (as PID 1) | guest-agent --serve-unix PATH | --version");
            std::process::exit(2);
        }
    }
}
