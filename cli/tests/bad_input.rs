//! Bad input never sticks: every command and config key fed empty, huge, negative,
//! wrong-unit, wrong-type, non-UTF-8 values and paths with a comma or newline ends in a
//! one-line error and leaves the instance directory byte-for-byte as it was. The real
//! `vmctl` binary, `VMCTL_HOME` in a temp dir; no VM is started: every case must be
//! refused before any VM work (and `VMCTL_KERNEL` names a missing file, so a case that got
//! past the checks would fail on that, not build or boot anything).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
}

/// Every path under `root` with its bytes (`None` for a directory).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            out.insert(p.clone(), None);
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        } else {
            out.insert(p.clone(), Some(std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn non_utf8(prefix: &str) -> OsString {
    let mut b = prefix.as_bytes().to_vec();
    b.extend_from_slice(b"\xff\xfe");
    OsString::from_vec(b)
}

impl Env {
    fn new() -> Env {
        let e = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(e.user_home()).unwrap();
        std::fs::create_dir_all(e.shared()).unwrap();
        e
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("instances")
    }
    fn user_home(&self) -> PathBuf {
        self.dir.path().join("user")
    }
    /// An existing folder to share.
    fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }
    fn config(&self) -> PathBuf {
        self.home().join("default/config.toml")
    }

    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.run_env(args, &[])
    }

    fn run_env<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &OsStr)]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmctl"));
        c.args(args)
            .env("VMCTL_HOME", self.home())
            .env("HOME", self.user_home())
            .env("VMCTL_KERNEL", self.dir.path().join("guard-no-kernel"))
            .env_remove("VMCTL_ROOTFS")
            .env_remove("VMCTL_AGENT")
            .env("EDITOR", "false")
            .stdin(std::process::Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{:?}: {}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `args`, expecting a one-line error that mentions `expect` and no change at all
    /// under the instances directory.
    fn rejects<S: AsRef<OsStr>>(&self, args: &[S], expect: &str) {
        self.rejects_env(args, &[], expect)
    }

    fn rejects_env<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &OsStr)], expect: &str) {
        let shown: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let before = snapshot(&self.home());
        let out = self.run_env(args, env);
        let after = snapshot(&self.home());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{shown:?} was accepted: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{shown:?}: not one line: {err}");
        assert!(lines[0].starts_with("vmctl: error: "), "{shown:?}: {err}");
        assert!(
            lines[0].contains(expect),
            "{shown:?}: no {expect:?} in: {err}"
        );
        assert!(before == after, "{shown:?} changed the instance directory");
    }

    /// A saved configuration to keep unchanged.
    fn seed(&self) {
        self.ok(&["config", "set", "cpus", "1"]);
        self.ok(&["config", "set", "memory", "1GiB"]);
        let shared = self.shared().display().to_string();
        self.ok(&["config", "set", "mounts", &format!("{shared}:/srv:ro")]);
    }

    fn write_config(&self, bytes: &[u8]) {
        std::fs::create_dir_all(self.config().parent().unwrap()).unwrap();
        std::fs::write(self.config(), bytes).unwrap();
    }
}

/// Bad values for a size flag or key.
const BAD_SIZES: &[&str] = &[
    "",
    "0",
    "-1G",
    "-1",
    "4XB",
    "4.5G",
    "4KiB",
    "1000T",
    "99999999999999999999G",
    "G",
    "four",
];
/// Bad values for `cpus`.
const BAD_CPUS: &[&str] = &[
    "",
    "0",
    "-1",
    "33",
    "2.5",
    "two",
    "1e3",
    "true",
    "99999999999999999999",
];

fn huge() -> String {
    "9".repeat(100_000)
}

/// Runs `f` on a fresh instances directory and on one with a saved configuration.
fn fresh_and_seeded(f: impl Fn(&Env)) {
    for seeded in [false, true] {
        let env = Env::new();
        if seeded {
            env.seed();
        }
        f(&env);
    }
}

#[test]
fn test_start_bad_cpus_rejected_config_unchanged() {
    fresh_and_seeded(|env| {
        for v in BAD_CPUS.iter().copied().chain([huge().as_str()]) {
            env.rejects(&["start", "--cpus", v], "--cpus");
            env.rejects(&["start".to_string(), format!("--cpus={v}")], "--cpus");
        }
        env.rejects(
            &[OsString::from("start"), "--cpus".into(), non_utf8("2")],
            "UTF-8",
        );
    });
}

