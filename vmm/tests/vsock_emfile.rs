//! The hybrid-vsock muxer out of file descriptors (a flood of host clients): a failing
//! accept(2) takes the listener out of the event loop instead of leaving it readable (which
//! spun the device's worker at 100 % CPU), the next timer tick puts it back, and the
//! waiting client then gets through to the guest. Real sockets, epoll, timerfd and the
//! process's real RLIMIT_NOFILE (one test in this file: the limit is per process).
#![cfg(target_os = "linux")]
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm::devices::virtio::vsock::muxer::Muxer;

fn set_soft_nofile(soft: libc::rlim_t) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on an rlimit we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
}

/// Whether the muxer's epoll fd becomes readable within `ms`.
fn readable_within(m: &Muxer, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: m.epoll_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

#[test]
fn test_vsock_accept_emfile_pauses_listener_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("v.sock");
    let mut m = Muxer::new(3, &sock).unwrap();

    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as libc::rlim_t;
    set_soft_nofile(open_now + 32);
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    hog.pop();
    // The client's connect lands in the backlog; the muxer has no fd left to accept it.
    let mut client = UnixStream::connect(&sock).unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    assert!(
        readable_within(&m, 1000),
        "the pending client wakes the loop"
    );
    m.process_host_events();

    // Paused: the loop is not woken over and over while accept keeps failing.
    let start = Instant::now();
    let mut wakeups = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        if readable_within(&m, 100) {
            wakeups += 1;
            m.process_host_events();
        }
    }
    eprintln!("wake-ups in 2.5 s while out of fds: {wakeups}");
    // One per timer tick (1 s) and the re-armed listener's retry, not thousands.
    assert!(wakeups <= 8, "{wakeups} wake-ups: the listener spins");

    // Descriptors back: within a tick the client is accepted and its CONNECT reaches the guest.
    drop(hog);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 4096];
    loop {
        if readable_within(&m, 100) {
            m.process_host_events();
        }
        if m.has_rx() && m.next_rx(&mut buf).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "client never got through");
    }
    assert_eq!(m.conn_count(), 1);
}
