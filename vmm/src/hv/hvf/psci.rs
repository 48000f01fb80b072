//! PSCI 1.0 and SMCCC calls an arm64 guest makes with `hvc #0` (the device tree says
//! `method = "hvc"`): decoding of the function ID and arguments, and the return codes (Arm DEN
//! 0022, "Power State Coordination Interface"). Pure, so it is tested on every host.

pub const SMCCC_VERSION: u32 = 0x8000_0000;
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
pub const PSCI_VERSION: u32 = 0x8400_0000;
pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
pub const CPU_SUSPEND_64: u32 = 0xc400_0001;
pub const CPU_OFF: u32 = 0x8400_0002;
pub const CPU_ON_32: u32 = 0x8400_0003;
pub const CPU_ON_64: u32 = 0xc400_0003;
pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
pub const SYSTEM_OFF: u32 = 0x8400_0008;
pub const SYSTEM_RESET: u32 = 0x8400_0009;
pub const PSCI_FEATURES: u32 = 0x8400_000a;
pub const SYSTEM_RESET2_32: u32 = 0x8400_0012;
pub const SYSTEM_RESET2_64: u32 = 0xc400_0012;

/// PSCI return codes (as the signed value in x0).
pub const SUCCESS: i64 = 0;
pub const NOT_SUPPORTED: i64 = -1;
pub const INVALID_PARAMETERS: i64 = -2;
pub const ALREADY_ON: i64 = -4;
pub const ON_PENDING: i64 = -5;
pub const INTERNAL_FAILURE: i64 = -6;
/// Version 1.0 (major 1 in bits 31:16).
pub const VERSION_1_0: i64 = 0x1_0000;
/// SMCCC 1.1.
pub const SMCCC_1_1: i64 = 0x1_0001;
/// MIGRATE_INFO_TYPE: no Trusted OS, nothing to migrate.
pub const TOS_NOT_PRESENT: i64 = 2;
/// AFFINITY_INFO states.
pub const AFFINITY_ON: i64 = 0;
pub const AFFINITY_OFF: i64 = 1;
pub const AFFINITY_ON_PENDING: i64 = 2;

/// Power state of one vCPU as PSCI sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Off,
    /// CPU_ON was accepted; the vCPU's thread has not picked it up yet.
    Starting {
        entry: u64,
        context: u64,
    },
    On,
}

/// The power states of all vCPUs of a VM: CPU_ON / CPU_OFF / AFFINITY_INFO bookkeeping,
/// shared by the vCPU threads (the backend wraps it in a mutex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerTable {
    states: Vec<Power>,
}

impl PowerTable {
    /// `cpus` vCPUs; the boot CPU (0) is on, the others wait for CPU_ON.
    pub fn new(cpus: u8) -> Self {
        let mut states = vec![Power::Off; usize::from(cpus.max(1))];
        states[0] = Power::On;
        PowerTable { states }
    }

    pub fn state(&self, index: u8) -> Option<Power> {
        self.states.get(usize::from(index)).copied()
    }

    fn cpus(&self) -> u8 {
        u8::try_from(self.states.len()).unwrap_or(u8::MAX)
    }

    /// CPU_ON: returns the PSCI result for the caller's x0.
    pub fn cpu_on(&mut self, target: u64, entry: u64, context: u64) -> i64 {
        let Some(i) = target_index(target, self.cpus()) else {
            return INVALID_PARAMETERS;
        };
        match self.states[usize::from(i)] {
            Power::Off => {
                self.states[usize::from(i)] = Power::Starting { entry, context };
                SUCCESS
            }
            Power::Starting { .. } => ON_PENDING,
            Power::On => ALREADY_ON,
        }
    }

    /// CPU_OFF of vCPU `index` (itself).
    pub fn cpu_off(&mut self, index: u8) {
        if let Some(s) = self.states.get_mut(usize::from(index)) {
            *s = Power::Off;
        }
    }

    /// AFFINITY_INFO at level 0 (the only level with one CPU per node).
    pub fn affinity_info(&self, target: u64, level: u64) -> i64 {
        if level != 0 {
            return INVALID_PARAMETERS;
        }
        match target_index(target, self.cpus()).and_then(|i| self.state(i)) {
            Some(Power::On) => AFFINITY_ON,
            Some(Power::Starting { .. }) => AFFINITY_ON_PENDING,
            Some(Power::Off) => AFFINITY_OFF,
            None => INVALID_PARAMETERS,
        }
    }

