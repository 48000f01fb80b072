//! Event notifiers and a poller: what the device model uses eventfd and epoll for on Linux,
//! for every host.
//!
//! - On Linux, `EventNotifier` is an eventfd and `Poller` is epoll (`linux`), so KVM can signal
//!   and be signalled without a userspace exit (ioeventfd/irqfd take `EventNotifier::eventfd`).
//! - Elsewhere (macOS, Windows) they are the `portable` implementation: a counter and condition
//!   variables, with the same level-triggered semantics. Hypervisor.framework and WHP have no
//!   kernel-side notification that could use a file descriptor, so nothing is lost.
//!
//! Both implementations have the same API and pass the same tests (`tests`), which run on
//! Linux against each of them.

pub mod portable;

#[cfg(target_os = "linux")]
mod linux;

#[cfg(target_os = "linux")]
pub use linux::{EventNotifier, Poller};
#[cfg(not(target_os = "linux"))]
pub use portable::{EventNotifier, Poller};

#[cfg(test)]
mod tests;
