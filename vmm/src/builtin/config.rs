//! What to run: the configuration of a builtin-engine VM.

use std::path::PathBuf;

/// Where COM1 goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    /// Host stdout, with host stdin as guest input.
    Stdio,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    None,
}

impl std::str::FromStr for SerialConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "stdio" => SerialConfig::Stdio,
            "none" | "off" => SerialConfig::None,
            "" => return Err("empty serial target; use stdio, none or a file path".into()),
            path => SerialConfig::File(PathBuf::from(path)),
        })
    }
}

/// A disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// The serial the guest sees (`/sys/block/vdX/serial`, at most 20 bytes); the file name
    /// when not given.
    pub serial: Option<String>,
}

/// Longest virtio-blk serial (the GET_ID buffer).
pub const MAX_DISK_SERIAL: usize = 20;

impl std::str::FromStr for DiskConfig {
    type Err = String;
    /// `PATH[,ro|,rw][,serial=ID]`; options come after the path, so a path may hold commas.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut path = s;
        let mut read_only = false;
        let mut serial = None;
        loop {
            match path.rsplit_once(',') {
                Some((p, "ro")) => (path, read_only) = (p, true),
                Some((p, "rw")) => path = p,
                Some((p, o)) if o.starts_with("serial=") => {
                    let id = &o["serial=".len()..];
                    if id.is_empty() || id.len() > MAX_DISK_SERIAL || !id.is_ascii() {
                        return Err(format!(
                            "disk serial {id:?} must be 1 to {MAX_DISK_SERIAL} ASCII characters"
                        ));
                    }
                    serial.get_or_insert_with(|| id.to_string());
                    path = p;
                }
                _ => break,
            }
        }
        if path.is_empty() {
            return Err("empty disk path; use PATH[,ro][,serial=ID]".into());
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
            serial,
        })
    }
}

/// A virtio-vsock device: the guest's CID and the host unix socket (hybrid vsock: host
/// clients connect to `uds_path`; guest connections to host port P reach `<uds_path>_P`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u64,
    pub uds_path: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = String;
    /// `CID,PATH`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (cid, path) = s
            .split_once(',')
            .ok_or_else(|| format!("expected CID,PATH, got {s:?}"))?;
        let cid: u64 = cid
            .parse()
            .map_err(|_| format!("guest CID {cid:?} is not a number"))?;
        if cid <= 2 || cid >= u64::from(u32::MAX) {
            return Err(format!("guest CID {cid} is reserved; use 3 or more"));
        }
        if path.is_empty() {
            return Err("empty vsock socket path; use CID,PATH".into());
        }
        Ok(VsockConfig {
            cid,
            uds_path: PathBuf::from(path),
        })
    }
}

/// Where a virtio-net device's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// A QEMU `-netdev stream` unix socket the VMM connects to (e.g. `usernet stream`).
    Stream(PathBuf),
    /// usernet's NAT in this process (no extra process; frames cross a socket pair).
    User,
}

/// A virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub backend: NetBackend,
    pub mac: [u8; 6],
}

/// The MAC address used when none is given (QEMU's first default).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

impl std::str::FromStr for NetConfig {
    type Err = String;
    /// `user`, `stream:PATH`, each optionally followed by `,mac=52:54:00:12:34:56`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (spec, mac) = match s.rsplit_once(",mac=") {
            Some((p, m)) => (p, usernet::parse_mac(m).map_err(|e| e.to_string())?),
            None => (s, DEFAULT_MAC),
        };
        let backend = if spec == "user" {
            NetBackend::User
        } else if let Some(path) = spec.strip_prefix("stream:") {
            if path.is_empty() {
                return Err("empty network socket path; use stream:PATH".into());
            }
            NetBackend::Stream(PathBuf::from(path))
        } else {
            return Err(format!(
                "expected user or stream:PATH (then ,mac=MAC), got {s:?}"
            ));
        };
        Ok(NetConfig { backend, mac })
    }
}

/// Longest virtio-fs tag (the config space's `tag[36]`).
pub const FS_TAG_MAX: usize = 36;

/// A host folder shared with virtio-fs: the guest mounts it with `mount -t virtiofs TAG DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// 1 to 36 bytes of printable ASCII other than space and comma.
    pub tag: String,
    pub shared_dir: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for FsConfig {
    type Err = String;
    /// `TAG,DIR` or `TAG,DIR,ro` (or `,rw`). DIR may contain commas; the tag may not.
    fn from_str(s: &str) -> Result<Self, String> {
        let (tag, rest) = s
            .split_once(',')
            .ok_or_else(|| format!("expected TAG,DIR[,ro], got {s:?}"))?;
        if tag.is_empty() || tag.len() > FS_TAG_MAX {
            return Err(format!(
                "virtio-fs tag {tag:?} must be 1 to {FS_TAG_MAX} bytes, is {}",
                tag.len()
            ));
        }
        if !tag.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "virtio-fs tag {tag:?} may hold only printable ASCII without spaces"
            ));
        }
        let (dir, opt) = match rest.rsplit_once(',') {
            Some((d, o)) if o == "ro" || o == "rw" => (d, Some(o)),
            _ => (rest, None),
        };
        if dir.is_empty() {
            return Err("empty shared folder; use TAG,DIR[,ro]".into());
        }
        Ok(FsConfig {
            tag: tag.to_string(),
            shared_dir: PathBuf::from(dir),
            read_only: opt == Some("ro"),
        })
    }
}

