//! Decoding of the exception syndrome (ESR_EL2) that Hypervisor.framework reports when an arm64
//! guest traps, and completion of emulated loads (Arm ARM D17.2.37, "ESR_EL2").

/// Exception classes (ESR_EL2.EC) the backend handles.
pub const EC_WFX: u32 = 0x01;
pub const EC_HVC64: u32 = 0x16;
pub const EC_SMC64: u32 = 0x17;
pub const EC_SYSREG: u32 = 0x18;
pub const EC_INSN_ABORT_LOWER: u32 = 0x20;
pub const EC_DATA_ABORT_LOWER: u32 = 0x24;
pub const EC_BRK64: u32 = 0x3c;

/// An emulatable load or store: the syndrome is valid (ISV=1), so one general-purpose
/// register moves `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAccess {
    pub write: bool,
    /// 1, 2, 4 or 8 bytes.
    pub len: usize,
    /// Source or destination register number; 31 is XZR (reads zero, writes vanish).
    pub reg: u8,
    /// Sign-extend the loaded value (LDRSB/LDRSH/LDRSW).
    pub sign_extend: bool,
    /// The register is 64 bits wide (else the result is zero-extended from 32 bits).
    pub sixty_four: bool,
}

/// A system register access trapped by MSR/MRS (EC 0x18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysRegAccess {
    /// Op0, Op1, CRn, CRm, Op2 packed as Hypervisor.framework's `hv_sys_reg_t`
    /// (op0 << 14 | op1 << 11 | CRn << 7 | CRm << 3 | op2).
    pub encoding: u16,
    pub reg: u8,
    /// MRS (read into `reg`) rather than MSR.
    pub read: bool,
}

/// What a trapped guest instruction was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    Wfi,
    Wfe,
    /// HVC #imm from AArch64: PSCI and SMCCC calls.
    Hvc(u16),
    Smc(u16),
    Mmio(MmioAccess),
    /// A data abort whose instruction the hardware could not describe (ISV=0: load/store pair,
    /// writeback, SIMD registers...): it cannot be emulated safely.
    UndecodableDataAbort {
        write: bool,
    },
    SysReg(SysRegAccess),
    InstructionAbort,
    Breakpoint,
    Other {
        class: u32,
    },
}

impl Exception {
    /// A short description for logs and crash reports.
    pub fn describe(&self) -> String {
        match self {
            Exception::Other { class } => format!("exception class {class:#x}"),
            other => format!("{other:?}"),
        }
    }
}

