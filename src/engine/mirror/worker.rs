//! The mirror's event loop: debounce, dispatch, retries. The tasks it spawns live in
//! `sync` (one path's upload or deletion) and `intents` (intents and the reconcile).
//!
//! One loop owns all scheduling state (which paths are due when, which are in flight, which
//! intents wait), so none of it needs a lock. Work runs in spawned tasks that report back.
//! Intents run alone and first: the loop starts one only when no sync task is in flight, and
//! starts no sync task while one waits, which makes "delete only what is absent locally"
//! race-free, and means no upload of a change made after an intent reaches the objects it works
//! on before it is carried out. The start's reconcile and the intents never overlap either: the
//! reconcile takes a listing, then walks the local tree trusting it, and an intent that deleted
//! a directory's marker in between (its directory was renamed away, then made again) left the
//! new directory recorded as in the bucket, and never marked there.

mod intents;
mod sync;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use self::intents::{reconcile, run_intent};
use self::sync::sync;
use super::records::Identity;
use super::{Msg, Shared};
use crate::engine::journal::Intent;
use crate::escape::esc;
use crate::store::bucket::BucketError;
use crate::store::upload::UploadError;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the upload records are written while there is activity.
const SAVE_EVERY: Duration = Duration::from_secs(2);
/// After taking messages, the loop leaves the channel alone this long, so a burst of changes
/// (5,000 creates a second) wakes it tens of times instead of once per change. Nothing it
/// delays is urgent at that scale: uploads wait `--upload-delay` anyway, and an fsync, an
/// intent or a drain starts at most this much later.
const COALESCE: Duration = Duration::from_millis(20);

/// Why a bucket operation of the mirror (or an upload of `etlfs backup`) failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("reading {}: {source}", esc(.path))]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the journal: {0}")]
    Journal(#[source] std::io::Error),
}

impl From<UploadError> for SyncError {
    fn from(e: UploadError) -> SyncError {
        match e {
            UploadError::Bucket(e) => SyncError::Bucket(e),
            UploadError::Local { path, source } => SyncError::Local { path, source },
        }
    }
}

impl SyncError {
    /// Errors retrying cannot fix: the path can never be a key there.
    fn is_permanent(&self) -> bool {
        matches!(self, SyncError::Bucket(e) if e.is_permanent())
    }
}

/// When to log a repeated failure of the same operation at `warn`: the first few times, then
/// rarely, so an outage does not flood the log; the rest goes to `debug`.
fn worth_a_warning(attempt: u32) -> bool {
    attempt <= 3 || attempt % 50 == 0
}

/// Logs a failed attempt that will be retried: at `warn` while it is news, then at `debug`.
/// Writes refused by the lease's fence are never news: the lease said why, once.
fn report_retry(what: &str, path: Option<&Path>, e: &SyncError, attempt: u32, retry_in: Duration) {
    let path = path.map(|p| esc(p).to_string()).unwrap_or_default();
    let fenced = matches!(e, SyncError::Bucket(BucketError::Fenced { .. }));
    if worth_a_warning(attempt) && !fenced {
        warn!(path, error = %e, attempt, ?retry_in, "{what}");
    } else {
        debug!(path, error = %e, attempt, ?retry_in, "{what}");
    }
}

/// A path waiting to be synced.
#[derive(Debug, Clone, Copy)]
struct Due {
    at: Instant,
    /// Upload now, and even while a writer has the file open if it is still in this state
    /// (an fsync of it).
    urgent: Option<Identity>,
    /// Waiting out a failure backoff: a drain does not skip this wait.
    backoff: bool,
}

enum Job {
    Sync(PathBuf),
    Intent(u64),
    Reconcile,
}

enum Outcome {
    Done,
    /// Try again after this delay (the file was busy or changed while being read).
    Later(Duration),
    /// Paths to make due now.
    Touch(Vec<PathBuf>),
}

type TaskResult = (Job, Result<Outcome, SyncError>);

