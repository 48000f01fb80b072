//! vhost-user-fs backend (`fs-share serve`): QEMU's `vhost-user-fs-pci` or the builtin VMM's
//! vhost-user frontend connects to a unix socket, shares guest memory, and we process the
//! virtio-fs queues (queue 0: hiprio, queue 1: requests) with the same `Server`.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringMutex, VringState, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::virtio::VirtioFsHandler;
use crate::sys::PassthroughFs;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

const QUEUE_SIZE: usize = 1024;
const NUM_QUEUES: usize = 2;
/// virtio-fs config space: the tag is 36 bytes, NUL padded.
pub const MAX_TAG_LEN: usize = 36;

#[derive(Debug, thiserror::Error)]
pub enum VhostUserFsError {
    #[error("Tag must be 1..=36 bytes, got {0}")]
    BadTag(usize),
    // vhost_user_backend::Error implements Display but not std::error::Error, so it is
    // formatted into the message instead of being a #[source].
    #[error("Failed to create the vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    #[error("vhost-user connection on {0} failed: {1}")]
    Serve(std::path::PathBuf, vhost_user_backend::Error),
    #[error("Cannot listen for a vhost-user frontend")]
    Listen(#[source] sandbox::hostsock::HostSockError),
}

/// Guest-triggerable warnings are rate-limited to one per second.
fn log_allowed() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    LAST.swap(now, Ordering::Relaxed) != now
}

struct State {
    mem: Option<Mem>,
    event_idx: bool,
}

pub struct VhostUserFsBackend {
    fs: Arc<PassthroughFs>,
    handler: VirtioFsHandler,
    state: RwLock<State>,
    tag: Option<String>,
}

impl VhostUserFsBackend {
    pub fn new(fs: Arc<PassthroughFs>, tag: Option<String>) -> Result<Self, VhostUserFsError> {
        if let Some(t) = &tag {
            if t.is_empty() || t.len() > MAX_TAG_LEN {
                return Err(VhostUserFsError::BadTag(t.len()));
            }
        }
        Ok(VhostUserFsBackend {
            handler: VirtioFsHandler::new(fs.clone()),
            fs,
            state: RwLock::new(State {
                mem: None,
                event_idx: false,
            }),
            tag,
        })
    }

    fn process_queue(
        &self,
        vring: &mut VringState<Mem>,
        mem: &Mem,
        event_idx: bool,
    ) -> io::Result<bool> {
        let guard = mem.memory();
        let chains: Vec<_> = vring
            .get_queue_mut()
            .iter(guard.clone())
            .map_err(|e| io::Error::other(format!("virtqueue: {e}")))?
            .collect();
        let mut used = false;
        for chain in chains {
            used = true;
            let head = chain.head_index();
            let len = self.handler.handle(&*guard, chain);
            if vring.add_used(head, len).is_err() && log_allowed() {
                tracing::warn!("could not return a used descriptor (guest ring broken?)");
            }
            let notify = !event_idx || vring.needs_notification().unwrap_or(true);
            if notify {
                vring.signal_used_queue()?;
            }
        }
        Ok(used)
    }
}

impl VhostUserBackend for VhostUserFsBackend {
    type Bitmap = ();
    type Vring = VringMutex<Mem>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.tag.is_some() {
            f |= VhostUserProtocolFeatures::CONFIG;
        }
        f
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut cfg = [0u8; MAX_TAG_LEN + 4];
        if let Some(t) = &self.tag {
            cfg[..t.len()].copy_from_slice(t.as_bytes());
        }
        cfg[MAX_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let mut out: Vec<u8> = cfg
            .iter()
            .skip(offset as usize)
            .take(size as usize)
            .copied()
            .collect();
        out.resize(size as usize, 0);
        out
    }

    fn reset_device(&self) {
        self.fs.reset();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .event_idx = enabled;
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        self.state.write().unwrap_or_else(|e| e.into_inner()).mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        _thread: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other("unexpected epoll event"));
        }
        let (mem, event_idx) = {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            (s.mem.clone(), s.event_idx)
        };
        let mem = mem.ok_or_else(|| io::Error::other("no guest memory configured"))?;
        let vring = vrings
            .get(device_event as usize)
            .ok_or_else(|| io::Error::other("unknown queue event"))?;
        let mut state = vring.get_mut();
        if event_idx {
            loop {
                let _ = state.disable_notification();
                self.process_queue(&mut state, &mem, true)?;
                if !state.enable_notification().unwrap_or(false) {
                    break;
                }
            }
        } else {
            self.process_queue(&mut state, &mem, false)?;
        }
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }
}

/// Serves one vhost-user frontend connection on `socket` (created, replacing a stale file)
/// until the frontend disconnects.
pub fn serve(
    fs: Arc<PassthroughFs>,
    socket: &Path,
    tag: Option<String>,
) -> Result<(), VhostUserFsError> {
    let backend = Arc::new(VhostUserFsBackend::new(fs, tag)?);
    let mut daemon = VhostUserDaemon::new(
        "fs-share".to_string(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(VhostUserFsError::Daemon)?;
    // Bound here rather than by `VhostUserDaemon::serve`, so the socket is 0600 from the
    // start: the passthrough runs with umask 0 (guest modes apply exactly), which would make
    // a socket bound under it world-connectable. vhost-user-backend accepts the frontend
    // itself, so no SO_PEERCRED check is possible here: the 0600 mode makes the kernel
    // refuse every other non-root uid at connect(2), the same rule `hostsock` applies.
    let listener = sandbox::hostsock::bind_owner_only(socket).map_err(VhostUserFsError::Listen)?;
    let mut listener = vhost::vhost_user::Listener::from(listener);
    tracing::info!(socket = %socket.display(), "waiting for a vhost-user frontend");
    let serve_err = |e| VhostUserFsError::Serve(socket.to_path_buf(), e);
    daemon.start(&mut listener).map_err(serve_err)?;
    match daemon.wait() {
        // A frontend going away is the normal end (as `VhostUserDaemon::serve` treats it).
        Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        r => r.map_err(serve_err),
    }
}
