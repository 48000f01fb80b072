//! `vmctl config get|set|edit|check` on `<instance>/config.toml` (keys: see `vmctl::config`).
//! Each checks its input before it writes: a rejected value leaves the file as it was.

use anyhow::{bail, Context};
use clap::Subcommand;
use vmctl::config::{self, ConfigFile, Key, Setting};
use vmctl::instance::Instance;

use super::args::NameArg;

/// Instance configuration. Keys: engine (auto|builtin|qemu), cpus (1-32), memory (e.g. 4GiB),
/// disk_size (e.g. 64GiB), share_home (true|false), mounts (HOSTDIR[:GUESTDIR][:ro],...),
/// nested (true|false), allow_privileged_ports (true|false). Changes apply at the next
/// `vmctl start`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a key's effective value (or all keys).
    Get { key: Option<String> },
    /// Set a key (checked first; `mounts ""` removes all mounts).
    Set {
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Open the file in $EDITOR, then check it; a rejected edit is kept aside, not applied.
    Edit,
    /// Check the file (and that its shared folders exist) without starting anything.
    Check,
}

pub fn run(name: &NameArg, c: ConfigCommand) -> anyhow::Result<()> {
    let inst = Instance::new(&name.name)?;
    let path = config::config_path(&inst.dir);
    match c {
        ConfigCommand::Get { key: Some(k) } => {
            let value = ConfigFile::load(&path)?.get(&k)?;
            println!("{value}");
        }
        ConfigCommand::Get { key: None } => {
            let f = ConfigFile::load(&path)?;
            for k in Key::ALL {
                println!("{} = {}", k.name(), f.get(k.name())?);
            }
        }
        ConfigCommand::Set { key, value } => {
            let setting = ConfigFile::check(&key, &value)?;
            if let Setting::Mounts(list) = &setting {
                for m in list {
                    m.check_host()
                        .map_err(|why| anyhow::anyhow!("mounts {m}: {why}"))?;
                }
            }
            let mut f = ConfigFile::load(&path)?;
            f.apply(setting);
            inst.create_dirs()?;
            f.save(&path)?;
        }
        ConfigCommand::Edit => edit(&inst, &path)?,
        ConfigCommand::Check => {
            let cfg = ConfigFile::load(&path)?.resolve()?;
            cfg.check_host()?;
            println!(
                "{}: valid ({} vCPUs, {}, engine {})",
                path.display(),
                cfg.cpus,
                config::format_size_mib(cfg.memory_mib),
                cfg.engine.as_str()
            );
        }
    }
    Ok(())
}

/// Edits a copy (`config.toml.edit`, kept across tries) and puts it in place only once it
/// checks out, like `visudo`.
fn edit(inst: &Instance, path: &std::path::Path) -> anyhow::Result<()> {
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
    let mut words = editor.split_whitespace();
    let Some(program) = words.next() else {
        bail!("$EDITOR is empty; set it to your editor, e.g. EDITOR=nano");
    };
    // A broken current file is fine: fixing it is what edit is for.
    let draft = inst.dir.join("config.toml.edit");
    inst.create_dirs()?;
    if !draft.exists() {
        match std::fs::read(path) {
            Ok(b) => std::fs::write(&draft, b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ConfigFile::default().save(&draft)?;
                Ok(())
            }
            Err(e) => Err(e),
        }
        .with_context(|| format!("copy {} to {}", path.display(), draft.display()))?;
    }
    let st = std::process::Command::new(program)
        .args(words)
        .arg(&draft)
        .status()
        .with_context(|| format!("run $EDITOR ({editor})"))?;
    if !st.success() {
        bail!(
            "{editor} exited with {st}; {} is unchanged (your edit is in {})",
            path.display(),
            draft.display()
        );
    }
    let checked = ConfigFile::load(&draft).and_then(|f| f.resolve());
    if let Err(e) = checked {
        bail!(
            "{e} — {} is unchanged; `vmctl config edit` reopens your edit",
            path.display()
        );
    }
    std::fs::rename(&draft, path)
        .with_context(|| format!("move {} to {}", draft.display(), path.display()))?;
    Ok(())
}
