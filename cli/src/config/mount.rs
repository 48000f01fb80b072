//! A shared folder: `HOSTDIR[:GUESTDIR][:ro]`, checked so that the guest's kernel command
//! line (`vmctl.share=TAG:PATH,...`) and `vmctl config set mounts A,B` can carry it.

use std::path::{Component, Path, PathBuf};

/// A host folder shared into the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    pub guest: PathBuf,
    pub read_only: bool,
}

/// Longest folder path accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;

fn check_path(which: &str, p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err(format!("the {which} folder is empty"));
    }
    if !p.starts_with('/') {
        return Err(format!(
            "the {which} folder {} is not an absolute path",
            super::shown(p)
        ));
    }
    if p.len() > MAX_PATH {
        return Err(format!(
            "the {which} folder is {} bytes long (at most {MAX_PATH})",
            p.len()
        ));
    }
    if Path::new(p).components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "the {which} folder {} contains '..'",
            super::shown(p)
        ));
    }
    Ok(())
}

impl std::str::FromStr for Mount {
    type Err = String;
    /// `HOSTDIR[:GUESTDIR][:ro|:rw]`
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty; use HOSTDIR[:GUESTDIR][:ro]".into());
        }
        if s.contains(|c: char| c.is_control()) {
            return Err("contains a control character (a newline?); folder paths cannot".into());
        }
        if s.contains(',') {
            return Err("contains ','; shared folder paths cannot (',' separates mounts)".into());
        }
        let mut parts: Vec<&str> = s.split(':').collect();
        let read_only = match parts.last() {
            Some(&"ro") if parts.len() > 1 => {
                parts.pop();
                true
            }
            Some(&"rw") if parts.len() > 1 => {
                parts.pop();
                false
            }
            _ => false,
        };
        let (host, guest) = match parts.as_slice() {
            [h] => (*h, *h),
            [h, g] => (*h, *g),
            _ => return Err("too many ':'; use HOSTDIR[:GUESTDIR][:ro]".into()),
        };
        check_path("host", host)?;
        check_path("guest", guest)?;
        if guest.contains(char::is_whitespace) {
            return Err(format!(
                "the guest folder {} contains whitespace, which the guest's kernel \
                 command line cannot carry; give one without: HOSTDIR:/GUESTDIR",
                super::shown(guest)
            ));
        }
        if Path::new(guest) == Path::new("/") {
            return Err("the guest folder cannot be / (the VM's own root)".into());
        }
        Ok(Mount {
            host: host.into(),
            guest: guest.into(),
            read_only,
        })
    }
}

impl std::fmt::Display for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host == self.guest {
            write!(f, "{}", self.host.display())?;
        } else {
            write!(f, "{}:{}", self.host.display(), self.guest.display())?;
        }
        if self.read_only {
            write!(f, ":ro")?;
        }
        Ok(())
    }
}

impl Mount {
    /// Whether the host folder exists on this host (checked when the VM starts, by
    /// `vmctl config check` and by `vmctl config set mounts`, not when a file is read).
    pub fn check_host(&self) -> Result<(), String> {
        if self.host.is_dir() {
            Ok(())
        } else {
            Err(format!(
                "shared folder {} does not exist or is not a folder; create it or share another",
                self.host.display()
            ))
        }
    }
}

/// Parses a list of mounts, refusing two at the same guest folder.
pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<Mount>, String> {
    let mut out: Vec<Mount> = Vec::new();
    for item in items {
        let m: Mount = item
            .parse()
            .map_err(|why| format!("{}: {why}", super::shown(item)))?;
        if out.iter().any(|o| o.guest == m.guest) {
            return Err(format!(
                "{}: two mounts share the guest folder {}",
                super::shown(item),
                m.guest.display()
            ));
        }
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Mount {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn test_mount_parse_forms() {
        let m = ok("/a");
        assert_eq!(
            (m.host.to_str(), m.guest.to_str(), m.read_only),
            (Some("/a"), Some("/a"), false)
        );
        let m = ok("/a:/b:ro");
        assert_eq!((m.guest.to_str(), m.read_only), (Some("/b"), true));
        let m = ok("/a:ro");
        assert_eq!((m.guest.to_str(), m.read_only), (Some("/a"), true));
        assert_eq!(ok("/a:/b:ro").to_string(), "/a:/b:ro");
        assert_eq!(ok("/a:/a").to_string(), "/a");
        assert_eq!(ok("/my dir:/d").to_string(), "/my dir:/d");
    }

    #[test]
    fn test_mount_parse_rejects_bad_paths() {
        for bad in [
            "", "rel:/b", "/a:/b:/c", "/a,b", "/a\nb", "/a/../b", "/a:/", "/my dir", "/a:rel",
            ":/b", "/a::ro",
        ] {
            assert!(bad.parse::<Mount>().is_err(), "{bad:?}");
        }
        assert!(format!("/{}", "a".repeat(5000)).parse::<Mount>().is_err());
    }

    #[test]
    fn test_mount_list_rejects_same_guest_folder() {
        assert!(parse_list(["/a:/x", "/b:/x"]).is_err());
        assert_eq!(parse_list(["/a", "/b"]).map(|v| v.len()), Ok(2));
    }
}
