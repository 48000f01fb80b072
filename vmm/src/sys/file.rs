//! Disk image I/O on every host: positional reads and writes, and releasing or zeroing a byte
//! range in place (virtio-blk discard and write-zeroes).
//!
//! - Linux: `FileExt` and `fallocate` (PUNCH_HOLE / ZERO_RANGE, keeping the size).
//! - macOS: `FileExt` and `fcntl(F_PUNCHHOLE)`; no in-place zeroing call exists, so
//!   `zero_range` reports `Unsupported` and the caller writes zeroes.
//! - Windows: `seek_read`/`seek_write` and `FSCTL_SET_ZERO_DATA`, which deallocates the range
//!   of a sparse file and zeroes it otherwise (so it serves both).
//!
//! Written by hand: each is one system call, and no maintained crate wraps hole punching on
//! all three hosts.

use std::io;

pub use imp::{punch_hole, read_exact_at, write_all_at, zero_range};

/// `(offset, len)` as the signed offsets the OS calls take.
fn signed_range(offset: u64, len: u64) -> io::Result<(i64, i64)> {
    match (i64::try_from(offset), i64::try_from(len)) {
        (Ok(o), Ok(l)) if o.checked_add(l).is_some() => Ok((o, l)),
        _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
    }
}

#[cfg(unix)]
mod unix {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;

    pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        file.read_exact_at(buf, offset)
    }

    pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    pub use super::unix::{read_exact_at, write_all_at};

    fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (off, l) = super::signed_range(offset, len)?;
        // SAFETY: fallocate on a valid, owned file descriptor with integer arguments; it
        // touches no memory of ours.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, l) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Deallocates the range (it reads as zeroes), keeping the file size.
    pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        fallocate(file, mode, offset, len)
    }

    /// Zeroes the range without writing it, keeping the file size.
    pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        fallocate(file, mode, offset, len)
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
mod imp {
    use std::fs::File;
    use std::io;

    pub use super::unix::{read_exact_at, write_all_at};

    /// Deallocates the range (it reads as zeroes), keeping the file size.
    #[cfg(target_os = "macos")]
    pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Ok(());
        }
        let (off, l) = super::signed_range(offset, len)?;
        let arg = libc::fpunchhole_t {
            fp_flags: 0,
            reserved: 0,
            fp_offset: off,
            fp_length: l,
        };
        // SAFETY: F_PUNCHHOLE on a valid, owned file descriptor reads the fpunchhole_t we pass,
        // which lives for the whole call.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_PUNCHHOLE, &arg) };
        if r == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// No hole punching on this host.
    #[cfg(not(target_os = "macos"))]
    pub fn punch_hole(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    /// No in-place zeroing call on this host: the caller writes zeroes.
    pub fn zero_range(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

#[cfg(windows)]
mod imp {
    use std::fs::File;
    use std::io;
    use std::os::windows::fs::FileExt;
    use std::os::windows::io::AsRawHandle;

    use windows::Win32::Foundation::HANDLE;
    use windows::Win32::System::Ioctl::{FILE_ZERO_DATA_INFORMATION, FSCTL_SET_ZERO_DATA};
    use windows::Win32::System::IO::DeviceIoControl;

    pub fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match file.seek_read(buf, offset) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match file.seek_write(buf, offset) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deallocates the range of a sparse file (zeroes it in a dense one).
    pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (off, l) = super::signed_range(offset, len)?;
        let info = FILE_ZERO_DATA_INFORMATION {
            FileOffset: off,
            BeyondFinalZero: off + l,
        };
        let handle = HANDLE(file.as_raw_handle());
        // SAFETY: a synchronous FSCTL on the file's own open handle; the input buffer is
        // `info`, alive and of the stated size for the whole call, and there is no output.
        unsafe {
            DeviceIoControl(
                handle,
                FSCTL_SET_ZERO_DATA,
                Some(std::ptr::from_ref(&info).cast()),
                std::mem::size_of::<FILE_ZERO_DATA_INFORMATION>() as u32,
                None,
                0,
                None,
                None,
            )
        }
        .map_err(|e| io::Error::from_raw_os_error(e.code().0 & 0xffff))
    }

    /// Zeroes the range (FSCTL_SET_ZERO_DATA does both).
    pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
        punch_hole(file, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom, Write};

    use super::*;

    fn scratch(len: usize) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![0xa5; len]).unwrap();
        f
    }

    fn contents(f: &mut File) -> Vec<u8> {
        let mut v = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn test_positional_io_roundtrip_and_eof_is_error() {
        let f = scratch(8192);
        write_all_at(&f, b"hello", 4096).unwrap();
        let mut buf = [0u8; 5];
        read_exact_at(&f, &mut buf, 4096).unwrap();
        assert_eq!(&buf, b"hello");
        let mut past = [0u8; 16];
        let e = read_exact_at(&f, &mut past, 8190).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn test_punch_hole_and_zero_range_zero_bytes_and_keep_size() {
        for op in [punch_hole, zero_range] {
            let mut f = scratch(64 << 10);
            match op(&f, 16 << 10, 16 << 10) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Unsupported => continue,
                Err(e) => {
                    eprintln!("skipped: the temp dir's filesystem refuses the call: {e}");
                    continue;
                }
            }
            let v = contents(&mut f);
            assert_eq!(v.len(), 64 << 10, "size kept");
            assert!(v[..16 << 10].iter().all(|&b| b == 0xa5));
            assert!(v[16 << 10..32 << 10].iter().all(|&b| b == 0));
            assert!(v[32 << 10..].iter().all(|&b| b == 0xa5));
        }
    }

    #[test]
    fn test_range_past_i64_is_invalid_input() {
        let f = scratch(16);
        let e = punch_hole(&f, u64::MAX - 1, 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
