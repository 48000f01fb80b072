//! A userspace I/O APIC (Intel 82093AA register model) for WHP, which emulates local APICs
//! but no IOAPIC. The guest programs the redirection table through MMIO at
//! `arch::x86_64::layout::IOAPIC_ADDR`; `route` tells which vector and destination a device
//! line's pulse becomes, which the backend hands to `WHvRequestInterrupt`.
//!
//! Written by hand: no maintained crate models an IOAPIC on its own (each VMM keeps its own),
//! and the model is a register file of 24 entries. Lines are pulsed (edge) by the device model,
//! so Remote IRR and level re-assertion are never needed.

/// Pins, as the MP table and KVM's in-kernel IOAPIC have.
pub const PINS: usize = 24;
pub const MMIO_SIZE: u64 = 0x1000;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_ID: u32 = 0x00;
const REG_VER: u32 = 0x01;
const REG_ARB: u32 = 0x02;
const REG_REDIR_BASE: u32 = 0x10;
const VERSION: u32 = 0x11;
const MASKED: u64 = 1 << 16;
/// Bits the guest may write: vector, delivery mode, destination mode, polarity, trigger
/// mode, mask, destination (Delivery Status and Remote IRR are read-only).
const WRITABLE: u64 = 0xff00_0000_0001_afff;

/// Where a pin's interrupt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub vector: u8,
    /// 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT.
    pub delivery_mode: u8,
    pub logical: bool,
    pub level: bool,
    pub destination: u8,
}

/// The IOAPIC's registers.
#[derive(Debug, Clone)]
pub struct Ioapic {
    id: u32,
    select: u32,
    redirection: [u64; PINS],
}

impl Ioapic {
    /// An IOAPIC with APIC ID `id` (the MP table's), every pin masked as after reset.
    pub fn new(id: u8) -> Self {
        Ioapic {
            id: u32::from(id),
            select: 0,
            redirection: [MASKED; PINS],
        }
    }

    fn read_register(&self, reg: u32) -> u32 {
        match reg {
            REG_ID => (self.id & 0xf) << 24,
            REG_VER => VERSION | ((PINS as u32 - 1) << 16),
            REG_ARB => (self.id & 0xf) << 24,
            r if r >= REG_REDIR_BASE => {
                let i = ((r - REG_REDIR_BASE) / 2) as usize;
                match self.redirection.get(i) {
                    Some(e) if r % 2 == 0 => *e as u32,
                    Some(e) => (*e >> 32) as u32,
                    None => 0,
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u32, value: u32) {
        match reg {
            REG_ID => self.id = (value >> 24) & 0xf,
            r if r >= REG_REDIR_BASE => {
                let i = ((r - REG_REDIR_BASE) / 2) as usize;
                if let Some(e) = self.redirection.get_mut(i) {
                    let new = if r % 2 == 0 {
                        (*e & !0xffff_ffff) | u64::from(value)
                    } else {
                        (*e & 0xffff_ffff) | (u64::from(value) << 32)
                    };
                    *e = (*e & !WRITABLE) | (new & WRITABLE);
                }
            }
            _ => {}
        }
    }

    /// An MMIO read at `offset` in the IOAPIC's window. Only aligned 32-bit registers exist;
    /// anything else reads as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            IOREGSEL => self.select,
            IOWIN => self.read_register(self.select),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    /// An MMIO write at `offset`; only full 32-bit writes to IOREGSEL/IOWIN have effect.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(raw) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(raw);
        match offset {
            IOREGSEL => self.select = v & 0xff,
            IOWIN => self.write_register(self.select, v),
            _ => {}
        }
    }

    /// The route of `pin`, or None when it is masked or does not exist.
    pub fn route(&self, pin: u32) -> Option<Route> {
        let e = *self.redirection.get(usize::try_from(pin).ok()?)?;
        if e & MASKED != 0 {
            return None;
        }
        Some(Route {
            vector: e as u8,
            delivery_mode: ((e >> 8) & 7) as u8,
            logical: e & (1 << 11) != 0,
            level: e & (1 << 15) != 0,
            destination: (e >> 56) as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_reg(io: &mut Ioapic, reg: u32, v: u32) {
        io.write(IOREGSEL, &reg.to_le_bytes());
        io.write(IOWIN, &v.to_le_bytes());
    }

    fn read_reg(io: &mut Ioapic, reg: u32) -> u32 {
        io.write(IOREGSEL, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn test_ioapic_identity_registers() {
        let mut io = Ioapic::new(2);
        assert_eq!(read_reg(&mut io, REG_ID), 2 << 24);
        assert_eq!(
            read_reg(&mut io, REG_VER),
            0x0017_0011,
            "24 pins, version 0x11"
        );
        write_reg(&mut io, REG_ID, 5 << 24);
        assert_eq!(read_reg(&mut io, REG_ARB), 5 << 24);
    }

    #[test]
    fn test_ioapic_pins_masked_after_reset() {
        let io = Ioapic::new(0);
        for pin in 0..PINS as u32 {
            assert_eq!(io.route(pin), None);
        }
    }

    #[test]
    fn test_ioapic_programmed_route_as_linux_writes_it() {
        let mut io = Ioapic::new(1);
        // Pin 4 (COM1): vector 0x24, fixed, physical, edge, unmasked, to APIC 3. Linux writes
        // the high half first, then the low half.
        write_reg(&mut io, REG_REDIR_BASE + 9, 3 << 24);
        write_reg(&mut io, REG_REDIR_BASE + 8, 0x24);
        assert_eq!(
            io.route(4),
            Some(Route {
                vector: 0x24,
                delivery_mode: 0,
                logical: false,
                level: false,
                destination: 3,
            })
        );
        // Logical, lowest priority, level.
        write_reg(
            &mut io,
            REG_REDIR_BASE + 10,
            0x30 | (1 << 8) | (1 << 11) | (1 << 15),
        );
        let r = io.route(5).unwrap();
        assert!(r.logical && r.level);
        assert_eq!((r.vector, r.delivery_mode), (0x30, 1));
        assert_eq!(read_reg(&mut io, REG_REDIR_BASE + 8), 0x24);
        // Masking again.
        write_reg(&mut io, REG_REDIR_BASE + 8, 0x24 | (1 << 16));
        assert_eq!(io.route(4), None);
    }

    #[test]
    fn test_ioapic_read_only_bits_and_bad_accesses_ignored() {
        let mut io = Ioapic::new(0);
        // Delivery status (12) and Remote IRR (14) cannot be set by the guest.
        write_reg(&mut io, REG_REDIR_BASE, 0x41 | (1 << 12) | (1 << 14));
        assert_eq!(read_reg(&mut io, REG_REDIR_BASE), 0x41);
        // Out-of-range registers, pins and odd-sized accesses do nothing and read zero.
        write_reg(&mut io, REG_REDIR_BASE + 2 * PINS as u32, 0x55);
        assert_eq!(read_reg(&mut io, REG_REDIR_BASE + 2 * PINS as u32), 0);
        assert_eq!(io.route(PINS as u32), None);
        assert_eq!(io.route(u32::MAX), None);
        io.write(IOWIN, &[1, 2]);
        assert_eq!(read_reg(&mut io, REG_REDIR_BASE), 0x41);
        let mut b = [0xffu8; 8];
        io.read(0x20, &mut b);
        assert_eq!(b, [0; 8]);
    }
}
