//! `vmctl image build|kernel|rootfs`: build (or reuse from the cache) the guest assets and
//! print where they are.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use vmctl::image::{self, kernel, rootfs};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the kernel and the root image (cached by input hash).
    Build(BuildArgs),
    /// Build only the kernel.
    Kernel,
    /// Build only the root image.
    Rootfs(BuildArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The static guest agent binary to install as /sbin/init (default: $VMCTL_AGENT, or
    /// the musl build next to this executable's target directory).
    #[arg(long)]
    agent: Option<PathBuf>,
}

/// The guest agent to build the root image with: `--agent`, else `$VMCTL_AGENT`, else the
/// musl build next to this executable.
pub(super) fn agent_path(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg.or_else(|| std::env::var_os("VMCTL_AGENT").map(PathBuf::from)) {
        return Ok(p);
    }
    image::default_agent_path().context(
        "no guest agent binary found; build it with \
         `cargo build --release -p guest-agent --target x86_64-unknown-linux-musl` \
         or pass --agent PATH",
    )
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    let shown = vmctl::progress::Progress::new(false, false);
    let progress = |msg: &str| shown.line(msg);
    match cmd {
        ImageCommand::Kernel => {
            let k = kernel::ensure(&progress)?;
            println!("kernel: {}", k.bzimage.display());
        }
        ImageCommand::Rootfs(a) => {
            let r = rootfs::ensure(&agent_path(a.agent)?, &progress)?;
            println!("rootfs: {} ({} bytes)", r.image.display(), r.size);
        }
        ImageCommand::Build(a) => {
            let agent = agent_path(a.agent)?;
            let k = kernel::ensure(&progress)?;
            let r = rootfs::ensure(&agent, &progress)?;
            println!("kernel: {}", k.bzimage.display());
            println!("kernel config: {}", k.config.display());
            println!("rootfs: {} ({} bytes)", r.image.display(), r.size);
        }
    }
    Ok(())
}
