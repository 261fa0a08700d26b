//! Parked requests: a request that needs a bucket-only file waits for the download without
//! holding a FUSE thread.
//!
//! The kernel talks to etlfs over a few threads. If one of them waited for a download, a slow
//! bucket would soon hold them all, and a `cat` of a *local* file, an `ls`, a create would hang
//! behind it — the bucket would hold the application hostage. So the overlay never waits: an
//! operation that needs a bucket-only file fails with [`OverlayError::NeedsFetch`] before it
//! has done anything, and the request is parked here. Its reply (fuser lets a reply be sent
//! from any thread) moves to a task on the download runtime, which waits for the downloads
//! and then runs the operation again on a blocking thread and replies. The FUSE thread is
//! free at once.
//!
//! A parked request ends in one of three ways:
//! - the downloads land: the operation runs again (a file evicted again meanwhile is
//!   downloaded again, a few times at most) and its result is the reply;
//! - a download fails or its object is corrupt: `EIO`, as for any failed download — unless
//!   the operation, run again, needs other downloads: the file was renamed while its download
//!   waited, and the mirror moved its object before the download read it; then it waits for
//!   the file under its new name;
//! - the application gives up or the bucket does: `EINTR` when the waiting thread is being
//!   killed (fuser answers the kernel's INTERRUPT with ENOSYS, which turns interrupts off for
//!   the mount, so instead the waiter is watched: a thread that waits in a FUSE request cannot
//!   die before it is answered, and a killed one would otherwise hang until the download
//!   ends), and `EIO` once the bucket has delivered nothing for `--fetch-timeout`. A slow
//!   bucket that keeps delivering is waited for; only a silent one is given up on.
//!
//! The download itself goes on after a request gave up: the next open finds the file local.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::fetch::Outcome;
use crate::fs::overlay::{FETCH_ATTEMPTS, OverlayError, Result};

use super::Core;

/// How often a parked request checks on its application and on the bucket.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// What happens to a request after a step of its parking.
enum Step<R, D> {
    Done,
    /// The operation needs more downloads first (carries the reply along).
    Again(Vec<PathBuf>, R, D),
}

impl Core {
    /// Runs `op` for a request from thread `tid`; if it needs downloads, parks the request
    /// until they land and runs it again. `done` turns the result into the reply. `open`: the
    /// application opens the file (its directory is read ahead).
    pub(super) fn serve<T, R, Op, Done>(
        self: &Arc<Self>,
        tid: u32,
        open: bool,
        reply: R,
        op: Op,
        done: Done,
    ) where
        T: Send + 'static,
        R: Send + 'static,
        Op: Fn(&Core) -> Result<T> + Send + Sync + 'static,
        Done: FnOnce(&Core, Result<T>, R) + Send + 'static,
    {
        let paths = match op(self) {
            Err(OverlayError::NeedsFetch(paths)) => paths,
            res => return done(self, res, reply),
        };
        let Some(rt) = self.overlay.runtime().cloned() else {
            return done(self, Err(OverlayError::NeedsFetch(paths)), reply);
        };
        let core = Arc::clone(self);
        core.parked.fetch_add(1, Ordering::Relaxed);
        let op = Arc::new(op);
        rt.spawn(async move {
            let parked = Instant::now();
            let (mut paths, mut reply, mut done) = (paths, reply, done);
            for attempt in 1..=FETCH_ATTEMPTS {
                let downloads = core.overlay.fetch_needed(&paths, open && attempt == 1);
                let last = attempt == FETCH_ATTEMPTS;
                // A failed download is the answer, unless the file moved meanwhile: renamed
                // while its download waited on the bucket, and the mirror moved its object
                // before the download read it. The operation, run again, then names the file
                // under its new name (or finds it gone, or local).
                let failed = match core.wait(downloads, tid, parked).await {
                    Ok(()) => None,
                    Err(e @ OverlayError::Fetch(_)) if !last => Some(e),
                    Err(e) => {
                        core.parked.fetch_sub(1, Ordering::Relaxed);
                        return done(&core, Err(e), reply);
                    }
                };
                let (c, op) = (Arc::clone(&core), Arc::clone(&op));
                let step = tokio::task::spawn_blocking(move || {
                    // (`failed` is only kept when this is not the last attempt.)
                    let res = match (op(&c), failed) {
                        (Err(OverlayError::NeedsFetch(again)), None) if !last => {
                            return Step::Again(again, reply, done);
                        }
                        (Err(OverlayError::NeedsFetch(again)), Some(_)) if again != paths => {
                            return Step::Again(again, reply, done);
                        }
                        (Err(OverlayError::NeedsFetch(_)), Some(e)) => Err(e),
                        (res, _) => res,
                    };
                    c.parked.fetch_sub(1, Ordering::Relaxed);
                    done(&c, res, reply);
                    Step::Done
                })
                .await;
                match step {
                    Ok(Step::Again(p, r, d)) => (paths, reply, done) = (p, r, d),
                    Ok(Step::Done) => return,
                    // A panic in the operation: the reply went with it (fuser answers a
                    // dropped reply with EIO).
                    Err(_) => {
                        core.parked.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
    }

    /// Waits for `downloads`, watching the waiting thread `tid` and the bucket.
    async fn wait(
        &self,
        downloads: futures::future::BoxFuture<'static, Outcome>,
        tid: u32,
        parked: Instant,
    ) -> Result<()> {
        let mut downloads = std::pin::pin!(downloads);
        let mut watch = tokio::time::interval(WATCH_EVERY);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                res = &mut downloads => return res.map_err(OverlayError::Fetch),
                _ = watch.tick() => {
                    if crate::os::sys::being_killed(tid) {
                        return Err(OverlayError::Interrupted);
                    }
                    if let Some(limit) = self.fetch_timeout {
                        let idle = self.overlay.bucket_idle_for(parked);
                        if idle >= limit {
                            return Err(OverlayError::BucketSilent(idle));
                        }
                    }
                }
            }
        }
    }
}
