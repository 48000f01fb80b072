//! `vmctl logs` on real log files with the real binary (no VM): guest-written escape
//! sequences and invalid UTF-8 are shown as text, `-f` follows a backend's log across an
//! in-place rotation, and an unknown `--backend` lists the logs there are.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn vmctl(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmctl"));
    c.env("VMCTL_HOME", home).args(["--name", "t"]);
    c
}

#[test]
fn test_logs_sanitised_followed_across_rotation_and_backends_listed() {
    let home = tempfile::tempdir().unwrap();
    let logs = home.path().join("t/logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(
        logs.join("console.log"),
        b"[    0.1] boot\r\n\x1b[31mred\x1b[0m \x1b]0;owned\x07 bad \xff\xfe\r\nagent: ready",
    )
    .unwrap();
    let out = vmctl(home.path())
        .args(["logs", "--kernel"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!out.stdout.contains(&0x1b), "raw ESC on stdout: {out:?}");
    assert!(!out.stdout.contains(&0x07), "raw BEL on stdout");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        "[    0.1] boot\n\\x1b[31mred\\x1b[0m \\x1b]0;owned\\x07 bad \u{fffd}\u{fffd}\nagent: ready"
    );
    let out = vmctl(home.path())
        .args(["logs", "--agent"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "agent: ready");

    // An unknown backend: the error names the ones there are.
    let mut usernet = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("usernet.log"))
        .unwrap();
    let out = vmctl(home.path())
        .args(["logs", "--backend", "../../etc/passwd"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("it has: usernet"), "{err}");

    // -f on a backend's log, through a rotation while following.
    usernet.write_all(b"first\n").unwrap();
    let mut child = vmctl(home.path())
        .args(["logs", "-f", "--backend", "usernet"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(next(), "first");
    usernet.write_all(b"second \x1b[2J\n").unwrap();
    assert_eq!(next(), "second \\x1b[2J");
    std::thread::sleep(Duration::from_millis(400));
    assert!(vmctl::logview::rotate_in_place(&logs.join("usernet.log"), 1).unwrap());
    usernet.write_all(b"after rotation\n").unwrap();
    assert_eq!(next(), "after rotation");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        std::fs::read(logs.join("usernet.log.1")).unwrap(),
        b"first\nsecond \x1b[2J\n"
    );
}
