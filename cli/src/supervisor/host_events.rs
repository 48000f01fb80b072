//! Host file events into the guest: for each share, the lines fs-share writes on its events
//! socket (inotify on the host) go to the agent's `ReplayEvents` for the share's guest path,
//! which makes the guest's inotify watchers — containers watching a bind mount — see the
//! change. One connection each way per share, kept up across guest reboots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_agent::protocol::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::engine::Share;
use crate::instance::Instance;

/// Where fs-share serves the events of share `tag`.
pub fn events_sock(inst: &Instance, tag: &str) -> PathBuf {
    inst.dir.join(format!("events-{tag}.sock"))
}

/// Runs until aborted: relays the events of `share` to the guest.
pub async fn relay(inst_vsock: PathBuf, events: PathBuf, share: Share) {
    loop {
        match relay_once(&inst_vsock, &events, &share).await {
            Ok(()) => tracing::debug!("host events for {}: relay ended", share.tag),
            Err(e) => tracing::debug!("host events for {}: {e}", share.tag),
        }
        // fs-share not up yet, the guest rebooting, or the agent gone: try again shortly.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn relay_once(vsock: &Path, events: &Path, share: &Share) -> Result<(), String> {
    let mut host = UnixStream::connect(events)
        .await
        .map_err(|e| format!("events socket {}: {e}", events.display()))?;
    let path = share.guest.display().to_string();
    let mut guest = super::guest_stream::open_stream(vsock, &Request::ReplayEvents { path })
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        "host events for {} relayed to the guest at {}",
        share.tag,
        share.guest.display()
    );
    // Event lines are whole JSON frames; the agent validates each.
    tokio::io::copy(&mut host, &mut guest)
        .await
        .map_err(|e| e.to_string())?;
    let _ = guest.shutdown().await;
    Ok(())
}
