//! Small facts about the host user's environment that several commands check.

/// Whether an executable named `bin` is in a directory of `$PATH`.
pub fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// The name of the current user in `/etc/passwd` (local users; what `/etc/subuid` names).
pub fn user_name() -> Option<String> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() }.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_on_path_and_user_name() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-tool-vmctl"));
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            assert_eq!(user_name().as_deref(), Some("root"));
        }
    }
}
