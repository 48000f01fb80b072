//! The host's cryptographic random number generator, for virtio-rng: `getrandom(2)` on Linux,
//! `getentropy(3)` on macOS, `BCryptGenRandom` (system-preferred RNG) on Windows.
//!
//! By hand rather than the `getrandom` crate to keep the dependency set (and the shared lock
//! file) unchanged: each is one call through the `libc`/`windows` bindings the crate already
//! uses.

pub use imp::fill;

#[cfg(target_os = "linux")]
mod imp {
    /// Fills `buf` with random bytes.
    pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            let rest = &mut buf[filled..];
            // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes for the call.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
                continue;
            }
            filled += n as usize;
        }
        Ok(())
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
mod imp {
    /// `getentropy` serves at most this many bytes per call.
    const MAX_PER_CALL: usize = 256;

    /// Fills `buf` with random bytes.
    pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
        for chunk in buf.chunks_mut(MAX_PER_CALL) {
            // SAFETY: `chunk` is a valid writable buffer of `chunk.len()` (≤ 256) bytes.
            if unsafe { libc::getentropy(chunk.as_mut_ptr().cast(), chunk.len()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(windows)]
mod imp {
    use windows::Win32::Security::Cryptography::{
        BCryptGenRandom, BCRYPT_USE_SYSTEM_PREFERRED_RNG,
    };

    /// Fills `buf` with random bytes.
    pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
        // The call takes a u32 length.
        for chunk in buf.chunks_mut(1 << 30) {
            // SAFETY: no algorithm handle with BCRYPT_USE_SYSTEM_PREFERRED_RNG; the binding
            // passes `chunk`'s pointer and length, valid and writable for the call.
            let status = unsafe { BCryptGenRandom(None, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG) };
            if status.is_err() {
                return Err(std::io::Error::other(format!(
                    "BCryptGenRandom failed: NTSTATUS {:#x}",
                    status.0
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::fill;

    #[test]
    fn test_fill_large_buffer_is_not_constant() {
        // More than one getentropy chunk, and two draws differ.
        let (mut a, mut b) = (vec![0u8; 1000], vec![0u8; 1000]);
        fill(&mut a).unwrap();
        fill(&mut b).unwrap();
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != a[0]));
        fill(&mut []).unwrap();
    }
}
