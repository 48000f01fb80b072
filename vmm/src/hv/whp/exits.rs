//! What a WHP exit means, decoded from the raw values of `WHV_RUN_VP_EXIT_CONTEXT`
//! (WinHvPlatformDefs.h), and the register encodings the backend writes. Pure, so the tables
//! are unit-tested on every host; `backend` feeds them the fields of the real structures.

use crate::hv::SegmentDesc;

/// `WHV_RUN_VP_EXIT_REASON` values.
pub mod reason {
    pub const NONE: i32 = 0;
    pub const MEMORY_ACCESS: i32 = 1;
    pub const X64_IO_PORT_ACCESS: i32 = 2;
    pub const UNRECOVERABLE_EXCEPTION: i32 = 4;
    pub const INVALID_VP_REGISTER_VALUE: i32 = 5;
    pub const UNSUPPORTED_FEATURE: i32 = 6;
    pub const X64_INTERRUPT_WINDOW: i32 = 7;
    pub const X64_HALT: i32 = 8;
    pub const X64_APIC_EOI: i32 = 9;
    pub const SYNIC_SINT_DELIVERABLE: i32 = 10;
    pub const X64_MSR_ACCESS: i32 = 0x1000;
    pub const X64_CPUID: i32 = 0x1001;
    pub const EXCEPTION: i32 = 0x1002;
    pub const X64_RDTSC: i32 = 0x1003;
    pub const X64_APIC_SMI_TRAP: i32 = 0x1004;
    pub const HYPERCALL: i32 = 0x1005;
    pub const X64_APIC_INIT_SIPI_TRAP: i32 = 0x1006;
    pub const X64_APIC_WRITE_TRAP: i32 = 0x1007;
    pub const CANCELED: i32 = 0x2001;
}

/// What the backend does with an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// MMIO: emulate the instruction (WinHvEmulation) and hand the access to the device model.
    Mmio,
    /// Port I/O: `IN`/`OUT` handled directly, string forms through the emulator.
    PortIo,
    /// HLT: wait for an interrupt.
    Halt,
    /// WHvCancelRunVirtualProcessor (a kick).
    Canceled,
    /// Nothing for us to do; run again.
    Resume,
    /// The guest triple-faulted: an x86 machine resets.
    Reset,
    /// The partition cannot continue.
    Crash(&'static str),
    /// An exit we never enabled; reported and resumed.
    Unexpected,
}

/// Classifies an exit reason.
pub fn classify(exit_reason: i32) -> ExitClass {
    use reason::*;
    match exit_reason {
        MEMORY_ACCESS => ExitClass::Mmio,
        X64_IO_PORT_ACCESS => ExitClass::PortIo,
        X64_HALT => ExitClass::Halt,
        CANCELED => ExitClass::Canceled,
        NONE | X64_INTERRUPT_WINDOW | X64_APIC_EOI | SYNIC_SINT_DELIVERABLE => ExitClass::Resume,
        UNRECOVERABLE_EXCEPTION => ExitClass::Reset,
        INVALID_VP_REGISTER_VALUE => ExitClass::Crash("invalid virtual processor register value"),
        UNSUPPORTED_FEATURE => ExitClass::Crash("the guest used a feature WHP does not support"),
        _ => ExitClass::Unexpected,
    }
}

/// A name for an exit reason, for messages.
pub fn reason_name(exit_reason: i32) -> String {
    use reason::*;
    let name = match exit_reason {
        NONE => "None",
        MEMORY_ACCESS => "MemoryAccess",
        X64_IO_PORT_ACCESS => "X64IoPortAccess",
        UNRECOVERABLE_EXCEPTION => "UnrecoverableException",
        INVALID_VP_REGISTER_VALUE => "InvalidVpRegisterValue",
        UNSUPPORTED_FEATURE => "UnsupportedFeature",
        X64_INTERRUPT_WINDOW => "X64InterruptWindow",
        X64_HALT => "X64Halt",
        X64_APIC_EOI => "X64ApicEoi",
        SYNIC_SINT_DELIVERABLE => "SynicSintDeliverable",
        X64_MSR_ACCESS => "X64MsrAccess",
        X64_CPUID => "X64Cpuid",
        EXCEPTION => "Exception",
        X64_RDTSC => "X64Rdtsc",
        X64_APIC_SMI_TRAP => "X64ApicSmiTrap",
        HYPERCALL => "Hypercall",
        X64_APIC_INIT_SIPI_TRAP => "X64ApicInitSipiTrap",
        X64_APIC_WRITE_TRAP => "X64ApicWriteTrap",
        CANCELED => "Canceled",
        _ => return format!("exit reason {exit_reason:#x}"),
    };
    name.to_string()
}

