//! The command tree. One module per top-level command.

mod args;
mod config;
mod context;
mod exec;
mod image;
mod mount;
mod status;
mod vm;

use clap::{Parser, Subcommand};

/// vmctl: a Docker-Desktop-like VM backend.
#[derive(Debug, Parser)]
#[command(name = "vmctl", version, about)]
pub struct Cli {
    #[command(flatten)]
    name: args::NameArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build or locate the VM assets (kernel, root image).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Start the VM (building assets on first use) and wait until Docker answers.
    Start(vm::StartArgs),
    /// Stop the VM: the guest syncs and powers off, then the supervisor exits.
    Stop(vm::StopArgs),
    /// Show the instance's state, engine, sizes, shared folders, forwarded ports and uptime.
    Status(status::StatusArgs),
    /// List instances.
    List(status::ListArgs),
    /// Open a shell in the VM (on a terminal in the guest when run from one).
    Shell,
    /// Run a command in the VM: `vmctl exec [-t] -- CMD [ARGS...]`.
    Exec {
        /// Run on a pseudo-terminal in the guest (interactive programs, line editing).
        #[arg(short = 't', long = "tty")]
        tty: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Print logs: the supervisor's (default), the guest console, the agent's or dockerd's.
    Logs(vm::LogsArgs),
    /// Show the VM's files at a host directory (FUSE) until Ctrl-C or unmount.
    Mount(mount::MountArgs),
    /// Stop the VM and remove every trace of the instance (disks, logs, docker context).
    Delete,
    /// Read or change the instance configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Create or update the `vmctl` Docker context for this instance.
    DockerContext(context::ContextArgs),
    /// Print version information.
    Version,
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[command(name = "__supervise", hide = true)]
    Supervise(vm::SuperviseArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Image(c) => image::run(c),
        Command::Start(a) => vm::start(&cli.name, a),
        Command::Stop(a) => vm::stop(&cli.name, a),
        Command::Status(a) => status::status(&cli.name, a),
        Command::List(a) => status::list(a),
        Command::Shell => exec::shell(&cli.name),
        Command::Exec { tty, cmd } => exec::exec(&cli.name, tty, cmd),
        Command::Logs(a) => vm::logs(&cli.name, a),
        Command::Mount(a) => mount::run(&cli.name, a),
        Command::Delete => vm::delete(&cli.name),
        Command::Config(c) => config::run(&cli.name, c),
        Command::DockerContext(a) => context::run(&cli.name, a),
        Command::Version => {
            println!("vmctl {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "vmctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Supervise(a) => vm::supervise(&cli.name, a),
    }
}
