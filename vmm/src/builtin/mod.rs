//! The `builtin` engine: this VMM running a VM on the platform hypervisor.
//!
//! Thread model: one thread per vCPU runs the guest and handles its port/MMIO exits on the
//! shared buses; each active virtio device has a worker thread woken by eventfds (KVM signals
//! them directly on queue notifications); the calling thread waits in epoll for host input to
//! COM1 and for the VM's exit. Nothing polls, so an idle guest costs no host CPU.

pub mod config;
mod stdin;
mod vcpu;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vm_superio::I8042Device;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use config::{DiskConfig, SerialConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE};

use crate::arch::x86_64::{boot, layout, mptable, regs};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::{self, ResetTrigger, SerialDevice, I8042};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::{MmioError, MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{MuxerError, Vsock};
use crate::devices::virtio::VirtioDevice;
use crate::hv::{self, BootRegs, HvError};

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    Reset,
    PowerOff,
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
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Disk(#[from] BlockError),
    #[error(transparent)]
    Vsock(#[from] MuxerError),
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error("Device layout: {0}")]
    Bus(#[from] BusError),
    #[error("Too many virtio devices ({0}); at most {max} fit the IOAPIC", max = layout::IOAPIC_PINS - layout::VIRTIO_IRQ_BASE)]
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
    evt: EventFd,
    stopping: AtomicBool,
}

impl ExitSignal {
    fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
            stopping: AtomicBool::new(false),
        })
    }

    pub(crate) fn set(&self, r: Result<VmExit, String>) {
        let mut g = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(r);
        }
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.evt.write(1);
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
    if cfg.cpus == 0 || cfg.cpus > mptable::MAX_CPUS {
        return Err(mptable::MptableError::CpuCount(cfg.cpus).into());
    }
    let mem_size = cfg.mem_mib << 20;
    let hypervisor = hv::open()?;
    if let Some(note) = hypervisor.limitation() {
        log::info!("{}: {note}", hypervisor.name());
    }
    let vm = hypervisor.create_vm()?;
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&layout::ram_ranges(mem_size)).map_err(|source| {
            BuiltinError::Memory {
                mib: cfg.mem_mib,
                source,
            }
        })?;
    vm.map_memory(&mem)?;

    let kernel = boot::load_kernel(&mem, &cfg.kernel)?;
    let initrd = match &cfg.initrd {
        Some(p) => Some(boot::load_initrd(&mem, mem_size, &kernel, p)?),
        None => None,
    };

    let exit = Arc::new(ExitSignal::new().map_err(BuiltinError::EventLoop)?);

    // Legacy devices.
    let mut pio = Bus::new();
    let serial_out: legacy::SerialOut = match &cfg.serial {
        SerialConfig::Stdio => Box::new(std::io::stdout()),
        SerialConfig::File(p) => Box::new(open_output("serial log", p)?),
        SerialConfig::None => Box::new(std::io::sink()),
    };
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        vm.irq_line(layout::COM1_IRQ)?,
        serial_out,
    )));
    pio.insert(legacy::COM1_PORT, legacy::COM_LEN, serial.clone())?;
    let reset_exit = exit.clone();
    let i8042 = I8042(I8042Device::new(ResetTrigger(Box::new(move || {
        reset_exit.set(Ok(VmExit::Reset))
    }))));
    pio.insert(
        legacy::I8042_PORT,
        legacy::I8042_LEN,
        Arc::new(Mutex::new(i8042)),
    )?;

    // virtio devices, announced on the command line.
    let mut devices: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        devices.push((
            format!("virtio-blk{i}"),
            Box::new(Block::open(&d.path, d.read_only)?),
        ));
    }
    if cfg.rng {
        devices.push(("virtio-rng".into(), Box::<Rng>::default()));
    }
    if let Some(v) = &cfg.vsock {
        devices.push((
            "virtio-vsock".into(),
            Box::new(Vsock::new(v.cid, &v.uds_path)?),
        ));
    }
    if let Some(p) = &cfg.console {
        let out: Arc<Mutex<dyn Write + Send>> =
            Arc::new(Mutex::new(open_output("console log", p)?));
        devices.push(("virtio-console".into(), Box::new(Console::new(out))));
    }
    if devices.len() > (layout::IOAPIC_PINS - layout::VIRTIO_IRQ_BASE) as usize {
        return Err(BuiltinError::TooManyDevices(devices.len()));
    }
    let mut mmio = Bus::new();
    let mut cmdline = cfg.cmdline.clone();
    for (i, (name, dev)) in devices.into_iter().enumerate() {
        let base = layout::VIRTIO_MMIO_START + i as u64 * layout::VIRTIO_MMIO_SIZE;
        let irq = layout::VIRTIO_IRQ_BASE + i as u32;
        let transport = MmioTransport::new(name, dev, mem.clone(), vm.irq_line(irq)?)?;
        for (q, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_mmio_notifier(base + REG_QUEUE_NOTIFY, Some(q as u32), evt)?;
        }
        mmio.insert(
            base,
            layout::VIRTIO_MMIO_SIZE,
            Arc::new(Mutex::new(transport)),
        )?;
        cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
    }

    let cmdline = boot::cmdline(&cmdline)?;
    let zero_page = boot::write_boot_params(&mem, mem_size, &kernel, &cmdline, initrd)?;
    mptable::setup(&mem, cfg.cpus)?;
    let boot_regs = BootRegs::X86_64(regs::setup_long_mode(&mem, kernel.entry, zero_page)?);

    let mut vcpus = Vec::new();
    for i in 0..cfg.cpus {
        let mut v = vm.create_vcpu(i, cfg.cpus)?;
        if i == 0 {
            v.set_boot_regs(&boot_regs)?;
        }
        vcpus.push(v);
    }

    let buses = Arc::new(vcpu::Buses { pio, mmio });
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
    result
}

/// Serves host stdin to COM1 until a vCPU reports the VM's end.
fn wait_for_exit(
    cfg: &VmConfig,
    exit: &ExitSignal,
    serial: &Arc<Mutex<SerialDevice>>,
) -> Result<VmExit, BuiltinError> {
    const EXIT_KEY: u64 = 0;
    const STDIN_KEY: u64 = 1;
    let epoll = Epoll::new().map_err(BuiltinError::EventLoop)?;
    epoll
        .ctl(
            ControlOperation::Add,
            exit.evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EXIT_KEY),
        )
        .map_err(BuiltinError::EventLoop)?;
    let mut input = (cfg.serial == SerialConfig::Stdio)
        .then(stdin::Input::new)
        .flatten();
    if let Some(inp) = &input {
        // stdin may be a file or /dev/null, which epoll refuses: then there is no input.
        if epoll
            .ctl(
                ControlOperation::Add,
                inp.fd(),
                EpollEvent::new(EventSet::IN, STDIN_KEY),
            )
            .is_err()
        {
            input = None;
        }
    }
    let mut events = vec![EpollEvent::default(); 4];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // While input waits for FIFO room, poll every 10 ms; otherwise sleep until an event.
        let timeout = if pending.is_empty() { -1 } else { 10 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BuiltinError::EventLoop(e)),
        };
        for ev in &events[..n] {
            if ev.data() == STDIN_KEY && pending.is_empty() {
                match input.as_mut().map(|i| i.read()) {
                    Some(Ok(bytes)) if !bytes.is_empty() => pending = bytes,
                    _ => {
                        // EOF or error: stop watching stdin.
                        if let Some(inp) = input.take() {
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                inp.fd(),
                                EpollEvent::default(),
                            );
                        }
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
