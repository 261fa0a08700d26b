//! The lease at start: taken before anything is shown (a second writer is refused), or — for
//! an offline start — tried once quickly and then taken in the background, writes fenced
//! until it is.
//!
//! Its own file because it is the one step of a start that decides whether this process may
//! write the bucket at all.

use std::sync::Arc;
use std::sync::mpsc;

use tracing::{info, warn};

use super::{Event, MountArgs, Plan, stopped_while_waiting};
use crate::cli::{UsageError, settle_missing_bucket};
use crate::os::state::StateDir;
use crate::store::bucket::Bucket;

/// What the lease step decided.
pub(super) struct LeaseStart {
    /// The bucket did not answer an eligible start: it mounts at once, listing later.
    pub(super) offline: bool,
    /// The background task that takes the lease of an offline start.
    pub(super) late: Option<tokio::task::JoinHandle<()>>,
    /// The lease the mount holds, once it has it (an offline start takes it later).
    pub(super) slot: LeaseSlot,
}

/// One writer per prefix: takes the lease (with its renewal task) before the
/// mount shows or writes anything, and tells whether the start is offline: an `eligible` start
/// (see `offline::local_is_complete`) whose bucket does not answer at once. `None` if a signal
/// asked us to stop first.
pub(super) fn start(
    args: &MountArgs,
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    bucket: &Bucket,
    state: &StateDir,
    signals: &mpsc::Receiver<Event>,
    eligible: bool,
) -> anyhow::Result<Option<LeaseStart>> {
    let slot: LeaseSlot = Arc::new(std::sync::Mutex::new(None));
    let mut offline = false;
    let mut late_lease = None;
    let lease = match &args.lease() {
        // It writes nothing: no lease to take (whose renewal would lift the fence).
        _ if args.as_of().is_some() => None,
        None => {
            warn!("--no-lease: nothing stops a second etlfs from writing this prefix too");
            None
        }
        Some(l) => {
            let holder = crate::engine::lease::Holder {
                writer: state
                    .writer_id()
                    .map_err(|source| UsageError::Inaccessible {
                        what: "state directory",
                        path: plan.state_dir.clone(),
                        source,
                    })?,
                serving: plan.mountpoint.display().to_string(),
                period: l.period,
            };
            // Offline: one quick try (a live holder is refused as usual), else later.
            let quick = if eligible {
                let mut acquire = crate::engine::lease::Acquire::new(holder.clone(), l.takeover);
                let probe =
                    async { tokio::time::timeout(OFFLINE_PROBE, acquire.attempt(bucket)).await };
                match rt.block_on(probe) {
                    Ok(Ok(Some(lease))) => Some(Some(lease)),
                    Ok(Err(e)) if e.is_usage() => {
                        return Err(UsageError::Lease(Box::new(e)).into());
                    }
                    // Held: watched until it is renewed or expires, as at any start.
                    Ok(Ok(None)) => None,
                    // The bucket answered that it does not exist: created (then the lease is
                    // taken as at any start), or a configuration error.
                    Ok(Err(e)) if is_missing(e.bucket_error()) => {
                        if let Some(b) = e.bucket_error() {
                            rt.block_on(settle_missing_bucket(bucket, b))?;
                        }
                        None
                    }
                    Ok(Err(e)) => {
                        if let Some(b) = e.bucket_error() {
                            bucket.failed(b);
                        }
                        Some(None)
                    }
                    Err(_) => Some(None),
                }
            } else {
                None
            };
            match quick {
                Some(Some(lease)) => Some(lease),
                Some(None) => {
                    offline = true;
                    bucket.fence().raise(
                        "started offline: uploads wait until the bucket answers and the lease \
                         is taken"
                            .into(),
                    );
                    late_lease = Some(rt.spawn(take_lease_later(
                        bucket.clone(),
                        holder,
                        l.takeover,
                        Arc::clone(&slot),
                    )));
                    None
                }
                None => {
                    let Some(lease) = take_lease(rt, bucket, holder, l.takeover, signals)? else {
                        return Ok(None);
                    };
                    Some(lease)
                }
            }
        }
    };
    if eligible && args.lease().is_none() {
        // No lease to try: one small read tells whether the bucket answers.
        let probe = async {
            tokio::time::timeout(
                OFFLINE_PROBE,
                bucket.get_reserved(crate::engine::lease::LEASE),
            )
            .await
        };
        offline = match rt.block_on(probe) {
            Ok(Ok(_)) => false,
            Ok(Err(e)) if is_missing(Some(&e)) => {
                rt.block_on(settle_missing_bucket(bucket, &e))?;
                false
            }
            Ok(Err(e)) => {
                bucket.failed(&e);
                true
            }
            Err(_) => true,
        };
    }
    if let Some(lease) = lease {
        let lease = Arc::new(lease);
        let keeper = rt.spawn(Arc::clone(&lease).keep());
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((lease, keeper));
    }
    Ok(Some(LeaseStart {
        offline,
        late: late_lease,
        slot,
    }))
}

