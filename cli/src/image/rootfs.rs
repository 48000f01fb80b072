//! The root image: Debian bookworm minbase + Docker's packages, trimmed, with the guest
//! agent as `/sbin/init`, packed as a reproducible zstd squashfs.
//!
//! Built without root: `mmdebstrap` (`--mode=unshare` for a user — a user namespace with the
//! user's subordinate ids, so packages keep their owners —, `--mode=root` for root) bootstraps
//! minbase + the packages and, in its hooks, configures iptables-legacy, installs the agent,
//! trims and normalises (docs, man pages, locales, apt lists, logs, caches, shadow dates);
//! its reproducible tarball (sorted, mtimes clamped to SOURCE_DATE_EPOCH) becomes a zstd
//! squashfs with `tar2sqfs`, every time set to the epoch. Each step's output streams as
//! progress. Downloaded packages are kept in `<cache>/debs`. The output is cached under
//! `<cache>/rootfs/<hash>/rootfs.squashfs`, the hash covering the recipe version, suite,
//! mirror, package list, agent binary and SOURCE_DATE_EPOCH. Same inputs (and the same
//! mirror state) give a byte-identical image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::{cache_dir, io_err, mirror, run_logged, sha256_hex, write_file, ImageError, Progress};

/// Bump when the recipe below changes, so cached images are rebuilt.
const RECIPE_VERSION: &str = "vmctl-rootfs-3-mmdebstrap";
/// Debian suite of the image.
pub const SUITE: &str = "bookworm";
/// Packages added to the minbase variant.
pub const PACKAGES: &[&str] = &[
    "docker.io",
    "containerd",
    "runc",
    "iptables",
    "ca-certificates",
    "e2fsprogs",
];
/// Default SOURCE_DATE_EPOCH for the image (2023-11-14), overridable by the environment.
const DEFAULT_EPOCH: u64 = 1_700_000_000;

/// Trimmed from the image: not needed to run dockerd.
const TRIM: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bash-completion",
    "usr/share/zsh",
    "usr/share/fish",
    "usr/share/bug",
    "usr/share/common-licenses",
    // libnetwork's test/debug tools and containerd's v1 shims: dockerd 20.10 uses none.
    "usr/bin/dnet",
    "usr/sbin/ovrouter",
    "usr/bin/containerd-shim",
    "usr/bin/containerd-shim-runc-v1",
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/ldconfig/aux-cache",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/log",
    "etc/machine-id",
    "etc/hostname",
    "etc/resolv.conf",
    "etc/shadow-",
    "etc/gshadow-",
    "etc/passwd-",
    "etc/group-",
    "etc/subuid-",
    "etc/subgid-",
    // Not `dev`: mmdebstrap has device nodes mounted there while hooks run. Its tarball
    // holds the standard nodes (the same in every mode); the agent mounts devtmpfs over them.
    "run",
    "tmp",
];

/// Directories the agent mounts over; they must exist in the read-only image.
const MOUNT_POINTS: &[&str] = &[
    "dev",
    "run",
    "tmp",
    "var/log",
    "var/lib/vmctl",
    "var/lib/docker",
    "var/lib/containerd",
    "var/lib/apt/lists",
    "var/cache/apt",
    "mnt",
];

/// A built root image.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub image: PathBuf,
    pub size: u64,
    pub hash: String,
}

fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EPOCH)
}

/// The cache key of an image built from these inputs.
pub fn input_hash(mirror: &str, agent_sha256: &str, epoch: u64) -> String {
    let key = format!(
        "{RECIPE_VERSION}\n{SUITE}\n{mirror}\n{}\n{agent_sha256}\n{epoch}\n{:?}\n",
        PACKAGES.join(","),
        TRIM
    );
    sha256_hex(key.as_bytes())[..16].to_string()
}

