//! The supervisor out of file descriptors: its control API's accept loop backs off instead
//! of spinning a core while accept(2) fails with EMFILE, serves the waiting client once
//! descriptors are free again, and `raise_nofile` lifts the soft limit to the hard one.
//! Real sockets, the real control server, the process's real RLIMIT_NOFILE (one test in
//! this file: the limit is per process).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use vmctl::instance::State;
use vmctl::supervisor::{control, docker_proxy, limits};

fn rlimit() -> libc::rlimit {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    l
}

fn set_soft(soft: libc::rlim_t) {
    let l = libc::rlimit {
        rlim_cur: soft,
        rlim_max: rlimit().rlim_max,
    };
    // SAFETY: setrlimit reads the rlimit we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) }, 0);
}

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain data that getrusage overwrites.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the rusage we own.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

#[test]
fn test_control_accept_backs_off_on_emfile_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = {
        let _g = rt.enter();
        docker_proxy::bind(&sock).unwrap()
    };
    let state = Arc::new(tokio::sync::Mutex::new(State {
        phase: vmctl::instance::Phase::Running,
        ..Default::default()
    }));
    let (stop, _rx) = tokio::sync::watch::channel(None);
    rt.spawn(control::serve(listener, state, Arc::new(stop)));

    // Fill the descriptor table: a lower soft limit, then /dev/null until EMFILE.
    let before = rlimit();
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as libc::rlim_t;
    set_soft(open_now + 64);
    let mut hog = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
    }
    // One descriptor for the client; the server's accept then has none left.
    hog.pop();
    let mut client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let (cpu0, wall) = (cpu_time(), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_time() - cpu0;
    let share = used.as_secs_f64() / wall.elapsed().as_secs_f64();
    eprintln!(
        "EMFILE for {:.1} s: {:.0} ms CPU ({:.1} % of a core)",
        wall.elapsed().as_secs_f64(),
        used.as_secs_f64() * 1000.0,
        share * 100.0
    );
    // A spinning accept loop burns ~100 % of a core; the back-off a fraction of a percent.
    assert!(share < 0.05, "accept loop spins: {share:.3} of a core");

    // Descriptors back: the waiting client is served within the longest back-off.
    drop(hog);
    client
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    let _ = client.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert!(reply.contains("\"phase\":\"running\""), "{reply:?}");

    // The supervisor's start-up call lifts the soft limit to the hard one.
    set_soft(before.rlim_cur.min(1024));
    let (soft, hard) = limits::raise_nofile().unwrap();
    assert_eq!(soft, hard);
    assert_eq!(rlimit().rlim_cur, before.rlim_max);
}