/// `WHV_X64_IO_PORT_ACCESS_INFO`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAccess {
    pub write: bool,
    /// 1, 2 or 4 bytes.
    pub size: usize,
    /// INS/OUTS (possibly REP): memory operands, needs the instruction emulator.
    pub string: bool,
}

/// Decodes `WHV_X64_IO_PORT_ACCESS_INFO.AsUINT32`; None for an access size that is not 1,
/// 2 or 4 (which real hardware never reports).
pub fn decode_port_access(info: u32) -> Option<PortAccess> {
    let size = ((info >> 1) & 7) as usize;
    matches!(size, 1 | 2 | 4).then_some(PortAccess {
        write: info & 1 != 0,
        size,
        string: info & (1 << 4) != 0,
    })
}

/// `WHV_MEMORY_ACCESS_INFO.AccessType` of `AsUINT32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryAccessType {
    Read,
    Write,
    Execute,
}

pub fn decode_memory_access(info: u32) -> Option<MemoryAccessType> {
    match info & 3 {
        0 => Some(MemoryAccessType::Read),
        1 => Some(MemoryAccessType::Write),
        2 => Some(MemoryAccessType::Execute),
        _ => None,
    }
}

/// The length of the exiting instruction, from `WHV_VP_EXIT_CONTEXT`'s bitfield.
pub fn instruction_length(vp_bitfield: u8) -> u64 {
    u64::from(vp_bitfield & 0xf)
}

/// RAX after `IN` of `size` bytes: 8/16-bit forms keep the other bits of RAX; the 32-bit form
/// zero-extends into the upper half, as on hardware.
pub fn port_in_rax(rax: u64, size: usize, data: &[u8]) -> u64 {
    let mut raw = [0u8; 4];
    let n = size.min(4).min(data.len());
    raw[..n].copy_from_slice(&data[..n]);
    let v = u64::from(u32::from_le_bytes(raw));
    match size {
        1 => (rax & !0xff) | (v & 0xff),
        2 => (rax & !0xffff) | (v & 0xffff),
        _ => v,
    }
}

/// `WHV_X64_SEGMENT_REGISTER.Attributes` for a segment loaded from a GDT entry.
pub fn segment_attributes(s: &SegmentDesc) -> u16 {
    u16::from(s.type_ & 0xf)
        | (u16::from(s.s) << 4)
        | (u16::from(s.dpl & 3) << 5)
        | (u16::from(s.present) << 7)
        | (u16::from(s.long) << 13)
        | (u16::from(s.db) << 14)
        | (u16::from(s.granularity) << 15)
}

/// Fixed, edge-triggered interrupt, as `WHV_INTERRUPT_CONTROL`'s first 64-bit word
/// (Type: bits 0-7, DestinationMode: bits 8-11, TriggerMode: bits 12-15).
pub fn interrupt_control_bits(interrupt_type: u8, logical: bool, level: bool) -> u64 {
    u64::from(interrupt_type) | (u64::from(logical) << 8) | (u64::from(level) << 12)
}

