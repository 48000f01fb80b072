//! vhost-user-vsock backend: QEMU owns the virtqueues' memory (shared memfd) and kicks us
//! through eventfds; the packets go through the same [`Muxer`] as the in-process device, so the
//! host side (the hybrid-vsock socket) is identical for both engines.
//!
//! Threads: `vhost-user-backend` runs one epoll worker; it waits on the three queue kicks and
//! on the muxer's epoll fd (registered as [`BACKEND_EVENT`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::devices::virtio::vsock::queues::{
    drain_tx, fill_rx, packet_buffer, EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE,
};
use crate::devices::virtio::vsock::{config_bytes, Muxer, MuxerError};

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// The event id of the muxer's epoll fd (ids up to NUM_QUEUES are the library's).
pub const BACKEND_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Largest queue the frontend may configure (QEMU uses 128 for vsock).
const MAX_QUEUE_SIZE: usize = 1024;

/// Errors serving the backend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserVsockError {
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    #[error(transparent)]
    Sandbox(#[from] sandbox::LockdownError),
    #[error("Cannot create the vhost-user socket")]
    Listen(#[source] sandbox::hostsock::HostSockError),
    // vhost_user_backend::Error implements Display but not std::error::Error, so it is
    // formatted into the message instead of being a #[source].
    #[error("Cannot create the vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    #[error("Cannot watch the vsock sockets: {0}")]
    Register(#[source] io::Error),
    #[error("vhost-user connection on {0} failed: {1}")]
    Serve(PathBuf, vhost_user_backend::Error),
}

struct Inner {
    muxer: Muxer,
    mem: Option<Mem>,
    buf: Vec<u8>,
}

/// The vhost-user-vsock device.
pub struct VsockBackend {
    inner: Mutex<Inner>,
    guest_cid: u64,
    epoll_fd: std::os::fd::RawFd,
}

impl VsockBackend {
    /// Listens on `uds_path` (the hybrid-vsock socket) for a guest with `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        let muxer = Muxer::new(guest_cid, uds_path)?;
        let epoll_fd = muxer.epoll_fd();
        Ok(VsockBackend {
            inner: Mutex::new(Inner {
                muxer,
                mem: None,
                buf: packet_buffer(),
            }),
            guest_cid,
            epoll_fd,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl VhostUserBackend for VsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock<Mem>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, _features: u64) {
        // A driver is (re)initialising the device: connections of a previous guest boot are
        // gone on its side, so drop them here too.
        self.lock().muxer.reset();
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = config_bytes(self.guest_cid);
        let mut out = vec![0u8; size as usize];
        crate::devices::virtio::read_config_bytes(&cfg, u64::from(offset), &mut out);
        out
    }

    fn reset_device(&self) {
        self.lock().muxer.reset();
    }

    fn set_event_idx(&self, _enabled: bool) {
        // VIRTIO_RING_F_EVENT_IDX is not offered.
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        self.lock().mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        _thread: usize,
    ) -> io::Result<()> {
        let (Some(rx), Some(tx)) = (vrings.get(RX_QUEUE), vrings.get(TX_QUEUE)) else {
            return Err(io::Error::other("vsock needs three vrings"));
        };
        let mut guard = self.lock();
        let inner = &mut *guard;
        if device_event == BACKEND_EVENT {
            // Always drain the muxer's epoll (accepts, handshakes, readiness), even before the
            // frontend sent its memory table: its fd is level-triggered here, so leaving
            // events pending would spin this thread.
            inner.muxer.process_host_events();
        }
        let Some(mem) = inner.mem.as_ref().map(|m| m.memory()) else {
            // No memory table yet: what the host sent waits in the muxer.
            return Ok(());
        };
        let (mut rx_used, mut tx_used) = (false, false);
        match device_event {
            e if e as usize == RX_QUEUE => {}
            e if e as usize == TX_QUEUE => {
                let mut t = tx.get_mut();
                tx_used = drain_tx(&mut inner.muxer, t.get_queue_mut(), &mem, &mut inner.buf);
            }
            e if e as usize == EVENT_QUEUE => return Ok(()),
            BACKEND_EVENT => {}
            other => {
                crate::warn_ratelimited!("vhost-user-vsock: unknown event {other}");
                return Ok(());
            }
        }
        {
            let mut r = rx.get_mut();
            if r.get_queue().ready() {
                rx_used = fill_rx(&mut inner.muxer, r.get_queue_mut(), &mem, &mut inner.buf);
            }
        }
        drop(guard);
        for (used, vring) in [(rx_used, rx), (tx_used, tx)] {
            if used {
                if let Err(e) = vring.signal_used_queue() {
                    crate::warn_ratelimited!("vhost-user-vsock: cannot signal the guest: {e}");
                }
            }
        }
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }
}

/// Creates the owner-only vhost-user socket QEMU connects to (a stale socket file is
/// replaced). Bound once, before the process gives up root, and served by [`serve`].
pub fn bind(socket: &Path) -> Result<Listener, VhostUserVsockError> {
    let l = sandbox::hostsock::bind_owner_only(socket).map_err(VhostUserVsockError::Listen)?;
    Ok(Listener::from(l))
}

/// Serves vhost-user frontends on `listener` (bound at `socket`) one after another (QEMU
/// reconnecting after a restart finds the same hybrid socket and CID), until one fails.
pub fn serve(
    listener: &mut Listener,
    socket: &Path,
    backend: Arc<VsockBackend>,
    once: bool,
) -> Result<(), VhostUserVsockError> {
    loop {
        let mut daemon = VhostUserDaemon::new(
            "vhost-user-vsock".to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(VhostUserVsockError::Daemon)?;
        for h in daemon.get_epoll_handlers() {
            h.register_listener(backend.epoll_fd, EventSet::IN, u64::from(BACKEND_EVENT))
                .map_err(VhostUserVsockError::Register)?;
        }
        tracing::info!(
            "vhost-user-vsock: waiting for a frontend on {}",
            socket.display()
        );
        let serve_err = |e| VhostUserVsockError::Serve(socket.to_path_buf(), e);
        daemon.start(listener).map_err(serve_err)?;
        match daemon.wait() {
            // A frontend going away is the normal end (as `VhostUserDaemon::serve` treats it).
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            ))
            | Ok(()) => {}
            Err(e) => return Err(serve_err(e)),
        }
        tracing::info!("vhost-user-vsock: frontend disconnected");
        backend.lock().muxer.reset();
        if once {
            return Ok(());
        }
    }
}