#[test]
fn test_start_bad_memory_rejected_config_unchanged() {
    fresh_and_seeded(|env| {
        for v in BAD_SIZES.iter().copied().chain(["12M", huge().as_str()]) {
            env.rejects(&["start", "--memory", v], "--memory");
        }
        env.rejects(
            &[OsString::from("start"), "--memory".into(), non_utf8("2")],
            "UTF-8",
        );
    });
}

#[test]
fn test_start_bad_disk_size_rejected_config_unchanged() {
    fresh_and_seeded(|env| {
        for v in BAD_SIZES.iter().copied().chain(["512MiB", "17TiB"]) {
            env.rejects(&["start", "--disk-size", v], "--disk-size");
        }
        env.rejects(
            &[OsString::from("start"), "--disk-size".into(), non_utf8("2")],
            "UTF-8",
        );
        // A bad flag among good ones: none of them is applied.
        env.rejects(
            &[
                "start",
                "--cpus",
                "2",
                "--memory",
                "2GiB",
                "--disk-size",
                "0",
            ],
            "--disk-size",
        );
    });
}

#[test]
fn test_start_bad_mount_rejected_config_unchanged() {
    fresh_and_seeded(|env| {
        let shared = env.shared().display().to_string();
        for v in [
            "",
            "relative/dir",
            "/nonexistent-vmctl-test",
            "/a,b",
            "/a\nb",
            "/a/../b",
            &format!("{shared}:/"),
            &format!("{shared}:/with space"),
            &format!("{shared}:/x:/y"),
            &format!("{shared}:relative"),
            &format!("{shared},/tmp"),
            &format!("/{}", "a".repeat(5000)),
        ] {
            env.rejects(&["start", "--mount", v], "--mount");
        }
        // Two mounts at one guest folder, and a good mount next to a missing one.
        let twice = format!("{shared}:/g");
        env.rejects(&["start", "--mount", &twice, "--mount", &twice], "--mount");
        env.rejects(
            &[
                "start",
                "--mount",
                &shared,
                "--mount",
                "/nonexistent-vmctl-test",
            ],
            "/nonexistent-vmctl-test",
        );
        env.rejects(
            &[
                OsString::from("start"),
                "--mount".into(),
                non_utf8("/tmp/x"),
            ],
            "UTF-8",
        );
    });
}

#[test]
fn test_start_bad_engine_nested_agent_rejected_config_unchanged() {
    fresh_and_seeded(|env| {
        for v in ["", "kvm", "QEMU", "1"] {
            env.rejects(&["start", "--engine", v], "--engine");
        }
        env.rejects(
            &[OsString::from("start"), "--engine".into(), non_utf8("qemu")],
            "--engine",
        );
        env.rejects(&["start", "--nested=maybe"], "--nested");
        env.rejects(&["start", "--agent", "/nonexistent-agent"], "--agent");
        env.rejects(&["start", "--agent", "/"], "--agent");
        env.rejects(&["start", "--bogus"], "--bogus");
    });
}

#[test]
fn test_start_bad_name_and_env_rejected_config_unchanged() {
    fresh_and_seeded(|env| {
        for name in ["", "../x", "a/b", "a b", "a\nb", "a,b", &"n".repeat(33)] {
            env.rejects(&["--name", name, "start"], "name");
        }
        env.rejects(
            &[OsString::from("--name"), non_utf8("x"), "start".into()],
            "UTF-8",
        );
        // The guard itself, and a missing root image next to a kernel that exists.
        env.rejects(&["start"], "VMCTL_KERNEL");
        let kernel = env.dir.path().join("a-kernel");
        std::fs::write(&kernel, b"not really").unwrap();
        let missing = env.dir.path().join("missing-rootfs");
        env.rejects_env(
            &["start"],
            &[
                ("VMCTL_KERNEL", kernel.as_os_str()),
                ("VMCTL_ROOTFS", missing.as_os_str()),
            ],
            "VMCTL_ROOTFS",
        );
    });
}

