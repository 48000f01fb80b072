//! The per-instance supervisor: a detached process (`vmctl __supervise`) that owns the engine,
//! the device backends, the forwarded Docker socket, port forwards and the control API, and
//! records progress in `<instance>/state.json` for `vmctl start`/`status` to read.

pub mod backends;
pub mod control;
pub mod docker_proxy;
pub mod ports;
pub mod udp_ports;
pub mod vsock;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::sync::{watch, Mutex};
use vmm::engine::qemu::{self, Net, QemuConfig, QemuVm};

use crate::agent::Agent;
use crate::config::{Config, ConfigFile, EngineChoice};
use crate::instance::{Instance, State};
use backends::{sibling_program, Backend};

/// The guest's vsock CID (the first one a guest may use).
pub const GUEST_CID: u32 = 3;
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

/// A share: virtio-fs tag, host folder, guest folder, read-only.
fn shares(cfg: &Config) -> Vec<(String, PathBuf, PathBuf, bool)> {
    let mut v = Vec::new();
    if cfg.share_home {
        if let Some(home) = std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_dir())
        {
            v.push(("home".to_string(), home.clone(), home, false));
        }
    }
    for (i, m) in cfg.mounts.iter().enumerate() {
        v.push((
            format!("mount{i}"),
            m.host.clone(),
            m.guest.clone(),
            m.read_only,
        ));
    }
    v
}

/// Which engine runs the VM, and why.
pub fn choose_engine(choice: EngineChoice) -> anyhow::Result<(&'static str, String)> {
    let builtin_gap = "the builtin engine has no virtio-net, virtio-fs or vsock frontend for the \
                       full VM yet";
    match choice {
        EngineChoice::Qemu => Ok(("qemu", "requested with --engine qemu".into())),
        EngineChoice::Builtin => bail!(
            "--engine builtin cannot run the Docker VM yet: {builtin_gap}; use --engine qemu (or auto)"
        ),
        EngineChoice::Auto => {
            let why = if std::path::Path::new("/sys/module/kvm_pvm").exists() {
                "/dev/kvm is PVM, which cannot boot an unmodified Linux kernel".to_string()
            } else {
                builtin_gap.to_string()
            };
            Ok(("qemu", why))
        }
    }
}

struct Running {
    qemu: QemuVm,
    _backends: Vec<Backend>,
}