pub(crate) struct Worker {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Msg>,
    due: HashMap<PathBuf, Due>,
    /// `due` ordered by time, so neither waking nor dispatching scans every pending path. An
    /// entry is current only while `due` holds the same time for its path: a path whose time
    /// moved is pushed again and the old entry is skipped when it comes up.
    queue: BinaryHeap<Reverse<(Instant, PathBuf)>>,
    /// The channel is not read again before this (see [`COALESCE`]).
    listen_at: Instant,
    /// There was work since the heap was last trimmed.
    busy_since_trim: bool,
    intents: BTreeMap<u64, Intent>,
    inflight: HashSet<PathBuf>,
    intent_running: bool,
    /// After a failed intent, the next attempt waits until then.
    intent_retry_at: Instant,
    reconciled: bool,
    reconcile_running: bool,
    reconcile_at: Instant,
    attempts: HashMap<String, u32>,
    tasks: JoinSet<TaskResult>,
    drains: Vec<oneshot::Sender<()>>,
    last_save: Instant,
    /// Per pending path: (size at its last change, Unix ms it became pending), for the pending
    /// bytes and the age of the oldest pending change on `/metrics`.
    pending_meta: HashMap<PathBuf, (u64, u64)>,
    pending_bytes: u64,
    /// Unix ms each waiting intent arrived.
    intent_since: HashMap<u64, u64>,
    /// The oldest change is a scan of `pending_meta`: done at most this often.
    last_oldest: Instant,
}

/// How often the age of the oldest pending change is recomputed (it is a scan).
const OLDEST_EVERY: Duration = Duration::from_millis(250);

impl Worker {
    pub fn new(
        shared: Arc<Shared>,
        rx: mpsc::UnboundedReceiver<Msg>,
        replay: Vec<(u64, Intent)>,
    ) -> Worker {
        let now = crate::counters::now_ms();
        let intent_since = replay.iter().map(|(seq, _)| (*seq, now)).collect();
        let reconciled =
            shared.opts.nothing_local && shared.records.is_empty() && replay.is_empty();
        if reconciled {
            shared.stats.reconciled.store(1, Ordering::Relaxed);
            debug!("nothing local at start: no reconcile with the bucket needed");
        }
        Worker {
            shared,
            rx,
            due: HashMap::new(),
            queue: BinaryHeap::new(),
            listen_at: Instant::now(),
            busy_since_trim: true,
            intents: replay.into_iter().collect(),
            inflight: HashSet::new(),
            intent_running: false,
            intent_retry_at: Instant::now(),
            reconciled,
            reconcile_running: false,
            reconcile_at: Instant::now(),
            attempts: HashMap::new(),
            tasks: JoinSet::new(),
            drains: Vec::new(),
            last_save: Instant::now(),
            pending_meta: HashMap::new(),
            pending_bytes: 0,
            intent_since,
            last_oldest: Instant::now() - OLDEST_EVERY,
        }
    }