/// `WHV_EMULATOR_STATUS.AsUINT32`: did the emulation succeed, and if not, why.
pub fn emulator_status(status: u32) -> Result<(), &'static str> {
    const REASONS: [(u32, &str); 9] = [
        (1 << 1, "internal emulation failure"),
        (1 << 2, "port I/O callback failed"),
        (1 << 3, "memory callback failed"),
        (1 << 4, "guest virtual address translation failed"),
        (1 << 5, "translated address not page-aligned"),
        (1 << 6, "reading registers failed"),
        (1 << 7, "writing registers failed"),
        (1 << 8, "an interrupt caused an intercept"),
        (1 << 9, "the guest cannot be faulted"),
    ];
    if status & 1 != 0 {
        return Ok(());
    }
    Err(REASONS
        .iter()
        .find(|(bit, _)| status & bit != 0)
        .map_or("emulation failed", |(_, why)| why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_classify_exit_table() {
        use reason::*;
        let table = [
            (MEMORY_ACCESS, ExitClass::Mmio),
            (X64_IO_PORT_ACCESS, ExitClass::PortIo),
            (X64_HALT, ExitClass::Halt),
            (CANCELED, ExitClass::Canceled),
            (X64_INTERRUPT_WINDOW, ExitClass::Resume),
            (X64_APIC_EOI, ExitClass::Resume),
            (NONE, ExitClass::Resume),
            (UNRECOVERABLE_EXCEPTION, ExitClass::Reset),
            (X64_CPUID, ExitClass::Unexpected),
            (X64_MSR_ACCESS, ExitClass::Unexpected),
            (0x7777, ExitClass::Unexpected),
        ];
        for (r, want) in table {
            assert_eq!(classify(r), want, "{}", reason_name(r));
        }
        assert!(matches!(
            classify(INVALID_VP_REGISTER_VALUE),
            ExitClass::Crash(_)
        ));
        assert!(matches!(classify(UNSUPPORTED_FEATURE), ExitClass::Crash(_)));
        assert_eq!(reason_name(X64_HALT), "X64Halt");
        assert_eq!(reason_name(0x7777), "exit reason 0x7777");
    }

    #[test]
    fn test_decode_port_access_table() {
        // out dx, al
        assert_eq!(
            decode_port_access(0b0_0011),
            Some(PortAccess {
                write: true,
                size: 1,
                string: false
            })
        );
        // in eax, dx
        assert_eq!(
            decode_port_access(0b0_1000),
            Some(PortAccess {
                write: false,
                size: 4,
                string: false
            })
        );
        // rep outsw
        assert_eq!(
            decode_port_access(0b11_0101),
            Some(PortAccess {
                write: true,
                size: 2,
                string: true
            })
        );
        assert_eq!(decode_port_access(0b0110), None, "size 3");
        assert_eq!(decode_port_access(0), None, "size 0");
    }

    #[test]
    fn test_decode_memory_access_types() {
        assert_eq!(decode_memory_access(0), Some(MemoryAccessType::Read));
        assert_eq!(decode_memory_access(0b101), Some(MemoryAccessType::Write));
        assert_eq!(decode_memory_access(2), Some(MemoryAccessType::Execute));
        assert_eq!(decode_memory_access(3), None);
        assert_eq!(instruction_length(0xf2), 2);
    }

    #[test]
    fn test_port_in_rax_merges_like_hardware() {
        let rax = 0x1122_3344_5566_7788;
        assert_eq!(port_in_rax(rax, 1, &[0xab]), 0x1122_3344_5566_77ab);
        assert_eq!(port_in_rax(rax, 2, &[0xcd, 0xab]), 0x1122_3344_5566_abcd);
        assert_eq!(port_in_rax(rax, 4, &[1, 2, 3, 4]), 0x0403_0201);
        assert_eq!(
            port_in_rax(rax, 4, &[9]),
            9,
            "short device data reads as zero"
        );
    }

    #[test]
    fn test_segment_attributes_long_mode_code() {
        let cs = SegmentDesc {
            selector: 8,
            base: 0,
            limit: 0xffff_ffff,
            type_: 0xb,
            s: true,
            dpl: 0,
            present: true,
            long: true,
            db: false,
            granularity: true,
        };
        // Type 0xb | S | P | L | G, as Intel's VMCS access rights put them.
        assert_eq!(segment_attributes(&cs), 0xa09b);
        let tss = SegmentDesc {
            s: false,
            long: false,
            ..cs
        };
        assert_eq!(segment_attributes(&tss), 0x808b);
    }

    #[test]
    fn test_interrupt_control_bits_layout() {
        assert_eq!(interrupt_control_bits(0, false, false), 0);
        assert_eq!(interrupt_control_bits(1, true, false), 0x101);
        assert_eq!(interrupt_control_bits(4, false, true), 0x1004);
    }

    #[test]
    fn test_emulator_status_reasons() {
        assert_eq!(emulator_status(1), Ok(()));
        assert_eq!(emulator_status(1 << 3), Err("memory callback failed"));
        assert_eq!(emulator_status(0), Err("emulation failed"));
    }
}
