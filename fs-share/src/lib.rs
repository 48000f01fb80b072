//! `fs-share`: the virtio-fs server.
//!
//! Owns the FUSE protocol (as used by virtio-fs) and a passthrough filesystem confined to
//! one shared host folder, served as a vhost-user-fs backend (for QEMU and the builtin VMM)
//! and mountable on the host through `/dev/fuse` for tests.
//!
//! Status: not built yet (see the README status table).
