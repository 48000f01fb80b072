//! `vmctl exec` and `vmctl shell`: run a command in the VM through the guest agent, with
//! stdio streamed and the exit code passed back; on a pseudo-terminal in the guest when asked
//! (`exec -t`) or when `shell` runs on a terminal, like `docker exec -it` / `ssh`.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use guest_agent::protocol::ExecRequest;
use vmctl::agent::Agent;
use vmctl::instance::Instance;
use vmctl::terminal;

use super::args::NameArg;

pub fn exec_in_guest(inst: &Instance, argv: Vec<String>, tty: bool) -> anyhow::Result<i32> {
    if inst.running_supervisor().is_none() {
        bail!(
            "instance {} is not running; start it with `vmctl start`",
            inst.name
        );
    }
    let agent = Agent::connect(&inst.vsock_sock(), Duration::from_secs(5))?;
    let tty = if tty {
        if !std::io::stdin().is_terminal() {
            bail!("-t needs a terminal on stdin; run without -t to pipe input");
        }
        Some(terminal::size(0).unwrap_or(guest_agent::protocol::TtySize { rows: 24, cols: 80 }))
    } else {
        None
    };
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    let req = ExecRequest {
        argv,
        env: vec![(
            "TERM".into(),
            if tty.is_some() { term } else { "dumb".into() },
        )],
        cwd: None,
        tty,
    };
    // Raw mode for the session only; restored when `_raw` drops, also on error.
    let _raw = req.tty.and_then(|_| terminal::RawMode::enable(0));
    let stdin: Box<dyn std::io::Read + Send> = Box::new(std::io::stdin());
    let code = agent.exec(
        req,
        Some(stdin),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )?;
    Ok(code)
}

pub fn exec(name: &NameArg, tty: bool, cmd: Vec<String>) -> anyhow::Result<()> {
    if cmd.is_empty() {
        bail!("nothing to run; use `vmctl exec [-t] -- COMMAND [ARGS...]`");
    }
    let inst = Instance::new(&name.name)?;
    let code = exec_in_guest(&inst, cmd, tty)?;
    std::process::exit(code);
}

pub fn shell(name: &NameArg) -> anyhow::Result<()> {
    let inst = Instance::new(&name.name)?;
    let tty = std::io::stdin().is_terminal();
    let argv = if tty {
        vec!["/bin/sh".into(), "-l".into()]
    } else {
        // Piped input: a plain shell reading commands, as `ssh host < script` would.
        vec!["/bin/sh".into()]
    };
    let code = exec_in_guest(&inst, argv, tty)?;
    std::process::exit(code);
}
