//! seccomp for the processes that handle guest data (`vmm`, `vmm-vsock-backend`, `usernet`,
//! `fs-share`): once set up, a process may no longer make the system calls an attacker who
//! took it over through a device bug would want next: running programs, debugging or
//! reading other processes, changing mounts or namespaces, loading kernel code, BPF,
//! keyrings, rebooting, setting the clock. Such a call kills the whole process with SIGSYS,
//! which the supervisor reports. The file server ([`Profile::FileServer`]) also may not
//! open any socket but a unix one: it has no business on the network.
//!
//! This is a deny-list (everything else is allowed), not yet the allow-list Firecracker
//! ships: an allow-list has to be derived from every path the process takes (vhost-user,
//! KVM, usernet, in-process virtio-fs) under the full-VM tests, and a missing entry there
//! kills a working VM. `VMCTL_SECCOMP=off` turns the filter off for debugging.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which process the filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A device model or network backend (`vmm`, `vmm-vsock-backend`, `usernet`).
    Device,
    /// The virtio-fs server (`fs-share`): as [`Profile::Device`], and sockets only of the
    /// unix family.
    FileServer,
}

/// Errors installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("Cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("Cannot compile the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("Cannot install the seccomp filter (VMCTL_SECCOMP=off runs without it)")]
    Install(#[source] seccompiler::Error),
    #[error("seccomp filters are not built for the {0} architecture")]
    Arch(&'static str),
}

/// System calls none of these processes makes once it serves a VM.
pub fn denied_syscalls() -> Vec<(&'static str, i64)> {
    let mut v = vec![
        ("execve", libc::SYS_execve),
        ("execveat", libc::SYS_execveat),
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("chroot", libc::SYS_chroot),
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("reboot", libc::SYS_reboot),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("bpf", libc::SYS_bpf),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("keyctl", libc::SYS_keyctl),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("acct", libc::SYS_acct),
        ("settimeofday", libc::SYS_settimeofday),
        ("clock_settime", libc::SYS_clock_settime),
        ("sethostname", libc::SYS_sethostname),
        ("setdomainname", libc::SYS_setdomainname),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([("iopl", libc::SYS_iopl), ("ioperm", libc::SYS_ioperm)]);
    v
}

fn target_arch() -> Result<TargetArch, SandboxError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(SandboxError::Arch(other)),
    }
}

/// The compiled filter: denied calls kill the process, everything else is allowed.
pub fn filter(profile: Profile) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls()
        .into_iter()
        .map(|(_, nr)| (nr, Vec::new()))
        .collect();
    if profile == Profile::FileServer {
        // socket(domain != AF_UNIX, ...) and socketpair likewise.
        let not_unix = || -> Result<Vec<SeccompRule>, SandboxError> {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                libc::AF_UNIX as u64,
            )
            .map_err(SandboxError::Build)?;
            Ok(vec![
                SeccompRule::new(vec![cond]).map_err(SandboxError::Build)?
            ])
        };
        rules.insert(libc::SYS_socket, not_unix()?);
        rules.insert(libc::SYS_socketpair, not_unix()?);
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        target_arch()?,
    )
    .map_err(SandboxError::Build)?;
    f.try_into().map_err(SandboxError::Compile)
}

/// Whether `VMCTL_SECCOMP=off` asks for no filter.
pub fn disabled_by_env() -> bool {
    std::env::var_os("VMCTL_SECCOMP").is_some_and(|v| v == "off")
}

/// Installs the filter on every thread of this process (and threads it starts later);
/// sets `no_new_privs`. Does nothing under `VMCTL_SECCOMP=off` (returns `Ok(false)`).
pub fn apply(profile: Profile) -> Result<bool, SandboxError> {
    if disabled_by_env() {
        return Ok(false);
    }
    let prog = filter(profile)?;
    seccompiler::apply_filter_all_threads(&prog).map_err(SandboxError::Install)?;
    // For the end-to-end test that a forbidden call kills the process and the supervisor
    // says so: whoever can set this variable can kill the process anyway.
    if std::env::var_os("VMCTL_SECCOMP_SELFTEST").is_some_and(|v| v == "execve") {
        let path = c"/bin/true";
        let argv = [path.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        // SAFETY: execve with a NUL-terminated path and NULL-terminated argv/envp that
        // outlive the call; under the filter it never returns (SIGSYS).
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child and returns how it ended (a wait status).
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: fork in a test; the child only runs `f` (no locks held by other test
        // threads are taken by the calls `f` makes) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = f();
            // SAFETY: _exit in the forked child, skipping the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing into a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn test_seccomp_denied_call_kills_with_sigsys_allowed_calls_work() {
        let prog = filter(Profile::Device).unwrap();
        // Allowed calls still work under the filter: files, sockets, threads, clocks.
        let status = in_child(|| {
            if seccompiler::apply_filter(&prog).is_err() {
                return 10;
            }
            let ok = std::fs::read("/proc/self/status").is_ok()
                && std::net::UdpSocket::bind("127.0.0.1:0").is_ok()
                && std::thread::spawn(|| 1).join().is_ok()
                && std::time::SystemTime::now().elapsed().is_ok();
            if ok {
                0
            } else {
                11
            }
        });
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);

        // A denied call made by the process itself (execve, as an exploit would) kills it
        // with SIGSYS. (std's Command would fork first: the filter is inherited, and the
        // child is the one killed.)
        let prog = filter(Profile::Device).unwrap();
        let status = in_child(|| {
            if seccompiler::apply_filter(&prog).is_err() {
                return 10;
            }
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null::<libc::c_char>()];
            // SAFETY: execve with a NUL-terminated path and NULL-terminated argv/envp that
            // outlive the call; it is expected to never return (SIGSYS).
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            12
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn test_seccomp_file_server_keeps_unix_sockets_and_dies_on_an_inet_one() {
        let prog = filter(Profile::FileServer).unwrap();
        let status = in_child(|| {
            if seccompiler::apply_filter(&prog).is_err() {
                return 10;
            }
            if std::os::unix::net::UnixStream::pair().is_err() {
                return 11;
            }
            // A file server taken over by the guest opening a TCP socket: killed.
            let _ = std::net::TcpListener::bind("127.0.0.1:0");
            12
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        // The device profile keeps the network (usernet needs it).
        let prog = filter(Profile::Device).unwrap();
        let status = in_child(|| {
            if seccompiler::apply_filter(&prog).is_err() {
                return 10;
            }
            i32::from(std::net::TcpListener::bind("127.0.0.1:0").is_err())
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
    }

    #[test]
    fn test_seccomp_deny_list_names_are_unique_and_compile() {
        let list = denied_syscalls();
        let mut nrs: Vec<i64> = list.iter().map(|(_, n)| *n).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), list.len());
        assert!(filter(Profile::Device).is_ok());
        assert!(filter(Profile::FileServer).is_ok());
    }
}
