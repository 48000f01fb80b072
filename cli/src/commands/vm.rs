//! Instance lifecycle: `start`, `stop`, `status`, `list`, `delete`, `logs`, and the hidden
//! `__supervise` that `start` runs detached.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use vmctl::config::{self, ConfigFile, EngineChoice, Key, Setting};
use vmctl::image::{kernel, rootfs};
use vmctl::instance::{self, Instance, Phase};
use vmctl::supervisor::{self, control, Assets};

use super::args::NameArg;
use vmctl::progress::Progress;

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Which engine runs the VM.
    #[arg(long, value_enum)]
    engine: Option<EngineChoice>,
    /// vCPUs, 1-32 (default: all the host's CPUs but one, at most 8).
    #[arg(long, allow_hyphen_values = true)]
    cpus: Option<String>,
    /// Guest memory, e.g. 4GiB (default: a quarter of host RAM, up to 2GiB within half).
    #[arg(long, allow_hyphen_values = true)]
    memory: Option<String>,
    /// Size of the sparse data disk for /var/lib/docker, e.g. 64GiB (used when it is created).
    #[arg(long, allow_hyphen_values = true)]
    disk_size: Option<String>,
    /// Share a host folder: HOSTDIR[:GUESTDIR][:ro] (repeatable; replaces saved mounts).
    #[arg(long = "mount", allow_hyphen_values = true)]
    mounts: Vec<String>,
    /// Give the VM a /dev/kvm of its own.
    #[arg(long)]
    nested: bool,
    /// The static guest agent to put in the root image (default: the musl build).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Print milestones only, not the progress of each step.
    #[arg(long, short)]
    quiet: bool,
    /// Progress as JSON lines on stdout (`{"event":"step"|"progress"|"ready",...}`).
    #[arg(long)]
    json: bool,
}

impl StartArgs {
    /// The flags as checked settings. Flags apply to this start and are saved into
    /// `config.toml` once the VM runs (see `vmctl::config`).
    fn settings(&self) -> anyhow::Result<Vec<(String, Setting)>> {
        let mut out = Vec::new();
        if let Some(e) = self.engine {
            out.push((format!("--engine {}", e.as_str()), Setting::Engine(e)));
        }
        for (flag, key, value) in [
            ("--cpus", Key::Cpus, &self.cpus),
            ("--memory", Key::Memory, &self.memory),
            ("--disk-size", Key::DiskSize, &self.disk_size),
        ] {
            if let Some(v) = value {
                let s = Setting::from_text(key, v)
                    .map_err(|why| anyhow!("{flag} {}: {why}", config::shown(v)))?;
                out.push((format!("{flag} {v}"), s));
            }
        }
        if !self.mounts.is_empty() {
            let list = config::mount_list(self.mounts.iter().map(String::as_str))
                .map_err(|why| anyhow!("--mount {why}"))?;
            for m in &list {
                m.check_host()
                    .map_err(|why| anyhow!("--mount {m}: {why}"))?;
            }
            let shown = list
                .iter()
                .map(|m| format!("--mount {m}"))
                .collect::<Vec<_>>();
            out.push((shown.join(" "), Setting::Mounts(list)));
        }
        if self.nested {
            out.push(("--nested".into(), Setting::Nested(true)));
        }
        Ok(out)
    }
}

/// `$VMCTL_KERNEL`/`$VMCTL_ROOTFS` when set: they must name files.
fn given_asset(var: &str) -> anyhow::Result<Option<PathBuf>> {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_file() => Ok(Some(p)),
        Some(p) => bail!(
            "${var} names {}, which is not a file; unset it to use vmctl's own",
            p.display()
        ),
        None => Ok(None),
    }
}

fn step(shown: &Progress, n: u32, total: u32, msg: &str) {
    shown.milestone(&format!("[{n}/{total}] {msg}"));
}

/// The last line of a start: `DOCKER_HOST=…` for shells, or the `ready` event.
fn ready(shown: &Progress, inst: &Instance, seconds: f64) {
    let host = format!("unix://{}", inst.docker_sock().display());
    if shown.is_json() {
        shown.event(
            "ready",
            serde_json::json!({ "docker_host": host, "seconds": seconds }),
        );
    } else {
        println!("DOCKER_HOST={host}");
    }
}

fn ping(sock: &std::path::Path) -> bool {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(control::docker_ping(sock)))
        .unwrap_or(false)
}

/// The kernel and root image: `$VMCTL_KERNEL`/`$VMCTL_ROOTFS` when set (a kernel or image
/// of the user's own, or prebuilt ones handed to a VM that runs vmctl itself; checked by
/// `start` before anything else), else the project's, built and cached on first use.
fn guest_assets(
    total: u32,
    kernel: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    agent: Option<PathBuf>,
    shown: &Progress,
) -> anyhow::Result<Assets> {
    let progress = |msg: &str| shown.line(&format!("      {msg}"));
    step(shown, 1, total, "guest kernel");
    let kernel = match kernel {
        Some(k) => k,
        None => kernel::ensure(&progress)?.bzimage,
    };
    step(shown, 2, total, "root image");
    let rootfs = match rootfs {
        Some(r) => r,
        None => rootfs::ensure(&super::image::agent_path(agent)?, &progress)?.image,
    };
    Ok(Assets { kernel, rootfs })
}

