//! The `builtin` engine: this VMM running a VM on the platform hypervisor.
//!
//! Thread model: one thread per vCPU runs the guest and handles its port/MMIO exits on the
//! shared buses; each active virtio device has a worker thread woken by notifiers (on KVM,
//! eventfds it signals directly on queue notifications); the calling thread waits in a
//! `Poller` for host input to the console UART and for the VM's exit. Nothing polls, so an
//! idle guest costs no host CPU.
//!
//! The machine differs per architecture (`x86_64`: PC ports, MP tables; `aarch64`: MMIO UART,
//! device tree); those modules offer the same functions and everything else is shared. It runs
//! on Linux (KVM) and arm64 macOS (Hypervisor.framework); Windows lacks the virtio device
//! model (virtio-queue does not build there).

pub mod config;
mod stdin;
mod vcpu;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64 as machine;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as machine;

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

pub use config::{
    DiskConfig, FsConfig, NetBackend, NetConfig, SerialConfig, VmConfig, VsockConfig,
    DEFAULT_CMDLINE,
};

use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::{self, SerialDevice};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::{MmioError, MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::VirtioDevice;
use crate::hv::{self, HvError};
use crate::sys::event::{EventNotifier, Poller};

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmExit {
    /// The guest reset the machine (a reboot).
    Reset,
    PowerOff,
    /// The guest kernel panicked (seen on COM1) and then reset the machine (`panic=N`).
    Panic,
}

/// What `vmm --exit-report PATH` writes when it ends: how the VM ended, for a supervisor that
/// runs `vmm` as a child process (one JSON object).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "exit", rename_all = "kebab-case")]
pub enum ExitReport {
    /// The guest ended the VM.
    Guest { how: VmExit },
    /// The guest crashed the vCPU (triple fault, emulation failure): the vCPU state.
    Crashed { detail: String },
    /// The VM could not start or the VMM failed: the cause.
    Error { detail: String },
}

/// The line COM1 shows when the guest kernel panics.
const PANIC_MARK: &[u8] = b"Kernel panic - not syncing";

/// Passes COM1 output on and remembers whether the guest kernel said it panicked.
struct PanicWatch {
    out: legacy::SerialOut,
    tail: Vec<u8>,
    seen: Arc<AtomicBool>,
}

impl Write for PanicWatch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.seen.load(Ordering::Relaxed) {
            // Keep the last bytes so a mark split across writes is still found.
            self.tail.extend_from_slice(buf);
            if self.tail.windows(PANIC_MARK.len()).any(|w| w == PANIC_MARK) {
                self.seen.store(true, Ordering::SeqCst);
            }
            let keep = PANIC_MARK.len().saturating_sub(1);
            let cut = self.tail.len().saturating_sub(keep);
            self.tail.drain(..cut);
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Why the VM could not start or did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    #[error("Cannot allocate {mib} MiB of guest memory: {source}")]
    Memory {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error(transparent)]
    Machine(#[from] machine::ArchError),
    #[error(transparent)]
    Disk(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Vsock(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Fs(Box<dyn std::error::Error + Send + Sync>),
    #[error("{0} is not supported on this host")]
    Unsupported(&'static str),
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error("Device layout: {0}")]
    Bus(#[from] BusError),
    #[error("Too many virtio devices ({0}); at most {max} fit the {what}", max = machine::MAX_VIRTIO_DEVICES, what = machine::VIRTIO_LIMIT)]
    TooManyDevices(usize),
    #[error("Cannot open {what} {path}: {source}")]
    Output {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Memory size {0} MiB is out of range (16 MiB to 1 TiB)")]
    MemSize(u64),
    #[error("Host event loop: {0}")]
    EventLoop(#[source] std::io::Error),
    #[error("Guest crashed: {0}")]
    Crashed(String),
}

/// The reason the VM stopped, recorded by whichever thread saw it first.
pub(crate) struct ExitSignal {
    reason: Mutex<Option<Result<VmExit, String>>>,
    evt: EventNotifier,
    stopping: AtomicBool,
}

impl ExitSignal {
    fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventNotifier::new()?,
            stopping: AtomicBool::new(false),
        })
    }

    pub(crate) fn set(&self, r: Result<VmExit, String>) {
        let mut g = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(r);
        }
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.evt.notify();
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

fn open_output(what: &'static str, path: &std::path::Path) -> Result<std::fs::File, BuiltinError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| BuiltinError::Output {
            what,
            path: path.display().to_string(),
            source,
        })
}

/// Boots the VM described by `cfg` and runs it until the guest resets or powers off.
pub fn run(cfg: &VmConfig) -> Result<VmExit, BuiltinError> {
    if !(16..=1 << 20).contains(&cfg.mem_mib) {
        return Err(BuiltinError::MemSize(cfg.mem_mib));
    }
    machine::check_cpus(cfg.cpus)?;
    let mem_size = cfg.mem_mib << 20;
    let hypervisor = hv::open()?;
    if let Some(note) = hypervisor.limitation() {
        tracing::info!("{}: {note}", hypervisor.name());
    }
    let vm = hypervisor.create_vm()?;
    if cfg.nested && !vm.set_nested_virt(true)? {
        return Err(BuiltinError::Unsupported("nested virtualization"));
    }
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&machine::ram_ranges(mem_size)?).map_err(|source| {
            BuiltinError::Memory {
                mib: cfg.mem_mib,
                source,
            }
        })?;
    vm.map_memory(&mem)?;

    let loaded = machine::load(&mem, cfg, mem_size)?;

    let exit = Arc::new(ExitSignal::new().map_err(BuiltinError::EventLoop)?);

    // Legacy devices.
    let mut buses = vcpu::Buses {
        pio: Bus::new(),
        mmio: Bus::new(),
    };
    let serial_out: legacy::SerialOut = match &cfg.serial {
        SerialConfig::Stdio => Box::new(std::io::stdout()),
        SerialConfig::File(p) => Box::new(open_output("serial log", p)?),
        SerialConfig::None => Box::new(std::io::sink()),
    };
    let panicked = Arc::new(AtomicBool::new(false));
    let serial_out = Box::new(PanicWatch {
        out: serial_out,
        tail: Vec::new(),
        seen: panicked.clone(),
    });
    let serial = machine::add_legacy(vm.as_ref(), &mut buses, serial_out, &exit)?;

    // virtio devices, announced on the command line (x86_64) or in the device tree (arm64).
    let mut devices: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        devices.push((
            format!("virtio-blk{i}"),
            Box::new(Block::open(&d.path, d.read_only, d.serial.as_deref())?),
        ));
    }
    if cfg.rng {
        devices.push(("virtio-rng".into(), Box::<Rng>::default()));
    }
    if let Some(v) = &cfg.vsock {
        devices.push(("virtio-vsock".into(), vsock_device(v)?));
    }
    if let Some(n) = &cfg.net {
        let net = match &n.backend {
            NetBackend::Stream(path) => Net::connect(path, n.mac)?,
            NetBackend::User => Net::with_stream(usernet_in_process()?, n.mac)?,
        };
        devices.push(("virtio-net".into(), Box::new(net)));
    }
    for (i, f) in cfg.fs.iter().enumerate() {
        devices.push((format!("virtio-fs{i}"), fs_device(f)?));
    }
    if let Some(p) = &cfg.console {
        let out: Arc<Mutex<dyn Write + Send>> =
            Arc::new(Mutex::new(open_output("console log", p)?));
        devices.push(("virtio-console".into(), Box::new(Console::new(out))));
    }
    // Last, so turning it on moves no other device's window or IRQ.
    if cfg.balloon {
        devices.push(("virtio-balloon".into(), Box::<Balloon>::default()));
    }
    if devices.len() > machine::MAX_VIRTIO_DEVICES {
        return Err(BuiltinError::TooManyDevices(devices.len()));
    }
    let mut slots = Vec::new();
    for (i, (name, dev)) in devices.into_iter().enumerate() {
        let (base, irq) = machine::virtio_slot(i)?;
        let transport = MmioTransport::new(name, dev, mem.clone(), vm.irq_line(irq)?)?;
        for (q, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_mmio_notifier(base + REG_QUEUE_NOTIFY, Some(q as u32), evt)?;
        }
        buses.mmio.insert(
            base,
            machine::VIRTIO_MMIO_SIZE,
            Arc::new(Mutex::new(transport)),
        )?;
        slots.push((base, irq));
    }

    let boot_regs = machine::boot_regs(&mem, cfg, mem_size, loaded, &slots)?;

    let mut vcpus = Vec::new();
    for i in 0..cfg.cpus {
        let mut v = vm.create_vcpu(i, cfg.cpus)?;
        if i == 0 {
            v.set_boot_regs(&boot_regs)?;
        }
        vcpus.push(v);
    }

    let buses = Arc::new(buses);
    let mut kickers = Vec::new();
    let mut threads = Vec::new();
    for (i, v) in vcpus.into_iter().enumerate() {
        kickers.push(v.kicker());
        let (buses, exit) = (buses.clone(), exit.clone());
        let t = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || vcpu::run_loop(v, &buses, &exit))
            .map_err(BuiltinError::EventLoop)?;
        threads.push(t);
    }

    let result = wait_for_exit(cfg, &exit, &serial);
    exit.stopping.store(true, Ordering::SeqCst);
    // Stop the vCPUs: a kick makes KVM_RUN return; the loops see `stopping` and end. A kick
    // can land just before a vCPU enters KVM_RUN, so repeat until every thread is done.
    for _ in 0..100 {
        kickers.iter().for_each(|k| k.kick());
        if threads.iter().all(|t| t.is_finished()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for t in threads {
        if t.is_finished() {
            let _ = t.join();
        }
    }
    let _ = serial.lock().map(|mut s| s.uart.writer_mut().flush());
    drop(mem);
    match result {
        Ok(VmExit::Reset) if panicked.load(Ordering::SeqCst) => Ok(VmExit::Panic),
        r => r,
    }
}

/// Starts usernet's NAT on a thread of this process and returns the VMM's end of the socket
/// pair that carries the frames. The NAT ends when the device closes its end.
fn usernet_in_process() -> Result<std::os::unix::net::UnixStream, BuiltinError> {
    let (vmm_end, net_end) =
        std::os::unix::net::UnixStream::pair().map_err(BuiltinError::EventLoop)?;
    // The device has no MRG_RXBUF: frames towards the guest must fit a 1514-byte buffer.
    let config = usernet::Config {
        mtu: crate::devices::virtio::net::MTU.into(),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("usernet".into())
        .spawn(move || {
            if let Err(e) = usernet::stream::serve_connected(net_end, config) {
                tracing::error!("usernet: {e}");
            }
        })
        .map_err(BuiltinError::EventLoop)?;
    Ok(vmm_end)
}

#[cfg(target_os = "linux")]
fn vsock_device(v: &VsockConfig) -> Result<Box<dyn VirtioDevice>, BuiltinError> {
    use crate::devices::virtio::vsock::Vsock;
    let dev = Vsock::new(v.cid, &v.uds_path).map_err(|e| BuiltinError::Vsock(Box::new(e)))?;
    Ok(Box::new(dev))
}

/// The vsock muxer polls host unix sockets with epoll, so the device exists on Linux only.
#[cfg(not(target_os = "linux"))]
fn vsock_device(_v: &VsockConfig) -> Result<Box<dyn VirtioDevice>, BuiltinError> {
    Err(BuiltinError::Unsupported("virtio-vsock"))
}

#[cfg(target_os = "linux")]
fn fs_device(f: &FsConfig) -> Result<Box<dyn VirtioDevice>, BuiltinError> {
    use crate::devices::virtio::fs::Fs;
    let dev =
        Fs::new(&f.tag, &f.shared_dir, f.read_only).map_err(|e| BuiltinError::Fs(Box::new(e)))?;
    Ok(Box::new(dev))
}

/// fs-share's FUSE server and passthrough are Linux-only, so the device exists on Linux only.
#[cfg(not(target_os = "linux"))]
fn fs_device(_f: &FsConfig) -> Result<Box<dyn VirtioDevice>, BuiltinError> {
    Err(BuiltinError::Unsupported("virtio-fs"))
}

/// Serves host stdin to the console UART until a vCPU reports the VM's end.
fn wait_for_exit(
    cfg: &VmConfig,
    exit: &ExitSignal,
    serial: &Arc<Mutex<SerialDevice>>,
) -> Result<VmExit, BuiltinError> {
    const EXIT_KEY: u64 = 0;
    const STDIN_KEY: u64 = 1;
    let poller = Poller::new().map_err(BuiltinError::EventLoop)?;
    poller
        .add(&exit.evt, EXIT_KEY)
        .map_err(BuiltinError::EventLoop)?;
    let mut input = (cfg.serial == SerialConfig::Stdio)
        .then(stdin::Input::new)
        .flatten();
    if let Some(inp) = &mut input {
        // stdin may be a file or /dev/null, which epoll refuses: then there is no input.
        if !inp.watch(&poller, STDIN_KEY) {
            input = None;
        }
    }
    let mut ready = Vec::with_capacity(4);
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // While input waits for FIFO room, poll every 10 ms; otherwise sleep until an event.
        let timeout = (!pending.is_empty()).then_some(Duration::from_millis(10));
        poller
            .wait(timeout, &mut ready)
            .map_err(BuiltinError::EventLoop)?;
        if ready.contains(&STDIN_KEY) && pending.is_empty() {
            match input.as_mut().map(|i| i.read()) {
                Some(Ok(bytes)) if !bytes.is_empty() => pending = bytes,
                Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => {
                    // EOF or error: stop watching stdin.
                    if let Some(mut inp) = input.take() {
                        inp.unwatch(&poller);
                    }
                }
            }
        }
        if !pending.is_empty() {
            let took = serial
                .lock()
                .map(|mut s| s.enqueue_input(&pending))
                .unwrap_or(0);
            pending.drain(..took);
        }
        if exit.stopping() {
            let reason = exit.reason.lock().unwrap_or_else(|p| p.into_inner()).take();
            return match reason {
                Some(Ok(e)) => Ok(e),
                Some(Err(crash)) => Err(BuiltinError::Crashed(crash)),
                None => Err(BuiltinError::Crashed("VM stopped without a reason".into())),
            };
        }
    }
}
