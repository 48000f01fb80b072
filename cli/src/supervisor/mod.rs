//! The per-instance supervisor: a detached process (`vmctl __supervise`) that owns the engine,
//! the device backends, the forwarded Docker socket, port forwards and the control API, and
//! records progress in `<instance>/state.json` for `vmctl start`/`status` to read.

pub mod backends;
pub mod clock;
pub mod control;
pub mod docker_proxy;
pub mod engine;
mod guest_stream;
pub mod host_events;
pub mod limits;
pub mod ports;
pub mod reboots;
pub mod udp_ports;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::sync::{watch, Mutex};

use crate::agent::Agent;
use crate::config::{Config, ConfigFile};
use crate::instance::{Instance, Phase, State};
pub use engine::GUEST_CID;
use engine::{Engine, EngineExit, EngineKind, GuestSpec, Share};
/// How long the guest may take to reach Docker-ready (TCG on a busy 2-core host is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Guest TCP port of the agent's optional Docker bridge (see `VMCTL_DOCKER_TCP_PORT`).
const DOCKER_TCP_GUEST_PORT: u16 = 2376;
/// How many guest kernel panics one supervisor recovers from by restarting the VM.
const MAX_CRASH_RESTARTS: u32 = 3;
/// How long a graceful stop waits for the guest to power off.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What `vmctl start` hands the supervisor.
#[derive(Debug, Clone)]
pub struct Assets {
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The shares: the home folder (at the same path) and the configured mounts.
fn shares(cfg: &Config) -> Vec<Share> {
    let mut v = Vec::new();
    if cfg.share_home {
        if let Some(home) = std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_dir())
        {
            v.push(Share {
                tag: "home".into(),
                host: home.clone(),
                guest: home,
                read_only: false,
            });
        }
    }
    for (i, m) in cfg.mounts.iter().enumerate() {
        v.push(Share {
            tag: format!("mount{i}"),
            host: m.host.clone(),
            guest: m.guest.clone(),
            read_only: m.read_only,
        });
    }
    v
}

