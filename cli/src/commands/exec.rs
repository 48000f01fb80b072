//! `vmctl exec` and `vmctl shell`: run a command in the VM through the guest agent, with
//! stdio streamed and the exit code passed back.

use std::time::Duration;

use anyhow::bail;
use guest_agent::protocol::ExecRequest;
use vmctl::agent::Agent;
use vmctl::instance::Instance;

use super::vm::NameArg;

pub fn exec_in_guest(inst: &Instance, argv: Vec<String>) -> anyhow::Result<i32> {
    if inst.running_supervisor().is_none() {
        bail!(
            "instance {} is not running; start it with `vmctl start`",
            inst.name
        );
    }
    let agent = Agent::connect(&inst.vsock_sock(), Duration::from_secs(5))?;
    let req = ExecRequest {
        argv,
        env: vec![("TERM".into(), "dumb".into())],
        cwd: None,
        tty: None,
    };
    let stdin: Box<dyn std::io::Read + Send> = Box::new(std::io::stdin());
    let code = agent.exec(
        req,
        Some(stdin),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )?;
    Ok(code)
}

pub fn exec(name: &NameArg, cmd: Vec<String>) -> anyhow::Result<()> {
    if cmd.is_empty() {
        bail!("nothing to run; use `vmctl exec -- COMMAND [ARGS...]`");
    }
    let inst = Instance::new(&name.name)?;
    let code = exec_in_guest(&inst, cmd)?;
    std::process::exit(code);
}

pub fn shell(name: &NameArg) -> anyhow::Result<()> {
    let inst = Instance::new(&name.name)?;
    // No pseudo-terminal in the guest yet: an interactive shell without line editing.
    let code = exec_in_guest(&inst, vec!["/bin/sh".into(), "-i".into()])?;
    std::process::exit(code);
}