/// The kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd";

/// A VM for the builtin engine.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub disks: Vec<DiskConfig>,
    pub mem_mib: u64,
    pub cpus: u8,
    pub serial: SerialConfig,
    /// virtio-console output file, if the device is wanted.
    pub console: Option<PathBuf>,
    pub rng: bool,
    /// virtio-vsock, if wanted.
    pub vsock: Option<VsockConfig>,
    /// virtio-net, if wanted.
    pub net: Option<NetConfig>,
    /// Show the CPU's virtualization extensions to the guest (a KVM inside the VM).
    pub nested: bool,
    /// virtio-balloon with free page reporting: RAM the guest frees goes back to the host.
    /// Off by default: it only pays off for a long-lived guest whose kernel has the driver
    /// (the Docker VM should turn it on), costs a fresh host page fault each time the guest
    /// reuses a reported page, and takes a virtio slot that short-lived VMs do not need.
    pub balloon: bool,
    /// One virtio-fs device per shared folder.
    pub fs: Vec<FsConfig>,
}

impl VmConfig {
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            disks: Vec::new(),
            mem_mib: 256,
            cpus: 1,
            serial: SerialConfig::Stdio,
            console: None,
            rng: true,
            vsock: None,
            net: None,
            nested: false,
            balloon: false,
            fs: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_disk_config_parses_ro_flag() {
        let d: DiskConfig = "/a/b.img,ro".parse().unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/a/b.img".into(),
                read_only: true,
                serial: None,
            }
        );
        let d: DiskConfig = "/a/b,c.img".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/a/b,c.img"));
        assert!(!d.read_only);
        assert!(",ro".parse::<DiskConfig>().is_err());
        let n: NetConfig = "user,mac=52:54:00:00:00:01".parse().unwrap();
        assert_eq!((n.backend, n.mac[5]), (NetBackend::User, 1));
        let d: DiskConfig = "/d/data.img,serial=vmctl-data,ro".parse().unwrap();
        assert_eq!(
            (d.path, d.read_only, d.serial.as_deref()),
            ("/d/data.img".into(), true, Some("vmctl-data"))
        );
        assert!("/x,serial=".parse::<DiskConfig>().is_err());
        assert!("/x,serial=123456789012345678901"
            .parse::<DiskConfig>()
            .is_err());
    }

    #[test]
    fn test_vsock_config_parses_cid_and_path() {
        let v: VsockConfig = "3,/run/v.sock".parse().unwrap();
        assert_eq!((v.cid, v.uds_path), (3, PathBuf::from("/run/v.sock")));
        for bad in ["2,/x", "x,/x", "3,", "/x", "4294967295,/x"] {
            assert!(bad.parse::<VsockConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn test_net_config_parses_stream_path_and_mac() {
        let n: NetConfig = "stream:/run/n.sock".parse().unwrap();
        assert_eq!(
            (n.backend, n.mac),
            (NetBackend::Stream("/run/n.sock".into()), DEFAULT_MAC)
        );
        let n: NetConfig = "stream:/a,b.sock,mac=02:00:0a:0B:ff:01".parse().unwrap();
        assert_eq!(n.backend, NetBackend::Stream("/a,b.sock".into()));
        assert_eq!(n.mac, [2, 0, 0x0a, 0x0b, 0xff, 1]);
        for bad in [
            "/x",
            "tap:/x",
            "stream:",
            "stream:/x,mac=01:00:00:00:00:00",
            "stream:/x,mac=52:54:00:12:34",
            "stream:/x,mac=52:54:00:12:34:56:78",
            "stream:/x,mac=52:54:00:12:34:zz",
            "stream:/x,mac=52:54:00:12:34:5",
            "users",
            "user,mac=01:00:00:00:00:00",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn test_fs_config_parses_tag_dir_and_ro() {
        let f: FsConfig = "home,/home/me".parse().unwrap();
        assert_eq!(
            f,
            FsConfig {
                tag: "home".into(),
                shared_dir: "/home/me".into(),
                read_only: false
            }
        );
        let f: FsConfig = "data,/srv/a,b,ro".parse().unwrap();
        assert_eq!(f.shared_dir, PathBuf::from("/srv/a,b"));
        assert!(f.read_only);
        let f: FsConfig = "data,/srv/x,rw".parse().unwrap();
        assert_eq!(f.shared_dir, PathBuf::from("/srv/x"));
        assert!(!f.read_only);
        let max = "t".repeat(FS_TAG_MAX);
        assert_eq!(format!("{max},/d").parse::<FsConfig>().unwrap().tag, max);
    }

    #[test]
    fn test_fs_config_bad_tags_and_dirs_refused() {
        let long = format!("{},/d", "t".repeat(FS_TAG_MAX + 1));
        for bad in [
            "", "home", ",/d", "home,", "home,,ro", "a b,/d", "a\0b,/d", "tåg,/d", &long,
        ] {
            assert!(bad.parse::<FsConfig>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn test_serial_config_parses_targets() {
        assert_eq!(
            "stdio".parse::<SerialConfig>().unwrap(),
            SerialConfig::Stdio
        );
        assert_eq!("none".parse::<SerialConfig>().unwrap(), SerialConfig::None);
        assert_eq!(
            "/tmp/x".parse::<SerialConfig>().unwrap(),
            SerialConfig::File("/tmp/x".into())
        );
        assert!("".parse::<SerialConfig>().is_err());
    }
}
