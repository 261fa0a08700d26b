//! One writer per prefix: the lease object in the bucket, and fencing.
//!
//! Two etlfs processes writing the same prefix (a failover that left two nodes running, a
//! second mount by mistake) would silently overwrite each other's uploads and undo each other's
//! removals. So a writer holds a lease: the object `<prefix>/.etlfs/lease`, a small JSON
//! document naming the holder (a writer id kept in the state directory, host, pid, mount
//! point, start time) and when it was last renewed. Every change of it is a conditional write
//! — create only if absent, update only if it is still the version we read — so of two nodes
//! racing for it exactly one wins, on every backend that has conditional requests (S3
//! `If-None-Match`/`If-Match`, GCS generation match, Azure `If-Match`).
//!
//! - **Taking it** ([`acquire`]): absent → create. Held by the same writer id (this state
//!   directory's own earlier run, killed before it could let go) or expired (not renewed for
//!   three of its holder's periods, by this node's clock) → take it over. Held live by someone
//!   else → refuse, naming the holder, unless told to take over. Unreadable → refuse; it is
//!   never overwritten without `--takeover`.
//! - **Keeping it** ([`Lease::keep`]): renewed every period. A renewal that finds another
//!   version means another node took the lease: this one is *fenced* at once — the bucket's
//!   [`Fence`] stops every upload, delete, copy and manifest write from that moment — and stays
//!   so until it is restarted, serving its local files meanwhile. A renewal that cannot reach
//!   the bucket for two periods fences too (another node may take the lease after three), and
//!   lifts the fence once a renewal succeeds again with the version still ours.
//! - **Letting go** ([`Lease::release`]): deleted at a clean stop if it is still ours.
//!
//! FILESYSTEM buckets (object_store's local backend) can create conditionally but not update:
//! there a renewal or takeover reads the version and overwrites only if it is unchanged, so two
//! writers racing within one request could both believe they hold it until the loser's next
//! renewal. That weaker guarantee is said at start.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::escape::{esc, esc_display};
use crate::store::bucket::{Bucket, BucketError, Conditional, Fence, ObjectVersion, WriteIf};

/// The lease's name under the bucket's reserved prefix.
pub const LEASE: &str = "lease";
/// The format written in every lease, so that another format is never taken for ours.
const FORMAT: &str = "etlfs-lease/1";
/// A lease not renewed for this many of its holder's periods has expired.
const EXPIRE_PERIODS: u32 = 3;
/// After this many periods without a successful renewal, the holder stops writing itself:
/// one period before another node may take the lease over.
const SELF_FENCE_PERIODS: u32 = 2;

/// What the lease object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBody {
    pub format: String,
    /// The holder's writer id: random, kept in its state directory.
    pub writer: String,
    pub host: String,
    pub pid: u32,
    /// What the holder serves (its mount point, or the directory of a one-shot backup).
    pub serving: String,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339: the holder's clock at its last renewal.
    pub renewed: String,
    pub period_seconds: u64,
}

impl LeaseBody {
    fn renewed_at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.renewed).ok()
    }

    /// When it expires, if it is readable.
    pub fn expires_at(&self) -> Option<SystemTime> {
        Some(self.renewed_at()? + Duration::from_secs(self.period_seconds) * EXPIRE_PERIODS)
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.expires_at().is_some_and(|t| now > t)
    }

    /// `host H, pid P, serving S, renewed T (N s ago)`: for messages (every field escaped).
    pub fn describe(&self, now: SystemTime) -> String {
        let ago = self
            .renewed_at()
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| format!(" ({} s ago)", d.as_secs()))
            .unwrap_or_default();
        format!(
            "host {}, pid {}, serving {}, last renewed {}{ago}",
            esc(&self.host),
            self.pid,
            esc(&self.serving),
            esc(&self.renewed)
        )
    }
}

