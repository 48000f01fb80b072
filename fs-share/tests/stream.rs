//! The byte-stream transport (`transport::stream`, the guest side of `vmctl mount`) driven
//! with raw FUSE messages over a real socket pair: requests get whole replies, escapes out of
//! the share are refused by the server itself, hostile or truncated lengths end the session
//! with an error, and a fuzz smoke (random and mutated byte streams after a valid INIT)
//! never panics or hangs. The same code under a real kernel FUSE mount is tested in
//! `cli/src/fuse_mount/tests.rs`; with a real guest in `tests/tests/vmctl_mount.rs`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::symlink;
use std::sync::Arc;

use fs_share::transport::stream::{self, StreamError};
use fs_share::{PassthroughFs, ShareConfig};

mod common;
use common::Rng;

const LOOKUP: u32 = 1;
const READLINK: u32 = 5;
const OPEN: u32 = 14;
const FORGET: u32 = 2;

use common::fuse_init_request as init;
use common::fuse_name as name;
use common::fuse_request as request;
use common::{entry_nodeid_and_mode, StreamSession};

/// The session the tests here use: a share with `file` inside, `secret` next to it and a
/// symlink `link` -> `../secret`.
struct Session;

impl Session {
    #[allow(clippy::new_ret_no_self)]
    fn new(workers: usize) -> StreamSession {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(dir.path().join("secret"), "outside").unwrap();
        std::fs::write(share.join("file"), "inside").unwrap();
        symlink("../secret", share.join("link")).unwrap();
        let mut s = StreamSession::start(ShareConfig::new(&share), workers);
        s.dir = Some(dir);
        s
    }
}

#[test]
fn test_stream_requests_get_whole_replies_and_escapes_are_refused() {
    let mut s = Session::new(4);
    // A plain file inside.
    let (err, body) = s.call(LOOKUP, 1, &name("file"));
    assert_eq!(err, 0);
    let (file, mode) = entry_nodeid_and_mode(&body);
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    assert!(file > 1);
    // `..`, `.`, multi-component and absolute names are refused by the server.
    for n in ["..", ".", "a/b", "/etc", "../secret"] {
        let (err, _) = s.call(LOOKUP, 1, &name(n));
        assert!(err < 0, "LOOKUP {n:?} must fail, got {err}");
    }
    // A symlink out of the share is a link, never followed: readlink gives its text, an
    // open is refused (ELOOP).
    let (err, body) = s.call(LOOKUP, 1, &name("link"));
    assert_eq!(err, 0);
    let (link, mode) = entry_nodeid_and_mode(&body);
    assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK);
    let (err, target) = s.call(READLINK, link, &[]);
    assert_eq!(err, 0);
    assert_eq!(target, b"../secret");
    let open_in: Vec<u8> = [libc::O_RDONLY as u32, 0]
        .iter()
        .flat_map(|x| x.to_ne_bytes())
        .collect();
    let (err, _) = s.call(OPEN, link, &open_in);
    assert_eq!(err, -libc::ELOOP);
    // FORGET has no reply: the next request's reply is the next thing on the stream.
    s.host
        .write_all(&request(FORGET, 99, file, &1u64.to_ne_bytes()))
        .unwrap();
    let (err, _) = s.call(LOOKUP, 1, &name("file"));
    assert_eq!(err, 0);
    assert!(s.share.join("file").exists());
    s.finish().expect("a close between messages is a clean end");
}

#[test]
fn test_stream_peer_closing_with_replies_due_is_a_clean_end() {
    // An unmount races its last requests: the peer sends them and closes at once. The
    // replies then have nowhere to go; that is the peer's choice, not a server failure.
    for workers in [1, 4] {
        let mut s = Session::new(workers);
        let burst: Vec<u8> = (0..200u64)
            .flat_map(|u| request(LOOKUP, 1000 + u, 1, &name("file")))
            .collect();
        s.host.write_all(&burst).unwrap();
        s.finish()
            .unwrap_or_else(|e| panic!("{workers} worker(s): a close with replies due: {e:?}"));
    }
}

#[test]
fn test_stream_hostile_lengths_end_the_session_with_an_error() {
    let max = stream::max_message();
    for (len, workers) in [0u32, 3, 39, (max + 1) as u32, u32::MAX]
        .into_iter()
        .flat_map(|l| [(l, 1), (l, 4)])
    {
        let mut s = Session::new(workers);
        let mut req = request(LOOKUP, 5, 1, &name("file"));
        req[0..4].copy_from_slice(&len.to_ne_bytes());
        s.host.write_all(&req).unwrap();
        match s.finish() {
            Err(StreamError::BadLength { len: l, .. }) => assert_eq!(l, len as usize),
            other => panic!("length {len}: {other:?}"),
        }
    }
}

#[test]
fn test_stream_truncated_messages_end_the_session_with_an_error() {
    for (cut, workers) in [(2usize, 1), (20, 4), (45, 1), (45, 4)] {
        let mut s = Session::new(workers);
        let req = request(LOOKUP, 5, 1, &name("file-with-a-long-name"));
        s.host.write_all(&req[..cut]).unwrap();
        match s.finish() {
            Err(StreamError::Truncated) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn test_stream_fuzz_smoke_random_bytes_after_init_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    let fs = Arc::new(PassthroughFs::new(ShareConfig::new(dir.path())).unwrap());
    let seeds = [
        request(LOOKUP, 2, 1, &name("file")),
        request(LOOKUP, 3, 1, &name("..")),
        request(READLINK, 4, 1, &[]),
        request(OPEN, 5, 2, &[0; 8]),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut failed) = (0, 0);
    for i in 0..3000 {
        let mut data = init();
        match i % 3 {
            // Pure random bytes.
            0 => {
                let n = rng.below(256) as usize;
                data.extend((0..n).map(|_| rng.next() as u8));
            }
            // Valid requests with a few bytes flipped (lengths included).
            1 => {
                for _ in 0..1 + rng.below(4) {
                    let mut r = seeds[rng.below(seeds.len() as u64) as usize].clone();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(r.len() as u64) as usize;
                        r[at] ^= 1 << rng.below(8);
                    }
                    data.extend_from_slice(&r);
                }
            }
            // A valid request cut short, or followed by garbage.
            _ => {
                let r = &seeds[rng.below(seeds.len() as u64) as usize];
                let cut = rng.below(r.len() as u64 + 1) as usize;
                data.extend_from_slice(&r[..cut]);
                data.extend((0..rng.below(8)).map(|_| rng.next() as u8));
            }
        }
        match stream::fuzz_session(&fs, &data) {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    eprintln!("fuzz smoke: {ok} sessions ended cleanly, {failed} with an error");
    assert!(
        failed > 1000,
        "most of these streams are malformed: {failed}"
    );
}
