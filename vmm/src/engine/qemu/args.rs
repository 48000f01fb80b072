//! The QEMU command line for a vmctl guest: direct kernel boot, memfd-backed shared
//! memory (so vhost-user backends can attach), the serial console to a file.
//!
//! Machine: `-M microvm` (virtio-mmio) on KVM, where kvm-clock gives the guest a clock;
//! `-M q35` (virtio-pci) under TCG. Measured here: under TCG on a loaded host the microvm
//! guest hangs at boot after "tsc: Unable to calibrate against PIT … No reference
//! (HPET/PMTIMER) available" (microvm has neither an HPET nor an ACPI PM timer), while q35
//! calibrates against its PM timer and reached the root mount in 2.6 s.

use std::path::PathBuf;

use super::accel::Accel;

/// A host TCP port forwarded to a guest port through QEMU's user networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwd {
    pub host_addr: String,
    pub host_port: u16,
    pub guest_port: u16,
}

/// Guest networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    None,
    /// QEMU's built-in user networking (slirp), with inbound TCP forwards.
    User {
        hostfwd: Vec<HostFwd>,
    },
    /// A unix stream socket speaking QEMU's `-netdev stream` framing (the project's usernet).
    Stream {
        socket: PathBuf,
    },
}

/// QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Microvm,
    Q35,
}

impl Machine {
    /// microvm on KVM, q35 under TCG (see the module docs).
    pub fn for_accel(accel: Accel) -> Machine {
        match accel {
            Accel::Kvm => Machine::Microvm,
            Accel::Tcg => Machine::Q35,
        }
    }

    /// The QEMU device name of a virtio device on this machine's transport.
    fn virtio(self, kind: &str) -> String {
        match self {
            Machine::Microvm => format!("{kind}-device"),
            Machine::Q35 => format!("{kind}-pci"),
        }
    }
}

/// Everything the engine needs to start a guest.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub data_disk: Option<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Extra kernel command line words (e.g. `vmctl.docker_tcp=2375`).
    pub cmdline_extra: Vec<String>,
    pub console_log: PathBuf,
    pub net: Net,
    /// vhost-user-vsock backend socket and the guest CID it serves.
    pub vsock: Option<(PathBuf, u32)>,
    /// virtio-fs shares: (tag, vhost-user-fs backend socket).
    pub fs_shares: Vec<(String, PathBuf)>,
    /// QMP control socket (for graceful power-off).
    pub qmp_socket: Option<PathBuf>,
    /// Machine type; `None` picks [`Machine::for_accel`].
    pub machine: Option<Machine>,
    /// Give the guest the CPU's virtualization extensions (a KVM inside the VM): SVM with
    /// nested paging under TCG, the host's VMX/SVM on KVM (when its `nested` is on).
    pub nested: bool,
    /// The whole kernel command line, replacing [`cmdline`]'s (vmctl builds its own).
    pub cmdline: Option<String>,
    /// QEMU's own seccomp sandbox (`-sandbox on` with obsolete calls, privilege changes,
    /// spawning and resource control denied); set where this QEMU supports it
    /// ([`qemu_supports_sandbox`]).
    pub sandbox: bool,
    /// Become this user once the devices are set up (vmctl started as root: QEMU faces the
    /// guest as an unprivileged user, not as root).
    pub run_as: Option<RunAs>,
}

/// Which user QEMU becomes after set-up, and the option this QEMU has for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub option: RunAsOption,
}

/// `-run-with user=` (QEMU 9.1 and later, where `-runas` is deprecated) or `-runas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAsOption {
    RunWith,
    Runas,
}

fn qemu_help(qemu: &std::path::Path) -> Option<String> {
    let o = std::process::Command::new(qemu)
        .arg("-help")
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Whether `qemu` lists `-sandbox` in its help (built with libseccomp).
pub fn qemu_supports_sandbox(qemu: &std::path::Path) -> bool {
    qemu_help(qemu).is_some_and(|h| h.contains("\n-sandbox "))
}

/// How `qemu` changes its user after set-up, from its help; `None` if it cannot.
pub fn qemu_run_as_option(qemu: &std::path::Path) -> Option<RunAsOption> {
    let help = qemu_help(qemu)?;
    if help
        .lines()
        .any(|l| l.starts_with("-run-with ") && l.contains("user="))
    {
        Some(RunAsOption::RunWith)
    } else if help.contains("\n-runas ") {
        Some(RunAsOption::Runas)
    } else {
        None
    }
}

/// The QEMU binary: `$VMCTL_QEMU` when set (another build or version, as Lima's
/// `QEMU_SYSTEM_X86_64`), else `qemu-system-x86_64` from `PATH`.
pub fn default_qemu() -> PathBuf {
    std::env::var_os("VMCTL_QEMU")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from)
}

