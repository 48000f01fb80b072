//! The guest kernel: the repo's `kernel-config/` (fragments, build and check scripts) is
//! embedded in this binary and run from a temp dir, so `vmctl` works outside the source
//! tree. The script caches by input hash; this module only drives it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io_err, run_logged, write_file, ImageError, Progress};

/// `(relative path, content, executable)` of every file of `kernel-config/`.
const FILES: &[(&str, &str, bool)] = &[
    (
        "build-kernel.sh",
        include_str!("../../../kernel-config/build-kernel.sh"),
        true,
    ),
    (
        "check-config.sh",
        include_str!("../../../kernel-config/check-config.sh"),
        true,
    ),
    (
        "docker-required.txt",
        include_str!("../../../kernel-config/docker-required.txt"),
        false,
    ),
    (
        "common/core.config",
        include_str!("../../../kernel-config/common/core.config"),
        false,
    ),
    (
        "common/base.config",
        include_str!("../../../kernel-config/common/base.config"),
        false,
    ),
    (
        "x86_64/guest.config",
        include_str!("../../../kernel-config/x86_64/guest.config"),
        false,
    ),
    (
        "arm64/guest.config",
        include_str!("../../../kernel-config/arm64/guest.config"),
        false,
    ),
];

/// A built kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub bzimage: PathBuf,
    pub config: PathBuf,
}

fn unpack(dir: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    for (rel, text, exec) in FILES {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("create {}", parent.display())))?;
        }
        write_file(&p, text.as_bytes())?;
        if *exec {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err(format!("chmod {}", p.display())))?;
        }
    }
    Ok(())
}

/// Build the x86_64 kernel, or reuse the cached one. Prints progress.
pub fn ensure(progress: Progress<'_>) -> Result<Kernel, ImageError> {
    let _lock = super::CacheLock::acquire("kernel")?;
    let tmp = tempfile::tempdir().map_err(io_err("create temp dir"))?;
    unpack(tmp.path())?;
    let out = run_logged(
        Command::new("bash")
            .arg(tmp.path().join("build-kernel.sh"))
            .arg("x86_64")
            .env("VMCTL_CACHE", super::cache_dir()),
        "",
        progress,
    )?;
    let dir = out
        .last()
        .map(PathBuf::from)
        .ok_or_else(|| ImageError::Invalid("build-kernel.sh printed no output directory".into()))?;
    let k = Kernel {
        bzimage: dir.join("bzImage"),
        config: dir.join(".config"),
    };
    if !k.bzimage.is_file() {
        return Err(ImageError::Invalid(format!(
            "{} is missing after the build",
            k.bzimage.display()
        )));
    }
    Ok(k)
}

/// Check a kernel `.config` against the Docker option list. `Err` lists each missing
/// option (`CONFIG_…`) as the check script names them.
pub fn check_config(config: &Path) -> Result<(), ImageError> {
    let tmp = tempfile::tempdir().map_err(io_err("create temp dir"))?;
    unpack(tmp.path())?;
    run_logged(
        Command::new("bash")
            .arg(tmp.path().join("check-config.sh"))
            .arg(config),
        "",
        &|_| {},
    )
    .map(|_| ())
}