/// Build the root image or reuse the cached one.
pub fn ensure(agent: &Path, progress: Progress<'_>) -> Result<Rootfs, ImageError> {
    // The image gets the agent stripped, and so does the hash: the debug info names the
    // checkout directory, and the linker's build id is a hash over it, neither of which may
    // make each clone of the project rebuild the image (checked: two clones give identical
    // bytes once both are gone).
    let strip_dir = tempfile::tempdir().map_err(io_err("create a temporary directory"))?;
    let stripped = strip_dir.path().join("guest-agent");
    let agent = match Command::new("strip")
        .arg("--remove-section=.note.gnu.build-id")
        .arg("-o")
        .arg(&stripped)
        .arg(agent)
        .status()
    {
        Ok(s) if s.success() => stripped.as_path(),
        _ => agent,
    };
    let agent_bytes =
        std::fs::read(agent).map_err(io_err(format!("read guest agent {}", agent.display())))?;
    let mirror = mirror::host_mirror();
    let epoch = source_date_epoch();
    let hash = input_hash(&mirror, &sha256_hex(&agent_bytes), epoch);
    let _lock = super::CacheLock::acquire("rootfs")?;
    let root = cache_dir().join("rootfs");
    let out_dir = root.join(&hash);
    let image = out_dir.join("rootfs.squashfs");
    if let Ok(m) = std::fs::metadata(&image) {
        super::prune::touch(&out_dir);
        progress(&format!("[rootfs] cached: {}", image.display()));
        return Ok(Rootfs {
            image,
            size: m.len(),
            hash,
        });
    }
    check_can_build()?;
    let staging = root.join(format!("staging-{hash}"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_err(format!("create {}", staging.display())))?;
    let debs = cache_dir().join("debs");
    std::fs::create_dir_all(&debs).map_err(io_err(format!("create {}", debs.display())))?;
    let start = Instant::now();
    let tarball = staging.join("rootfs.tar");
    let result = build(&tarball, &debs, &mirror, agent, epoch, progress).and_then(|()| {
        let tmp_dir = root.join(format!("{hash}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp_dir);
        std::fs::create_dir_all(&tmp_dir).map_err(io_err(format!("create {}", tmp_dir.display())))?;
        progress("[rootfs] 2/2 tar2sqfs (zstd)");
        squash(&tarball, &tmp_dir.join("rootfs.squashfs"), epoch, progress)?;
        let manifest = format!(
            "recipe {RECIPE_VERSION}\nsuite {SUITE}\nmirror {mirror}\npackages {}\nagent {}\nsource_date_epoch {epoch}\n",
            PACKAGES.join(" "),
            agent.display()
        );
        write_file(&tmp_dir.join("manifest.txt"), manifest.as_bytes())?;
        let _ = std::fs::remove_dir_all(&out_dir);
        std::fs::rename(&tmp_dir, &out_dir).map_err(io_err(format!("rename to {}", out_dir.display())))
    });
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    let size = std::fs::metadata(&image)
        .map_err(io_err(format!("stat {}", image.display())))?
        .len();
    progress(&format!(
        "[rootfs] built in {:.0}s: {} ({:.1} MB)",
        start.elapsed().as_secs_f64(),
        image.display(),
        size as f64 / 1e6
    ));
    let (removed, freed) = super::prune::prune(&root, super::prune::KEEP, super::prune::MAX_AGE);
    if !removed.is_empty() {
        progress(&format!(
            "[rootfs] removed {} old image(s) not used for {} days ({:.0} MB)",
            removed.len(),
            super::prune::MAX_AGE.as_secs() / 86400,
            freed as f64 / 1e6
        ));
    }
    Ok(Rootfs { image, size, hash })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A user builds in a user namespace: that needs `newuidmap` and subordinate ids.
fn check_can_build() -> Result<(), ImageError> {
    if !crate::host_tools::on_path("mmdebstrap") || !crate::host_tools::on_path("tar2sqfs") {
        return Err(ImageError::Invalid(
            "building the root image needs mmdebstrap and tar2sqfs: run `sudo ./scripts/install-deps.sh` \
             (Debian packages mmdebstrap, squashfs-tools-ng, uidmap)"
                .into(),
        ));
    }
    if is_root() {
        return Ok(());
    }
    let user = crate::host_tools::user_name().unwrap_or_default();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() }.to_string();
    let has = |file: &str| {
        std::fs::read_to_string(file).is_ok_and(|t| {
            t.lines()
                .any(|l| l.split(':').next().is_some_and(|n| n == user || n == uid))
        })
    };
    if !has("/etc/subuid") || !has("/etc/subgid") || !crate::host_tools::on_path("newuidmap") {
        return Err(ImageError::NoSubordinateIds { user });
    }
    Ok(())
}

/// Bootstraps the image with mmdebstrap into the tarball `out`; every change to the tree is a
/// hook, run inside mmdebstrap's namespace where the tree's owners are real.
fn build(
    out: &Path,
    debs: &Path,
    mirror: &str,
    agent: &Path,
    epoch: u64,
    progress: Progress<'_>,
) -> Result<(), ImageError> {
    let mode = if is_root() { "root" } else { "unshare" };
    progress(&format!(
        "[rootfs] 1/2 mmdebstrap ({mode} mode) {SUITE} minbase + {} from {mirror}",
        PACKAGES.join(",")
    ));
    let debs = debs.display().to_string();
    let day = epoch / 86_400;
    let trim: Vec<String> = TRIM.iter().map(|p| format!("\"$1\"/{p}")).collect();
    let mounts: Vec<String> = MOUNT_POINTS.iter().map(|p| format!("\"$1\"/{p}")).collect();
    let hooks: Vec<(&str, String)> = vec![
        // Downloaded packages are kept between builds (an agent change rebuilds the image).
        (
            "--setup-hook",
            "mkdir -p \"$1\"/var/cache/apt/archives/".into(),
        ),
        (
            "--setup-hook",
            format!("sync-in {debs} /var/cache/apt/archives/"),
        ),
        (
            "--customize-hook",
            format!("sync-out /var/cache/apt/archives {debs}"),
        ),
        (
            "--customize-hook",
            "chroot \"$1\" update-alternatives --set iptables /usr/sbin/iptables-legacy".into(),
        ),
        (
            "--customize-hook",
            "chroot \"$1\" update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy".into(),
        ),
        ("--customize-hook", "rm -f \"$1\"/usr/sbin/init".into()),
        (
            "--customize-hook",
            format!("upload {} /usr/sbin/init", agent.display()),
        ),
        ("--customize-hook", "chmod 0755 \"$1\"/usr/sbin/init".into()),
        // Never across a mount point (mmdebstrap mounts /proc, /sys and device nodes).
        (
            "--customize-hook",
            format!("rm -rf --one-file-system {}", trim.join(" ")),
        ),
        ("--customize-hook", format!("mkdir -p {}", mounts.join(" "))),
        ("--customize-hook", "chmod 1777 \"$1\"/tmp".into()),
        // /etc/shadow records the day each password was set: pin it to the epoch's day.
        (
            "--customize-hook",
            format!("sed -i -E 's/^([^:]*:[^:]*:)[0-9]+:/\\1{day}:/' \"$1\"/etc/shadow"),
        ),
    ];
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--mode={mode}"))
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        // Merged /usr by directory symlinks, as debootstrap does, rather than the usrmerge
        // package (which pulls in perl).
        .arg("--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr")
        .arg("--skip=download/empty")
        // The trim hook removes the apt lists and cache and every log itself.
        .arg("--skip=cleanup/apt,cleanup/reproducible");
    for (flag, hook) in &hooks {
        cmd.arg(format!("{flag}={hook}"));
    }
    cmd.args([SUITE, &out.display().to_string(), mirror])
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C");
    run_logged(&mut cmd, "[rootfs]   ", progress).map(|_| ())
}

/// Pack the tarball `tar` as a reproducible zstd squashfs at `out`: owners, modes and
/// xattrs from the tarball, every time set to `epoch`.
pub fn squash(
    tar: &Path,
    out: &Path,
    epoch: u64,
    progress: Progress<'_>,
) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(out);
    let input = std::fs::File::open(tar).map_err(io_err(format!("open {}", tar.display())))?;
    super::run_logged_with_stdin(
        Command::new("tar2sqfs")
            .args(["--quiet", "--no-skip", "--force", "--no-keep-time"])
            .args(["--compressor", "zstd", "--comp-extra", "level=15"])
            .args(["--block-size", "1048576"])
            .arg("--defaults")
            .arg(format!("mtime={epoch}"))
            .arg(out)
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
        input.into(),
        "[rootfs]   ",
        progress,
    )
    .map(|_| ())
}
