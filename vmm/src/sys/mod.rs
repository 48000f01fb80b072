//! Platform shims: what the rest of the VMM needs from the host OS, in one place per concern,
//! so shared code carries no scattered `cfg`s.
//!
//! - `event`: eventfd/epoll where they exist, a portable notifier/poller elsewhere.
//! - `x86_boot`: x86_64 Linux loading without linux-loader (which does not build on Windows).

pub mod event;
pub mod x86_boot;
