//! End-to-end check of the arm64 boot path with a real Linux kernel under QEMU's software
//! emulation (`qemu-system-aarch64 -M virt,gic-version=3`, whose GICv3 and timer sit where
//! `layout` puts ours): `boot::prepare` loads the Image, initrd and device tree into guest
//! memory, those bytes are handed to QEMU at the same addresses, and a 5-instruction stub
//! enters the kernel with x0 = the tree, as the hvf backend does with `Aarch64BootRegs`.
//! One difference: QEMU keeps its own device tree for firmware in the first MiB of RAM, so
//! the kernel goes 2 MiB higher (the boot protocol allows any 2 MiB-aligned base).
//! Linux must then find our machine model, command line, memory, initrd, GICv3
//! redistributors, timer, and bring up the second vCPU through PSCI (`hvc`).
//!
//! Needs `qemu-system-aarch64` (Debian `qemu-system-arm`) and an arm64 `Image` at
//! `$VMCTL_ARM64_TEST_KERNEL` or `~/.cache/vmctl/arm64-test-kernel/Image` (built from
//! linux-source-6.1 with arm64 allnoconfig + printk, 8250/PL011 consoles, OF, initrd,
//! virtio-mmio; see the lead's report). Skips with the reason otherwise.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::{prepare, BootConfig};
use super::image;
use super::layout;

/// Kills and reaps QEMU however the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn test_kernel() -> Option<PathBuf> {
    let p = std::env::var_os("VMCTL_ARM64_TEST_KERNEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/vmctl/arm64-test-kernel/Image"))
        })?;
    p.is_file().then_some(p)
}

/// ldr x0, =fdt; ldr x4, =kernel; br x4 — x1..x3 stay zero as the boot protocol asks.
fn entry_stub(fdt: u64, kernel: u64) -> Vec<u8> {
    let mut s = Vec::new();
    for insn in [0x5800_0080u32, 0x5800_00a4, 0xd61f_0080, 0xd503_201f] {
        s.extend_from_slice(&insn.to_le_bytes());
    }
    s.extend_from_slice(&fdt.to_le_bytes());
    s.extend_from_slice(&kernel.to_le_bytes());
    s
}

#[test]
fn test_linux_boots_on_prepared_memory_under_qemu() {
    let Some(kernel) = test_kernel() else {
        eprintln!("skipped: no arm64 test kernel ($VMCTL_ARM64_TEST_KERNEL or ~/.cache/vmctl/arm64-test-kernel/Image)");
        return;
    };
    if Command::new("qemu-system-aarch64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: qemu-system-aarch64 (Debian qemu-system-arm) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, vec![0x5a; 8192]).unwrap();
    let mem_size = 256u64 << 20;
    let (start, len) = layout::ram_range(mem_size, 36).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(start, len)]).unwrap();
    let cmdline = "earlycon=pl011,mmio32,0x09000000 keep_bootcon panic=-1 vmctl_marker=42";
    let regs = prepare(
        &mem,
        &BootConfig {
            kernel: &kernel,
            initrd: Some(&initrd),
            cmdline,
            cpus: 2,
            mem_size,
            // QEMU's virt machine has a PL011 where our 16550 would be: use earlycon instead.
            uart: false,
            virtio_devices: 1,
        },
    )
    .unwrap();

    // Hand QEMU exactly the bytes `prepare` wrote, at the same addresses.
    let header = image::read_header(&kernel).unwrap();
    let initrd_size = image::initrd_size(&initrd).unwrap();
    let plan = image::plan(mem_size, &header, Some(initrd_size)).unwrap();
    let (initrd_at, _) = plan.initrd.unwrap();
    let stub_at = plan.fdt + (1 << 20);
    const QEMU_DTB_ROOM: u64 = 2 << 20;
    let mut pieces = vec![
        (
            "kernel",
            plan.kernel_load,
            plan.kernel_end - plan.kernel_load,
        ),
        ("initrd", initrd_at, initrd_size),
        ("fdt", plan.fdt, 64 << 10),
    ];
    let mut args: Vec<String> = Vec::new();
    for (name, at, size) in pieces.drain(..) {
        let mut buf = vec![0u8; size as usize];
        mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
        let f = dir.path().join(name);
        std::fs::write(&f, &buf).unwrap();
        let at = if name == "kernel" {
            at + QEMU_DTB_ROOM
        } else {
            at
        };
        args.push("-device".into());
        args.push(format!(
            "loader,file={},addr={at:#x},force-raw=on",
            f.display()
        ));
    }
    let stub = dir.path().join("stub");
    std::fs::write(&stub, entry_stub(regs.fdt, regs.pc + QEMU_DTB_ROOM)).unwrap();
    args.push("-device".into());
    args.push(format!(
        "loader,file={},addr={stub_at:#x},force-raw=on",
        stub.display()
    ));
    args.push("-device".into());
    args.push(format!("loader,addr={stub_at:#x},cpu-num=0"));

    let log = dir.path().join("console");
    let child = Command::new("qemu-system-aarch64")
        .args([
            "-M",
            "virt,gic-version=3",
            "-cpu",
            "cortex-a57",
            "-smp",
            "2",
            "-m",
            "256",
        ])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut qemu = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = qemu.0.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let mut stderr = String::new();
    if let Some(e) = qemu.0.stderr.as_mut() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        status.is_some(),
        "QEMU did not finish in 90 s (the guest panics and QEMU exits on reboot); console:\n{console}"
    );
    for want in [
        "Machine model: vmctl".to_string(),
        format!("Kernel command line: {cmdline}"),
        "psci: probing for conduit method from DT.".into(),
        "GICv3: CPU0: found redistributor 0 region 0:0x00000000080a0000".into(),
        "GICv3: CPU1: found redistributor 1 region 0:0x00000000080c0000".into(),
        "arch_timer: cp15 timer(s) running".into(),
        "smp: Brought up 1 node, 2 CPUs".into(),
        // The initrd range came from our /chosen; its bytes are not a cpio archive.
        "Initramfs unpacking failed".into(),
        "VFS: Unable to mount root fs".into(),
    ] {
        assert!(
            console.contains(&want),
            "missing {want:?}; stderr: {stderr}\nconsole:\n{console}"
        );
    }
}
