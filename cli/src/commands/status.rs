//! `vmctl status` and `vmctl list`: what an instance is, from its state file (written by the
//! supervisor), its configuration and /proc. The JSON keeps the state file's fields
//! (`phase`, `engine`, `ports` with `"port": N`, ...) and adds the rest beside them.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;
use vmctl::config::{self, format_size_mib, Config, ConfigFile};
use vmctl::instance::{self, Instance, Phase, State};

use super::args::NameArg;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Machine-readable output: the `status --json` of every instance.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct MountReport {
    host: String,
    guest: String,
    read_only: bool,
}

/// One instance as `status` shows it.
#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    state: State,
    name: String,
    docker_socket: String,
    running: bool,
    /// The engine and why it was chosen, in one line.
    engine_summary: String,
    /// Configured guest RAM (of this run when running, else of the next start).
    memory_configured_mib: u64,
    /// Host RAM held by the VM's processes (engine and device backends). The guest agent does
    /// not report the guest's own usage.
    host_rss_mib: Option<u64>,
    share_home: bool,
    mounts: Vec<MountReport>,
    uptime_s: Option<u64>,
    /// The guest's address on its user-mode NAT (published ports are on the host's 127.0.0.1).
    ip: Option<String>,
    /// Why the configuration cannot be read, if it cannot.
    config_error: Option<String>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// "qemu on TCG — /dev/kvm is PVM ...", the reason left out where the name already says it.
fn engine_summary(engine: &str, reason: &str) -> String {
    if reason.is_empty() || engine.contains(reason) {
        engine.to_string()
    } else {
        format!("{engine} — {reason}")
    }
}

fn uptime(s: u64) -> String {
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

fn report(inst: &Instance) -> anyhow::Result<Report> {
    let supervisor = inst.running_supervisor();
    let running = supervisor.is_some();
    let mut state = inst.read_state()?.unwrap_or_default();
    state.phase = match state.phase {
        Phase::Unknown if inst.exists() => Phase::Stopped,
        Phase::Unknown => Phase::NotCreated,
        Phase::Stopped => Phase::Stopped,
        _ if !running => Phase::SupervisorGone,
        p => p,
    };
    // The running VM's configuration is the run's; a stopped one's is the next start's.
    let cfg_file = if running {
        config::run_path(&inst.dir)
    } else {
        config::config_path(&inst.dir)
    };
    let (cfg, config_error) = match ConfigFile::load(&cfg_file).and_then(|f| f.resolve()) {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let cfg: Option<Config> = cfg;
    let engine_summary = if running {
        engine_summary(&state.engine, &state.engine_reason)
    } else {
        let choice = cfg.as_ref().map_or("auto", |c| c.engine.as_str());
        format!("{choice} (chosen when the VM starts)")
    };
    let host_rss_mib = supervisor.map(|pid| {
        let mut pids = instance::processes_of(inst);
        pids.push(pid);
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter().filter_map(instance::rss_mib).sum()
    });
    let memory_configured_mib = match (&cfg, running) {
        (_, true) if state.memory_mib > 0 => state.memory_mib,
        (Some(c), _) => c.memory_mib,
        (None, _) => state.memory_mib,
    };
    if !running {
        state.cpus = cfg.as_ref().map_or(state.cpus, |c| c.cpus);
        state.memory_mib = memory_configured_mib;
    }
    Ok(Report {
        name: inst.name.clone(),
        docker_socket: inst.docker_sock().display().to_string(),
        running,
        engine_summary,
        memory_configured_mib,
        host_rss_mib,
        share_home: cfg.as_ref().is_some_and(|c| c.share_home),
        mounts: cfg
            .as_ref()
            .map(|c| {
                c.mounts
                    .iter()
                    .map(|m| MountReport {
                        host: m.host.display().to_string(),
                        guest: m.guest.display().to_string(),
                        read_only: m.read_only,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        uptime_s: (running && state.started_at_unix > 0)
            .then(|| now_unix().saturating_sub(state.started_at_unix)),
        // Both engines give the guest usernet's default address by DHCP.
        ip: (running && state.phase == Phase::Running)
            .then(|| usernet::Config::default().guest_ip.to_string()),
        config_error,
        state,
    })
}

fn print_text(r: &Report) {
    println!("name:    {}", r.name);
    println!("state:   {}", r.state.phase);
    println!("engine:  {}", r.engine_summary);
    let mut size = format!(
        "{} vCPUs, {} memory",
        r.state.cpus,
        format_size_mib(r.memory_configured_mib)
    );
    if let Some(rss) = r.host_rss_mib {
        size.push_str(&format!(" ({} held on the host)", format_size_mib(rss)));
    }
    println!("size:    {size}");
    if let Some(u) = r.uptime_s {
        println!("uptime:  {}", uptime(u));
    }
    if let Some(ip) = &r.ip {
        println!("ip:      {ip} (NAT; published ports are on 127.0.0.1)");
    }
    if r.share_home {
        println!("share:   $HOME at the same path");
    }
    for m in &r.mounts {
        let ro = if m.read_only { " (read-only)" } else { "" };
        println!("mount:   {} -> {}{ro}", m.host, m.guest);
    }
    if let Some(e) = &r.config_error {
        println!("config:  {e}");
    }
    if r.running {
        println!("docker:  unix://{}", r.docker_socket);
        println!("message: {}", r.state.message);
        for p in &r.state.ports {
            let addr = if p.address.is_empty() {
                "127.0.0.1"
            } else {
                &p.address
            };
            println!("port:    {addr}:{}/{} {}", p.port, p.proto, p.status);
        }
        if !r.state.ports_note.is_empty() {
            println!("ports:   {}", r.state.ports_note);
        }
    }
}

pub fn status(name: &NameArg, a: StatusArgs) -> anyhow::Result<()> {
    let inst = Instance::new(&name.name)?;
    let r = report(&inst)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(())
}

pub fn list(a: ListArgs) -> anyhow::Result<()> {
    let reports = instance::list()
        .iter()
        .map(report)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:<22} DOCKER SOCKET",
        "NAME", "STATE", "ENGINE"
    );
    for r in &reports {
        let engine = if r.running {
            r.state.engine.as_str()
        } else {
            "-"
        };
        println!(
            "{:<16} {:<10} {:<22} {}",
            r.name, r.state.phase, engine, r.docker_socket
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_engine_summary_says_reason_once() {
        assert_eq!(
            engine_summary(
                "qemu on TCG",
                "/dev/kvm is PVM (kvm_pvm), which cannot boot"
            ),
            "qemu on TCG — /dev/kvm is PVM (kvm_pvm), which cannot boot"
        );
        assert_eq!(engine_summary("builtin (KVM)", "KVM"), "builtin (KVM)");
        assert_eq!(engine_summary("qemu", ""), "qemu");
    }

    #[test]
    fn test_uptime_format() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(65), "1m 05s");
        assert_eq!(uptime(3723), "1h 02m 03s");
    }
}
