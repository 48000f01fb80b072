//! The in-process virtio-net device on the real /dev/kvm with the real `usernet stream`
//! backend: the test guest's ARP request for the gateway and DHCP DISCOVER are answered by
//! usernet; malformed transmit chains are dropped without breaking the link; a backend that
//! sends a bad frame length gets its connection closed and the guest sees the link go down.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::vm::ChildGuard;
use common::{guest_elf, require_kvm, workspace_root, VmRun, VmSpec};

const MAC: &str = "02:00:0a:0b:0c:0d";

static USERNET: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Builds the `usernet` binary (the same way the end-to-end tests build their programs:
/// `$CARGO_TARGET_DIR` or the workspace's `target/`) and returns its path.
fn usernet_bin() -> PathBuf {
    let built = USERNET.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let out = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "-p", "usernet", "--bin", "usernet"])
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .map_err(|e| format!("cannot run cargo to build usernet: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building usernet failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(target.join("debug/usernet"))
    });
    match built {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A running `usernet stream --socket S`, killed on drop.
struct Usernet {
    child: ChildGuard,
    socket: PathBuf,
    log: PathBuf,
}

impl Usernet {
    fn start(dir: &Path) -> Usernet {
        let socket = dir.join("usernet.sock");
        let log = dir.join("usernet.log");
        let log_file = std::fs::File::create(&log).expect("usernet log");
        let child: Child = Command::new(usernet_bin())
            .args(["stream", "--socket"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start usernet");
        let mut u = Usernet {
            child: ChildGuard(child),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !u.socket.exists() {
            if let Ok(Some(st)) = u.child.0.try_wait() {
                panic!("usernet exited with {st}:\n{}", u.log());
            }
            assert!(Instant::now() < deadline, "usernet never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        u
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        assert!(
            matches!(self.child.0.try_wait(), Ok(None)),
            "usernet died:\n{}",
            self.log()
        );
    }
}

fn run_guest(tests: &str, net_arg: &str) -> VmRun {
    let mut spec = VmSpec::guest(&guest_elf(), tests);
    spec.timeout = Duration::from_secs(120);
    spec.extra = vec!["--net".into(), net_arg.into()];
    spec.run()
}

#[test]
fn test_virtio_net_usernet_answers_arp_and_dhcp_offer() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut usernet = Usernet::start(dir.path());
    let run = run_guest(
        "net",
        &format!("stream:{},mac={MAC}", usernet.socket.display()),
    );
    run.assert_guest_passed();
    let net = run.ok("net");
    assert_eq!(net.get("mac"), MAC, "{}", run.dump());
    // usernet's gateway MAC and first DHCP address (usernet/src/config.rs defaults).
    assert_eq!(net.get("gw_mac"), "52:55:0a:00:02:02", "{}", run.dump());
    assert_eq!(net.get("offer"), "10.0.2.15", "{}", run.dump());
    assert_eq!(net.get("mtu"), "1500");
    assert_eq!(net.get("link"), "up");
    usernet.assert_running();
}

#[test]
fn test_virtio_net_hostile_chains_dropped_and_link_survives() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut usernet = Usernet::start(dir.path());
    let run = run_guest(
        "hostile_net",
        &format!("stream:{}", usernet.socket.display()),
    );
    run.assert_guest_passed();
    let h = run.ok("hostile_net");
    assert_eq!(h.get("completed"), "6", "{}", run.dump());
    assert_eq!(h.get("rx_short_dropped"), "1", "{}", run.dump());
    assert_eq!(h.get("gw_mac"), "52:55:0a:00:02:02", "{}", run.dump());
    // Each malformed chain was refused by the device (not passed on to usernet, which
    // would have closed the connection on a zero-length frame).
    for why in [
        "Chain of 8 bytes is shorter",
        "Chain of 12 bytes is shorter",
        "Chain of 81920 bytes is longer",
        "Bad descriptor chain",
        "device-writable",
        "receive chain broken or shorter than 1526 bytes",
    ] {
        assert!(
            run.stderr.contains(why),
            "no log line for {why:?}\n{}",
            run.dump()
        );
    }
    assert!(
        !run.stderr.contains("link down"),
        "the link went down\n{}",
        run.dump()
    );
    usernet.assert_running();
}

#[test]
fn test_virtio_net_bad_backend_length_closes_backend_and_link_goes_down() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("bad.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // The backend: reads the guest's first frame, answers with a length beyond 65535, then
    // expects the device to close the connection.
    let backend = std::thread::spawn(move || -> (Vec<u8>, bool) {
        let (mut s, _) = listener.accept().expect("accept the vmm");
        s.set_read_timeout(Some(Duration::from_secs(90))).ok();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("first frame length");
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut frame).expect("first frame");
        s.write_all(&70_000u32.to_be_bytes()).expect("bad length");
        // The device may already have closed the connection on the length alone (what this
        // test expects of it): then the garbage cannot be written, which is fine.
        let _ = s.write_all(&[0xee; 64]);
        let mut rest = Vec::new();
        let closed = s.read_to_end(&mut rest).is_ok();
        (frame, closed)
    });
    let run = run_guest(
        "net_down",
        &format!("stream:{},mac={MAC}", socket.display()),
    );
    let (first, closed) = backend.join().expect("backend thread");
    run.assert_guest_passed();
    let d = run.ok("net_down");
    assert_eq!(d.get("link"), "down", "{}", run.dump());
    assert_eq!(d.get("arp_reply"), "0", "{}", run.dump());
    assert_eq!(d.get("tx_after"), "1", "{}", run.dump());
    assert_eq!(
        d.get("config_irq"),
        "1",
        "no config-change interrupt\n{}",
        run.dump()
    );
    assert!(
        run.stderr
            .contains("Backend frame length 70000 is out of range"),
        "{}",
        run.dump()
    );
    assert!(closed, "the device did not close the backend connection");
    // The frame the backend got is the guest's ARP request, from the configured MAC.
    assert!(first.len() >= 42, "short first frame {first:?}");
    assert_eq!(&first[12..14], &[0x08, 0x06], "not ARP: {first:?}");
    assert_eq!(&first[6..12], &[0x02, 0x00, 0x0a, 0x0b, 0x0c, 0x0d]);
}

#[test]
fn test_virtio_net_missing_backend_socket_is_a_clear_error() {
    if !require_kvm() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing.sock");
    let run = run_guest("net", &format!("stream:{}", missing.display()));
    run.assert_no_crash();
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{}", run.dump());
    assert!(
        run.stderr
            .contains("Cannot connect to the network backend socket"),
        "{}",
        run.dump()
    );
}