    pub async fn run(mut self) {
        loop {
            self.dispatch();
            self.update_pending();
            if self.is_idle() {
                for d in self.drains.drain(..) {
                    let _ = d.send(());
                }
                if self.busy_since_trim {
                    // A burst (the start's reconcile, a big batch of uploads) is over: give
                    // the memory it used back to the kernel.
                    self.busy_since_trim = false;
                    crate::os::sys::trim_heap();
                }
            } else {
                self.busy_since_trim = true;
            }
            if self.last_save.elapsed() > SAVE_EVERY {
                self.save();
            }
            let listen = Instant::now() >= self.listen_at;
            let mut wake = self.next_wake();
            if !listen {
                wake = wake.min(self.listen_at);
            }
            tokio::select! {
                msg = self.rx.recv(), if listen => match msg {
                    Some(m) => {
                        self.handle(m);
                        while let Ok(m) = self.rx.try_recv() {
                            self.handle(m);
                        }
                        self.listen_at = Instant::now() + COALESCE;
                    }
                    None => break,
                },
                Some(res) = self.tasks.join_next(), if !self.tasks.is_empty() => match res {
                    Ok((job, outcome)) => self.complete(job, outcome),
                    Err(e) => warn!(error = %e, "mirror task panicked"),
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.save();
    }

    fn save(&mut self) {
        self.last_save = Instant::now();
        if let Err(e) = self.shared.records.save() {
            warn!(error = %e, "could not save the upload records");
        }
    }

    fn draining(&self) -> bool {
        !self.drains.is_empty()
    }

    fn is_idle(&self) -> bool {
        self.reconciled && self.due.is_empty() && self.intents.is_empty() && self.tasks.is_empty()
    }

    fn update_pending(&mut self) {
        let stats = &self.shared.stats;
        let n = self.due.len() + self.inflight.len() + self.intents.len();
        stats.pending.store(n as u64, Ordering::Relaxed);
        stats
            .pending_bytes
            .store(self.pending_bytes, Ordering::Relaxed);
        let shown = stats.oldest_pending_ms.load(Ordering::Relaxed);
        if n == 0 {
            stats.oldest_pending_ms.store(0, Ordering::Relaxed);
        } else if shown == 0 || self.last_oldest.elapsed() >= OLDEST_EVERY {
            self.last_oldest = Instant::now();
            let oldest = self
                .pending_meta
                .values()
                .map(|(_, since)| *since)
                .chain(self.intent_since.values().copied())
                .min()
                .unwrap_or_else(crate::counters::now_ms);
            stats.oldest_pending_ms.store(oldest, Ordering::Relaxed);
        }
    }

    /// `path` has a change the bucket lacks: remember its size and since when (the first
    /// change counts: the age is how long the bucket has been behind).
    fn note_pending(&mut self, path: &Path) {
        if self.pending_meta.contains_key(path) {
            return;
        }
        let size = match self.shared.local.stat_beneath(path) {
            Ok(st) if st.is_file() => st.size,
            _ => 0,
        };
        self.pending_bytes += size;
        self.pending_meta
            .insert(path.to_owned(), (size, crate::counters::now_ms()));
    }

    /// `path` is in the bucket (or will never be): it no longer counts as pending, unless it
    /// changed again meanwhile.
    fn forget_pending(&mut self, path: &Path) {
        if self.due.contains_key(path) {
            return;
        }
        if let Some((size, _)) = self.pending_meta.remove(path) {
            self.pending_bytes = self.pending_bytes.saturating_sub(size);
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + SAVE_EVERY;
        // (a task running alone wakes the loop when it completes)
        if !self.reconciled && !self.reconcile_running && !self.intent_running {
            wake = wake.min(self.reconcile_at);
        }
        if !self.intents.is_empty() {
            if !self.intent_running && !self.reconcile_running {
                wake = wake.min(self.intent_retry_at);
            }
            // No sync starts while an intent waits (see `dispatch`): a due path's time would
            // wake the loop for nothing, again and again, until the intent can run.
            return wake;
        }
        if self.inflight.len() >= self.shared.opts.concurrency {
            // Nothing can start before a sync completes, and a completion wakes the loop.
            return wake;
        }
        if let Some(Reverse((at, _))) = self.queue.peek() {
            // (possibly an outdated entry: then this wake is early, and harmless)
            wake = wake.min(*at);
        }
        if self.draining()
            && self
                .due
                .iter()
                .any(|(p, d)| !d.backoff && !self.inflight.contains(p))
        {
            wake = Instant::now();
        }
        wake
    }

    /// Queues `path` for its (new) time in `due`.
    fn enqueue(&mut self, path: &Path) {
        if let Some(d) = self.due.get(path) {
            self.queue.push(Reverse((d.at, path.to_owned())));
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Touch { path, urgent } => {
                self.note_pending(&path);
                let delay = if urgent.is_some() {
                    Duration::ZERO
                } else {
                    self.shared.opts.upload_delay
                };
                let now = Instant::now();
                let at = now + delay;
                // However often it changes, no later than `upload_max_delay` after its first
                // change the bucket lacks.
                let latest = self.pending_meta.get(&path).map_or(at, |(_, since_ms)| {
                    let waited = crate::counters::now_ms().saturating_sub(*since_ms);
                    let max = u64::try_from(self.shared.opts.upload_max_delay.as_millis())
                        .unwrap_or(u64::MAX);
                    now + Duration::from_millis(max.saturating_sub(waited))
                });
                let entry = self.due.entry(path.clone()).or_insert(Due {
                    at,
                    urgent,
                    backoff: false,
                });
                // New activity restarts the quiet period (and ends a backoff wait: the file
                // changed, so try it afresh); urgency sticks until the upload.
                entry.at = if urgent.is_some() {
                    at.min(entry.at)
                } else {
                    at.max(entry.at).min(latest)
                };
                if entry.backoff {
                    entry.at = at;
                    entry.backoff = false;
                }
                if urgent.is_some() {
                    // The latest fsync is the state to publish.
                    entry.urgent = urgent;
                }
                self.enqueue(&path);
            }
            Msg::Intent { seq, intent } => {
                self.intent_since.insert(seq, crate::counters::now_ms());
                self.intents.insert(seq, intent);
            }
            Msg::Drain { reply } => self.drains.push(reply),
        }
    }

    fn dispatch(&mut self) {
        // The reconcile and the intents run one at a time: the reconcile's listing must not
        // change under it between the listing and the walk that trusts it (see above).
        if !self.reconciled
            && !self.reconcile_running
            && !self.intent_running
            && Instant::now() >= self.reconcile_at
        {
            self.reconcile_running = true;
            let shared = Arc::clone(&self.shared);
            self.tasks
                .spawn(async move { (Job::Reconcile, reconcile(&shared).await) });
        }
        if self.intent_running {
            return;
        }
        if let Some((&seq, intent)) = self.intents.iter().next() {
            let syncs_in_flight = !self.inflight.is_empty();
            if !syncs_in_flight && !self.reconcile_running && Instant::now() >= self.intent_retry_at
            {
                self.intent_running = true;
                let (shared, intent) = (Arc::clone(&self.shared), intent.clone());
                self.tasks.spawn(async move {
                    (Job::Intent(seq), run_intent(&shared, seq, &intent).await)
                });
            }
            // Intents go first: no new sync starts while one waits.
            return;
        }
        let now = Instant::now();
        if self.draining() {
            // Rare and short-lived: a scan is fine. Backoff waits are not cut short.
            let mut ready: Vec<PathBuf> = self
                .due
                .iter()
                .filter(|(p, d)| (d.at <= now || !d.backoff) && !self.inflight.contains(*p))
                .map(|(p, _)| p.clone())
                .collect();
            ready.sort();
            for path in ready {
                if self.inflight.len() >= self.shared.opts.concurrency {
                    break;
                }
                self.start_sync(path);
            }
            return;
        }
        while self.inflight.len() < self.shared.opts.concurrency {
            match self.queue.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((at, path))) = self.queue.pop() else {
                break;
            };
            let current = self.due.get(&path).is_some_and(|d| d.at == at);
            // A path in flight is queued again when its sync completes.
            if current && !self.inflight.contains(&path) {
                self.start_sync(path);
            }
        }
    }

    fn start_sync(&mut self, path: PathBuf) {
        let Some(due) = self.due.remove(&path) else {
            return;
        };
        self.inflight.insert(path.clone());
        let shared = Arc::clone(&self.shared);
        self.tasks.spawn(async move {
            let out = sync(&shared, &path, due.urgent).await;
            (Job::Sync(path), out)
        });
    }

    /// The wait before the next attempt of a failing operation, and which attempt failed.
    fn backoff(&mut self, key: String) -> (Duration, u32) {
        self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
        let n = self.attempts.entry(key).or_insert(0);
        *n += 1;
        let d = BACKOFF_START.saturating_mul(1 << (*n - 1).min(16));
        (d.min(BACKOFF_MAX), *n)
    }

    /// Makes `path` due again after `wait`, a wait that a drain does not cut short.
    fn retry_later(&mut self, path: PathBuf, wait: Duration) {
        let at = Instant::now() + wait;
        let e = self.due.entry(path.clone()).or_insert(Due {
            at,
            urgent: None,
            backoff: true,
        });
        e.at = e.at.max(at);
        e.backoff = true;
        self.enqueue(&path);
    }

    fn make_due_now(&mut self, paths: Vec<PathBuf>) {
        let at = Instant::now();
        for p in paths {
            self.note_pending(&p);
            if !self.due.contains_key(&p) {
                self.due.insert(
                    p.clone(),
                    Due {
                        at,
                        urgent: None,
                        backoff: false,
                    },
                );
                self.enqueue(&p);
            }
        }
    }

    /// A failure the bucket caused counts towards `degraded` on `/status`.
    fn report_outage(&self, e: &SyncError) {
        if let SyncError::Bucket(b) = e {
            self.shared.bucket.failed(b);
        }
    }

    fn complete(&mut self, job: Job, outcome: Result<Outcome, SyncError>) {
        match job {
            Job::Reconcile => {
                self.reconcile_running = false;
                if let Err(e) = &outcome {
                    self.report_outage(e);
                }
                match outcome {
                    Ok(Outcome::Touch(paths)) => {
                        self.reconciled = true;
                        self.shared.stats.reconciled.store(1, Ordering::Relaxed);
                        self.attempts.remove("reconcile");
                        info!(
                            to_upload = paths.len(),
                            "reconciled the directory with the bucket"
                        );
                        self.make_due_now(paths);
                    }
                    Ok(_) => self.reconciled = true,
                    Err(e) => {
                        let (d, _) = self.backoff("reconcile".into());
                        warn!(error = %e, retry_in = ?d, "could not reconcile with the bucket");
                        self.reconcile_at = Instant::now() + d;
                    }
                }
            }
            Job::Intent(seq) => {
                self.intent_running = false;
                let key = format!("intent:{seq}");
                if let Err(e) = &outcome {
                    self.report_outage(e);
                } else {
                    self.intent_since.remove(&seq);
                }
                match outcome {
                    Ok(out) => {
                        self.attempts.remove(&key);
                        let intent = self.intents.remove(&seq);
                        if let Err(e) = self.shared.intent_done(seq, intent.as_ref()) {
                            warn!(error = %e, "could not mark a journal intent done");
                        }
                        debug!(?intent, "intent carried out");
                        if let Outcome::Touch(paths) = out {
                            self.make_due_now(paths);
                        }
                    }
                    Err(e) if e.is_permanent() => {
                        self.shared
                            .stats
                            .skipped_paths
                            .fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "skipping an intent that can never reach the bucket");
                        self.intent_since.remove(&seq);
                        // The overlay made the change all the same: a late listing gets it
                        // applied like one carried out.
                        let intent = self.intents.remove(&seq);
                        let _ = self.shared.intent_done(seq, intent.as_ref());
                    }
                    Err(e) => {
                        self.shared
                            .stats
                            .delete_failures
                            .fetch_add(1, Ordering::Relaxed);
                        let (d, n) = self.backoff(key);
                        report_retry("bucket delete/rename failed; will retry", None, &e, n, d);
                        // It stays first in line; the next attempt waits for the backoff.
                        self.intent_retry_at = Instant::now() + d;
                    }
                }
            }
            Job::Sync(path) => {
                self.inflight.remove(&path);
                // Changed again during the sync: its queue entry was skipped meanwhile.
                self.enqueue(&path);
                let key = path.to_string_lossy().into_owned();
                if let Err(e) = &outcome {
                    self.report_outage(e);
                }
                match outcome {
                    Ok(Outcome::Done) | Ok(Outcome::Touch(_)) => {
                        self.attempts.remove(&key);
                        self.forget_pending(&path);
                    }
                    Ok(Outcome::Later(d)) => self.retry_later(path, d),
                    Err(e) if e.is_permanent() => {
                        self.shared
                            .stats
                            .skipped_paths
                            .fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "this path cannot be mirrored; skipping it");
                        self.forget_pending(&path);
                    }
                    Err(e) => {
                        self.shared
                            .stats
                            .upload_failures
                            .fetch_add(1, Ordering::Relaxed);
                        let (d, n) = self.backoff(key);
                        report_retry("upload failed; will retry", Some(&path), &e, n, d);
                        self.retry_later(path, d);
                    }
                }
            }
        }
    }
}
