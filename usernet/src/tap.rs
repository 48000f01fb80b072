//! TAP transport: `usernet tap --netns PATH`. Creates the TAP inside the namespace,
//! configures it like `pasta --config-net`, then serves frames until SIGTERM/SIGINT.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::netcfg::{self, IfConfig, NetcfgError, NsGuard, Tap};
use crate::{Config, UserNet, UserNetError};

const TAP_TOKEN: Token = Token(0);
const SIGNAL_TOKEN: Token = Token(1);
/// Frames read from the TAP per pass before the stack gets to run.
const READ_BATCH: usize = 128;
const VNET_HDR_LEN: usize = 12;
/// Receive buffer size: the largest IPv4 packet plus an Ethernet header (GSO frames from
/// the kernel never exceed 64 KiB either).
const FRAME_BUF: usize = 65536 + 64;
/// virtio_net_hdr.flags: checksum to be completed (CHECKSUM_PARTIAL).
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// virtio_net_hdr.flags: checksum already verified.
const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// Errors of the TAP transport.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("Cannot set up the namespace side")]
    Netcfg(#[from] NetcfgError),
    #[error("Cannot start the NAT")]
    Net(#[from] UserNetError),
    #[error("TAP I/O failed")]
    Io(#[source] io::Error),
    #[error("Cannot install signal handlers")]
    Signals(#[source] io::Error),
    #[error("Cannot sandbox usernet")]
    Sandbox(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What `usernet tap` was asked to do.
pub struct TapOptions {
    pub netns: PathBuf,
    pub ifname: String,
    /// Use IFF_VNET_HDR so neither side computes or verifies checksums.
    pub vnet_hdr: bool,
    /// Write /etc/netns/NAME/resolv.conf.
    pub configure_resolver: bool,
}

/// Creates and configures the TAP in the namespace; the calling thread ends up back in
/// its own namespace.
pub fn setup(opts: &TapOptions, config: &Config) -> Result<(Tap, Option<PathBuf>), TapError> {
    let guard = NsGuard::enter(&opts.netns)?;
    let tap = netcfg::open_tap(&opts.ifname, opts.vnet_hdr)?;
    netcfg::configure(&IfConfig {
        ifname: opts.ifname.clone(),
        addr: config.guest_ip,
        netmask: config.netmask(),
        gateway: config.gateway_ip,
        mtu: config.mtu,
    })?;
    guard.leave()?;
    let resolver = if opts.configure_resolver {
        netcfg::write_resolver(&opts.netns, config.dns_ip)?
    } else {
        None
    };
    Ok((tap, resolver))
}

/// Sets up the TAP and serves it until SIGTERM or SIGINT.
pub fn run(opts: &TapOptions, mut config: Config) -> Result<(), TapError> {
    let (tap, resolver) = setup(opts, &config)?;
    if tap.vnet_hdr {
        // The peer is the local kernel: what it sends is checksummed or marked partial
        // (offloaded), and what we send is marked DATA_VALID, so neither side sums bytes.
        config.verify_checksums = false;
        config.tx_checksum_offload = true;
    }
    let result = serve(&tap, config, lock_down_and_announce);
    if let Some(path) = resolver {
        let _ = std::fs::remove_file(&path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

/// Set-up is done (TAP, forwards, signals): lock down before the first guest frame. The tap
/// transport stays uid 0 to remove the resolver file it wrote under /etc/netns at exit, but
/// keeps no capability at all, then installs the same seccomp filter as the stream transport.
fn lock_down_and_announce(net: &UserNet) -> Result<(), TapError> {
    sandbox::privileges::keep_file_capabilities(&Default::default())
        .map_err(|e| TapError::Sandbox(e.into()))?;
    sandbox::seccomp::apply(sandbox::seccomp::Profile::Device)
        .map_err(|e| TapError::Sandbox(e.into()))?;
    for (fwd, addr) in net.forward_addrs() {
        tracing::info!(%addr, guest_port = fwd.guest_port, "forwarding");
    }
    tracing::info!("ready");
    Ok(())
}

fn read_frame(
    fd: RawFd,
    hdr: &mut [u8; VNET_HDR_LEN],
    buf: &mut [u8],
    vnet: bool,
) -> io::Result<usize> {
    let mut iov = [
        libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        },
    ];
    let (iov, cnt) = if vnet {
        (&mut iov[..], 2)
    } else {
        (&mut iov[1..], 1)
    };
    // SAFETY: the iovecs point to live, writable buffers of the stated lengths.
    let n = unsafe { libc::readv(fd, iov.as_mut_ptr(), cnt) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    Ok(if vnet {
        n.saturating_sub(VNET_HDR_LEN)
    } else {
        n
    })
}

/// The virtio-net header for a frame towards the guest. TCP frames leave usernet with no
/// checksum (see `Config::tx_checksum_offload`): they are marked NEEDS_CSUM with the
/// pseudo-header sum seeded in, which the guest kernel accepts as CHECKSUM_PARTIAL
/// (and completes correctly should it forward the packet).
fn vnet_header(frame: &mut [u8]) -> [u8; VNET_HDR_LEN] {
    let mut hdr = [0u8; VNET_HDR_LEN];
    let is_tcp4 = frame.len() >= 14 + 20 + 20
        && frame[12..14] == [0x08, 0x00]
        && frame[14] >> 4 == 4
        && frame[14 + 9] == 6;
    if !is_tcp4 {
        hdr[0] = VIRTIO_NET_HDR_F_DATA_VALID;
        return hdr;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let start = 14 + ihl;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let Some(tcp_len) = total.checked_sub(ihl) else {
        return hdr;
    };
    if start + 18 > frame.len() {
        return hdr;
    }
    let mut sum: u32 = 6 + tcp_len as u32;
    for c in frame[26..34].chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[start + 16..start + 18].copy_from_slice(&(sum as u16).to_be_bytes());
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[2..4].copy_from_slice(&((start + 18) as u16).to_le_bytes()); // hdr_len
    hdr[6..8].copy_from_slice(&(start as u16).to_le_bytes()); // csum_start
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    hdr
}

fn write_frame(fd: RawFd, frame: &mut [u8], vnet: bool) -> io::Result<()> {
    let hdr = if vnet {
        vnet_header(frame)
    } else {
        [0u8; VNET_HDR_LEN]
    };
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        },
    ];
    let iov = if vnet { &iov[..] } else { &iov[1..] };
    // SAFETY: the iovecs point to live buffers of the stated lengths; writev only reads.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Serves an open TAP with a new [`UserNet`] until SIGTERM/SIGINT.
pub fn serve(
    tap: &Tap,
    config: Config,
    on_ready: fn(&UserNet) -> Result<(), TapError>,
) -> Result<(), TapError> {
    let fd = tap.fd.as_raw_fd();
    let vnet = tap.vnet_hdr;
    let mut net = UserNet::new(config)?;
    net.registry()
        .register(&mut SourceFd(&fd), TAP_TOKEN, Interest::READABLE)
        .map_err(TapError::Io)?;
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(TapError::Signals)?;
    net.registry()
        .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)
        .map_err(TapError::Signals)?;
    on_ready(&net)?;
    let mut hdr = [0u8; VNET_HDR_LEN];
    let mut ready = Vec::new();
    let mut tap_readable = true;
    loop {
        ready.clear();
        let timeout = if tap_readable {
            Some(Duration::ZERO)
        } else {
            None
        };
        net.wait(timeout, &mut ready).map_err(TapError::Io)?;
        if ready.contains(&SIGNAL_TOKEN) && signals.pending().next().is_some() {
            tracing::info!("signal received: exiting");
            return Ok(());
        }
        if ready.contains(&TAP_TOKEN) {
            tap_readable = true;
        }
        let mut n = 0;
        while tap_readable && n < READ_BATCH {
            let mut frame = net.rx_buffer(FRAME_BUF);
            match read_frame(fd, &mut hdr, &mut frame, vnet) {
                Ok(len) => {
                    n += 1;
                    net.receive_frame_buf(frame, len);
                }
                Err(e) => {
                    net.recycle_rx_buffer(frame);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => tap_readable = false,
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(TapError::Io(e)),
                    }
                }
            }
        }
        // Run the stack and flush until it stops producing (each flush may free room).
        for _ in 0..16 {
            net.process();
            let mut wrote = 0;
            while let Some(mut frame) = net.take_frame() {
                match write_frame(fd, &mut frame, vnet) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        net.untake_frame(frame);
                        break;
                    }
                    // The guest side may be down (EIO before the link is up): drop.
                    Err(e) => tracing::trace!(error = %e, "TAP write failed"),
                }
                wrote += 1;
                net.recycle(frame);
            }
            if wrote == 0 {
                break;
            }
        }
    }
}
