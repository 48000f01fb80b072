//! The PC's CMOS RTC (MC146818) at ports 0x70 (index) / 0x71 (data): the host's current UTC
//! time in BCD, a never-updating status (UIP clear), and 128 bytes of CMOS RAM.
//!
//! Linux reads it at boot (the RTC driver, and `early_resume_init` with PM_TRACE_RTC, which
//! waits for the update-in-progress bit to clear). Without it every port read is 0xff — UIP
//! set forever — and the guest kernel hung in that initcall (seen booting our kernel on the
//! builtin engine). Written by hand: vm-superio has the arm PL031 RTC but no PC CMOS.

use std::time::{SystemTime, UNIX_EPOCH};

use super::bus::BusDevice;

pub const CMOS_PORT: u64 = 0x70;
pub const CMOS_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register A: 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) never set.
const REG_A_VALUE: u8 = 0x26;
/// Register B: 24-hour mode, BCD, no interrupts.
const REG_B_VALUE: u8 = 0x02;
/// Register D: the battery is good (valid RAM and time).
const REG_D_VALUE: u8 = 0x80;

/// The CMOS device; `now` gives the time (the host clock, or a fixed one in tests).
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    now: fn() -> u64,
}

fn host_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos::with_clock(host_now)
    }
}

fn bcd(v: u64) -> u8 {
    let v = (v % 100) as u8;
    ((v / 10) << 4) | (v % 10)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's
/// days-to-civil algorithm).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl Cmos {
    pub fn with_clock(now: fn() -> u64) -> Self {
        Cmos {
            index: 0,
            ram: [0; 128],
            now,
        }
    }

    fn register(&self, reg: u8) -> u8 {
        let t = (self.now)();
        let days = t / 86_400;
        let secs = t % 86_400;
        let (year, month, day) = civil(days);
        match reg {
            REG_SECONDS => bcd(secs % 60),
            REG_MINUTES => bcd(secs / 60 % 60),
            REG_HOURS => bcd(secs / 3600),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            REG_WEEKDAY => bcd((days + 4) % 7 + 1),
            REG_DAY => bcd(day),
            REG_MONTH => bcd(month),
            REG_YEAR => bcd(year % 100),
            REG_CENTURY => bcd(year / 100),
            REG_A => REG_A_VALUE,
            REG_B => REG_B_VALUE,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            r => self.ram[usize::from(r & 0x7f)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.index,
            _ => self.register(self.index),
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            // Bit 7 of the index port masks NMIs on a PC; there is nothing to mask here.
            0 => self.index = v & 0x7f,
            // Time and status registers are read-only here (the guest cannot set the host's
            // clock); the rest is CMOS RAM.
            _ if self.index > REG_D => self.ram[usize::from(self.index)] = v,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn test_cmos_reports_time_in_bcd_and_never_updating() {
        // 2026-12-04 17:34:14 UTC, a Friday.
        let mut c = Cmos::with_clock(|| 1_796_405_654);
        assert_eq!(read(&mut c, REG_A) & 0x80, 0, "UIP must be clear");
        assert_eq!(
            [
                REG_CENTURY,
                REG_YEAR,
                REG_MONTH,
                REG_DAY,
                REG_HOURS,
                REG_MINUTES,
                REG_SECONDS
            ]
            .map(|r| read(&mut c, r)),
            [0x20, 0x26, 0x12, 0x04, 0x17, 0x34, 0x14]
        );
        assert_eq!(read(&mut c, REG_WEEKDAY), 6);
        assert_eq!(read(&mut c, REG_D), 0x80);
    }

    #[test]
    fn test_cmos_ram_kept_time_registers_read_only() {
        let mut c = Cmos::with_clock(|| 0);
        c.write(0, &[0x80 | 0x40]);
        c.write(1, &[0xab]);
        assert_eq!(read(&mut c, 0x40), 0xab);
        c.write(0, &[REG_SECONDS]);
        c.write(1, &[0x59]);
        assert_eq!(read(&mut c, REG_SECONDS), 0x00);
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
    }
}
