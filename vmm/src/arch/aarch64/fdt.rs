//! The flattened device tree of an arm64 VM, built with `vm-fdt`: memory, vCPUs started
//! through PSCI (`hvc`), a GICv3, the architected timer, a 16550 UART and the virtio-mmio
//! devices with their SPIs. The node and property names follow the kernel's bindings
//! (Documentation/devicetree/bindings), checked in tests against `dtc`'s decompiler.

use vm_fdt::{FdtWriter, FdtWriterResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::image::FDT_MAX_SIZE;
use super::layout::*;

const GIC_PHANDLE: u32 = 1;
/// Interrupt specifier cells of the GIC binding.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_EDGE_RISING: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;
/// The 16550's input clock as on a PC; Linux derives divisors from it.
const UART_CLOCK_HZ: u32 = 1_843_200;

/// Errors building or writing the device tree.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("Cannot build the device tree: {0}")]
    Build(#[from] vm_fdt::Error),
    #[error("Device tree of {0} bytes exceeds the 2 MiB the boot protocol allows")]
    TooBig(usize),
    #[error("Cannot write the device tree to guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// A virtio-mmio device as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioNode {
    pub base: u64,
    pub size: u64,
    /// SPI number (INTID - 32).
    pub spi: u32,
}

/// What the device tree describes.
#[derive(Debug, Clone)]
pub struct FdtConfig {
    pub cpus: u8,
    pub mem_size: u64,
    pub cmdline: String,
    /// (address, size) of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// The 16550 UART at UART_BASE is present (and the console when the command line says so).
    pub uart: bool,
    pub virtio: Vec<VirtioMmioNode>,
}

/// Builds the device tree blob.
pub fn build(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    check_cpus(cfg.cpus)?;
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "vmctl")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    cpus(&mut fdt, cfg.cpus)?;
    let mem = fdt.begin_node(&format!("memory@{RAM_START:x}"))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[RAM_START, cfg.mem_size])?;
    fdt.end_node(mem)?;
    chosen(&mut fdt, cfg)?;
    gic(&mut fdt, cfg.cpus)?;
    timer(&mut fdt)?;
    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;
    if cfg.uart {
        uart(&mut fdt)?;
    }
    for dev in &cfg.virtio {
        let node = fdt.begin_node(&format!("virtio_mmio@{:x}", dev.base))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u64("reg", &[dev.base, dev.size])?;
        fdt.property_array_u32("interrupts", &[GIC_SPI, dev.spi, IRQ_EDGE_RISING])?;
        fdt.property_null("dma-coherent")?;
        fdt.end_node(node)?;
    }
    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(FdtError::TooBig(blob.len()));
    }
    Ok(blob)
}

fn cpus(fdt: &mut FdtWriter, count: u8) -> FdtWriterResult<()> {
    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for i in 0..count {
        let cpu = fdt.begin_node(&format!("cpu@{:x}", cpu_reg(i)))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u32("reg", cpu_reg(i))?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)
}

fn chosen(fdt: &mut FdtWriter, cfg: &FdtConfig) -> FdtWriterResult<()> {
    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &cfg.cmdline)?;
    if cfg.uart {
        fdt.property_string("stdout-path", &format!("/uart@{UART_BASE:x}"))?;
    }
    if let Some((addr, size)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", addr)?;
        fdt.property_u64("linux,initrd-end", addr + size)?;
    }
    fdt.end_node(chosen)
}

