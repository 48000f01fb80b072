//! The Hypervisor.framework backend (arm64 macOS).
//!
//! `esr` and `psci` decode what a trapped arm64 guest asks for; they are pure and unit-tested
//! on every host. `ffi` binds the framework (every call's SAFETY documented there) and
//! `backend` implements the `Hypervisor`/`Vm`/`Vcpu` traits over it; both build only for
//! `aarch64-apple-darwin`.

pub mod esr;
pub mod psci;

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
mod backend;
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
mod ffi;
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub use backend::{Hvf, IPA_BITS};

/// Fuzz entry: what an arm64 guest controls at an exit (the syndrome, x0..x3 of an `hvc`,
/// the bytes a device returns for a load), decoded and applied the way the backend does,
/// including PSCI power-state changes. Must never panic.
pub fn fuzz_exit(data: &[u8]) {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        for (j, b) in w.iter_mut().enumerate() {
            *b = data.get(i * 8 + j).copied().unwrap_or(0);
        }
        u64::from_le_bytes(w)
    };
    let cpus = data.first().map_or(1, |b| b % 20);
    let mut power = psci::PowerTable::new(cpus);
    for call in 0..(data.len() / 40).min(64) {
        let base = call * 5;
        let syndrome = word(base);
        let x = [
            word(base + 1),
            word(base + 2),
            word(base + 3),
            word(base + 4),
        ];
        let exception = esr::decode(syndrome);
        let _ = exception.describe();
        if let esr::Exception::Mmio(acc) = exception {
            let _ = esr::load_result(&acc, &x[0].to_le_bytes());
            let _ = esr::store_bytes(&acc, x[1]);
        }
        let me = (x[3] % 20) as u8;
        match psci::decode(x) {
            psci::PsciCall::CpuOn {
                target,
                entry,
                context,
            } => {
                let _ = power.cpu_on(target, entry, context);
            }
            psci::PsciCall::CpuOff => power.cpu_off(me),
            psci::PsciCall::AffinityInfo { target, level } => {
                let _ = power.affinity_info(target, level);
            }
            psci::PsciCall::Features(f) => {
                let _ = psci::features(f);
            }
            _ => {}
        }
        let _ = power.take_start(me);
    }
}

#[cfg(test)]
mod fuzz_tests {
    use super::*;

    #[test]
    fn test_fuzz_exit_smoke_random_and_mutated_inputs_contained() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // A seed that reaches CPU_ON and a valid-syndrome load, then random and mutated input.
        let mut seed = Vec::new();
        for w in [
            (0x24u64 << 26) | (1 << 24) | (2 << 22),
            u64::from(psci::CPU_ON_64),
            1,
            0x4008_0000,
            0,
        ] {
            seed.extend_from_slice(&w.to_le_bytes());
        }
        seed[0] = 4;
        fuzz_exit(&seed);
        for i in 0..4000 {
            let mut input = if i % 2 == 0 {
                seed.clone()
            } else {
                let n = (next() % 1024) as usize;
                (0..n).map(|_| next() as u8).collect()
            };
            for _ in 0..(next() % 8) {
                if !input.is_empty() {
                    let at = (next() as usize) % input.len();
                    input[at] = next() as u8;
                }
            }
            fuzz_exit(&input);
        }
    }
}
