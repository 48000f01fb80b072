//! The QEMU command line for a vmctl guest: `-M microvm` with virtio-mmio devices, direct
//! kernel boot, memfd-backed shared memory (so vhost-user backends can attach), the serial
//! console to a file.

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
}

impl QemuConfig {
    /// Defaults: 2 GiB, 2 vCPUs, no network, no vsock.
    pub fn new(kernel: PathBuf, rootfs: PathBuf, console_log: PathBuf) -> Self {
        QemuConfig {
            qemu: PathBuf::from("qemu-system-x86_64"),
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
        }
    }
}

/// virtio-blk serial of the data disk; the guest agent finds the disk by it.
pub const DATA_DISK_SERIAL: &str = "vmctl-data";

/// The kernel command line.
pub fn cmdline(cfg: &QemuConfig) -> String {
    let mut words: Vec<String> = [
        "console=ttyS0",
        "root=/dev/vda",
        "rootfstype=squashfs",
        "ro",
        "init=/sbin/init",
        "panic=-1",
        "loglevel=4",
        "8250.nr_uarts=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match cfg.net {
        // The kernel's IP autoconfiguration does DHCP; the agent writes resolv.conf.
        Net::User { .. } | Net::Stream { .. } => words.push("ip=dhcp".into()),
        Net::None => {}
    }
    if cfg.data_disk.is_some() {
        words.push(format!("vmctl.data={DATA_DISK_SERIAL}"));
    }
    words.extend(cfg.cmdline_extra.iter().cloned());
    words.join(" ")
}

fn path(p: &std::path::Path) -> String {
    // QEMU option values use ',' as a separator; a literal comma is doubled.
    p.display().to_string().replace(',', ",,")
}

/// The argument vector (without the program).
pub fn build(cfg: &QemuConfig, accel: Accel) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let mem = format!("{}M", cfg.memory_mib);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&[
        "-M",
        "microvm,x-option-roms=off,rtc=on,acpi=on,memory-backend=mem",
    ]);
    push(&["-accel", accel.as_str()]);
    push(&["-cpu", if accel == Accel::Kvm { "host" } else { "max" }]);
    push(&["-m", &mem, "-smp", &cfg.cpus.to_string()]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
    ]);
    push(&["-kernel", &path(&cfg.kernel), "-append", &cmdline(cfg)]);
    push(&[
        "-chardev",
        &format!("file,id=console,path={}", path(&cfg.console_log)),
    ]);
    push(&["-serial", "chardev:console"]);
    // vda: the read-only root image; vdb: the data disk (found by serial in the guest).
    push(&[
        "-drive",
        &format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            path(&cfg.rootfs)
        ),
    ]);
    push(&["-device", "virtio-blk-device,drive=root"]);
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
            &format!("virtio-blk-device,drive=data,serial={DATA_DISK_SERIAL}"),
        ]);
    }
    push(&[
        "-object",
        "rng-random,id=rng,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng",
    ]);
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
            push(&["-netdev", &nd, "-device", "virtio-net-device,netdev=net0"]);
        }
        Net::Stream { socket } => {
            let nd = format!(
                "stream,id=net0,server=off,addr.type=unix,addr.path={}",
                path(socket)
            );
            push(&["-netdev", &nd, "-device", "virtio-net-device,netdev=net0"]);
        }
    }
    if let Some((sock, cid)) = &cfg.vsock {
        push(&["-chardev", &format!("socket,id=vsock,path={}", path(sock))]);
        push(&[
            "-device",
            &format!("vhost-user-vsock-device,chardev=vsock,guest-cid={cid}"),
        ]);
    }
    for (i, (tag, sock)) in cfg.fs_shares.iter().enumerate() {
        push(&["-chardev", &format!("socket,id=fs{i},path={}", path(sock))]);
        push(&[
            "-device",
            &format!("vhost-user-fs-device,chardev=fs{i},tag={tag}"),
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
    fn test_args_tcg_microvm_shared_memory() {
        let a = build(&cfg(), Accel::Tcg).join(" ");
        assert!(a.contains("-accel tcg -cpu max"), "{a}");
        assert!(
            a.contains("memory-backend-memfd,id=mem,size=2048M,share=on"),
            "{a}"
        );
        assert!(a.contains("microvm,"), "{a}");
        assert!(
            a.contains("file=/r/root,,fs,format=raw,if=none,readonly=on"),
            "{a}"
        );
        assert!(a.contains("serial=vmctl-data"), "{a}");
        assert!(a.contains("hostfwd=tcp:127.0.0.1:40000-:2375"), "{a}");
    }

    #[test]
    fn test_cmdline_has_root_data_and_extras() {
        let c = cmdline(&cfg());
        assert!(
            c.starts_with("console=ttyS0 root=/dev/vda rootfstype=squashfs ro"),
            "{c}"
        );
        assert!(c.contains("ip=dhcp"));
        assert!(c.contains("vmctl.data=vmctl-data"));
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
        assert!(
            a.contains("vhost-user-vsock-device,chardev=vsock,guest-cid=3"),
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
}