fn gic(fdt: &mut FdtWriter, cpus: u8) -> FdtWriterResult<()> {
    let gic = fdt.begin_node(&format!("intc@{GICD_BASE:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    // An interrupt provider needs #address-cells (for interrupt-map users; dtc warns otherwise).
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_array_u64("reg", &[GICD_BASE, GICD_SIZE, GICR_BASE, gicr_size(cpus)])?;
    fdt.property_u32("#redistributor-regions", 1)?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(gic)
}

fn timer(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let mut irqs = Vec::new();
    for ppi in [
        TIMER_PPI_SECURE_PHYS,
        TIMER_PPI_PHYS,
        TIMER_PPI_VIRT,
        TIMER_PPI_HYP,
    ] {
        irqs.extend_from_slice(&[GIC_PPI, ppi, IRQ_LEVEL_HIGH]);
    }
    fdt.property_array_u32("interrupts", &irqs)?;
    fdt.end_node(timer)
}

fn uart(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let uart = fdt.begin_node(&format!("uart@{UART_BASE:x}"))?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    fdt.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    // Edge: device lines are pulsed (`IrqLine::trigger`), as on the x86 IOAPIC.
    fdt.property_array_u32("interrupts", &[GIC_SPI, UART_SPI, IRQ_EDGE_RISING])?;
    fdt.end_node(uart)
}

/// Writes the blob at `addr` (from `image::plan`).
pub fn write(mem: &GuestMemoryMmap, addr: u64, blob: &[u8]) -> Result<(), FdtError> {
    mem.write_slice(blob, GuestAddress(addr))
        .map_err(FdtError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn config() -> FdtConfig {
        FdtConfig {
            cpus: 2,
            mem_size: 256 << 20,
            cmdline: "console=ttyS0 earlycon".into(),
            initrd: Some((0x4e00_0000, 0x1234)),
            uart: true,
            virtio: vec![
                VirtioMmioNode {
                    base: VIRTIO_MMIO_START,
                    size: VIRTIO_MMIO_SIZE,
                    spi: VIRTIO_SPI_BASE,
                },
                VirtioMmioNode {
                    base: VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE,
                    size: VIRTIO_MMIO_SIZE,
                    spi: VIRTIO_SPI_BASE + 1,
                },
            ],
        }
    }

    fn be32(b: &[u8], off: usize) -> u32 {
        u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    #[test]
    fn test_fdt_header_valid() {
        let blob = build(&config()).unwrap();
        assert_eq!(be32(&blob, 0), 0xd00d_feed);
        assert_eq!(be32(&blob, 4) as usize, blob.len());
        assert_eq!(be32(&blob, 20), 17, "dtb version 17");
    }

    #[test]
    fn test_fdt_cpu_count_out_of_range_rejected() {
        let mut c = config();
        c.cpus = 0;
        assert!(build(&c).is_err());
        c.cpus = MAX_CPUS + 1;
        assert!(build(&c).is_err());
    }

    /// Decompiles `blob` with the real `dtc`; None (after saying why) when it is missing.
    fn decompile(blob: &[u8]) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.dtb");
        std::fs::write(&path, blob).unwrap();
        let out = match Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts"])
            .arg(&path)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipped: dtc (Debian device-tree-compiler) cannot run: {e}");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "dtc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "dtc warnings: {warnings}");
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn test_fdt_decompiles_with_dtc_to_expected_nodes() {
        let Some(dts) = decompile(&build(&config()).unwrap()) else {
            return;
        };
        for want in [
            "compatible = \"linux,dummy-virt\";",
            "#address-cells = <0x02>;",
            "interrupt-parent = <0x01>;",
            "memory@40000000 {",
            "reg = <0x00 0x40000000 0x00 0x10000000>;",
            "bootargs = \"console=ttyS0 earlycon\";",
            "stdout-path = \"/uart@9000000\";",
            "linux,initrd-start = <0x00 0x4e000000>;",
            "linux,initrd-end = <0x00 0x4e001234>;",
            "cpu@0 {",
            "cpu@1 {",
            "enable-method = \"psci\";",
            "intc@8000000 {",
            "compatible = \"arm,gic-v3\";",
            "#interrupt-cells = <0x03>;",
            "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x40000>;",
            "phandle = <0x01>;",
            "compatible = \"arm,armv8-timer\";",
            "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;",
            "compatible = \"arm,psci-1.0\\0arm,psci-0.2\";",
            "method = \"hvc\";",
            "uart@9000000 {",
            "compatible = \"ns16550a\";",
            "interrupts = <0x00 0x01 0x01>;",
            "virtio_mmio@a000000 {",
            "virtio_mmio@a001000 {",
            "interrupts = <0x00 0x11 0x01>;",
            "dma-coherent;",
        ] {
            assert!(dts.contains(want), "missing {want:?} in:\n{dts}");
        }
        assert_eq!(dts.matches("device_type = \"cpu\";").count(), 2);
    }

    #[test]
    fn test_fdt_minimal_machine_no_uart_no_initrd() {
        let cfg = FdtConfig {
            cpus: 1,
            mem_size: 64 << 20,
            cmdline: String::new(),
            initrd: None,
            uart: false,
            virtio: Vec::new(),
        };
        let Some(dts) = decompile(&build(&cfg).unwrap()) else {
            return;
        };
        assert!(!dts.contains("uart@"));
        assert!(!dts.contains("stdout-path"));
        assert!(!dts.contains("linux,initrd-start"));
        assert!(!dts.contains("virtio_mmio"));
        assert!(dts.contains("reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x20000>;"));
    }

    #[test]
    fn test_fdt_written_to_guest_memory_at_plan() {
        let blob = build(&config()).unwrap();
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_START), 8 << 20)]).unwrap();
        let at = RAM_START + (6 << 20);
        write(&mem, at, &blob).unwrap();
        let mut back = vec![0u8; blob.len()];
        mem.read_slice(&mut back, GuestAddress(at)).unwrap();
        assert_eq!(back, blob);
        assert!(write(&mem, RAM_START + (8 << 20) - 16, &blob).is_err());
    }
}