    /// Called by vCPU `index`'s thread: if a CPU_ON is pending for it, marks it on and returns
    /// (entry, context).
    pub fn take_start(&mut self, index: u8) -> Option<(u64, u64)> {
        let s = self.states.get_mut(usize::from(index))?;
        if let Power::Starting { entry, context } = *s {
            *s = Power::On;
            return Some((entry, context));
        }
        None
    }
}

/// A decoded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciCall {
    SmcccVersion,
    SmcccArchFeatures(u32),
    Version,
    /// Suspend this vCPU until an interrupt (treated as WFI).
    CpuSuspend,
    CpuOff,
    CpuOn {
        target: u64,
        entry: u64,
        context: u64,
    },
    AffinityInfo {
        target: u64,
        level: u64,
    },
    MigrateInfoType,
    SystemOff,
    SystemReset,
    Features(u32),
    /// Anything else: answered NOT_SUPPORTED.
    Unknown(u64),
}

/// Decodes a call from x0..x3. SMC32 calls (function IDs with bit 30 clear) take 32-bit
/// arguments: the upper halves of x1..x3 are ignored as the calling convention says.
pub fn decode(x: [u64; 4]) -> PsciCall {
    let Ok(fid) = u32::try_from(x[0]) else {
        return PsciCall::Unknown(x[0]);
    };
    let arg = |i: usize| {
        if fid & (1 << 30) == 0 {
            x[i] & 0xffff_ffff
        } else {
            x[i]
        }
    };
    match fid {
        SMCCC_VERSION => PsciCall::SmcccVersion,
        SMCCC_ARCH_FEATURES => PsciCall::SmcccArchFeatures(arg(1) as u32),
        PSCI_VERSION => PsciCall::Version,
        CPU_SUSPEND_32 | CPU_SUSPEND_64 => PsciCall::CpuSuspend,
        CPU_OFF => PsciCall::CpuOff,
        CPU_ON_32 | CPU_ON_64 => PsciCall::CpuOn {
            target: arg(1),
            entry: arg(2),
            context: arg(3),
        },
        AFFINITY_INFO_32 | AFFINITY_INFO_64 => PsciCall::AffinityInfo {
            target: arg(1),
            level: arg(2),
        },
        MIGRATE_INFO_TYPE => PsciCall::MigrateInfoType,
        SYSTEM_OFF => PsciCall::SystemOff,
        SYSTEM_RESET | SYSTEM_RESET2_32 | SYSTEM_RESET2_64 => PsciCall::SystemReset,
        PSCI_FEATURES => PsciCall::Features(arg(1) as u32),
        _ => PsciCall::Unknown(x[0]),
    }
}

/// PSCI_FEATURES: 0 for the functions implemented, NOT_SUPPORTED otherwise.
pub fn features(fid: u32) -> i64 {
    match fid {
        PSCI_VERSION | CPU_SUSPEND_32 | CPU_SUSPEND_64 | CPU_OFF | CPU_ON_32 | CPU_ON_64
        | AFFINITY_INFO_32 | AFFINITY_INFO_64 | MIGRATE_INFO_TYPE | SYSTEM_OFF | SYSTEM_RESET
        | PSCI_FEATURES | SMCCC_VERSION => SUCCESS,
        _ => NOT_SUPPORTED,
    }
}

