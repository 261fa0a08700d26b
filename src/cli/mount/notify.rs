//! Telling a supervisor how a mount is doing, with systemd's readiness protocol (`sd_notify`):
//! `STATUS=` at each step of the start, `READY=1` once the mount answers, `STOPPING=1` when the
//! stop begins. It speaks only when `NOTIFY_SOCKET` is set: by systemd for a `Type=notify`
//! unit, and by `etlfs mount --background` for the daemon it waits for ([`super::background`]).
//!
//! A supervisor that does not listen is no reason to fail a mount: a message that cannot be
//! sent is logged at debug level and dropped.

use std::path::Path;

use sd_notify::NotifyState;
use tracing::debug;

use crate::escape::esc;

/// `STATUS=text`: what the mount is doing now (`systemctl status` shows it).
pub(super) fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// `READY=1`: the mount at `mountpoint` answers.
pub(super) fn ready(mountpoint: &Path) {
    let text = format!("serving {}", esc(mountpoint));
    send(&[NotifyState::Ready, NotifyState::Status(&text)]);
}

/// `STOPPING=1`: stopping, at a signal or an unmount (once mounted: unmounting and uploading
/// what is pending).
pub(super) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "could not notify the supervisor (NOTIFY_SOCKET)");
    }
}
