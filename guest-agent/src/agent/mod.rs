//! The PID-1 side of the guest agent, one module per job.

pub mod boot;
pub mod bridge;
pub mod events;
pub mod exec;
pub mod fs_server;
pub mod log;
pub mod mounts;
pub mod net;
pub mod ports;
pub mod pty;
pub mod reaper;
pub mod server;
pub mod services;
pub mod shutdown;
pub mod sys;
pub mod udp_relay;
pub mod vsock;