/// The vCPU index a CPU_ON / AFFINITY_INFO target MPIDR names (Aff0 only; see
/// `arch::aarch64::layout::mpidr`), or None for a CPU that does not exist.
pub fn target_index(target: u64, cpus: u8) -> Option<u8> {
    if target & !0xff != 0 {
        return None;
    }
    u8::try_from(target).ok().filter(|i| *i < cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_decode_table() {
        let table: &[([u64; 4], PsciCall)] = &[
            ([PSCI_VERSION.into(), 0, 0, 0], PsciCall::Version),
            ([SYSTEM_OFF.into(), 0, 0, 0], PsciCall::SystemOff),
            ([SYSTEM_RESET.into(), 0, 0, 0], PsciCall::SystemReset),
            ([SYSTEM_RESET2_64.into(), 1, 0, 0], PsciCall::SystemReset),
            ([CPU_OFF.into(), 0, 0, 0], PsciCall::CpuOff),
            ([CPU_SUSPEND_64.into(), 0, 0, 0], PsciCall::CpuSuspend),
            (
                [MIGRATE_INFO_TYPE.into(), 0, 0, 0],
                PsciCall::MigrateInfoType,
            ),
            ([SMCCC_VERSION.into(), 0, 0, 0], PsciCall::SmcccVersion),
            (
                [CPU_ON_64.into(), 1, 0x4020_0000, 0xdead_beef_0000],
                PsciCall::CpuOn {
                    target: 1,
                    entry: 0x4020_0000,
                    context: 0xdead_beef_0000,
                },
            ),
            (
                // SMC32 convention: upper halves of the arguments are ignored.
                [CPU_ON_32.into(), 0xffff_0000_0000_0002, 0x1_4020_0000, 7],
                PsciCall::CpuOn {
                    target: 2,
                    entry: 0x4020_0000,
                    context: 7,
                },
            ),
            (
                [AFFINITY_INFO_64.into(), 3, 0, 0],
                PsciCall::AffinityInfo {
                    target: 3,
                    level: 0,
                },
            ),
            (
                [PSCI_FEATURES.into(), CPU_ON_64.into(), 0, 0],
                PsciCall::Features(CPU_ON_64),
            ),
            ([0x8400_00ff, 0, 0, 0], PsciCall::Unknown(0x8400_00ff)),
            ([1 << 40, 0, 0, 0], PsciCall::Unknown(1 << 40)),
        ];
        for (regs, want) in table {
            assert_eq!(decode(*regs), *want, "x0 {:#x}", regs[0]);
        }
    }

    #[test]
    fn test_features_answers() {
        assert_eq!(features(CPU_ON_64), SUCCESS);
        assert_eq!(features(SYSTEM_OFF), SUCCESS);
        assert_eq!(features(SYSTEM_RESET2_64), NOT_SUPPORTED);
        assert_eq!(features(0x1234), NOT_SUPPORTED);
    }

    #[test]
    fn test_power_table_cpu_on_lifecycle() {
        let mut t = PowerTable::new(3);
        assert_eq!(t.affinity_info(0, 0), AFFINITY_ON);
        assert_eq!(t.affinity_info(1, 0), AFFINITY_OFF);
        assert_eq!(t.take_start(1), None, "no CPU_ON yet");
        assert_eq!(t.cpu_on(1, 0x4008_0000, 42), SUCCESS);
        assert_eq!(t.affinity_info(1, 0), AFFINITY_ON_PENDING);
        assert_eq!(t.cpu_on(1, 0, 0), ON_PENDING);
        assert_eq!(t.take_start(1), Some((0x4008_0000, 42)));
        assert_eq!(t.state(1), Some(Power::On));
        assert_eq!(t.cpu_on(1, 0, 0), ALREADY_ON);
        assert_eq!(t.cpu_on(0, 0, 0), ALREADY_ON);
        t.cpu_off(1);
        assert_eq!(t.affinity_info(1, 0), AFFINITY_OFF);
        assert_eq!(t.cpu_on(1, 0x5000, 7), SUCCESS, "a CPU can be restarted");
        assert_eq!(t.take_start(1), Some((0x5000, 7)));
    }

    #[test]
    fn test_power_table_bad_targets_rejected() {
        let mut t = PowerTable::new(2);
        assert_eq!(t.cpu_on(2, 0, 0), INVALID_PARAMETERS);
        assert_eq!(t.cpu_on(0x100, 0, 0), INVALID_PARAMETERS);
        assert_eq!(t.affinity_info(5, 0), INVALID_PARAMETERS);
        assert_eq!(t.affinity_info(0, 1), INVALID_PARAMETERS);
        assert_eq!(t.take_start(9), None);
        t.cpu_off(9);
        assert_eq!(PowerTable::new(0).state(0), Some(Power::On));
    }

    #[test]
    fn test_target_index_bounds() {
        assert_eq!(target_index(0, 2), Some(0));
        assert_eq!(target_index(1, 2), Some(1));
        assert_eq!(target_index(2, 2), None);
        assert_eq!(target_index(0x100, 4), None, "Aff1 is never used");
        assert_eq!(target_index(u64::MAX, 4), None);
    }
}