impl QemuConfig {
    /// Defaults: 2 GiB, 2 vCPUs, no network, no vsock.
    pub fn new(kernel: PathBuf, rootfs: PathBuf, console_log: PathBuf) -> Self {
        QemuConfig {
            qemu: default_qemu(),
            kernel,
            rootfs,
            data_disk: None,
            memory_mib: 2048,
            cpus: 2,
            cmdline_extra: Vec::new(),
            console_log,
            net: Net::None,
            vsock: None,
            fs_shares: Vec::new(),
            qmp_socket: None,
            machine: None,
            nested: false,
            cmdline: None,
            sandbox: false,
            run_as: None,
        }
    }
}

/// virtio-blk serial of the data disk: the one the guest agent looks for when the kernel
/// command line names none (`guest_agent::cmdline`; the `vmctl` crate's tests check they
/// agree), so no `vmctl.*` word is needed for it.
pub const DATA_DISK_SERIAL: &str = "vmctl-data";

/// The kernel words every vmctl guest boots with, whichever engine runs it: the read-only
/// root image on vda, the console on COM1, the agent as init.
pub const GUEST_KERNEL_WORDS: &[&str] = &[
    "console=ttyS0",
    "root=/dev/vda",
    "rootfstype=squashfs",
    "ro",
    "init=/sbin/init",
    "panic=-1",
    "loglevel=4",
    "8250.nr_uarts=1",
    // Under TCG on a busy host the vCPU can be starved while the kernel checks that the
    // timer interrupt works ("IO-APIC + timer doesn't work!" panic, seen here).
    "no_timer_check",
];

/// The kernel command line.
pub fn cmdline(cfg: &QemuConfig) -> String {
    if let Some(c) = &cfg.cmdline {
        return c.clone();
    }
    let mut words: Vec<String> = GUEST_KERNEL_WORDS.iter().map(|s| s.to_string()).collect();
    match cfg.net {
        // The kernel's IP autoconfiguration does DHCP; the agent writes resolv.conf.
        Net::User { .. } | Net::Stream { .. } => words.push("ip=dhcp".into()),
        Net::None => {}
    }
    words.extend(cfg.cmdline_extra.iter().cloned());
    words.join(" ")
}

fn path(p: &std::path::Path) -> String {
    // QEMU option values use ',' as a separator; a literal comma is doubled.
    p.display().to_string().replace(',', ",,")
}

/// The `-cpu` model under TCG (see `build`).
const TCG_CPU: &str =
    "max,la57=off,avx=off,avx2=off,fma=off,f16c=off,vaes=off,vpclmulqdq=off,avx512f=off";

/// The `-cpu` value: the host's CPU on KVM, [`TCG_CPU`] under TCG; the virtualization
/// extensions only with `nested`, so a guest has a /dev/kvm exactly when asked for.
fn cpu_model(accel: Accel, nested: bool) -> String {
    match (accel, nested) {
        (Accel::Kvm, true) => "host".into(),
        (Accel::Kvm, false) => "host,vmx=off,svm=off".into(),
        // No virtual GIF: with QEMU 7.2's TCG emulation of it, a nested guest now and then
        // took an interrupt with interrupts masked and spun forever on the timekeeping
        // seqcount it was writing (inner vCPU stuck at one RIP in
        // `ktime_get_update_offsets_now`, no interrupt injected; 3 boots in ~8). Without
        // vGIF the guest's KVM masks interrupts itself: 16 of 16 inner boots completed.
        (Accel::Tcg, true) => format!("{TCG_CPU},svm=on,npt=on,vgif=off"),
        (Accel::Tcg, false) => format!("{TCG_CPU},svm=off"),
    }
}