/// The guest as both engines run it.
fn guest_spec(inst: &Instance, cfg: &Config, assets: &Assets) -> GuestSpec {
    let shares = shares(cfg);
    // A debugging/benchmark knob: also expose dockerd over TCP on host 127.0.0.1:PORT through
    // usernet (the agent bridges guest TCP 2376 to the Docker socket), to compare with vsock.
    let docker_tcp = std::env::var("VMCTL_DOCKER_TCP_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok());
    GuestSpec {
        kernel: assets.kernel.clone(),
        rootfs: assets.rootfs.clone(),
        data_disk: inst.data_disk(),
        memory_mib: cfg.memory_mib,
        cpus: cfg.cpus,
        nested: cfg.nested,
        agent: guest_agent::cmdline::Config {
            hostname: if inst.name == "default" {
                "vmctl".into()
            } else {
                inst.name.clone()
            },
            time: i64::try_from(now_unix()).ok(),
            docker_tcp: docker_tcp.map(|_| DOCKER_TCP_GUEST_PORT),
            shares: shares
                .iter()
                .map(|s| (s.tag.clone(), s.guest.display().to_string()))
                .collect(),
            ..Default::default()
        },
        shares,
        docker_tcp: docker_tcp.map(|p| (p, DOCKER_TCP_GUEST_PORT)),
    }
}

fn start_vm(
    kind: EngineKind,
    inst: &Instance,
    cfg: &Config,
    assets: &Assets,
    state: &Arc<Mutex<State>>,
) -> anyhow::Result<Box<dyn Engine>> {
    let set = |msg: &str| {
        tracing::info!("{msg}");
        state.blocking_lock().message = msg.to_string();
    };
    set("preparing the data disk");
    let want = cfg.disk_size_mib << 20;
    let had = std::fs::metadata(inst.data_disk()).map(|m| m.len()).ok();
    vmm::engine::qemu::ensure_data_disk(&inst.data_disk(), want)?;
    match had {
        Some(had) if had < want => tracing::info!(
            "data disk grown from {} to {} MiB; the guest grows its filesystem when it mounts it",
            had >> 20,
            want >> 20
        ),
        Some(had) if had > want => tracing::warn!(
            "disk_size is {} MiB but the data disk already has {} MiB; it is never shrunk",
            want >> 20,
            had >> 20
        ),
        _ => {}
    }
    let vm = engine::start(kind, inst, &guest_spec(inst, cfg, assets), &set)?;
    state.blocking_lock().engine = vm.describe();
    Ok(vm)
}

/// Waits until the agent says dockerd answers, updating the progress message.
/// Gives up early when a stop is requested (`stop` holds `Some(force)` then).
fn wait_ready(
    inst: &Instance,
    vm: &mut Box<dyn Engine>,
    state: &Arc<Mutex<State>>,
    stop: &watch::Receiver<Option<bool>>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < READY_TIMEOUT {
        if stop.borrow().is_some() {
            bail!("stopped while booting");
        }
        if let Some(exit) = vm.try_exit() {
            bail!(
                "the VM ended during boot ({exit:?}); see {}",
                inst.log("console").display()
            );
        }
        match Agent::connect(&inst.vsock_sock(), Duration::from_secs(2)).and_then(|mut a| {
            let _ = a.sync_clock();
            a.health()
        }) {
            Ok(h) if h.docker_ready => return Ok(()),
            Ok(h) => {
                let phase = h.phases.last().map(|p| p.name.clone()).unwrap_or_default();
                let msg = format!("guest agent up, waiting for dockerd (last phase: {phase})");
                if msg != last {
                    state.blocking_lock().message = msg.clone();
                    last = msg;
                }
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "Docker did not become ready within {} s; see {} and {}",
        READY_TIMEOUT.as_secs(),
        inst.log("console").display(),
        inst.log("supervisor").display()
    )
}

/// Asks the guest to power off (unless `force`), then ends the VM.
fn stop_vm(inst: &Instance, vm: &mut Box<dyn Engine>, force: bool) {
    if !force {
        if let Ok(mut a) = Agent::connect(&inst.vsock_sock(), Duration::from_secs(2)) {
            let _ = a.shutdown(false);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if vm.try_exit().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(
            "the guest did not power off within {} s; stopping it hard",
            STOP_TIMEOUT.as_secs()
        );
    }
    vm.kill();
}

/// Runs the supervisor in the current (already detached) process until the VM stops.
pub fn supervise(inst: &Instance, assets: Assets) -> anyhow::Result<()> {
    inst.create_dirs()?;
    std::fs::write(inst.pid_file(), std::process::id().to_string()).context("write pid file")?;
    // Forwarded ports and connections each hold descriptors; the soft limit (often 1024)
    // would be reached long before the hard one.
    match limits::raise_nofile() {
        Ok((soft, hard)) => tracing::info!("file descriptor limit {soft} (hard {hard})"),
        Err(e) => tracing::warn!("cannot raise the file descriptor limit: {e}"),
    }
    // The effective configuration `vmctl start` checked for this run (file plus flags).
    let cfg = ConfigFile::load(&crate::config::run_path(&inst.dir))?.resolve()?;
    let (kind, reason) = engine::choose(cfg.engine)?;
    let state = Arc::new(Mutex::new(State {
        supervisor_pid: std::process::id(),
        engine: kind.as_str().into(),
        engine_reason: reason,
        phase: Phase::Starting,
        message: "starting".into(),
        cpus: cfg.cpus,
        memory_mib: cfg.memory_mib,
        ports: Vec::new(),
        ports_note: String::new(),
        started_at_unix: now_unix(),
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;

    // Publish state changes to state.json for readers that do not use the control API.
    let publisher = {
        let (state, inst) = (state.clone(), inst.clone());
        rt.spawn(async move {
            let mut last = State::default();
            loop {
                let s = state.lock().await.clone();
                if s != last {
                    let _ = inst.write_state(&s);
                    last = s;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Logs are capped while running too: a guest printing without end on its console (or a
    // chatty backend) cannot fill the host's disk.
    let rotator = {
        let logs = inst.logs_dir();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let logs = logs.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    crate::logview::rotate_dir(&logs, crate::logview::MAX_LOG_BYTES)
                })
                .await;
            }
        })
    };
    let (stop_tx, mut stop_rx) = watch::channel::<Option<bool>>(None);
    let stop_tx = Arc::new(stop_tx);
    let control = {
        let _guard = rt.enter();
        let l = docker_proxy::bind(&inst.control_sock()).context("bind control socket")?;
        rt.spawn(control::serve(l, state.clone(), stop_tx.clone()))
    };
    {
        let stop_tx = stop_tx.clone();
        rt.spawn(async move {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
                let _ = stop_tx.send(Some(false));
            }
        });
    }

    let fail = |state: &Arc<Mutex<State>>, e: &anyhow::Error| {
        let mut s = state.blocking_lock();
        s.phase = Phase::Failed;
        s.message = format!("{e:#}");
    };
    let mut running = match start_vm(kind, inst, &cfg, &assets, &state) {
        Ok(r) => r,
        Err(e) => {
            fail(&state, &e);
            std::thread::sleep(Duration::from_millis(300));
            return Err(e);
        }
    };
    if let Err(e) = wait_ready(inst, &mut running, &state, &stop_rx) {
        fail(&state, &e);
        running.kill();
        std::thread::sleep(Duration::from_millis(300));
        return Err(e);
    }

    let tasks = {
        let _guard = rt.enter();
        let l = docker_proxy::bind(&inst.docker_sock())?;
        let mut tasks = Vec::new();
        // fs-share streams host file events where it runs as a process (the qemu engine).
        if kind == EngineKind::Qemu {
            for share in shares(&cfg) {
                let events = host_events::events_sock(inst, &share.tag);
                tasks.push(rt.spawn(host_events::relay(inst.vsock_sock(), events, share)));
            }
        }
        tasks.extend([
            rt.spawn(docker_proxy::serve(
                l,
                inst.vsock_sock(),
                guest_agent::protocol::DOCKER_PORT,
            )),
            rt.spawn(clock::follow_host(inst.vsock_sock())),
            rt.spawn(ports::run(
                inst.vsock_sock(),
                state.clone(),
                ports::Policy {
                    allow_privileged: cfg.allow_privileged_ports,
                    ..Default::default()
                },
            )),
        ]);
        tasks
    };
    {
        let mut s = state.blocking_lock();
        s.phase = Phase::Running;
        s.message = "Docker is ready".into();
    }
    tracing::info!("running; Docker socket at {}", inst.docker_sock().display());

    // Wait for a stop request or the VM's own end; a guest reboot restarts the VM while the
    // sockets stay served, and so does a guest kernel panic, a few times, keeping the
    // crashed console log.
    let mut crash_restarts = 0;
    let mut reboots = reboots::RebootLimit::default();
    let mut loop_error = None;
    let force = loop {
        if let Some(exit) = running.try_exit() {
            match &exit {
                EngineExit::Reset => {
                    if let Err(msg) = reboots.record(Instant::now()) {
                        tracing::error!("{msg}");
                        loop_error = Some(msg);
                        break None;
                    }
                    tracing::info!("the guest rebooted; starting it again");
                }
                EngineExit::Panic => {
                    crash_restarts += 1;
                    tracing::error!(
                        "the guest kernel panicked (see {}); restarting the VM ({crash_restarts} of {MAX_CRASH_RESTARTS})",
                        inst.log("console").display()
                    );
                    let _ = std::fs::copy(inst.log("console"), inst.log("console-crash"));
                    if crash_restarts > MAX_CRASH_RESTARTS {
                        tracing::error!("giving up after {MAX_CRASH_RESTARTS} guest crashes");
                        break None;
                    }
                }
                EngineExit::PowerOff => {
                    tracing::warn!("the VM ended on its own ({exit:?})");
                    break None;
                }
                EngineExit::Failed(why) => {
                    tracing::error!("the VM failed: {why}");
                    loop_error = Some(format!("the VM failed: {why}"));
                    break None;
                }
            }
            {
                let mut s = state.blocking_lock();
                s.phase = Phase::Starting;
                s.message = "guest rebooted; starting it again".into();
            }
            drop(running);
            let restarted = start_vm(kind, inst, &cfg, &assets, &state).and_then(|mut r| {
                wait_ready(inst, &mut r, &state, &stop_rx)?;
                Ok(r)
            });
            match restarted {
                Ok(r) => {
                    running = r;
                    let mut s = state.blocking_lock();
                    s.phase = Phase::Running;
                    s.message = "Docker is ready".into();
                    continue;
                }
                Err(e) => {
                    fail(&state, &e);
                    for t in tasks {
                        t.abort();
                    }
                    control.abort();
                    publisher.abort();
                    inst.clean_stale();
                    return Err(e);
                }
            }
        }
        if let Some(force) = *stop_rx.borrow_and_update() {
            break Some(force);
        }
        let _ = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(500), stop_rx.changed()).await
        });
    };
    {
        let mut s = state.blocking_lock();
        s.phase = Phase::Stopping;
        s.message = "stopping".into();
    }
    for t in tasks {
        t.abort();
    }
    if let Some(force) = force {
        stop_vm(inst, &mut running, force);
    }
    drop(running);
    {
        let mut s = state.blocking_lock();
        match &loop_error {
            Some(msg) => {
                s.phase = Phase::Failed;
                s.message = msg.clone();
            }
            None => {
                s.phase = Phase::Stopped;
                s.message = "stopped".into();
            }
        }
        s.ports.clear();
        let _ = inst.write_state(&s);
    }
    control.abort();
    publisher.abort();
    rotator.abort();
    inst.clean_stale();
    Ok(())
}

/// Starts `vmctl __supervise` detached from the terminal, logging to `logs/supervisor.log`.
pub fn spawn_detached(inst: &Instance, assets: &Assets) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("locate the vmctl executable")?;
    let log =
        crate::instance::open_log(&inst.log("supervisor")).context("open the supervisor log")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["__supervise", "--name", &inst.name, "--kernel"])
        .arg(&assets.kernel)
        .arg("--rootfs")
        .arg(&assets.rootfs)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid in the forked child before exec: detaches from the terminal's session so
    // the supervisor survives the shell; async-signal-safe, no shared memory touched.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("start the supervisor")?;
    Ok(child.id())
}

/// The supervisor log path, for messages.
pub fn log_path(inst: &Instance) -> PathBuf {
    inst.log("supervisor")
}

/// Whether a path is a live unix socket someone listens on.
pub fn socket_alive(p: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(p).is_ok()
}
