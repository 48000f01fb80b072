//! `vmctl`: the user's command. Each subcommand lives in `commands/`.

#[cfg(unix)]
mod commands;

#[cfg(unix)]
fn main() {
    use clap::Parser;
    let cli = commands::Cli::parse();
    if let Err(e) = commands::run(cli) {
        eprintln!("vmctl: error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        let disk_full = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
                == Some(libc::ENOSPC)
        });
        if disk_full {
            eprintln!(
                "vmctl: the disk is full: free some space (old builds in ~/.cache/vmctl can go, \
                 unused instances with `vmctl delete`) and try again"
            );
        }
        std::process::exit(1);
    }
}

#[cfg(not(unix))]
fn main() {
    eprintln!(
        "vmctl: not available on this OS yet: the supervisor, its sockets and the device \
         backends are unix-only so far (the WHP hypervisor backend exists in the vmm crate)"
    );
    std::process::exit(1);
}