/// Takes the lease, retrying with backoff while the bucket is unreachable. `None` if a signal
/// asked us to stop first; a live holder, an unreadable lease or a bucket without conditional
/// writes is a [`UsageError`] (exit code 2).
fn take_lease(
    rt: &tokio::runtime::Runtime,
    bucket: &Bucket,
    holder: crate::engine::lease::Holder,
    takeover: bool,
    signals: &mpsc::Receiver<Event>,
) -> anyhow::Result<Option<crate::engine::lease::Lease>> {
    let mut acquire = crate::engine::lease::Acquire::new(holder, takeover);
    let mut wait = std::time::Duration::from_millis(500);
    let mut created = false;
    loop {
        let next = match rt.block_on(acquire.attempt(bucket)) {
            Ok(Some(lease)) => return Ok(Some(lease)),
            Ok(None) => acquire.watch_interval(),
            Err(e) if e.is_usage() => return Err(UsageError::Lease(Box::new(e)).into()),
            // Created, then tried again at once; or a configuration error.
            Err(e) if !created && is_missing(e.bucket_error()) => {
                if let Some(b) = e.bucket_error() {
                    rt.block_on(settle_missing_bucket(bucket, b))?;
                }
                created = true;
                continue;
            }
            Err(e) => {
                let refused = e.bucket_error().and_then(|b| {
                    bucket.failed(b);
                    b.refusal()
                });
                // A refusal was said once, as an error, by `failed`: no warning at each retry.
                if refused.is_none() {
                    warn!(error = %e, retry_in = ?wait, "cannot take the lease yet; the mount waits for the bucket");
                }
                super::notify::status(
                    "starting: waiting for the bucket to take the lease (see the log)",
                );
                let w = wait;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
                w
            }
        };
        if stopped_while_waiting(signals, next) {
            return Ok(None);
        }
    }
}

/// Whether the bucket answered that it does not exist.
pub(super) fn is_missing(e: Option<&crate::store::bucket::BucketError>) -> bool {
    e.and_then(|e| e.refusal()) == Some(crate::store::bucket::Refusal::NoBucket)
}

/// How long an offline start tries the bucket (for the lease) before it mounts without it.
const OFFLINE_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

/// The lease of a mount once taken, and its renewal task.
pub(super) type LeaseSlot = Arc<
    std::sync::Mutex<
        Option<(
            Arc<crate::engine::lease::Lease>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
>;

/// Takes the lease of an offline start once the bucket answers, then lifts the fence that
/// held its writes. A live holder keeps it fenced (said on `/status`).
async fn take_lease_later(
    bucket: Bucket,
    holder: crate::engine::lease::Holder,
    takeover: bool,
    slot: LeaseSlot,
) {
    let mut acquire = crate::engine::lease::Acquire::new(holder, takeover);
    let mut wait = std::time::Duration::from_millis(500);
    loop {
        let next = match acquire.attempt(&bucket).await {
            Ok(Some(lease)) => {
                let lease = Arc::new(lease);
                let keeper = tokio::spawn(Arc::clone(&lease).keep());
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((lease, keeper));
                bucket.fence().lift();
                info!("the bucket answers: took the lease; uploads start");
                return;
            }
            Ok(None) => acquire.watch_interval(),
            Err(e) if e.is_usage() => {
                tracing::error!(error = %e, "another writer holds the lease: this node serves its local files and writes nothing to the bucket");
                bucket.fence().raise(format!(
                    "another writer holds the lease ({e}); restart with --takeover to take it"
                ));
                return;
            }
            Err(e) => {
                if let Some(b) = e.bucket_error() {
                    // A container the configuration lets us create: the next attempt sees it.
                    if is_missing(Some(b)) && bucket.create_missing().await.unwrap_or(false) {
                        info!(bucket = %crate::escape::esc(bucket.target()), "created the container (storage_create_container)");
                    }
                    bucket.failed(b);
                }
                tracing::debug!(error = %e, retry_in = ?wait, "cannot take the lease yet");
                let w = wait;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
                w
            }
        };
        tokio::time::sleep(next).await;
    }
}
