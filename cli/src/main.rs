//! `vmctl`: the user's command. Each subcommand lives in `commands/`.

#[cfg(unix)]
mod commands;

#[cfg(unix)]
fn main() {
    use clap::Parser;
    let cli = match commands::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
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

/// Help and version go out as clap prints them; a usage error is one line, like every other
/// error of vmctl (clap's own text folded: its tip kept, the usage block left to `--help`).
#[cfg(unix)]
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut parts: Vec<String> = Vec::new();
    let mut skip_block = false;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            skip_block = false;
            continue;
        }
        if t.starts_with("Usage:") {
            skip_block = true;
        }
        if skip_block {
            continue;
        }
        let t = t.strip_prefix("error: ").unwrap_or(t);
        let t = t
            .strip_prefix("For more information, try ")
            .map(|rest| format!("see {}", rest.trim_end_matches('.')))
            .unwrap_or_else(|| t.to_string());
        parts.push(t);
    }
    eprintln!("vmctl: error: {}", parts.join("; ").replace(":;", ":"));
    std::process::exit(2);
}

#[cfg(not(unix))]
fn main() {
    eprintln!(
        "vmctl: not available on this OS yet: the supervisor, its sockets and the device \
         backends are unix-only so far (the WHP hypervisor backend exists in the vmm crate)"
    );
    std::process::exit(1);
}
