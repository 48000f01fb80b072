//! `fs-share`: serve a host folder over vhost-user-fs, or mount it through /dev/fuse.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use fs_share::{CachePolicy, OwnerMap, ShareConfig};

#[derive(Parser)]
#[command(
    name = "fs-share",
    version,
    about = "virtio-fs file sharing confined to one host folder"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the share as a vhost-user-fs backend on a unix socket (until the VMM disconnects).
    Serve {
        /// vhost-user socket to create.
        #[arg(long)]
        socket: PathBuf,
        /// virtio-fs tag (reported in the device config space; QEMU 7.2 sets its own).
        #[arg(long)]
        tag: Option<String>,
        /// Also stream host file events (JSON lines) to clients of this unix socket, for the
        /// guest agent to replay.
        #[arg(long)]
        events_socket: Option<PathBuf>,
        #[command(flatten)]
        share: ShareArgs,
    },
    /// Mount the share on the host through /dev/fuse; stays in the foreground until unmounted.
    Mount {
        mountpoint: PathBuf,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[command(flatten)]
        share: ShareArgs,
    },
    /// Print host file events under a folder as JSON lines (what --events-socket streams).
    Watch {
        #[arg(long)]
        shared_dir: PathBuf,
    },
}

#[derive(Args)]
struct ShareArgs {
    /// Host folder to share.
    #[arg(long)]
    shared_dir: PathBuf,
    /// Refuse every modification (EROFS).
    #[arg(long)]
    readonly: bool,
    /// Client caching: none, auto (1 s, invalidate on change) or always (guest is sole writer).
    #[arg(long, value_enum, default_value_t = CachePolicy::Auto)]
    cache: CachePolicy,
    /// Who owns what the guest creates: the share's owner, or the guest uid (root server only).
    #[arg(long, value_enum, default_value_t = OwnerMap::ShareOwner)]
    owner_map: OwnerMap,
    /// Keep setuid/setgid bits and file capabilities the guest sets (trusted guests only).
    #[arg(long)]
    allow_setuid: bool,
    /// Let the guest create device nodes (trusted guests only).
    #[arg(long)]
    allow_devices: bool,
    /// Most inodes the guest may hold.
    #[arg(long, default_value_t = 1 << 20)]
    max_inodes: usize,
    /// Most O_PATH fds cached for inodes.
    #[arg(long, default_value_t = 16384)]
    max_inode_fds: usize,
    /// Most files the guest may hold open.
    #[arg(long, default_value_t = 8192)]
    max_open_files: usize,
}

impl ShareArgs {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn config(self) -> ShareConfig {
        let mut cfg = ShareConfig::new(self.shared_dir);
        cfg.readonly = self.readonly;
        cfg.cache = self.cache;
        cfg.owner_map = self.owner_map;
        cfg.allow_setuid = self.allow_setuid;
        cfg.allow_devices = self.allow_devices;
        cfg.max_inodes = self.max_inodes;
        cfg.max_inode_fds = self.max_inode_fds;
        cfg.max_open_files = self.max_open_files;
        cfg
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,fuse_backend_rs=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    run(Cli::parse().cmd)
}

#[cfg(target_os = "linux")]
fn run(cmd: Cmd) -> anyhow::Result<()> {
    use anyhow::Context as _;
    match cmd {
        Cmd::Serve {
            socket,
            tag,
            events_socket,
            share,
        } => {
            lock_down(&share)?;
            if let Some(ev) = &events_socket {
                fs_share::transport::events::spawn(&share.shared_dir, ev)
                    .with_context(|| format!("events socket {}", ev.display()))?;
            }
            let fs = std::sync::Arc::new(fs_share::PassthroughFs::new(share.config())?);
            fs_share::transport::vhost_user::serve(fs, &socket, tag)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Cmd::Mount {
            mountpoint,
            threads,
            share,
        } => {
            let fs = std::sync::Arc::new(fs_share::PassthroughFs::new(share.config())?);
            fs_share::transport::fusedev::mount_and_serve(fs, &mountpoint, threads)?;
        }
        Cmd::Watch { shared_dir } => {
            fs_share::transport::events::print_events(shared_dir)?;
        }
    }
    Ok(())
}

/// Before any thread starts or the guest sends a byte: a root server keeps only the file
/// capabilities serving needs (it stays uid 0 to serve root's files with their owners), and
/// the seccomp filter goes on (no exec, mounts, ptrace, network sockets...). Capabilities
/// are per thread, hence first thing, while this is the only one.
#[cfg(target_os = "linux")]
fn lock_down(share: &ShareArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let keep =
        sandbox::privileges::file_server_capabilities(share.allow_setuid, share.allow_devices);
    sandbox::privileges::keep_file_capabilities(&keep).context("fs-share sandbox")?;
    sandbox::seccomp::apply(sandbox::seccomp::Profile::FileServer).context("fs-share sandbox")?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn run(_cmd: Cmd) -> anyhow::Result<()> {
    anyhow::bail!(
        "fs-share serves Linux hosts only so far (a macOS passthrough goes in src/sys/macos)"
    )
}