/// Who is asking for the lease.
#[derive(Debug, Clone)]
pub struct Holder {
    pub writer: String,
    pub serving: String,
    pub period: Duration,
}

impl Holder {
    fn body(&self, started: SystemTime, now: SystemTime) -> LeaseBody {
        LeaseBody {
            format: FORMAT.into(),
            writer: self.writer.clone(),
            host: hostname(),
            pid: std::process::id(),
            serving: self.serving.clone(),
            started: humantime::format_rfc3339_millis(started).to_string(),
            renewed: humantime::format_rfc3339_millis(now).to_string(),
            period_seconds: self.period.as_secs().max(1),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "{key} is held by another etlfs ({holder}); two writers of one prefix would overwrite \
         each other. Stop that one, wait until its lease expires ({expires}), or pass \
         --takeover to take it now (the other one then stops writing)"
    )]
    Held {
        key: String,
        holder: String,
        expires: String,
    },
    #[error(
        "{key} exists but is not an etlfs lease this version can read ({reason}); it is never \
         overwritten without --takeover"
    )]
    Unreadable { key: String, reason: String },
    #[error(
        "the bucket refused a conditional write of {key} ({source}); etlfs needs conditional \
         writes (S3 If-None-Match/If-Match, GCS generation match, Azure If-Match) to make sure \
         only one node writes a prefix. Pass --no-lease to run without that guarantee"
    )]
    NoConditionalWrites {
        key: String,
        #[source]
        source: BucketError,
    },
    #[error(transparent)]
    Bucket(BucketError),
}

impl LeaseError {
    /// The bucket did not answer: worth waiting for, unlike a holder or a refusal.
    pub fn is_outage(&self) -> bool {
        matches!(self, LeaseError::Bucket(e) if e.is_outage())
    }

    /// A problem only the operator can solve (exit code 2).
    pub fn is_usage(&self) -> bool {
        !matches!(self, LeaseError::Bucket(_))
    }

    /// The bucket's own failure under this one, if it is one.
    pub fn bucket_error(&self) -> Option<&BucketError> {
        match self {
            LeaseError::Bucket(e) | LeaseError::NoConditionalWrites { source: e, .. } => Some(e),
            LeaseError::Held { .. } | LeaseError::Unreadable { .. } => None,
        }
    }
}

/// A lease this process holds.
#[derive(Debug)]
pub struct Lease {
    bucket: Bucket,
    holder: Holder,
    started: SystemTime,
    state: std::sync::Mutex<Held>,
}

#[derive(Debug)]
struct Held {
    version: ObjectVersion,
    /// When the last renewal succeeded (this process' clock).
    renewed: SystemTime,
    /// Another node took the lease: fenced for good.
    lost: bool,
}

/// Taking the lease, one attempt at a time (so that the caller can stop between attempts).
///
/// A lease held by another writer and not expired may still be a dead one (a node that
/// crashed, a lost volume's earlier run): it is watched until it is either renewed — a live
/// holder: refused — or expires — a dead one: taken over. A live holder is thus refused within
/// about one of its periods, and a new node after a crash comes up by itself once the dead
/// node's lease has expired, with no operator needed.
#[derive(Debug)]
pub struct Acquire {
    holder: Holder,
    takeover: bool,
    started: SystemTime,
    /// The other holder's lease (and its version) as first seen, while waiting for it to
    /// change or expire.
    watching: Option<(Bytes, ObjectVersion)>,
}

impl Acquire {
    /// `takeover`: take the lease even from a live holder or an unreadable object.
    pub fn new(holder: Holder, takeover: bool) -> Acquire {
        Acquire {
            holder,
            takeover,
            started: SystemTime::now(),
            watching: None,
        }
    }

    /// How long to wait before the next attempt while watching a holder.
    pub fn watch_interval(&self) -> Duration {
        const MAX: Duration = Duration::from_secs(2);
        (self.holder.period / 4).clamp(Duration::from_millis(200), MAX)
    }