/// `config set KEY VALUE` for every key with bad values; the error names the key.
#[test]
fn test_config_set_bad_values_rejected_config_unchanged() {
    for seeded in [false, true] {
        let env = Env::new();
        if seeded {
            env.seed();
        }
        let shared = env.shared().display().to_string();
        let h = huge();
        let cases: Vec<(&str, Vec<String>)> = vec![
            (
                "engine",
                vec!["".into(), "kvm".into(), "1".into(), h.clone()],
            ),
            (
                "cpus",
                BAD_CPUS
                    .iter()
                    .map(|s| s.to_string())
                    .chain([h.clone()])
                    .collect(),
            ),
            (
                "memory",
                BAD_SIZES
                    .iter()
                    .map(|s| s.to_string())
                    .chain(["100".into(), "true".into()])
                    .collect(),
            ),
            (
                "disk_size",
                BAD_SIZES
                    .iter()
                    .map(|s| s.to_string())
                    .chain(["1MiB".into(), "17TiB".into()])
                    .collect(),
            ),
            (
                "share_home",
                vec![
                    "".into(),
                    "yes".into(),
                    "1".into(),
                    "TRUE".into(),
                    h.clone(),
                ],
            ),
            (
                "nested",
                vec!["".into(), "no".into(), "0".into(), "False".into()],
            ),
            (
                "allow_privileged_ports",
                vec!["".into(), "yes".into(), "1".into()],
            ),
            (
                "mounts",
                vec![
                    "relative".into(),
                    "/nonexistent-vmctl-test".into(),
                    "/a\nb".into(),
                    "/a/../b".into(),
                    format!("{shared}:/with space"),
                    format!("{shared}:/x:/y"),
                    format!("{shared}:/"),
                    format!("{shared}:/g,{shared}:/g"),
                    format!("/{}", "a".repeat(5000)),
                ],
            ),
        ];
        for (key, values) in &cases {
            for v in values {
                env.rejects(&["config", "set", key, v], key);
            }
            env.rejects(
                &[
                    OsString::from("config"),
                    "set".into(),
                    key.into(),
                    non_utf8("1"),
                ],
                "UTF-8",
            );
        }
        for key in ["", "wat", "CPUS", "cpus ", "disk-size"] {
            env.rejects(&["config", "set", key, "1"], "known keys: engine, cpus");
            env.rejects(&["config", "get", key], "known keys: engine, cpus");
        }
        env.rejects(
            &[
                OsString::from("config"),
                "set".into(),
                non_utf8("k"),
                "1".into(),
            ],
            "UTF-8",
        );
        env.rejects(&["config", "set", "cpus"], "required");
        env.rejects(&["config", "set", "cpus", "1", "2"], "unexpected argument");
    }
}

/// A bad config.toml: every command that reads it says the file, the line and the fix, and
/// nothing (the file included) changes.
#[test]
fn test_bad_config_file_named_with_line_and_left_alone() {
    let cases: &[(&[u8], &str)] = &[
        (b"cpus = 2\nmounts = [\"/a\"\n", "line 2"),
        (
            b"cpus = 2\n\nwat = 1\n",
            "line 3: unknown key \"wat\" (known keys: engine",
        ),
        (b"cpus = \"2\"\n", "line 1: cpus:"),
        (b"cpus = 0\n", "line 1: cpus:"),
        (b"cpus = -1\n", "line 1: cpus:"),
        (b"cpus = 99999999999\n", "line 1: cpus:"),
        (b"cpus = 2.5\n", "line 1: cpus:"),
        (b"memory = true\n", "line 1: memory:"),
        (b"memory = \"4XB\"\n", "line 1: memory:"),
        (b"memory = \"\"\n", "line 1: memory:"),
        (b"memory = -5\n", "line 1: memory:"),
        (b"memory = \"1000TiB\"\n", "line 1: memory:"),
        (b"disk_size = \"1MiB\"\n", "line 1: disk_size:"),
        (b"share_home = \"true\"\n", "line 1: share_home:"),
        (b"nested = 1\n", "line 1: nested:"),
        (b"engine = 1\n", "line 1: engine:"),
        (b"engine = \"kvm\"\n", "line 1: engine:"),
        (b"[engine]\nx = 1\n", "line 1: engine:"),
        (b"mounts = \"/a\"\n", "line 1: mounts:"),
        (b"mounts = [1]\n", "line 1: mounts:"),
        (b"mounts = [\"/a\\nb\"]\n", "line 1: mounts:"),
        (b"mounts = [\"/a,b\"]\n", "line 1: mounts:"),
        (
            b"# ok\nmounts = [\"/nonexistent-vmctl-test\"]\n",
            "/nonexistent-vmctl-test",
        ),
        (b"cpus = 1\nmemory = \"\xff\xfe\"\n", "line 2: not UTF-8"),
    ];
    for (bytes, expect) in cases {
        let env = Env::new();
        env.write_config(bytes);
        let path = env.config().display().to_string();
        let mut commands: Vec<Vec<&str>> = vec![
            vec!["config", "check"],
            vec!["start"],
            vec!["start", "--cpus", "1"],
        ];
        // The missing folder is only a problem for the host; reading the file is fine.
        if !expect.contains("nonexistent") {
            commands.extend([
                vec!["config", "get"],
                vec!["config", "get", "cpus"],
                vec!["config", "set", "cpus", "1"],
            ]);
        }
        for args in commands {
            env.rejects(&args, expect);
            if !expect.contains("nonexistent") {
                env.rejects(&args, &path);
            }
        }
    }
    let env = Env::new();
    let mut big = b"# padding\n".repeat(10_000);
    big.extend_from_slice(b"cpus = 1\n");
    env.write_config(&big);
    env.rejects(&["config", "check"], "too big");
    env.rejects(&["start"], "too big");
}

