//! `vmctl config get|set|edit` on `<instance>/config.toml` (keys: see `vmctl::config`).

use anyhow::Context;
use clap::Subcommand;
use vmctl::config::ConfigFile;
use vmctl::instance::Instance;

use super::vm::NameArg;

/// Instance configuration. Keys: engine (auto|builtin|qemu), cpus, memory (e.g. 4GiB),
/// disk_size (e.g. 64GiB), share_home (true|false), mounts (HOSTDIR[:GUESTDIR][:ro],...).
/// Changes apply at the next `vmctl start`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a key's effective value (or all keys).
    Get { key: Option<String> },
    /// Set a key.
    Set { key: String, value: String },
    /// Open the file in $EDITOR, then check it.
    Edit,
}

pub fn run(name: &NameArg, c: ConfigCommand) -> anyhow::Result<()> {
    let inst = Instance::new(&name.name)?;
    inst.create_dirs()?;
    let path = inst.dir.join("config.toml");
    match c {
        ConfigCommand::Get { key: Some(k) } => println!("{}", ConfigFile::load(&path)?.get(&k)?),
        ConfigCommand::Get { key: None } => {
            let f = ConfigFile::load(&path)?;
            for k in [
                "engine",
                "cpus",
                "memory",
                "disk_size",
                "share_home",
                "mounts",
            ] {
                println!("{k} = {}", f.get(k)?);
            }
        }
        ConfigCommand::Set { key, value } => {
            let mut f = ConfigFile::load(&path)?;
            f.set(&key, &value)?;
            f.save(&path)?;
        }
        ConfigCommand::Edit => {
            if !path.exists() {
                ConfigFile::default().save(&path)?;
            }
            let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
            let st = std::process::Command::new(&editor)
                .arg(&path)
                .status()
                .with_context(|| format!("run {editor}"))?;
            if !st.success() {
                anyhow::bail!("{editor} exited with {st}");
            }
            ConfigFile::load(&path)?.resolve()?;
        }
    }
    Ok(())
}