pub fn start(name: &NameArg, a: StartArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let shown = Progress::new(a.quiet, a.json);
    // Check all input before writing anything: flags, the file, the host's side of both.
    let inst = Instance::new(&name.name)?;
    let flags = a.settings()?;
    let cfg_path = config::config_path(&inst.dir);
    let mut run = ConfigFile::load(&cfg_path)?;
    for (_, s) in &flags {
        run.apply(s.clone());
    }
    let cfg = run.resolve()?;
    cfg.check_host()?;
    let (engine, why) = supervisor::engine::choose(cfg.engine)?;
    if let Some(agent) = a.agent.as_ref().filter(|p| !p.is_file()) {
        bail!(
            "--agent {}: not a file; build the guest agent or leave --agent out",
            agent.display()
        );
    }
    let kernel_given = given_asset("VMCTL_KERNEL")?;
    let rootfs_given = given_asset("VMCTL_ROOTFS")?;

    inst.create_dirs()?;
    if inst.running_supervisor().is_some() {
        if !flags.is_empty() {
            eprintln!(
                "vmctl: instance {} is already running: flags not applied; `vmctl stop` first",
                inst.name
            );
        }
        if ping(&inst.docker_sock()) {
            eprintln!("vmctl: instance {} is already running", inst.name);
            ready(&shown, &inst, t0.elapsed().as_secs_f64());
            return Ok(());
        }
        bail!(
            "instance {} is starting or stuck (supervisor pid {:?}); see `vmctl status` or `vmctl stop --force`",
            inst.name,
            inst.running_supervisor()
        );
    }
    inst.check_free_space()?;
    let leftovers = instance::kill_leftovers(&inst);
    let cleaned = inst.clean_stale();
    if !cleaned.is_empty() || !leftovers.is_empty() {
        eprintln!(
            "vmctl: the previous run of {} did not stop cleanly; cleaned up its sockets",
            inst.name
        );
    }
    // The supervisor runs from this run's effective configuration; config.toml changes
    // only once the VM is up.
    run.save(&inst.dir.join("run.toml"))?;
    eprintln!("vmctl: engine {} ({why})", engine.as_str());

    let total = 4;
    let assets = guest_assets(total, kernel_given, rootfs_given, a.agent, &shown)?;

    step(
        &shown,
        3,
        total,
        &format!(
            "starting the VM ({} vCPUs, {} MiB)",
            cfg.cpus, cfg.memory_mib
        ),
    );
    let pid = supervisor::spawn_detached(&inst, &assets)?;
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(360);
    loop {
        if Instant::now() > deadline {
            bail!(
                "the VM did not become ready in time; see {}",
                supervisor::log_path(&inst).display()
            );
        }
        let state = inst.read_state().ok().flatten();
        if let Some(s) = &state {
            if s.supervisor_pid == pid && s.message != last {
                shown.milestone(&format!("      {}", s.message));
                last = s.message.clone();
            }
            if s.supervisor_pid == pid && s.phase == Phase::Failed {
                bail!(
                    "{}\n(supervisor log: {})",
                    s.message,
                    supervisor::log_path(&inst).display()
                );
            }
            if s.supervisor_pid == pid && s.phase == Phase::Running && ping(&inst.docker_sock()) {
                break;
            }
        }
        if !instance::process_alive(pid) {
            bail!(
                "the supervisor exited; see {}",
                supervisor::log_path(&inst).display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    step(
        &shown,
        4,
        total,
        &format!("Docker is ready ({:.1} s)", t0.elapsed().as_secs_f64()),
    );
    if !flags.is_empty() {
        save_flags(&cfg_path, &flags)?;
    }
    match super::context::ensure_context(&inst, false) {
        Ok(()) => eprintln!("vmctl: docker context 'vmctl' points at the VM (`docker --context vmctl ...`, or `vmctl docker-context --use`)"),
        Err(e) => eprintln!("vmctl: note: could not set up the docker context: {e:#}"),
    }
    ready(&shown, &inst, t0.elapsed().as_secs_f64());
    Ok(())
}

/// Saves the flags of a start that succeeded into `config.toml`, read again (it may have
/// been edited meanwhile).
fn save_flags(cfg_path: &std::path::Path, flags: &[(String, Setting)]) -> anyhow::Result<()> {
    let mut file = ConfigFile::load(cfg_path)?;
    for (_, s) in flags {
        file.apply(s.clone());
    }
    file.save(cfg_path)?;
    let shown: Vec<&str> = flags.iter().map(|(f, _)| f.as_str()).collect();
    eprintln!(
        "vmctl: saved {} in {} for the next starts",
        shown.join(" "),
        cfg_path.display()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Do not wait for the guest to shut down.
    #[arg(long)]
    force: bool,
}

pub fn stop(name: &NameArg, a: StopArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let inst = Instance::new(&name.name)?;
    let Some(pid) = inst.running_supervisor() else {
        instance::kill_leftovers(&inst);
        inst.clean_stale();
        eprintln!("vmctl: instance {} is not running", inst.name);
        return Ok(());
    };
    let path = if a.force {
        "/v1/stop?force=1"
    } else {
        "/v1/stop"
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if rt
        .block_on(control::request(
            &inst.control_sock(),
            hyper::Method::POST,
            path,
        ))
        .is_err()
    {
        // No control API (still booting or wedged): ask with SIGTERM.
        // SAFETY: kill with a pid read from our own pid file, verified alive just above.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(if a.force { 10 } else { 45 });
    while instance::process_alive(pid) {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(200));
            // Its QEMU and backends would outlive it: stop them too.
            instance::kill_leftovers(&inst);
            inst.clean_stale();
            eprintln!("vmctl: the supervisor did not stop in time and was killed");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "vmctl: stopped {} ({:.1} s)",
        inst.name,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn delete(name: &NameArg) -> anyhow::Result<()> {
    let inst = Instance::new(&name.name)?;
    if inst.running_supervisor().is_some() {
        stop(name, StopArgs { force: false })?;
    }
    if inst.exists() {
        std::fs::remove_dir_all(&inst.dir)
            .with_context(|| format!("remove {}", inst.dir.display()))?;
    }
    super::context::remove_context(&inst);
    eprintln!("vmctl: deleted {}", inst.name);
    Ok(())
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing as the log grows (for every source, across log rotations).
    #[arg(short, long)]
    follow: bool,
    /// The guest kernel console.
    #[arg(long, group = "which")]
    kernel: bool,
    /// The guest agent (its lines on the console).
    #[arg(long, group = "which")]
    agent: bool,
    /// dockerd's log (read from the guest).
    #[arg(long, group = "which")]
    docker: bool,
    /// A device backend's or engine's log: usernet, vsock, fs-home, fs-mount0, vmm,
    /// console.qemu (what this instance has is listed when NAME is not there).
    #[arg(long, group = "which", value_name = "NAME")]
    backend: Option<String>,
}

/// The log file of backend `name`, or an error listing the ones this instance has.
fn backend_log(inst: &Instance, name: &str) -> anyhow::Result<PathBuf> {
    let have: Vec<String> = std::fs::read_dir(inst.logs_dir())
        .map(|rd| {
            let mut v: Vec<String> = rd
                .flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".log").map(str::to_string)
                })
                .filter(|n| n != "supervisor" && n != "console")
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok && have.iter().any(|h| h == name) {
        return Ok(inst.log(name));
    }
    let list = if have.is_empty() {
        "none yet; start it with `vmctl start`".to_string()
    } else {
        have.join(", ")
    };
    bail!(
        "--backend: instance {} has no log named {}; it has: {list}",
        inst.name,
        vmctl::config::shown(name)
    )
}

pub fn logs(name: &NameArg, a: LogsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    use vmctl::logview::{sanitize_line, Follower};
    let inst = Instance::new(&name.name)?;
    if a.docker {
        let argv: &[&str] = if a.follow {
            &["tail", "-n", "+1", "-F", "/var/log/dockerd.log"]
        } else {
            &["cat", "/var/log/dockerd.log"]
        };
        let argv = argv.iter().map(|s| s.to_string()).collect();
        let code = super::exec::exec_in_guest(&inst, argv, false)?;
        std::process::exit(code);
    }
    let path = if let Some(b) = &a.backend {
        backend_log(&inst, b)?
    } else if a.kernel || a.agent {
        inst.log("console")
    } else {
        inst.log("supervisor")
    };
    let filter_agent = a.agent;
    if !path.exists() {
        bail!(
            "instance {} has no log at {} yet; start it with `vmctl start`",
            inst.name,
            path.display()
        );
    }
    // Read in bounded chunks (never the whole file at once); every line goes through
    // sanitize_line: the guest writes these logs and the user's terminal shows them.
    let mut f = Follower::new(&path);
    let mut out = std::io::stdout().lock();
    loop {
        let lines = f
            .poll(false)
            .with_context(|| format!("read {}", path.display()))?;
        let mut lines = lines;
        if !a.follow && !f.behind() {
            lines.extend(f.poll(true).unwrap_or_default());
        }
        for line in &lines {
            if !filter_agent || line.windows(5).any(|w| w == b"agent") {
                out.write_all(sanitize_line(line).as_bytes())?;
            }
        }
        out.flush()?;
        if f.behind() {
            continue;
        }
        if !a.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    rootfs: PathBuf,
}

pub fn supervise(name: &NameArg, a: SuperviseArgs) -> anyhow::Result<()> {
    vmm::logging::init("info");
    let inst = Instance::new(&name.name)?;
    supervisor::supervise(
        &inst,
        Assets {
            kernel: a.kernel,
            rootfs: a.rootfs,
        },
    )
}
