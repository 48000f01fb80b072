//! Validation of path components sent by the (untrusted) client.

use std::ffi::CStr;
use std::io;

/// A name from a FUSE request must be exactly one path component: not empty, no `/`, not
/// `.` or `..`. Everything below relies on this (no call ever walks a guest-supplied path).
pub fn validate(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b.len() > 255 {
        return Err(io::Error::from_raw_os_error(if b.is_empty() {
            libc::EINVAL
        } else {
            libc::ENAMETOOLONG
        }));
    }
    if b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_validate_rejects_traversal_names() {
        for bad in [c"", c".", c"..", c"a/b", c"/etc", c"../x"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        for good in [c"a", c"...", c"..a", c".hidden"] {
            assert!(validate(good).is_ok(), "{good:?}");
        }
    }
}
