//! Legacy PC devices on port I/O: the 8250 UART on COM1 and the i8042 controller, whose
//! "pulse reset line" command is how an x86 guest without ACPI reboots (and how ours exits).
//! Both come from `vm-superio`; this module adapts them to the bus and the VM's IRQ lines.

use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{I8042Device, Serial, Trigger};

use super::bus::BusDevice;
use crate::hv::IrqLine;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM_LEN: u64 = 8;
pub const I8042_PORT: u64 = 0x60;
pub const I8042_LEN: u64 = 5;

/// An interrupt line as a `vm-superio` trigger.
pub struct IrqTrigger(pub Arc<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

/// Something to call when the guest asks for a reset.
pub struct ResetTrigger(pub Box<dyn Fn() + Send + Sync>);

impl Trigger for ResetTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        (self.0)();
        Ok(())
    }
}

/// Where COM1's output goes.
pub type SerialOut = Box<dyn Write + Send>;

/// COM1 on the bus.
pub struct SerialDevice {
    pub uart: Serial<IrqTrigger, NoEvents, SerialOut>,
}

impl SerialDevice {
    pub fn new(irq: Arc<dyn IrqLine>, out: SerialOut) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Feeds host input to the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(&bytes[..room]).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(off, *value) {
                crate::warn_ratelimited!("serial: {e:?}");
            }
        }
    }
}

/// The i8042 keyboard controller (reset line only).
pub struct I8042(pub I8042Device<ResetTrigger>);

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset).map(|o| self.0.read(o)).unwrap_or(0);
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            // The trigger cannot fail.
            let _ = self.0.write(off, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    struct CountIrq(AtomicUsize);
    impl IrqLine for CountIrq {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn test_serial_thr_write_reaches_output() {
        let sink = Sink::default();
        let mut s = SerialDevice::new(
            Arc::new(CountIrq(AtomicUsize::new(0))),
            Box::new(sink.clone()),
        );
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        // Wide accesses are not UART accesses: ignored / all ones.
        s.write(0, &[1, 2]);
        let mut d = [0u8; 2];
        s.read(5, &mut d);
        assert_eq!(d, [0xff, 0xff]);
    }

    #[test]
    fn test_serial_input_fifo_bounded() {
        let irq = Arc::new(CountIrq(AtomicUsize::new(0)));
        let mut s = SerialDevice::new(irq, Box::new(Sink::default()));
        let n = s.enqueue_input(&[b'x'; 1000]);
        assert!(n > 0 && n < 1000, "{n}");
        assert_eq!(s.enqueue_input(b"y"), 0);
    }

    #[test]
    fn test_i8042_reset_command_triggers() {
        let hit = Arc::new(AtomicBool::new(false));
        let h = hit.clone();
        let mut dev = I8042(I8042Device::new(ResetTrigger(Box::new(move || {
            h.store(true, Ordering::SeqCst)
        }))));
        dev.write(4, &[0x00]);
        assert!(!hit.load(Ordering::SeqCst));
        dev.write(4, &[0xfe]);
        assert!(hit.load(Ordering::SeqCst));
    }
}
