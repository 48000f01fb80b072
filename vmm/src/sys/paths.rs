//! Where an instance lives on each host OS, and where its Docker endpoint is served:
//!
//! | host | instances | Docker endpoint |
//! | --- | --- | --- |
//! | Linux | `$XDG_DATA_HOME/vmctl` (default `~/.local/share/vmctl`) | `<instance>/docker.sock` |
//! | macOS | `~/Library/Application Support/vmctl` | `<instance>/docker.sock` |
//! | Windows | `%LOCALAPPDATA%\vmctl` | `\\.\pipe\vmctl-<name>-docker`, and `<instance>\docker.sock` (AF_UNIX, Windows 10 1803+) |
//!
//! Pure functions of the OS and the environment, so every OS's answer is tested on Linux.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The host OS kinds vmctl runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOs {
    Linux,
    MacOs,
    Windows,
}

impl HostOs {
    /// The OS this binary was built for.
    pub fn current() -> Self {
        if cfg!(windows) {
            HostOs::Windows
        } else if cfg!(target_os = "macos") {
            HostOs::MacOs
        } else {
            HostOs::Linux
        }
    }

    /// The longest unix socket path (`sun_path` less its NUL): 107 on Linux, 103 on macOS and
    /// Windows.
    pub fn max_socket_path(self) -> usize {
        match self {
            HostOs::Linux => 107,
            HostOs::MacOs | HostOs::Windows => 103,
        }
    }
}

/// Errors resolving instance paths.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathsError {
    #[error("Cannot find the data directory: {0} is not set")]
    NoHome(&'static str),
    #[error("Instance name {0:?} is invalid: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'")]
    BadName(String),
    #[error("Socket path {path} is {len} bytes, longer than the {max} a unix socket allows; choose a shorter instance name or data directory")]
    SocketPathTooLong {
        path: String,
        len: usize,
        max: usize,
    },
}

fn absolute(v: Option<OsString>) -> Option<PathBuf> {
    v.map(PathBuf::from)
        .filter(|p| p.is_absolute() || p.to_string_lossy().contains(":\\"))
}

/// The directory holding every instance, from the environment `env` (usually
/// `|k| std::env::var_os(k)`).
pub fn data_root(
    os: HostOs,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, PathsError> {
    match os {
        HostOs::Linux => match absolute(env("XDG_DATA_HOME")) {
            Some(xdg) => Ok(xdg.join("vmctl")),
            None => Ok(absolute(env("HOME"))
                .ok_or(PathsError::NoHome("HOME"))?
                .join(".local/share/vmctl")),
        },
        HostOs::MacOs => Ok(absolute(env("HOME"))
            .ok_or(PathsError::NoHome("HOME"))?
            .join("Library/Application Support/vmctl")),
        HostOs::Windows => Ok(absolute(env("LOCALAPPDATA"))
            .ok_or(PathsError::NoHome("LOCALAPPDATA"))?
            .join("vmctl")),
    }
}

/// Checks an instance name: it becomes a directory and a pipe name.
pub fn check_name(name: &str) -> Result<(), PathsError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PathsError::BadName(name.to_string()))
    }
}

/// The directory of instance `name`.
pub fn instance_dir(root: &Path, name: &str) -> Result<PathBuf, PathsError> {
    check_name(name)?;
    Ok(root.join(name))
}

/// An address the Docker CLI can reach an instance's engine on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEndpoint {
    Unix(PathBuf),
    /// A Windows named pipe, as `\\.\pipe\NAME`.
    NamedPipe(String),
}

impl DockerEndpoint {
    /// The `DOCKER_HOST` / docker context form.
    pub fn docker_host(&self) -> String {
        match self {
            DockerEndpoint::Unix(p) => format!("unix://{}", p.display()),
            DockerEndpoint::NamedPipe(p) => format!("npipe://{}", p.replace('\\', "/")),
        }
    }
}