fn start_vm(
    inst: &Instance,
    cfg: &Config,
    assets: &Assets,
    state: &Arc<Mutex<State>>,
) -> anyhow::Result<Running> {
    let set = |msg: &str| {
        log::info!("{msg}");
        state.blocking_lock().message = msg.to_string();
    };
    set("creating the data disk");
    qemu::ensure_data_disk(&inst.data_disk(), cfg.disk_size_mib << 20)?;

    let mut backends = Vec::new();
    set("starting usernet");
    let net_sock = inst.dir.join("net.sock");
    let mut net_args = vec![
        "stream".to_string(),
        "--socket".into(),
        net_sock.display().to_string(),
    ];
    // A debugging/benchmark knob: also expose dockerd over TCP on host 127.0.0.1:PORT through
    // usernet (the agent bridges guest TCP 2376 to the Docker socket), to compare with vsock.
    let docker_tcp = std::env::var("VMCTL_DOCKER_TCP_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok());
    if let Some(port) = docker_tcp {
        net_args.push("--forward".into());
        net_args.push(format!("tcp:127.0.0.1:{port}:{DOCKER_TCP_GUEST_PORT}"));
    }
    backends.push(Backend::start(
        "usernet",
        &sibling_program("usernet")?,
        &net_args,
        &inst.log("usernet"),
        &net_sock,
    )?);

    set("starting the vsock backend");
    let vhost_vsock = inst.dir.join("vhost-vsock.sock");
    backends.push(Backend::start(
        "vsock",
        &sibling_program("vmm-vsock-backend")?,
        &[
            "--socket".into(),
            vhost_vsock.display().to_string(),
            "--uds-path".into(),
            inst.vsock_sock().display().to_string(),
            "--guest-cid".into(),
            GUEST_CID.to_string(),
        ],
        &inst.log("vsock"),
        &vhost_vsock,
    )?);

    let mut fs_shares = Vec::new();
    let mut share_words = Vec::new();
    for (tag, host, guest, ro) in shares(cfg) {
        set(&format!("sharing {}", host.display()));
        let sock = inst.dir.join(format!("fs-{tag}.sock"));
        let mut args = vec![
            "serve".to_string(),
            "--socket".into(),
            sock.display().to_string(),
            "--tag".into(),
            tag.clone(),
            "--shared-dir".into(),
            host.display().to_string(),
        ];
        if ro {
            args.push("--readonly".into());
        }
        backends.push(Backend::start(
            &format!("fs-share {tag}"),
            &sibling_program("fs-share")?,
            &args,
            &inst.log(&format!("fs-{tag}")),
            &sock,
        )?);
        fs_shares.push((tag.clone(), sock));
        share_words.push(format!("{tag}:{}", guest.display()));
    }

    let mut qc = QemuConfig::new(
        assets.kernel.clone(),
        assets.rootfs.clone(),
        inst.log("console"),
    );
    qc.data_disk = Some(inst.data_disk());
    qc.memory_mib = u32::try_from(cfg.memory_mib).unwrap_or(u32::MAX);
    qc.cpus = cfg.cpus;
    qc.net = Net::Stream { socket: net_sock };
    qc.vsock = Some((vhost_vsock, GUEST_CID));
    qc.fs_shares = fs_shares;
    qc.qmp_socket = Some(inst.dir.join("qmp.sock"));
    qc.cmdline_extra.push(format!("vmctl.time={}", now_unix()));
    qc.cmdline_extra.push(format!(
        "vmctl.hostname={}",
        if inst.name == "default" {
            "vmctl"
        } else {
            &inst.name
        }
    ));
    if docker_tcp.is_some() {
        qc.cmdline_extra
            .push(format!("vmctl.docker_tcp={DOCKER_TCP_GUEST_PORT}"));
    }
    if !share_words.is_empty() {
        qc.cmdline_extra
            .push(format!("vmctl.share={}", share_words.join(",")));
    }
    set("booting the VM");
    let vm = QemuVm::start(&qc, None)?;
    {
        let mut s = state.blocking_lock();
        s.engine_reason = format!(
            "{}; QEMU uses {} ({})",
            s.engine_reason,
            vm.accel().accel.as_str(),
            vm.accel().reason
        );
    }
    Ok(Running {
        qemu: vm,
        _backends: backends,
    })
}

/// Waits until the agent says dockerd answers, updating the progress message.
/// Gives up early when a stop is requested (`stop` holds `Some(force)` then).
fn wait_ready(
    inst: &Instance,
    vm: &mut QemuVm,
    state: &Arc<Mutex<State>>,
    stop: &watch::Receiver<Option<bool>>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < READY_TIMEOUT {
        if stop.borrow().is_some() {
            bail!("stopped while booting");
        }
        if let Some(status) = vm.try_exit() {
            bail!(
                "the VM exited during boot ({status}); see {}",
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

fn stop_vm(inst: &Instance, running: &mut Running, force: bool) {
    if !force {
        if let Ok(mut a) = Agent::connect(&inst.vsock_sock(), Duration::from_secs(2)) {
            let _ = a.shutdown(false);
        }
        if running.qemu.wait_exit(STOP_TIMEOUT).is_some() {
            return;
        }
        log::warn!(
            "the guest did not power off within {} s; stopping it hard",
            STOP_TIMEOUT.as_secs()
        );
    }
    running.qemu.kill();
}

/// Whether the guest kernel panicked (its console says so near the end).
fn guest_panicked(inst: &Instance) -> bool {
    let text = std::fs::read(inst.log("console")).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(16384)..];
    String::from_utf8_lossy(tail).contains("Kernel panic - not syncing")
}

/// Whether the guest's last words on the console were a reboot (not a power-off or a crash).
fn guest_rebooted(inst: &Instance) -> bool {
    let text = std::fs::read(inst.log("console")).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(4096)..];
    let tail = String::from_utf8_lossy(tail);
    match (
        tail.rfind("reboot: Restarting system"),
        tail.rfind("reboot: Power down"),
    ) {
        (Some(r), Some(p)) => r > p,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Runs the supervisor in the current (already detached) process until the VM stops.
pub fn supervise(inst: &Instance, assets: Assets) -> anyhow::Result<()> {
    inst.create_dirs()?;
    std::fs::write(inst.pid_file(), std::process::id().to_string()).context("write pid file")?;
    let cfg = ConfigFile::load(&inst.dir.join("config.toml"))?.resolve()?;
    let (engine, reason) = choose_engine(cfg.engine)?;
    let state = Arc::new(Mutex::new(State {
        supervisor_pid: std::process::id(),
        engine: engine.into(),
        engine_reason: reason,
        phase: "starting".into(),
        message: "starting".into(),
        cpus: cfg.cpus,
        memory_mib: cfg.memory_mib,
        ports: Vec::new(),
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
        s.phase = "failed".into();
        s.message = format!("{e:#}");
    };
    let mut running = match start_vm(inst, &cfg, &assets, &state) {
        Ok(r) => r,
        Err(e) => {
            fail(&state, &e);
            std::thread::sleep(Duration::from_millis(300));
            return Err(e);
        }
    };
    if let Err(e) = wait_ready(inst, &mut running.qemu, &state, &stop_rx) {
        fail(&state, &e);
        running.qemu.kill();
        std::thread::sleep(Duration::from_millis(300));
        return Err(e);
    }

    let tasks = {
        let _guard = rt.enter();
        let l = docker_proxy::bind(&inst.docker_sock())?;
        vec![
            rt.spawn(docker_proxy::serve(
                l,
                inst.vsock_sock(),
                guest_agent::protocol::DOCKER_PORT,
            )),
            rt.spawn(ports::run(inst.vsock_sock(), state.clone())),
        ]
    };
    {
        let mut s = state.blocking_lock();
        s.phase = "running".into();
        s.message = "Docker is ready".into();
    }
    log::info!("running; Docker socket at {}", inst.docker_sock().display());

    // Wait for a stop request or the VM's own end; a guest reboot restarts the VM (QEMU runs
    // with -no-reboot, so a reboot ends its process) while the sockets stay served, and so
    // does a guest kernel panic, a few times, keeping the crashed console log.
    let mut crash_restarts = 0;
    let force = loop {
        if let Some(status) = running.qemu.try_exit() {
            let crashed = guest_panicked(inst);
            if !guest_rebooted(inst) && !crashed {
                log::warn!("the VM exited on its own ({status})");
                break None;
            }
            if crashed {
                crash_restarts += 1;
                log::error!(
                    "the guest kernel panicked (see {}); restarting the VM ({crash_restarts} of {MAX_CRASH_RESTARTS})",
                    inst.log("console").display()
                );
                let _ = std::fs::copy(inst.log("console"), inst.log("console-crash"));
                if crash_restarts > MAX_CRASH_RESTARTS {
                    log::error!("giving up after {MAX_CRASH_RESTARTS} guest crashes");
                    break None;
                }
            } else {
                log::info!("the guest rebooted; starting it again");
            }
            {
                let mut s = state.blocking_lock();
                s.phase = "starting".into();
                s.message = "guest rebooted; starting it again".into();
            }
            drop(running);
            let restarted = start_vm(inst, &cfg, &assets, &state).and_then(|mut r| {
                wait_ready(inst, &mut r.qemu, &state, &stop_rx)?;
                Ok(r)
            });
            match restarted {
                Ok(r) => {
                    running = r;
                    let mut s = state.blocking_lock();
                    s.phase = "running".into();
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
        s.phase = "stopping".into();
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
        s.phase = "stopped".into();
        s.message = "stopped".into();
        s.ports.clear();
        let _ = inst.write_state(&s);
    }
    control.abort();
    publisher.abort();
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
