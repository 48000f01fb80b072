//! `guest-agent`: PID 1 inside the vmctl VM.
//!
//! Owns the guest side: mounts, cgroup2, network, clock, starting containerd and dockerd,
//! and the control protocol with the host over vsock (ready/health, exec, shutdown,
//! port-listen events) plus the Docker socket bridge (vsock port 2375).
//!
//! Status: not built yet (see the README status table).

fn main() {
    eprintln!("guest-agent: not built yet");
    std::process::exit(1);
}