#[test]
fn test_config_edit_rejected_edit_leaves_config_unchanged() {
    let env = Env::new();
    env.seed();
    let before = std::fs::read(env.config()).unwrap();
    let script = env.dir.path().join("bad-editor");
    std::fs::write(&script, "#!/bin/sh\necho 'wat = 1' >> \"$1\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = env.run_env(&["config", "edit"], &[("EDITOR", script.as_os_str())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.lines().count() == 1, "{err}");
    assert!(
        err.contains("unknown key \"wat\"") && err.contains("unchanged"),
        "{err}"
    );
    assert_eq!(std::fs::read(env.config()).unwrap(), before);
    // An editor that fails, and an empty $EDITOR, change nothing either.
    env.rejects_env(
        &["config", "edit"],
        &[("EDITOR", OsStr::new("false"))],
        "unchanged",
    );
    env.rejects_env(&["config", "edit"], &[("EDITOR", OsStr::new(""))], "EDITOR");
}

#[test]
fn test_other_commands_bad_input_one_line_no_change() {
    let env = Env::new();
    env.seed();
    env.rejects(&["exec"], "nothing to run");
    env.rejects(&["exec", "--", "true"], "not running");
    env.rejects(&["shell"], "not running");
    env.rejects(&["logs"], "vmctl start");
    env.rejects(&["--name", "other", "logs", "--kernel"], "vmctl start");
    env.rejects(&["logs", "--kernel", "--agent"], "cannot be used with");
    env.rejects(&["mount", "/nonexistent-mountpoint"], "not running");
    env.rejects(&["mount"], "required");
    env.rejects(&["status", "--json", "--bogus"], "--bogus");
    env.rejects(&["list", "extra"], "unexpected argument");
    env.rejects(&["bogus-command"], "unrecognized subcommand");
    env.rejects(&["--name", "a b", "status"], "name");
    env.rejects(&["completions", "no-such-shell"], "no-such-shell");
    env.rejects(&["stop", "--force=2"], "--force");
}

#[test]
fn test_good_input_accepted_and_status_lists_mounts() {
    let env = Env::new();
    env.seed();
    assert!(env.ok(&["config", "check"]).contains("valid"));
    let status = env.ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["mounts"][0]["guest"], "/srv", "{status}");
    assert_eq!(v["mounts"][0]["read_only"], true, "{status}");
    assert_eq!(v["memory_configured_mib"], 1024, "{status}");
    assert_eq!(v["running"], false, "{status}");
    let text = env.ok(&["status"]);
    assert!(
        text.contains("mount:   ") && text.contains("-> /srv (read-only)"),
        "{text}"
    );
    let list = env.ok(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v[0]["name"], "default", "{list}");
    // Clearing the mounts is a valid value.
    env.ok(&["config", "set", "mounts", ""]);
    assert_eq!(env.ok(&["config", "get", "mounts"]).trim(), "");
}
