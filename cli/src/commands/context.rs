//! `vmctl docker-context`: a Docker CLI context named `vmctl` (or `vmctl-<name>`) for the
//! instance's forwarded socket, so `docker --context vmctl …` or `docker context use vmctl`
//! reaches the VM without DOCKER_HOST.

use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use clap::Args;
use vmctl::instance::Instance;

use super::args::NameArg;

#[derive(Debug, Args)]
pub struct ContextArgs {
    /// Also make it the current context.
    #[arg(long = "use")]
    use_it: bool,
}

pub fn context_name(inst: &Instance) -> String {
    if inst.name == "default" {
        "vmctl".into()
    } else {
        format!("vmctl-{}", inst.name)
    }
}

fn docker(args: &[&str]) -> anyhow::Result<bool> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run the docker CLI (is it installed?)")?;
    Ok(out.status.success())
}

/// Creates or updates the context; with `make_current`, switches to it.
pub fn ensure_context(inst: &Instance, make_current: bool) -> anyhow::Result<()> {
    let name = context_name(inst);
    let host = format!("host=unix://{}", inst.docker_sock().display());
    let exists = docker(&["context", "inspect", &name])?;
    let ok = if exists {
        docker(&["context", "update", &name, "--docker", &host])?
    } else {
        docker(&[
            "context",
            "create",
            &name,
            "--description",
            "vmctl VM",
            "--docker",
            &host,
        ])?
    };
    if !ok {
        bail!(
            "`docker context {}` failed",
            if exists { "update" } else { "create" }
        );
    }
    if make_current && !docker(&["context", "use", &name])? {
        bail!("`docker context use {name}` failed");
    }
    Ok(())
}

pub fn remove_context(inst: &Instance) {
    let name = context_name(inst);
    let _ = docker(&["context", "rm", "-f", &name]);
}

pub fn run(name: &NameArg, a: ContextArgs) -> anyhow::Result<()> {
    let inst = Instance::new(&name.name)?;
    ensure_context(&inst, a.use_it)?;
    println!("{}", context_name(&inst));
    Ok(())
}
