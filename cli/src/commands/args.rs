//! Arguments every command shares. Kept apart from the commands themselves so that a
//! command module depends only on the ones it calls (`vm` → `context`, `exec`), never back.

use clap::Args;

#[derive(Debug, Args)]
pub struct NameArg {
    /// Instance name.
    #[arg(long, default_value = "default", global = true)]
    pub name: String,
}
