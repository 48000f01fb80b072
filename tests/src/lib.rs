//! End-to-end test helpers: temp dirs, child processes killed on drop, timeouts.
//! The scenarios live in `tests/tests/`.

pub mod cli_env;
pub mod guest;
pub mod proc;

use std::path::{Path, PathBuf};

/// Print the reason a test cannot run here (never silent, never a pass in disguise).
pub fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
}

/// Whether the test runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// The workspace root (this crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Build the static guest agent (release, musl) and return its path.
pub fn build_agent() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "guest-agent",
            "--target",
            "x86_64-unknown-linux-musl",
        ])
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the guest agent failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target_dir.join("x86_64-unknown-linux-musl/release/guest-agent"))
}

/// Compile a one-file test program from `tests/programs/<name>.rs` into a static (musl)
/// executable in `dir`, for copying into a guest or a container image.
pub fn build_static_program(name: &str, dir: &Path) -> Result<PathBuf, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let src = workspace_root()
        .join("tests/programs")
        .join(format!("{name}.rs"));
    let exe = dir.join(name.replace('_', "-"));
    let out = std::process::Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "strip=symbols",
            "--target",
            "x86_64-unknown-linux-musl",
        ])
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(exe)
}

/// The VM assets, built by the project's own code or taken from the cache.
#[derive(Debug, Clone)]
pub struct Assets {
    pub kernel: PathBuf,
    pub kernel_config: PathBuf,
    pub rootfs: PathBuf,
}

/// Why the guest assets cannot be had here (`Err(skip reason)`), or panic on a real failure.
pub fn kernel_or_skip() -> Option<vmctl::image::kernel::Kernel> {
    if !Path::new("/usr/src")
        .read_dir()
        .map(|mut d| {
            d.any(|e| {
                e.map(|e| e.file_name().to_string_lossy().starts_with("linux-source-"))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
    {
        skip("no /usr/src/linux-source-*.tar.xz (Debian package linux-source-6.1) to build the guest kernel");
        return None;
    }
    let progress = |m: &str| eprintln!("{m}");
    Some(vmctl::image::kernel::ensure(&progress).expect("build the guest kernel"))
}

/// Kernel + root image, or `None` after printing why they cannot be built here.
pub fn assets_or_skip() -> Option<Assets> {
    for tool in ["qemu-system-x86_64", "mmdebstrap", "tar2sqfs"] {
        if !have(tool) {
            skip(&format!(
                "{tool} is not installed (see scripts/apt-packages/guest.txt)"
            ));
            return None;
        }
    }
    let kernel = kernel_or_skip()?;
    let agent = build_agent().expect("build guest agent");
    let progress = |m: &str| eprintln!("{m}");
    let rootfs = match vmctl::image::rootfs::ensure(&agent, &progress) {
        Ok(r) => r,
        Err(e @ vmctl::image::ImageError::NoSubordinateIds { .. }) => {
            skip(&format!(
                "the root image is not cached and cannot be built here: {e}"
            ));
            return None;
        }
        Err(e) => panic!("build the root image: {e}"),
    };
    Some(Assets {
        kernel: kernel.bzimage,
        kernel_config: kernel.config,
        rootfs: rootfs.image,
    })
}

/// A root-filesystem tarball for `docker import`, made from Debian's busybox-static: the
/// given busybox applets in /bin, the given empty folders, and files as (path, content).
pub fn busybox_rootfs_tar(
    dir: &Path,
    applets: &[&str],
    folders: &[&str],
    files: &[(&str, &str)],
) -> PathBuf {
    let root = dir.join("bbroot");
    for d in std::iter::once(&"bin").chain(folders) {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    for (path, content) in files {
        std::fs::write(root.join(path), content).expect("write file");
    }
    let tar = dir.join("busybox.tar");
    let out = proc::run(
        std::process::Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&tar)
            .arg("."),
        std::time::Duration::from_secs(30),
    );
    assert!(out.ok(), "tar: {out:?}");
    tar
}

/// A busybox initramfs (cpio newc, packed by cpio(1)) whose `/init` runs `script` with
/// busybox's sh; written to `dir/initramfs.cpio`.
pub fn busybox_initramfs(dir: &Path, script: &str) -> PathBuf {
    let root = dir.join("initramfs-root");
    for d in ["bin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    let init = root.join("init");
    std::fs::write(
        &init,
        format!("#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\n{script}\n"),
    )
    .expect("write init");
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod init");
    let out = dir.join("initramfs.cpio");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
            root.display(),
            out.display()
        ))
        .status()
        .expect("run cpio");
    assert!(status.success(), "cpio failed");
    out
}