    /// One attempt: the lease, `None` to try again after [`Acquire::watch_interval`] (a holder
    /// is being watched), or why it cannot be taken.
    pub async fn attempt(&mut self, bucket: &Bucket) -> Result<Option<Lease>, LeaseError> {
        let key = bucket.reserved_key_name(LEASE);
        let holder = &self.holder;
        let now = SystemTime::now();
        let current = bucket
            .get_reserved(LEASE)
            .await
            .map_err(LeaseError::Bucket)?;
        let cond = match current {
            None => WriteIf::Absent,
            Some((bytes, version)) => {
                match serde_json::from_slice::<LeaseBody>(&bytes) {
                    Ok(l) if l.format == FORMAT => {
                        if l.writer == holder.writer {
                            info!("taking back this state directory's own lease");
                        } else if l.expired(now) {
                            info!(holder = %l.describe(now), "taking over an expired lease");
                        } else if self.takeover {
                            warn!(holder = %l.describe(now), "--takeover: taking the lease from a live holder; it stops writing at its next renewal");
                        } else {
                            match &self.watching {
                                None => {
                                    info!(holder = %l.describe(now), "the lease is held; waiting to see it renewed (then this start is refused) or expire (then it is taken over)");
                                    self.watching = Some((bytes, version));
                                    return Ok(None);
                                }
                                Some(first) if *first == (bytes, version.clone()) => {
                                    return Ok(None);
                                }
                                Some(_) => {
                                    return Err(LeaseError::Held {
                                        key,
                                        holder: l.describe(now),
                                        expires: l
                                            .expires_at()
                                            .map(|t| {
                                                humantime::format_rfc3339_seconds(t).to_string()
                                            })
                                            .unwrap_or_else(|| "unknown".into()),
                                    });
                                }
                            }
                        }
                    }
                    other => {
                        let reason = match other {
                            Ok(l) => format!("format {}", esc(&l.format)),
                            Err(e) => esc_display(e).to_string(),
                        };
                        if !self.takeover {
                            return Err(LeaseError::Unreadable { key, reason });
                        }
                        warn!(reason, "--takeover: replacing an unreadable lease object");
                    }
                }
                WriteIf::Is(version)
            }
        };
        let body = |at| {
            Bytes::from(serde_json::to_vec(&holder.body(self.started, at)).expect("serializes"))
        };
        // Created or updated, then updated once more at once: that proves that this bucket
        // can do both kinds of conditional write before anything depends on them.
        let written = match write(bucket, body(now), cond).await {
            Ok(Conditional::Written(v)) => {
                write(bucket, body(SystemTime::now()), WriteIf::Is(v)).await
            }
            other => other,
        };
        match written {
            Ok(Conditional::Written(version)) => {
                info!(key, period = ?holder.period, "holding the lease: this is the one writer of the prefix");
                Ok(Some(Lease {
                    bucket: bucket.clone(),
                    holder: holder.clone(),
                    started: self.started,
                    state: std::sync::Mutex::new(Held {
                        version,
                        renewed: now,
                        lost: false,
                    }),
                }))
            }
            // Someone else wrote it between our read and our write: look again.
            Ok(Conditional::Conflict) => Ok(None),
            Err(e) if e.is_outage() => Err(LeaseError::Bucket(e)),
            // Refused, not unanswered: a bucket that cannot do conditional writes.
            Err(e) => Err(LeaseError::NoConditionalWrites { key, source: e }),
        }
    }
}

/// Takes the lease for `holder` (waiting while a holder is watched), or says why not.
pub async fn acquire(bucket: &Bucket, holder: Holder, takeover: bool) -> Result<Lease, LeaseError> {
    let mut a = Acquire::new(holder, takeover);
    loop {
        if let Some(lease) = a.attempt(bucket).await? {
            return Ok(lease);
        }
        tokio::time::sleep(a.watch_interval()).await;
    }
}

