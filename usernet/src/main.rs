//! `usernet`: user-mode NAT networking for a VM or a network namespace.

#![cfg_attr(not(unix), allow(unused))]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use usernet::{Config, PortForward};

#[cfg(not(unix))]
fn main() {
    eprintln!("usernet: the TAP and QEMU stream transports are Unix-only; use the library");
    std::process::exit(2);
}

#[derive(Parser)]
#[command(
    name = "usernet",
    about = "User-mode NAT networking (slirp/pasta-like) for vmctl"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a TAP device in a network namespace, configure it and serve it until killed.
    #[cfg(target_os = "linux")]
    Tap {
        /// Network namespace file, e.g. /run/netns/NAME or /proc/PID/ns/net.
        #[arg(long)]
        netns: PathBuf,
        /// TAP device name inside the namespace.
        #[arg(long, default_value = "tap0")]
        ifname: String,
        /// Do not use IFF_VNET_HDR (checksums computed and verified in software).
        #[arg(long)]
        no_vnet_hdr: bool,
        /// Do not write /etc/netns/NAME/resolv.conf.
        #[arg(long)]
        no_resolver: bool,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Serve QEMU's `-netdev stream` protocol on a unix socket.
    #[cfg(unix)]
    Stream {
        /// Unix socket path to listen on (QEMU connects with server=off).
        #[arg(long)]
        socket: PathBuf,
        #[command(flatten)]
        net: NetArgs,
    },
}

#[derive(Args)]
struct NetArgs {
    /// Inbound port forward: tcp|udp:[HOSTADDR:]HOSTPORT:GUESTPORT (repeatable).
    #[arg(long = "forward", value_parser = PortForward::parse)]
    forwards: Vec<PortForward>,
    /// Guest address.
    #[arg(long, default_value = "10.0.2.15")]
    guest_ip: Ipv4Addr,
    /// Gateway address (reaches the host's 127.0.0.1).
    #[arg(long, default_value = "10.0.2.2")]
    gateway_ip: Ipv4Addr,
    /// DNS forwarder address.
    #[arg(long, default_value = "10.0.2.3")]
    dns_ip: Ipv4Addr,
    /// Guest network prefix length.
    #[arg(long, default_value_t = 24)]
    prefix_len: u8,
    /// IP MTU.
    #[arg(long, default_value_t = 65520)]
    mtu: usize,
    /// Resolver configuration the DNS forwarder follows.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// The gateway address does not reach the host's loopback (host.docker.internal off).
    #[arg(long)]
    no_host_loopback: bool,
    /// Let the guest reach link-local addresses (169.254.0.0/16) of the host's networks.
    #[arg(long)]
    allow_link_local: bool,
    /// Let the guest reach cloud metadata endpoints (169.254.169.254, 100.100.100.200, …).
    #[arg(long)]
    allow_metadata: bool,
    /// Memory for all TCP connection buffers together, MiB; beyond it new connections wait.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    tcp_buffer_budget_mib: u32,
}

impl NetArgs {
    fn config(self) -> Config {
        let prefix = u32::from(self.prefix_len).min(32);
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        Config {
            network: Ipv4Addr::from(u32::from(self.guest_ip) & mask),
            prefix_len: self.prefix_len,
            guest_ip: self.guest_ip,
            gateway_ip: self.gateway_ip,
            dns_ip: self.dns_ip,
            mtu: self.mtu,
            resolv_conf: self.resolv_conf,
            forwards: self.forwards,
            allow_host_loopback: !self.no_host_loopback,
            allow_link_local: self.allow_link_local,
            allow_metadata: self.allow_metadata,
            limits: usernet::Limits {
                tcp_buffer_budget: (self.tcp_buffer_budget_mib as usize) << 20,
                ..usernet::Limits::default()
            },
            ..Config::default()
        }
    }
}

#[cfg(unix)]
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read/write one rlimit struct through a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("USERNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    raise_fd_limit();
    let cli = Cli::parse();
    match cli.cmd {
        #[cfg(target_os = "linux")]
        Cmd::Tap {
            netns,
            ifname,
            no_vnet_hdr,
            no_resolver,
            net,
        } => {
            let opts = usernet::tap::TapOptions {
                netns,
                ifname,
                vnet_hdr: !no_vnet_hdr,
                configure_resolver: !no_resolver,
            };
            usernet::tap::run(&opts, net.config()).context("usernet tap failed")
        }
        #[cfg(unix)]
        Cmd::Stream { socket, net } => {
            usernet::stream::run(&socket, net.config()).context("usernet stream failed")
        }
    }
}
