//! Stopping: on a signal (or an unmount from outside), unmount — lazily if busy — drain the
//! pending uploads within `--drain-timeout`, record whether the local directory is complete,
//! and let the lease go.
//!
//! Its own file because the order is the point: the drain starts while the kernel lets go of
//! the mount, nothing is uploaded once the lease is lost, and the lease is released last.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use anyhow::Context;
use tracing::{info, warn};

use super::lease::LeaseSlot;
use super::offline::record_completeness;
use super::{Event, MountArgs, Plan};
use crate::engine::index::Index;
use crate::engine::lease::Lease;
use crate::engine::mirror::Mirror;
use crate::escape::esc;
use crate::fs::overlay::Overlay;
use crate::os::local::LocalDir;
use crate::os::state::StateDir;
use crate::os::sys;
use crate::store::bucket::Fence;

/// What a serving mount holds that its stop needs.
pub(super) struct Serving {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) signals: mpsc::Receiver<Event>,
    /// Closed once the session is over: no signal is waited for after that.
    pub(super) signal_handle: signal_hook::iterator::Handle,
    pub(super) session: thread::JoinHandle<()>,
    pub(super) status: Arc<crate::ops::status::Status>,
    /// The background task that takes the lease of an offline start.
    pub(super) late_lease: Option<tokio::task::JoinHandle<()>>,
    pub(super) lease_slot: LeaseSlot,
    pub(super) bucket_fence: Arc<Fence>,
    pub(super) mirror: Arc<Mirror>,
    pub(super) overlay: Arc<Overlay>,
    pub(super) index: Arc<Index>,
    pub(super) state: Arc<StateDir>,
    /// Opened before the mount covered the directory, for the completeness count at the stop.
    pub(super) local: LocalDir,
}