/// Decodes ESR_EL2.
pub fn decode(syndrome: u64) -> Exception {
    let ec = ((syndrome >> 26) & 0x3f) as u32;
    let iss = (syndrome & 0x1ff_ffff) as u32;
    match ec {
        EC_WFX => {
            if iss & 1 == 0 {
                Exception::Wfi
            } else {
                Exception::Wfe
            }
        }
        EC_HVC64 => Exception::Hvc(iss as u16),
        EC_SMC64 => Exception::Smc(iss as u16),
        EC_DATA_ABORT_LOWER => {
            let write = iss & (1 << 6) != 0;
            if iss & (1 << 24) == 0 {
                return Exception::UndecodableDataAbort { write };
            }
            Exception::Mmio(MmioAccess {
                write,
                len: 1 << ((iss >> 22) & 3),
                reg: ((iss >> 16) & 0x1f) as u8,
                sign_extend: iss & (1 << 21) != 0,
                sixty_four: iss & (1 << 15) != 0,
            })
        }
        EC_SYSREG => {
            let op0 = (iss >> 20) & 3;
            let op2 = (iss >> 17) & 7;
            let op1 = (iss >> 14) & 7;
            let crn = (iss >> 10) & 0xf;
            let crm = (iss >> 1) & 0xf;
            Exception::SysReg(SysRegAccess {
                encoding: ((op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2) as u16,
                reg: ((iss >> 5) & 0x1f) as u8,
                read: iss & 1 != 0,
            })
        }
        EC_INSN_ABORT_LOWER => Exception::InstructionAbort,
        EC_BRK64 => Exception::Breakpoint,
        class => Exception::Other { class },
    }
}

/// The register value after an emulated load of `data` (little-endian, `access.len` bytes).
pub fn load_result(access: &MmioAccess, data: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    let n = access.len.min(8).min(data.len());
    raw[..n].copy_from_slice(&data[..n]);
    let mut v = u64::from_le_bytes(raw);
    let bits = (n * 8) as u32;
    if access.sign_extend && bits > 0 && bits < 64 {
        let shift = 64 - bits;
        v = (((v << shift) as i64) >> shift) as u64;
    }
    if !access.sixty_four {
        v &= 0xffff_ffff;
    }
    v
}

/// The bytes an emulated store of register value `value` writes.
pub fn store_bytes(access: &MmioAccess, value: u64) -> ([u8; 8], usize) {
    (value.to_le_bytes(), access.len.min(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ESR for a data abort with a valid syndrome.
    fn dabt(sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> u64 {
        (u64::from(EC_DATA_ABORT_LOWER) << 26)
            | (1 << 25)
            | (1 << 24)
            | (sas << 22)
            | (u64::from(sse) << 21)
            | (srt << 16)
            | (u64::from(sf) << 15)
            | (u64::from(wnr) << 6)
    }

    #[test]
    fn test_decode_exit_table() {
        let table: &[(u64, Exception)] = &[
            (0x0400_0000 | (1 << 25), Exception::Wfi),
            (0x0400_0001 | (1 << 25), Exception::Wfe),
            (0x5800_0000 | (1 << 25), Exception::Hvc(0)),
            (0x5e00_0000 | (1 << 25) | 0x42, Exception::Smc(0x42)),
            (0x8200_0000 | (1 << 25) | 0x10, Exception::InstructionAbort),
            (0xf200_0000 | (1 << 25), Exception::Breakpoint),
            (0x0000_0000, Exception::Other { class: 0 }),
            (
                // str w1, [x0]: 32-bit store from x1.
                dabt(2, false, 1, false, true),
                Exception::Mmio(MmioAccess {
                    write: true,
                    len: 4,
                    reg: 1,
                    sign_extend: false,
                    sixty_four: false,
                }),
            ),
            (
                // ldrsb x3, [x0]
                dabt(0, true, 3, true, false),
                Exception::Mmio(MmioAccess {
                    write: false,
                    len: 1,
                    reg: 3,
                    sign_extend: true,
                    sixty_four: true,
                }),
            ),
            (
                // ldr x30, [x0]
                dabt(3, false, 30, true, false),
                Exception::Mmio(MmioAccess {
                    write: false,
                    len: 8,
                    reg: 30,
                    sign_extend: false,
                    sixty_four: true,
                }),
            ),
            (
                // ldp: ISV clear.
                (u64::from(EC_DATA_ABORT_LOWER) << 26) | (1 << 25),
                Exception::UndecodableDataAbort { write: false },
            ),
        ];
        for (esr, want) in table {
            assert_eq!(decode(*esr), *want, "ESR {esr:#x}");
        }
    }

    #[test]
    fn test_decode_sysreg_trap_encoding() {
        // mrs x5, cntvct_el0: op0=3 op1=3 CRn=14 CRm=0 op2=2 → hv_sys_reg_t 0xdf02.
        let iss: u64 = (3 << 20) | (2 << 17) | (3 << 14) | (14 << 10) | (5 << 5) | 1;
        let esr = (u64::from(EC_SYSREG) << 26) | (1 << 25) | iss;
        assert_eq!(
            decode(esr),
            Exception::SysReg(SysRegAccess {
                encoding: 0xdf02,
                reg: 5,
                read: true
            })
        );
    }

    #[test]
    fn test_load_result_extends_and_truncates() {
        let acc = |len, sign_extend, sixty_four| MmioAccess {
            write: false,
            len,
            reg: 0,
            sign_extend,
            sixty_four,
        };
        assert_eq!(load_result(&acc(1, false, true), &[0x80]), 0x80);
        assert_eq!(
            load_result(&acc(1, true, true), &[0x80]),
            0xffff_ffff_ffff_ff80
        );
        assert_eq!(load_result(&acc(1, true, false), &[0x80]), 0xffff_ff80);
        assert_eq!(load_result(&acc(2, true, true), &[0xff, 0x7f]), 0x7fff);
        assert_eq!(
            load_result(&acc(4, false, true), &[1, 2, 3, 4]),
            0x0403_0201
        );
        assert_eq!(
            load_result(&acc(8, false, true), &[1, 2, 3, 4, 5, 6, 7, 8]),
            0x0807_0605_0403_0201
        );
        // A short buffer from a misbehaving device reads the missing bytes as zero.
        assert_eq!(load_result(&acc(4, false, true), &[9]), 9);
    }

    #[test]
    fn test_store_bytes_little_endian() {
        let a = MmioAccess {
            write: true,
            len: 2,
            reg: 1,
            sign_extend: false,
            sixty_four: false,
        };
        let (b, n) = store_bytes(&a, 0x1234_5678);
        assert_eq!(&b[..n], &[0x78, 0x56]);
    }

    #[test]
    fn test_decode_never_panics_on_any_class() {
        for ec in 0..64u64 {
            for iss in [0u64, 0x1ff_ffff, 0x155_5555] {
                let _ = decode((ec << 26) | iss).describe();
            }
        }
    }
}
