//! virtio-balloon seen from the test guest on the real /dev/kvm: free page reporting,
//! inflate/deflate, hostile chains, and the VMM's RSS falling after a large report.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::vm::ChildGuard;
use common::{guest_elf, require_kvm, VmSpec};

fn balloon_spec(tests: &str) -> VmSpec {
    let mut spec = VmSpec::guest(&guest_elf(), tests);
    spec.extra = vec!["--balloon".into()];
    spec
}

#[test]
fn test_balloon_reporting_returns_chain_and_releases_pages() {
    if !require_kvm() {
        return;
    }
    let run = balloon_spec("virtio,balloon").run();
    run.assert_guest_passed();
    // --balloon adds device 5 after the default rng, moving no other device.
    let ids: Vec<String> = run
        .named("virtio.dev")
        .iter()
        .map(|l| l.get("id").to_string())
        .collect();
    assert_eq!(ids, ["4", "5"], "{}", run.dump());
    let init = run.ok("balloon.init");
    let offered = u64::from_str_radix(init.get("offered").trim_start_matches("0x"), 16)
        .expect("offered features");
    assert_eq!(offered & (1 << 5), 1 << 5, "F_REPORTING not offered");
    assert_eq!(init.get("queue3_max"), "0", "{}", run.dump());
    let cfg = run.ok("balloon.config");
    assert_eq!(cfg.get("actual"), "3");
    assert_eq!(cfg.get("num_pages"), "0");
    assert_eq!(cfg.get("num_pages_after_driver_write"), "0");
    let rep = run.ok("balloon.report");
    assert_eq!(rep.get("used_len"), "0", "{}", run.dump());
    assert_eq!(rep.get("reported_zeroed"), "1");
    assert_eq!(rep.get("neighbours_kept"), "1");
    assert_eq!(run.ok("balloon.inflate").get("released"), "1");
}

#[test]
fn test_balloon_hostile_chains_contained_device_still_serves() {
    if !require_kvm() {
        return;
    }
    let run = balloon_spec("balloon_hostile").run();
    run.assert_guest_passed();
    for case in [
        "oob",
        "ram_end",
        "overflow",
        "unaligned",
        "readonly",
        "chain_4g",
        "loop",
        "inflate_writable",
        "inflate_oob",
    ] {
        let l = run.ok(&format!("balloon.hostile.{case}"));
        assert_eq!(l.get("marked_kept"), "1", "{case}\n{}", run.dump());
        // Bad ranges are skipped, never a reason to stop: the chain comes back at once.
        assert_eq!(l.get("completed"), "1", "{case}\n{}", run.dump());
        assert_eq!(l.get("recovered"), "direct", "{case}\n{}", run.dump());
    }
    // An impossible available index is the one thing that needs a reset.
    let idx = run.ok("balloon.hostile.idx");
    assert_eq!(idx.get("needs_reset"), "1", "{}", run.dump());
    assert_eq!(idx.get("recovered"), "after_reset", "{}", run.dump());
    assert!(
        run.stderr.contains("virtio-balloon"),
        "no warning for the hostile chains\n{}",
        run.dump()
    );
}

/// VmRSS of `pid` in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[test]
fn test_balloon_report_of_64mib_drops_vmm_rss() {
    if !require_kvm() {
        return;
    }
    const MIB: u64 = 64;
    let spec = {
        let mut s = balloon_spec("balloon_rss");
        s.cmdline.push_str(&format!(" balloon_mib={MIB}"));
        s.mem_mib = 256;
        s
    };
    let child = Command::new(common::vmm_bin())
        .args(spec.args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm");
    let mut guard = ChildGuard(child);
    let pid = guard.0.id();
    let mut stdin = guard.0.stdin.take().expect("stdin");
    let stdout = guard.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut serial = String::new();
    let mut rss = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        serial.push_str(&line);
        serial.push('\n');
        if line.starts_with("BALLOON ") {
            // The guest waits for our newline, so nothing changes while we read.
            rss.push(vm_rss_kib(pid));
            stdin.write_all(b"\n").expect("answer the guest");
            stdin.flush().expect("flush");
        }
        if line.starts_with("DONE ") {
            break;
        }
    }
    let status = guard.0.wait().expect("wait vmm");
    let mut stderr = String::new();
    if let Some(mut e) = guard.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let dump = format!("--- status {status:?}\n--- serial:\n{serial}\n--- stderr:\n{stderr}");
    assert!(status.success(), "vmm failed\n{dump}");
    assert!(serial.contains("TEST balloon.rss ok"), "{dump}");
    let [start, dirtied, reported] = rss[..] else {
        panic!("expected 3 RSS samples, got {rss:?}\n{dump}");
    };
    eprintln!(
        "vmm VmRSS: start {start} KiB, after dirtying {MIB} MiB {dirtied} KiB, after reporting {reported} KiB"
    );
    let mib = MIB * 1024;
    assert!(
        dirtied >= start + mib * 9 / 10,
        "dirtying {MIB} MiB did not raise RSS: {start} -> {dirtied} KiB\n{dump}"
    );
    assert!(
        reported + mib * 9 / 10 <= dirtied,
        "reporting {MIB} MiB did not lower RSS: {dirtied} -> {reported} KiB\n{dump}"
    );
}
