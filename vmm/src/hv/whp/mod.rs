//! The Windows Hypervisor Platform backend (x86_64 Windows).
//!
//! `exits` decodes WHP's exit records and encodes registers, `ioapic` is the userspace IOAPIC
//! that WHP lacks; both are pure and unit-tested on every host. `ffi` wraps the `windows`
//! crate's WinHvPlatform and WinHvEmulation calls (every call's SAFETY documented there) and
//! `backend` implements the `Hypervisor`/`Vm`/`Vcpu` traits; both build only for Windows.

pub mod exits;
pub mod ioapic;

#[cfg(all(windows, target_arch = "x86_64"))]
mod backend;
#[cfg(all(windows, target_arch = "x86_64"))]
mod ffi;
#[cfg(all(windows, target_arch = "x86_64"))]
pub use backend::Whp;

/// Fuzz entry: a guest's MMIO accesses to the IOAPIC window and the port/memory exit
/// records it can provoke, decoded as the backend does. Must never panic.
pub fn fuzz_ioapic(data: &[u8]) {
    let mut io = ioapic::Ioapic::new(data.first().copied().unwrap_or(0));
    for op in data.chunks(8) {
        let offset = u64::from(op[0]) << 2;
        let len = usize::from(op.get(1).copied().unwrap_or(4) % 9);
        let bytes: Vec<u8> = op
            .iter()
            .skip(2)
            .copied()
            .chain([0u8; 8])
            .take(len)
            .collect();
        if op[0] & 0x80 == 0 {
            io.write(offset & 0xfff, &bytes);
        } else {
            let mut out = vec![0u8; len];
            io.read(offset & 0xfff, &mut out);
        }
        let info = u32::from_le_bytes([op[0], *op.get(1).unwrap_or(&0), 0, 0]);
        let _ = exits::decode_port_access(info);
        let _ = exits::decode_memory_access(info);
        let _ = exits::port_in_rax(u64::from(info), (info % 5) as usize, &bytes);
        let _ = exits::classify(info as i32);
        let _ = exits::emulator_status(info);
    }
    for pin in 0..=ioapic::PINS as u32 {
        let _ = io.route(pin);
    }
}

#[cfg(test)]
mod fuzz_tests {
    use super::*;

    #[test]
    fn test_fuzz_ioapic_smoke_random_and_mutated_inputs_contained() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Seed: select redirection entry 4 low, write vector 0x30 unmasked, read it back.
        let seed = vec![
            0, 4, 0x18, 0, 0, 0, 0, 0, 4, 4, 0x30, 0, 0, 0, 0, 0, 0x84, 4, 0, 0,
        ];
        fuzz_ioapic(&seed);
        for i in 0..4000 {
            let mut input = if i % 2 == 0 {
                seed.clone()
            } else {
                let n = (next() % 512) as usize;
                (0..n).map(|_| next() as u8).collect()
            };
            for _ in 0..(next() % 8) {
                if !input.is_empty() {
                    let at = (next() as usize) % input.len();
                    input[at] = next() as u8;
                }
            }
            fuzz_ioapic(&input);
        }
    }
}
