//! The vsock backend's seccomp sandbox end to end: the real `vmm-vsock-backend`, started
//! the way the supervisor starts backends, makes a forbidden system call (execve, through
//! the sandbox's self-test switch) right after installing its filter; the kernel kills it
//! with SIGSYS and the supervisor's description of the exit says so and where to look.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use vmctl::supervisor::backends::{describe_exit, sibling_program, Backend};

#[test]
fn test_backend_forbidden_syscall_killed_and_reported_as_seccomp() {
    let Ok(program) = sibling_program("vmm-vsock-backend") else {
        eprintln!(
            "skipped: vmm-vsock-backend is not built next to the test binary \
             (cargo build -p vmm --bins)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (vhost, hybrid, log) = (
        dir.path().join("vsock.vhost.sock"),
        dir.path().join("vsock.sock"),
        dir.path().join("vsock.log"),
    );
    let args: Vec<String> = vec![
        "--socket".into(),
        vhost.display().to_string(),
        "--uds-path".into(),
        hybrid.display().to_string(),
    ];
    // The backend inherits this; set before any thread of this test process starts.
    std::env::set_var("VMCTL_SECCOMP_SELFTEST", "execve");
    let mut b = match Backend::start("vsock", &program, &args, &log, &hybrid) {
        Ok(b) => b,
        Err(e) => panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default()),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = b.try_status() {
            break st;
        }
        assert!(Instant::now() < deadline, "the backend survived execve");
        std::thread::sleep(Duration::from_millis(10));
    };
    let why = describe_exit(status, &b.log);
    eprintln!("the vsock backend {why}");
    assert!(why.contains("seccomp"), "{why}");
    assert!(why.contains("SIGSYS"), "{why}");
    assert!(why.contains(&log.display().to_string()), "{why}");
}