/// Serves until a signal or an external unmount, then stops as this module says.
pub(super) fn serve_until_stopped(args: &MountArgs, plan: &Plan, s: Serving) -> anyhow::Result<()> {
    let Serving {
        rt,
        signals: rx,
        signal_handle: handle,
        session: session_thread,
        status,
        mut late_lease,
        lease_slot,
        bucket_fence,
        mirror,
        overlay,
        index,
        state,
        local: late_local_stop,
    } = s;
    let stopping = match rx.recv() {
        Ok(Event::Signal(sig)) => {
            info!(
                signal = sig,
                "shutting down: unmounting and uploading what is pending"
            );
            Stop::Signal
        }
        Ok(Event::SessionEnded(res)) => {
            info!("unmounted from outside");
            Stop::Ended(res)
        }
        Err(_) => Stop::Ended(Ok(())),
    };
    super::notify::stopping();
    status.set_draining();
    // An offline start that has not got the lease by now will not get it.
    if let Some(late) = late_lease.take() {
        late.abort();
    }
    let lease = lease_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    // Nothing can be uploaded once the lease is lost (another node writes the prefix), or
    // while writes are fenced for another reason (an offline start that never got the lease);
    // a point in time uploads nothing at all.
    let may_upload = args.as_of().is_none()
        && !lease.as_ref().is_some_and(|(l, _)| l.lost())
        && bucket_fence.reason().is_none();
    let deadline = std::time::Instant::now() + args.drain_timeout;
    let ended = match stopping {
        Stop::Ended(res) => Some(res),
        Stop::Signal => {
            // The drain starts now, while the kernel lets go of the mount: a session that
            // outlives the unmount (files still open, copies of the mount in other mount
            // namespaces) must not eat the drain's time.
            let mountpoint = plan.mountpoint.clone();
            let _ = thread::Builder::new()
                .name("unmount".into())
                .spawn(move || unmount(&mountpoint));
            let early = may_upload.then(|| {
                let mirror = Arc::clone(&mirror);
                let timeout = args.drain_timeout;
                rt.spawn(async move { mirror.drain(timeout).await })
            });
            let ended = wait_session(&rx, &overlay, deadline + SESSION_GRACE);
            if let Some(early) = early {
                let _ = rt.block_on(early);
            }
            ended
        }
    };
    if ended.is_some() {
        let _ = session_thread.join();
    }
    // The session is over (or abandoned: no file is open through it), so every file is
    // closed; handles the kernel never released (the RELEASE of a close during a lazy detach
    // can be dropped with the connection) are released now, so that the drain uploads what
    // was written through them.
    let orphaned = overlay.release_all();
    if orphaned > 0 {
        info!(
            handles = orphaned,
            "released the handles the kernel closed without telling us"
        );
    }
    handle.close();
    if args.as_of().is_some() {
        // The files fetched from a point in time look new to the mirror; none may be uploaded.
        info!("a point-in-time mount uploads nothing");
    } else {
        drain_pending(
            &rt,
            &mirror,
            may_upload,
            lease.as_ref().map(|(l, _)| &**l),
            &bucket_fence,
            deadline,
        );
    }
    // The next start may mount at once if every file of the bucket is local now.
    // (Never for a point in time, whose directory must not be mounted normally, nor with
    // --max-local-bytes, which makes files bucket-only by design.)
    if args.as_of().is_none() && args.max_local_bytes.is_none() {
        record_completeness(
            &state,
            &late_local_stop,
            plan.hidden.as_deref(),
            &index,
            &status,
        );
    }
    if let Some((lease, keeper)) = lease {
        // No renewal may run while the lease is let go.
        keeper.abort();
        let _ = rt.block_on(keeper);
        rt.block_on(lease.release());
    }
    session_outcome(ended)?;
    info!(open_handles = overlay.open_handles(), "stopped cleanly");
    // A download stalled in a blocking read (a FILESYSTEM bucket on a hung disk) must not keep
    // the process from exiting.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Uploads what is still pending within what is left of `deadline`, unless this mount may not
/// write (`may_upload`, or a `lease` lost meanwhile). What is left after it stays in the
/// journal and is found by the reconcile at the next start.
fn drain_pending(
    rt: &tokio::runtime::Runtime,
    mirror: &Mirror,
    may_upload: bool,
    lease: Option<&Lease>,
    fence: &Fence,
    deadline: std::time::Instant,
) {
    let pending = crate::engine::mirror::Stats::get(&mirror.stats().pending);
    if !may_upload || lease.is_some_and(|l| l.lost()) {
        // Another node writes the prefix now (or we never got the lease); ours stay in the
        // journal and the upload records.
        if lease.is_some_and(|l| l.lost()) {
            warn!(
                pending,
                "the lease was lost: nothing is uploaded; the changes stay on the local disk"
            );
        } else {
            warn!(
                pending,
                reason = fence.reason().unwrap_or_default(),
                "writes to the bucket are stopped: nothing is uploaded; the changes stay on the local disk"
            );
        }
    } else {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        info!(pending, left = ?left, "draining pending uploads");
        if rt.block_on(mirror.drain(left)) {
            info!("all changes are in the bucket");
        } else {
            warn!(
                pending = crate::engine::mirror::Stats::get(&mirror.stats().pending),
                "drain timed out; the rest is uploaded at the next start"
            );
        }
    }
}

/// How the FUSE session ended (`None`: abandoned after the unmount), as the command's result.
fn session_outcome(ended: Option<std::io::Result<()>>) -> anyhow::Result<()> {
    match ended {
        // After an unmount (above all a lazy one), the kernel may end the connection by
        // aborting it rather than closing it; the session is over either way.
        Some(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            info!("the kernel closed the FUSE connection")
        }
        Some(other) => other.context("FUSE session failed")?,
        // Exiting closes our end of the connection: the kernel aborts it, and a copy of the
        // mount elsewhere answers ENOTCONN from then on.
        None => info!("leaving the FUSE session that outlived the unmount; exiting ends it"),
    }
    Ok(())
}

/// Waits for the FUSE session to end after the unmount. It may not: files still open through
/// the mount keep it, and so do copies of the mount in other mount namespaces (a container,
/// `unshare -m`, a service with a private /tmp), which no unmount here can reach. So this says
/// what keeps it every few seconds, and gives up at `give_up` once no file is open through it
/// (`None`: the session was abandoned; exiting ends it). An application with a file still open
/// is not cut off: it may still be writing, and the wait goes on until it closes.
fn wait_session(
    rx: &mpsc::Receiver<Event>,
    overlay: &Overlay,
    give_up: std::time::Instant,
) -> Option<std::io::Result<()>> {
    let mut next_note = std::time::Instant::now() + SESSION_NOTE_EVERY;
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(Event::SessionEnded(res)) => return Some(res),
            Ok(Event::Signal(sig)) => info!(signal = sig, "already stopping"),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Some(Ok(())),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = std::time::Instant::now();
        let open = overlay.open_handles();
        if now >= give_up && open == 0 {
            return None;
        }
        if now >= next_note {
            next_note = now + SESSION_NOTE_EVERY;
            warn!(
                open_files = open,
                "the FUSE session outlives the unmount: files are still open through it, or \
                 copies of the mount exist in other mount namespaces (containers, unshare); \
                 etlfs exits once the drain is over and no file is open"
            );
        }
    }
}

/// How often [`wait_session`] says what keeps the session.
const SESSION_NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How long after the drain deadline a session that outlives the unmount is still waited for.
const SESSION_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What ended the serving.
enum Stop {
    Signal,
    Ended(std::io::Result<()>),
}

/// Unmounts; a busy mount is detached lazily instead of failing.
fn unmount(mountpoint: &Path) {
    let Ok(path) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    match sys::umount(&path, false) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            warn!(
                mountpoint = %esc(mountpoint),
                "mount is busy; detaching it lazily: it is gone from the namespace now and \
                 etlfs serves the files still open until they are closed"
            );
            if let Err(e) = sys::umount(&path, true) {
                warn!(error = %e, "lazy unmount failed");
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // Not mounted any more (someone unmounted it first): the session ends by itself.
        }
        Err(e) => warn!(error = %e, "unmount failed"),
    }
}