/// A conditional write of the lease; where the backend cannot update conditionally
/// (FILESYSTEM), the version is checked just before an unconditional write instead.
async fn write(bucket: &Bucket, body: Bytes, cond: WriteIf) -> Result<Conditional, BucketError> {
    match (
        bucket.put_reserved(LEASE, body.clone(), cond.clone()).await,
        cond,
    ) {
        (Err(BucketError::Unsupported { .. }), WriteIf::Is(want)) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                warn!(
                    "this bucket cannot update objects conditionally (FILESYSTEM): the lease is \
                     renewed by checking its version just before writing it, so two nodes racing \
                     for it within one request could both write until the next renewal"
                )
            });
            let now = bucket.get_reserved(LEASE).await?.map(|(_, v)| v);
            if now.is_some_and(|v| v.e_tag == want.e_tag && v.version == want.version) {
                Ok(Conditional::Written(
                    bucket.overwrite_reserved(LEASE, body).await?,
                ))
            } else {
                Ok(Conditional::Conflict)
            }
        }
        (other, _) => other,
    }
}

impl Lease {
    fn version(&self) -> ObjectVersion {
        self.lock().version.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current_body(&self) -> Bytes {
        Bytes::from(
            serde_json::to_vec(&self.holder.body(self.started, SystemTime::now()))
                .expect("serializes"),
        )
    }

    /// The fence this lease raises and lifts (the bucket's).
    fn fence(&self) -> &Fence {
        self.bucket.fence()
    }

    /// Whether another node took the lease (this process is fenced for good).
    pub fn lost(&self) -> bool {
        self.lock().lost
    }

    /// One renewal; the fence follows the outcome.
    pub async fn renew(&self) {
        if self.lost() {
            return;
        }
        let version = self.version();
        match write(&self.bucket, self.current_body(), WriteIf::Is(version)).await {
            Ok(Conditional::Written(v)) => {
                let mut held = self.lock();
                held.version = v;
                held.renewed = SystemTime::now();
                drop(held);
                if self.fence().reason().is_some() {
                    info!("lease renewed again: writing to the bucket resumes");
                    self.fence().lift();
                }
                self.bucket.health().success();
            }
            Ok(Conditional::Conflict) => {
                let now = SystemTime::now();
                let who = match self.bucket.get_reserved(LEASE).await {
                    Ok(Some((b, _))) => serde_json::from_slice::<LeaseBody>(&b)
                        .map(|l| l.describe(now))
                        .unwrap_or_else(|_| "an unreadable lease object".into()),
                    Ok(None) => "nobody (the lease object was deleted)".into(),
                    Err(e) => format!("unknown ({e})"),
                };
                let reason = format!(
                    "lease lost: another etlfs took {} ({who}); this node no longer writes the \
                     bucket and serves its local files only. Restart it once the other one \
                     stops",
                    self.bucket.reserved_key_name(LEASE)
                );
                error!("{reason}");
                self.lock().lost = true;
                self.fence().raise(reason);
            }
            Err(e) => {
                self.bucket.failed(&e);
                let since = self.lock().renewed;
                let quiet = SystemTime::now().duration_since(since).unwrap_or_default();
                if quiet >= self.holder.period * SELF_FENCE_PERIODS
                    && self.fence().reason().is_none()
                {
                    let reason = format!(
                        "the lease could not be renewed for {} s ({e}); another node may take it \
                         over, so this one stops writing until a renewal succeeds",
                        quiet.as_secs()
                    );
                    warn!("{reason}");
                    self.fence().raise(reason);
                } else {
                    warn!(error = %e, "could not renew the lease; will retry");
                }
            }
        }
    }

    /// Renews the lease every period until the task is aborted (before [`Lease::release`]).
    pub async fn keep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.holder.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.renew().await;
        }
    }

    /// Lets go of the lease at a clean stop, if it is still ours.
    pub async fn release(&self) {
        if self.lost() {
            return;
        }
        // Ours if it still names our writer id: a renewal that was in flight when the keeper
        // stopped may have given it a version this process never saw.
        match self.bucket.get_reserved(LEASE).await {
            Ok(Some((body, _)))
                if serde_json::from_slice::<LeaseBody>(&body)
                    .is_ok_and(|l| l.writer == self.holder.writer) =>
            {
                match self.bucket.delete_reserved(LEASE).await {
                    Ok(()) => info!("lease released"),
                    Err(e) => {
                        warn!(error = %e, "could not release the lease; it expires by itself")
                    }
                }
            }
            Ok(_) => info!("the lease is no longer this process' own: nothing to release"),
            Err(e) => warn!(error = %e, "could not release the lease; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(writer: &str) -> Holder {
        Holder {
            writer: writer.into(),
            serving: "/m".into(),
            period: Duration::from_secs(1),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// One writer at a time; a second one watches a live holder, is refused once it sees a
    /// renewal, and takes over with `takeover`; the first is then fenced at its next renewal and
    /// stays fenced; the second lets go at its stop.
    #[test]
    fn one_writer_takeover_fences_the_other() {
        let rt = rt();
        let bucket = crate::store::bucket::in_memory("etl");
        let a = rt.block_on(acquire(&bucket, holder("a"), false)).unwrap();
        let mut b = Acquire::new(holder("b"), false);
        assert!(
            rt.block_on(b.attempt(&bucket)).unwrap().is_none(),
            "watching"
        );
        assert!(
            rt.block_on(b.attempt(&bucket)).unwrap().is_none(),
            "no renewal yet"
        );
        rt.block_on(a.renew());
        match rt.block_on(b.attempt(&bucket)) {
            Err(LeaseError::Held { holder, .. }) => assert!(holder.contains("pid"), "{holder}"),
            other => panic!("expected Held, got {other:?}"),
        }
        let b = rt
            .block_on(acquire(&bucket.with_own_fence(), holder("b"), true))
            .unwrap();
        rt.block_on(a.renew());
        assert!(a.lost());
        assert!(bucket.fence().reason().unwrap().contains("lease lost"));
        rt.block_on(a.renew());
        assert!(bucket.fence().reason().is_some(), "fenced for good");
        rt.block_on(b.renew());
        assert!(!b.lost());
        rt.block_on(b.release());
        assert!(rt.block_on(bucket.get_reserved(LEASE)).unwrap().is_none());
    }

    /// An expired lease is taken over, the holder's own writer id takes it back at once, and an
    /// object that is not a lease is left alone unless `takeover`.
    #[test]
    fn expired_own_and_unreadable_leases() {
        let rt = rt();
        let bucket = crate::store::bucket::in_memory("");
        let old = LeaseBody {
            renewed: humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(10))
                .to_string(),
            ..holder("dead").body(SystemTime::now(), SystemTime::now())
        };
        let put = |b: Vec<u8>| {
            rt.block_on(bucket.overwrite_reserved(LEASE, Bytes::from(b)))
                .unwrap();
        };
        put(serde_json::to_vec(&old).unwrap());
        let l = rt.block_on(acquire(&bucket, holder("new"), false)).unwrap();
        drop(l);
        let again = rt.block_on(acquire(&bucket, holder("new"), false)).unwrap();
        assert!(!again.lost());
        put(b"{not a lease".to_vec());
        let mut a = Acquire::new(holder("x"), false);
        assert!(matches!(
            rt.block_on(a.attempt(&bucket)),
            Err(LeaseError::Unreadable { .. })
        ));
        let got = rt.block_on(bucket.get_reserved(LEASE)).unwrap().unwrap().0;
        assert_eq!(&got[..], b"{not a lease");
        assert!(rt.block_on(acquire(&bucket, holder("x"), true)).is_ok());
    }
}