/// The endpoints to serve for instance `name` in `dir`, the preferred one first.
pub fn docker_endpoints(
    os: HostOs,
    dir: &Path,
    name: &str,
) -> Result<Vec<DockerEndpoint>, PathsError> {
    check_name(name)?;
    let sock = dir.join("docker.sock");
    let len = sock.as_os_str().len();
    if len > os.max_socket_path() {
        return Err(PathsError::SocketPathTooLong {
            path: sock.display().to_string(),
            len,
            max: os.max_socket_path(),
        });
    }
    Ok(match os {
        HostOs::Linux | HostOs::MacOs => vec![DockerEndpoint::Unix(sock)],
        HostOs::Windows => vec![
            DockerEndpoint::NamedPipe(format!(r"\\.\pipe\vmctl-{name}-docker")),
            DockerEndpoint::Unix(sock),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn test_data_root_per_os() {
        assert_eq!(
            data_root(HostOs::Linux, env(&[("HOME", "/home/u")])),
            Ok(PathBuf::from("/home/u/.local/share/vmctl"))
        );
        assert_eq!(
            data_root(
                HostOs::Linux,
                env(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "/d")])
            ),
            Ok(PathBuf::from("/d/vmctl"))
        );
        // A relative XDG_DATA_HOME is invalid per the XDG spec and ignored.
        assert_eq!(
            data_root(
                HostOs::Linux,
                env(&[("HOME", "/h"), ("XDG_DATA_HOME", "rel")])
            ),
            Ok(PathBuf::from("/h/.local/share/vmctl"))
        );
        assert_eq!(
            data_root(HostOs::MacOs, env(&[("HOME", "/Users/u")])),
            Ok(PathBuf::from("/Users/u/Library/Application Support/vmctl"))
        );
        let win = data_root(
            HostOs::Windows,
            env(&[("LOCALAPPDATA", r"C:\Users\u\AppData\Local")]),
        )
        .unwrap();
        assert!(win.starts_with(r"C:\Users\u\AppData\Local") && win.ends_with("vmctl"));
        assert_eq!(
            data_root(HostOs::MacOs, env(&[])),
            Err(PathsError::NoHome("HOME"))
        );
        assert_eq!(
            data_root(HostOs::Windows, env(&[("HOME", "/x")])),
            Err(PathsError::NoHome("LOCALAPPDATA"))
        );
    }

    #[test]
    fn test_instance_names_checked() {
        let root = Path::new("/r");
        assert_eq!(
            instance_dir(root, "default"),
            Ok(PathBuf::from("/r/default"))
        );
        assert!(instance_dir(root, "dev-1.2_x").is_ok());
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            r"a\b",
            "sp ace",
            "é",
            &"x".repeat(65),
        ] {
            assert_eq!(
                instance_dir(root, bad),
                Err(PathsError::BadName(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn test_docker_endpoints_per_os() {
        let dir = Path::new("/home/u/.local/share/vmctl/default");
        let eps = docker_endpoints(HostOs::Linux, dir, "default").unwrap();
        assert_eq!(eps, vec![DockerEndpoint::Unix(dir.join("docker.sock"))]);
        assert_eq!(
            eps[0].docker_host(),
            "unix:///home/u/.local/share/vmctl/default/docker.sock"
        );
        let eps = docker_endpoints(HostOs::Windows, Path::new("C:/v/default"), "default").unwrap();
        assert_eq!(
            eps[0],
            DockerEndpoint::NamedPipe(r"\\.\pipe\vmctl-default-docker".into())
        );
        assert_eq!(
            eps[0].docker_host(),
            "npipe:////./pipe/vmctl-default-docker"
        );
        assert!(matches!(eps[1], DockerEndpoint::Unix(_)));
    }

    #[test]
    fn test_socket_path_limit_per_os() {
        let long = PathBuf::from(format!(
            "/Users/{}/Library/Application Support/vmctl/x",
            "u".repeat(50)
        ));
        // 103 bytes fit macOS's sun_path; this one is longer there but fits Linux's 107.
        let len = long.join("docker.sock").as_os_str().len();
        assert!(len > 103 && len <= 107, "{len}");
        assert!(matches!(
            docker_endpoints(HostOs::MacOs, &long, "x"),
            Err(PathsError::SocketPathTooLong { max: 103, .. })
        ));
        assert!(docker_endpoints(HostOs::Linux, &long, "x").is_ok());
    }

    #[test]
    fn test_current_os_is_this_build() {
        assert_eq!(
            HostOs::current() == HostOs::Linux,
            cfg!(target_os = "linux")
        );
    }
}