/// The argument vector (without the program).
pub fn build(cfg: &QemuConfig, accel: Accel) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let mem = format!("{}M", cfg.memory_mib);
    let machine = cfg.machine.unwrap_or(Machine::for_accel(accel));
    let virtio = |kind: &str| machine.virtio(kind);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    match machine {
        Machine::Microvm => push(&[
            "-M",
            "microvm,x-option-roms=off,rtc=on,acpi=on,memory-backend=mem",
        ]),
        Machine::Q35 => push(&["-M", "q35,memory-backend=mem"]),
    }
    if cfg.sandbox {
        // QEMU parses guest-controlled data all day: it may not exec, fork, change its
        // privileges or use obsolete system calls (a violation kills it, and the
        // supervisor reports the VM failed). Changing its user once (`run_as`) needs the
        // id calls: seccomp is installed before QEMU drops root, and as the unprivileged
        // user it runs as afterwards those calls can no longer regain anything.
        let elevate = if cfg.run_as.is_some() {
            "allow"
        } else {
            "deny"
        };
        push(&[
            "-sandbox",
            &format!(
                "on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"
            ),
        ]);
    }
    if let Some(r) = &cfg.run_as {
        match r.option {
            RunAsOption::RunWith => push(&["-run-with", &format!("user={}", r.user)]),
            RunAsOption::Runas => push(&["-runas", &r.user]),
        }
    }
    // Under TCG with several vCPUs, one host thread runs them all in turn (`thread=single`)
    // instead of one thread each (MTTCG). The guest kernel patches its own code at run time
    // (jump labels flipped when dockerd creates the first container's cgroups) while other
    // vCPUs run it; under MTTCG a vCPU here now and then still executed the half-patched
    // instruction (oops at an address inside a 5-byte NOP of kmem_cache_alloc, "Fatal
    // exception in interrupt", about one VM in five that ran a container). Round-robin
    // TCG runs the vCPUs one at a time, so every vCPU sees a patch whole.
    if accel == Accel::Tcg && cfg.cpus > 1 {
        push(&["-accel", "tcg,thread=single"]);
    } else {
        push(&["-accel", accel.as_str()]);
    }
    // Under TCG: every feature TCG emulates except 5-level paging and the AVX family, whose
    // TCG emulation is new in QEMU 7.2. With them on, guest kernels here hit slab corruption
    // under load a few times (after a guest reboot, in the middle of `docker run`); guests
    // only lose vector speed-ups they cannot have at TCG speed anyway.
    push(&["-cpu", &cpu_model(accel, cfg.nested)]);
    push(&["-m", &mem, "-smp", &cfg.cpus.to_string()]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
    ]);
    let mut append = cmdline(cfg);
    if accel == Accel::Tcg {
        // TCG's TSC is the host's, one counter for every vCPU, but with round-robin vCPUs
        // the guest's boot-time sync check sees warps and marks it unstable. A guest KVM on
        // an "unstable" TSC rewrites its own guests' TSC offset at every vCPU load, and
        // inner guests (the nested bed, `--nested`) then stalled at random points of boot.
        append.push_str(" tsc=reliable");
        // TCG keys translated code by guest-physical page (position-independent blocks,
        // QEMU 8 and later) and drops it only when the guest CPU or QEMU itself writes the
        // page. A vhost-user backend (fs-share, the vsock backend) writes guest memory from
        // another process, unseen: a page cache page that once held executed code and is
        // refilled by a virtio-fs read still runs the old code. Measured with Debian's
        // QEMU 10.0 (bookworm-backports, Debian 13's version): a binary on a share
        // crashed on 5 of 6 runs after `drop_caches`. Zeroing pages when they are
        // allocated is a guest CPU write, so every reused page loses its stale code
        // before a backend fills it: 10 of 10 runs, boot time unchanged.
        append.push_str(" init_on_alloc=1");
    }
    push(&["-kernel", &path(&cfg.kernel), "-append", &append]);
    push(&[
        "-chardev",
        // append=on: O_APPEND, so the supervisor can rotate the log under QEMU.
        &format!("file,id=console,path={},append=on", path(&cfg.console_log)),
    ]);
    push(&["-serial", "chardev:console"]);
    // vda: the read-only root image; the data disk is found by its serial in the guest.
    push(&[
        "-drive",
        &format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            path(&cfg.rootfs)
        ),
    ]);
    push(&["-device", &format!("{},drive=root", virtio("virtio-blk"))]);
    if let Some(d) = &cfg.data_disk {
        push(&[
            "-drive",
            &format!(
                "id=data,file={},format=raw,if=none,discard=unmap,detect-zeroes=unmap",
                path(d)
            ),
        ]);
        push(&[
            "-device",
            &format!(
                "{},drive=data,serial={DATA_DISK_SERIAL}",
                virtio("virtio-blk")
            ),
        ]);
    }
    push(&["-object", "rng-random,id=rng,filename=/dev/urandom"]);
    push(&["-device", &format!("{},rng=rng", virtio("virtio-rng"))]);
    // No option ROM (iPXE) for the NIC: the kernel is booted directly.
    let nic = match machine {
        Machine::Microvm => "virtio-net-device,netdev=net0".to_string(),
        Machine::Q35 => "virtio-net-pci,netdev=net0,romfile=".to_string(),
    };
    match &cfg.net {
        Net::None => {}
        Net::User { hostfwd } => {
            let mut nd = "user,id=net0".to_string();
            for f in hostfwd {
                nd.push_str(&format!(
                    ",hostfwd=tcp:{}:{}-:{}",
                    f.host_addr, f.host_port, f.guest_port
                ));
            }
            push(&["-netdev", &nd, "-device", &nic]);
        }
        Net::Stream { socket } => {
            let nd = format!(
                "stream,id=net0,server=off,addr.type=unix,addr.path={}",
                path(socket)
            );
            push(&["-netdev", &nd, "-device", &nic]);
        }
    }
    if let Some((sock, _cid)) = &cfg.vsock {
        push(&["-chardev", &format!("socket,id=vsock,path={}", path(sock))]);
        // No guest-cid property: QEMU reads the CID from the backend's config space, so
        // the backend must be started with the same CID.
        push(&[
            "-device",
            &format!("{},chardev=vsock", virtio("vhost-user-vsock")),
        ]);
    }
    for (i, (tag, sock)) in cfg.fs_shares.iter().enumerate() {
        push(&["-chardev", &format!("socket,id=fs{i},path={}", path(sock))]);
        push(&[
            "-device",
            &format!("{},chardev=fs{i},tag={tag}", virtio("vhost-user-fs")),
        ]);
    }
    if let Some(q) = &cfg.qmp_socket {
        push(&["-qmp", &format!("unix:{},server=on,wait=off", path(q))]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> QemuConfig {
        let mut c = QemuConfig::new(
            "/k/bzImage".into(),
            "/r/root,fs".into(),
            "/i/console.log".into(),
        );
        c.data_disk = Some("/i/data.img".into());
        c.net = Net::User {
            hostfwd: vec![HostFwd {
                host_addr: "127.0.0.1".into(),
                host_port: 40000,
                guest_port: 2375,
            }],
        };
        c.cmdline_extra = vec!["vmctl.docker_tcp=2375".into()];
        c
    }

    #[test]
    fn test_qemu_sandbox_option_accepted_by_this_qemu() {
        let mut c = QemuConfig::new("/k".into(), "/r".into(), "/c.log".into());
        assert!(!build(&c, Accel::Tcg).iter().any(|a| a == "-sandbox"));
        c.sandbox = true;
        let args = build(&c, Accel::Tcg);
        let i = args.iter().position(|a| a == "-sandbox").unwrap();
        let opt = args[i + 1].clone();
        assert!(
            opt.starts_with("on,") && opt.contains("spawn=deny"),
            "{opt}"
        );
        let qemu = default_qemu();
        if !qemu_supports_sandbox(&qemu) {
            eprintln!("skipped: qemu-system-x86_64 is missing or built without -sandbox");
            return;
        }
        // This QEMU takes the exact option (an empty, paused machine: no guest runs).
        let mut child = std::process::Command::new(qemu)
            .args(["-M", "none", "-display", "none", "-monitor", "none", "-S"])
            .args(["-sandbox", &opt])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        let early = child.try_wait().unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(
            early.is_none(),
            "QEMU refused -sandbox {opt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// With vmctl running as root, QEMU (each one here: the system's and the tests' newer
    /// one) becomes the unprivileged user under its sandbox, and stays up.
    #[test]
    fn test_qemu_run_as_drops_root_under_sandbox() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: QEMU changes its user only when started as root");
            return;
        }
        let mut qemus = vec![default_qemu()];
        if let Some(q) = std::env::var_os("VMCTL_TEST_QEMU_NEW").filter(|q| !q.is_empty()) {
            qemus.push(q.into());
        }
        for qemu in qemus {
            let Some(option) = qemu_run_as_option(&qemu) else {
                eprintln!(
                    "skipped: {} is missing or has no -runas/-run-with",
                    qemu.display()
                );
                continue;
            };
            let mut c = QemuConfig::new("/k".into(), "/r".into(), "/c.log".into());
            c.sandbox = qemu_supports_sandbox(&qemu);
            c.run_as = Some(RunAs {
                user: "nobody".into(),
                option,
            });
            let args = build(&c, Accel::Tcg);
            let pick = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .map(|i| [args[i].clone(), args[i + 1].clone()])
            };
            let mut extra: Vec<String> = Vec::new();
            for name in ["-sandbox", "-run-with", "-runas"] {
                extra.extend(pick(name).into_iter().flatten());
            }
            assert!(extra.len() >= 2, "{args:?}");
            let mut child = std::process::Command::new(&qemu)
                .args(["-M", "none", "-display", "none", "-monitor", "none", "-S"])
                .args(&extra)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            let early = child.try_wait().unwrap();
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            assert!(
                early.is_none(),
                "{} {extra:?} died: {}",
                qemu.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
            assert_eq!(
                uid.split_whitespace().skip(1).collect::<Vec<_>>(),
                ["65534"; 4],
                "{}: {uid}",
                qemu.display()
            );
        }
    }

    #[test]
    fn test_args_tcg_microvm_shared_memory() {
        let a = build(&cfg(), Accel::Tcg).join(" ");
        // Two vCPUs under TCG: run in turn by one thread (see `build`).
        assert!(a.contains("-accel tcg,thread=single -cpu max"), "{a}");
        let mut one = cfg();
        one.cpus = 1;
        let a1 = build(&one, Accel::Tcg).join(" ");
        assert!(a1.contains("-accel tcg -cpu max"), "{a1}");
        assert!(
            a.contains("memory-backend-memfd,id=mem,size=2048M,share=on"),
            "{a}"
        );
        assert!(a.contains("-M q35,memory-backend=mem"), "{a}");
        assert!(a.contains("virtio-blk-pci,drive=root"), "{a}");
        assert!(a.contains("virtio-net-pci,netdev=net0,romfile="), "{a}");
        // TCG's one TSC is declared reliable to the guest; on KVM the guest decides.
        assert!(a.contains(" tsc=reliable"), "{a}");
        assert!(!build(&cfg(), Accel::Kvm).join(" ").contains("tsc=reliable"));
        // Pages zeroed on allocation under TCG, so backend-filled pages run no stale code.
        assert!(a.contains(" init_on_alloc=1"), "{a}");
        assert!(!build(&cfg(), Accel::Kvm)
            .join(" ")
            .contains("init_on_alloc"));
        assert!(
            a.contains("file=/r/root,,fs,format=raw,if=none,readonly=on"),
            "{a}"
        );
        assert!(a.contains("serial=vmctl-data"), "{a}");
        assert!(a.contains("hostfwd=tcp:127.0.0.1:40000-:2375"), "{a}");
    }

    #[test]
    fn test_cmdline_has_root_net_and_extras() {
        let c = cmdline(&cfg());
        assert!(
            c.starts_with("console=ttyS0 root=/dev/vda rootfstype=squashfs ro"),
            "{c}"
        );
        assert!(c.contains("ip=dhcp"));
        assert!(
            !c.contains("vmctl.data"),
            "the agent's default serial needs no word"
        );
        assert!(c.ends_with("vmctl.docker_tcp=2375"));
    }

    #[test]
    fn test_args_kvm_and_vhost_user_devices() {
        let mut c = cfg();
        c.vsock = Some(("/i/vsock.sock".into(), 3));
        c.fs_shares = vec![("home".into(), "/i/fs.sock".into())];
        c.net = Net::Stream {
            socket: "/i/net.sock".into(),
        };
        let a = build(&c, Accel::Kvm).join(" ");
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
        assert!(a.contains("microvm,"), "{a}");
        assert!(a.contains("virtio-blk-device,drive=root"), "{a}");
        assert!(
            a.contains("vhost-user-vsock-device,chardev=vsock") && !a.contains("guest-cid"),
            "{a}"
        );
        assert!(
            a.contains("vhost-user-fs-device,chardev=fs0,tag=home"),
            "{a}"
        );
        assert!(
            a.contains("stream,id=net0,server=off,addr.type=unix,addr.path=/i/net.sock"),
            "{a}"
        );
    }

    #[test]
    fn test_cpu_model_has_virtualization_only_when_nested() {
        assert_eq!(cpu_model(Accel::Kvm, false), "host,vmx=off,svm=off");
        assert_eq!(cpu_model(Accel::Kvm, true), "host");
        assert!(cpu_model(Accel::Tcg, true).contains(",svm=on,npt=on"));
        assert!(cpu_model(Accel::Tcg, false).ends_with(",svm=off"));
        let mut c = cfg();
        c.nested = true;
        c.cmdline = Some("console=ttyS0 x=1".into());
        let a = build(&c, Accel::Tcg).join(" ");
        assert!(a.contains("svm=on,npt=on"), "{a}");
        assert!(a.contains("-append console=ttyS0 x=1 "), "{a}");
    }
}
