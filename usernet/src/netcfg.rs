//! Network-namespace plumbing for the TAP transport: entering a namespace, creating the
//! TAP device there and configuring address, MTU, default route and loopback like
//! `pasta --config-net`. Uses the classic `SIOCSIF*`/`SIOCADDRT` ioctls: six fixed
//! ioctls are less code and fewer dependencies than a netlink crate (rtnetlink pulls in
//! an async runtime); all FFI of the crate lives in this module.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Errors while setting up the namespace side.
#[derive(Debug, thiserror::Error)]
pub enum NetcfgError {
    #[error("Cannot open network namespace {path}")]
    OpenNs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot enter network namespace {path}")]
    Setns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot return to the original network namespace")]
    Restore(#[source] io::Error),
    #[error("Cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("Interface name {0:?} is invalid (1-15 bytes, no NUL)")]
    BadIfname(String),
    #[error("{op} on {ifname} failed")]
    Ioctl {
        op: &'static str,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write resolver configuration {path}")]
    Resolver {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
pub const TUN_F_CSUM: libc::c_uint = 0x01;
pub const TUN_F_TSO4: libc::c_uint = 0x02;

/// Puts the calling thread back into its original network namespace when dropped.
pub struct NsGuard {
    orig: File,
}

impl NsGuard {
    /// Moves the calling thread into the network namespace at `path`.
    pub fn enter(path: &Path) -> Result<Self, NetcfgError> {
        let orig = File::open("/proc/thread-self/ns/net").map_err(NetcfgError::Restore)?;
        let target = File::open(path).map_err(|source| NetcfgError::OpenNs {
            path: path.to_path_buf(),
            source,
        })?;
        setns(target.as_raw_fd()).map_err(|source| NetcfgError::Setns {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self { orig })
    }

    /// Returns to the original namespace, reporting failure.
    pub fn leave(self) -> Result<(), NetcfgError> {
        let r = setns(self.orig.as_raw_fd()).map_err(NetcfgError::Restore);
        std::mem::forget(self);
        r
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = setns(self.orig.as_raw_fd());
    }
}

fn setns(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns only reads the fd argument; an invalid fd yields an error, not UB.
    let r = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn ifreq(name: &str) -> Result<libc::ifreq, NetcfgError> {
    let c = CString::new(name).map_err(|_| NetcfgError::BadIfname(name.to_string()))?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ || bytes.len() < 2 {
        return Err(NetcfgError::BadIfname(name.to_string()));
    }
    // SAFETY: ifreq is plain old data (arrays, integers, a union of such); all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// An open TAP device.
pub struct Tap {
    pub fd: OwnedFd,
    pub name: String,
    pub vnet_hdr: bool,
}

/// Creates (or attaches to) TAP device `name` in the current namespace, non-blocking.
/// With `vnet_hdr`, frames carry a 12-byte virtio-net header and checksum offload and
/// TSO are enabled, so the kernel can hand over 64 KiB segments without checksumming.
pub fn open_tap(name: &str, vnet_hdr: bool) -> Result<Tap, NetcfgError> {
    let path = c"/dev/net/tun";
    // SAFETY: path is a valid NUL-terminated string; open returns an owned fd or -1.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(NetcfgError::OpenTun(io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name)?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req, "TUNSETIFF", name)?;
    if vnet_hdr {
        let mut size: libc::c_int = 12;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the valid pointer.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &mut size) };
        check(r, "TUNSETVNETHDRSZ", name)?;
        let offload = TUN_F_CSUM | TUN_F_TSO4;
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, offload as libc::c_ulong) };
        check(r, "TUNSETOFFLOAD", name)?;
    }
    Ok(Tap {
        fd,
        name: name.to_string(),
        vnet_hdr,
    })
}

fn check(r: libc::c_int, op: &'static str, ifname: &str) -> Result<(), NetcfgError> {
    if r < 0 {
        Err(NetcfgError::Ioctl {
            op,
            ifname: ifname.to_string(),
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

fn ioctl(
    fd: RawFd,
    req: libc::c_ulong,
    ifr: &mut libc::ifreq,
    op: &'static str,
    ifname: &str,
) -> Result<(), NetcfgError> {
    // SAFETY: every request used here reads/writes one `struct ifreq`, which `ifr` is.
    let r = unsafe { libc::ioctl(fd, req, ifr as *mut libc::ifreq) };
    check(r, op, ifname)
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte POD; the kernel reads it as
    // sockaddr_in because sin_family says AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Interface settings applied inside the namespace.
pub struct IfConfig {
    pub ifname: String,
    pub addr: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mtu: usize,
}

/// Brings `lo` up and configures the TAP: MTU, address, netmask, up, default route.
pub fn configure(cfg: &IfConfig) -> Result<(), NetcfgError> {
    let name = cfg.ifname.as_str();
    let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|source| {
        NetcfgError::Ioctl {
            op: "socket",
            ifname: name.to_string(),
            source,
        }
    })?;
    let fd = sock.as_raw_fd();
    set_up(fd, "lo")?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_mtu = cfg.mtu as libc::c_int;
    ioctl(fd, libc::SIOCSIFMTU, &mut r, "SIOCSIFMTU", name)?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_addr = sockaddr_in(cfg.addr);
    ioctl(fd, libc::SIOCSIFADDR, &mut r, "SIOCSIFADDR", name)?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_netmask = sockaddr_in(cfg.netmask);
    ioctl(fd, libc::SIOCSIFNETMASK, &mut r, "SIOCSIFNETMASK", name)?;
    set_up(fd, name)?;
    // SAFETY: rtentry is plain old data; all-zero is a valid starting value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(cfg.gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    let cname = CString::new(name).map_err(|_| NetcfgError::BadIfname(name.to_string()))?;
    rt.rt_dev = cname.as_ptr() as *mut libc::c_char;
    // SAFETY: SIOCADDRT reads one rtentry; rt_dev points to a NUL-terminated string that
    // outlives the call.
    let ret = unsafe { libc::ioctl(fd, libc::SIOCADDRT, &mut rt as *mut libc::rtentry) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(NetcfgError::Ioctl {
                op: "SIOCADDRT",
                ifname: name.to_string(),
                source: e,
            });
        }
    }
    Ok(())
}

fn set_up(fd: RawFd, name: &str) -> Result<(), NetcfgError> {
    let mut r = ifreq(name)?;
    ioctl(fd, libc::SIOCGIFFLAGS, &mut r, "SIOCGIFFLAGS", name)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { r.ifr_ifru.ifru_flags };
    r.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(fd, libc::SIOCSIFFLAGS, &mut r, "SIOCSIFFLAGS", name)
}

/// For a namespace under /run/netns/NAME, writes /etc/netns/NAME/resolv.conf (what
/// `ip netns exec NAME` bind-mounts over /etc/resolv.conf). Returns the file written.
pub fn write_resolver(netns: &Path, dns: Ipv4Addr) -> Result<Option<PathBuf>, NetcfgError> {
    let parent = netns.parent().and_then(|p| p.to_str());
    if !matches!(parent, Some("/run/netns") | Some("/var/run/netns")) {
        return Ok(None);
    }
    let Some(name) = netns.file_name() else {
        return Ok(None);
    };
    let dir = Path::new("/etc/netns").join(name);
    let path = dir.join("resolv.conf");
    let err = |source| NetcfgError::Resolver {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    std::fs::write(&path, format!("nameserver {dns}\n")).map_err(err)?;
    Ok(Some(path))
}
