//! `vmctl mount MOUNTPOINT [--guest-path DIR] [--read-only]`: the guest's directory DIR
//! appears at MOUNTPOINT on the host while the command runs in the foreground (like
//! `sshfs -f` or OrbStack's machine folders). The guest agent serves it over a vsock control
//! connection (`Request::ServeFs`), the host side is `vmctl::fuse_mount`.

use std::path::PathBuf;

use clap::Args;

use super::args::NameArg;

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Existing host directory to mount the guest's files on.
    pub mountpoint: PathBuf,
    /// Guest directory to expose (absolute).
    #[arg(long, default_value = "/")]
    pub guest_path: String,
    /// Refuse every change (EROFS).
    #[arg(long)]
    pub read_only: bool,
}

#[cfg(target_os = "linux")]
pub use linux::run;

#[cfg(not(target_os = "linux"))]
pub fn run(_name: &NameArg, _a: MountArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "`vmctl mount` is not available on this platform yet: it needs Linux's /dev/fuse \
         (a macFUSE/FUSE-T session is future work)"
    )
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use anyhow::{bail, Context};
    use guest_agent::protocol::{self, FrameReader, Request, Response, CONTROL_PORT};
    use vmctl::fuse_mount::{self, Ended, FuseMount, Stopper};
    use vmctl::instance::Instance;
    use vmctl::vsock;

    use super::{MountArgs, NameArg};

    pub fn run(name: &NameArg, a: MountArgs) -> anyhow::Result<()> {
        let inst = Instance::new(&name.name)?;
        if inst.running_supervisor().is_none() {
            bail!(
                "instance {} is not running; start it with `vmctl start` first",
                inst.name
            );
        }
        fuse_mount::check_prerequisites(&a.mountpoint)?;
        let stream = serve_fs(&inst, &a.guest_path, a.read_only)?;
        let fsname = format!("vmctl-{}:{}", inst.name, a.guest_path);
        let mount = FuseMount::mount(&a.mountpoint, &fsname, a.read_only)?;
        let mp = mount.mountpoint().display().to_string();
        stop_on_signals(mount.stopper())?;
        eprintln!(
            "vmctl: guest {} of {} mounted at {mp}{}; Ctrl-C or `fusermount3 -u {mp}` unmounts",
            a.guest_path,
            inst.name,
            if a.read_only { " (read-only)" } else { "" }
        );
        match mount.serve(stream)? {
            Ended::Unmounted | Ended::Stopped => {
                eprintln!("vmctl: unmounted {mp}");
                Ok(())
            }
            Ended::PeerClosed => bail!(
                "the VM of instance {} went away (stopped?); {mp} is unmounted",
                inst.name
            ),
        }
    }

    /// A control connection on which the agent serves `path` as raw FUSE messages.
    fn serve_fs(inst: &Instance, path: &str, read_only: bool) -> anyhow::Result<UnixStream> {
        let timeout = Duration::from_secs(10);
        let s = vsock::connect_blocking(&inst.vsock_sock(), CONTROL_PORT, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut w = s.try_clone()?;
        let mut reader = FrameReader::new(s);
        protocol::handshake(&mut reader, &mut w).context("guest agent handshake")?;
        protocol::write_frame(
            &mut w,
            &Request::ServeFs {
                path: path.to_string(),
                read_only,
            },
        )?;
        match reader.expect::<Response>().context("guest agent reply")? {
            Response::Ok => {}
            Response::Error { message } => bail!("the guest cannot serve {path}: {message}"),
            other => bail!("unexpected guest agent reply {other:?}"),
        }
        // The agent sends nothing after `Ok` until it gets a request, so the frame reader
        // holds no bytes of the FUSE stream; the clone carries it from here.
        drop(reader);
        w.set_read_timeout(None)?;
        Ok(w)
    }

    /// SIGINT/SIGTERM/SIGHUP end the session (and unmount) instead of killing the process.
    /// The signals are blocked here, before the mount's threads start (they inherit the
    /// mask), and taken by one thread with sigwait.
    fn stop_on_signals(stopper: Stopper) -> anyhow::Result<()> {
        // SAFETY: an all-zero sigset_t is valid storage; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; these calls only write to it.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGHUP);
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            bail!(
                "cannot block signals: {}",
                std::io::Error::from_raw_os_error(r)
            );
        }
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut sig = 0;
                // SAFETY: `set` is initialised and `sig` is valid storage for the result.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                    stopper.stop();
                }
            })?;
        Ok(())
    }
}
