//! The root image: Debian bookworm minbase + Docker's packages, trimmed, with the guest
//! agent as `/sbin/init`, packed as a reproducible zstd squashfs.
//!
//! Steps (each printed as progress): debootstrap → configure (iptables-legacy) → install
//! the agent → trim and normalise (docs, man pages, locales, apt lists, logs, caches,
//! shadow dates) → `mksquashfs` with fixed timestamps. The output is cached under
//! `<cache>/rootfs/<hash>/rootfs.squashfs`, the hash covering the recipe version, suite,
//! mirror, package list, agent binary and SOURCE_DATE_EPOCH. Same inputs (and the same
//! mirror state) give a byte-identical image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::{cache_dir, io_err, mirror, run_logged, sha256_hex, write_file, ImageError, Progress};

/// Bump when the recipe below changes, so cached images are rebuilt.
const RECIPE_VERSION: &str = "vmctl-rootfs-2";
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
    "dev",
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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::NeedRoot);
    }
    let staging = root.join(format!("staging-{hash}"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_err(format!("create {}", staging.display())))?;
    let debs = cache_dir().join("debs");
    std::fs::create_dir_all(&debs).map_err(io_err(format!("create {}", debs.display())))?;
    let start = Instant::now();
    let result = build(&staging, &debs, &mirror, agent, epoch, progress).and_then(|()| {
        let tmp_dir = root.join(format!("{hash}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp_dir);
        std::fs::create_dir_all(&tmp_dir).map_err(io_err(format!("create {}", tmp_dir.display())))?;
        progress("[rootfs] 5/5 mksquashfs (zstd)");
        squash(&staging, &tmp_dir.join("rootfs.squashfs"), epoch, progress)?;
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

fn chroot(dir: &Path, args: &[&str], progress: Progress<'_>) -> Result<(), ImageError> {
    run_logged(
        Command::new("chroot")
            .arg(dir)
            .args(args)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "[rootfs]   ",
        progress,
    )
    .map(|_| ())
}

fn build(
    dir: &Path,
    debs: &Path,
    mirror: &str,
    agent: &Path,
    epoch: u64,
    progress: Progress<'_>,
) -> Result<(), ImageError> {
    progress(&format!(
        "[rootfs] 1/5 debootstrap {SUITE} minbase + {} from {mirror}",
        PACKAGES.join(",")
    ));
    run_logged(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(format!("--cache-dir={}", debs.display()))
            .args([SUITE, &dir.display().to_string(), mirror])
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C"),
        "[rootfs]   ",
        progress,
    )?;
    progress("[rootfs] 2/5 configure: iptables-legacy");
    chroot(
        dir,
        &[
            "update-alternatives",
            "--set",
            "iptables",
            "/usr/sbin/iptables-legacy",
        ],
        progress,
    )?;
    chroot(
        dir,
        &[
            "update-alternatives",
            "--set",
            "ip6tables",
            "/usr/sbin/ip6tables-legacy",
        ],
        progress,
    )?;

    progress("[rootfs] 3/5 install the guest agent as /sbin/init");
    let init = dir.join("usr/sbin/init");
    let _ = std::fs::remove_file(&init);
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&init)
        .arg(agent)
        .status();
    if !matches!(stripped, Ok(s) if s.success()) {
        std::fs::copy(agent, &init).map_err(io_err(format!("copy agent to {}", init.display())))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(format!("chmod {}", init.display())))?;

    progress("[rootfs] 4/5 trim and normalise");
    trim(dir, epoch)
}

/// Remove what the VM does not need and the files whose content depends on build time.
fn trim(dir: &Path, epoch: u64) -> Result<(), ImageError> {
    for rel in TRIM {
        let p = dir.join(rel);
        let r = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(ImageError::Io(format!("remove {}", p.display()), e));
            }
        }
    }
    for rel in MOUNT_POINTS {
        let p = dir.join(rel);
        std::fs::create_dir_all(&p).map_err(io_err(format!("create {}", p.display())))?;
    }
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777));
    // /etc/shadow records the day each password was set: pin it to the epoch's day.
    let shadow = dir.join("etc/shadow");
    if let Ok(text) = std::fs::read_to_string(&shadow) {
        let day = (epoch / 86_400).to_string();
        let fixed: String = text
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                if f.len() > 2 && !f[2].is_empty() {
                    f[2] = &day;
                }
                f.join(":") + "\n"
            })
            .collect();
        write_file(&shadow, fixed.as_bytes())?;
    }
    Ok(())
}

/// Pack `dir` as a reproducible zstd squashfs at `out`.
pub fn squash(
    dir: &Path,
    out: &Path,
    epoch: u64,
    progress: Progress<'_>,
) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(out);
    run_logged(
        Command::new("mksquashfs")
            .arg(dir)
            .arg(out)
            .args([
                "-noappend",
                "-quiet",
                "-no-progress",
                "-comp",
                "zstd",
                "-Xcompression-level",
                "15",
                "-b",
                "1M",
            ])
            .args([
                "-mkfs-time",
                &epoch.to_string(),
                "-all-time",
                &epoch.to_string(),
            ])
            .env_remove("SOURCE_DATE_EPOCH"),
        "[rootfs]   ",
        progress,
    )
    .map(|_| ())
}
