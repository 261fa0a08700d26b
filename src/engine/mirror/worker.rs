//! The mirror's event loop and its tasks: debounce, dispatch, sync, intents, retries.
//!
//! One loop owns all scheduling state (which paths are due when, which are in flight, which
//! intents wait), so none of it needs a lock. Work runs in spawned tasks that report back.
//! Intents run alone and first: the loop starts one only when no sync task is in flight, and
//! starts no sync task while one waits, which makes "delete only what is absent locally"
//! race-free, and means no upload of a change made after an intent reaches the objects it works
//! on before it is carried out.

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

use super::records::{Identity, ObjectVersion, Record};
use super::{Msg, Shared};
use crate::engine::journal::{Intent, Source};
use crate::escape::esc;
use crate::os::local::{Stat, is_gone};
use crate::store::bucket::BucketError;
use crate::store::upload::{Snapshot, UploadError, upload_snapshot};

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
        if !self.reconciled && !self.reconcile_running {
            wake = wake.min(self.reconcile_at);
        }
        if !self.intents.is_empty() && !self.intent_running {
            wake = wake.min(self.intent_retry_at);
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
        if !self.reconciled && !self.reconcile_running && Instant::now() >= self.reconcile_at {
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
            if !syncs_in_flight && Instant::now() >= self.intent_retry_at {
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
        if matches!(e, SyncError::Bucket(b) if b.is_outage()) {
            self.shared.bucket.health().failure();
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
                        if let Err(e) = self.shared.journal.done(seq) {
                            warn!(error = %e, "could not mark a journal intent done");
                        }
                        debug!(?intent, "intent carried out");
                        if let (Some(i), Some(done)) = (
                            &intent,
                            self.shared
                                .done_intents
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .as_mut(),
                        ) {
                            done.push(crate::engine::journal::Pending {
                                seq,
                                intent: i.clone(),
                                step: 0,
                            });
                        }
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
                        self.intents.remove(&seq);
                        let _ = self.shared.journal.done(seq);
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

fn local_err(path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Local {
        path: path.to_owned(),
        source,
    }
}

/// Makes the bucket hold the current local state of `path` (file or directory).
async fn sync(
    shared: &Shared,
    path: &Path,
    urgent: Option<Identity>,
) -> Result<Outcome, SyncError> {
    let st = match shared.local.stat_beneath(path) {
        Ok(st) => st,
        // Removed since: the removal's intent takes care of the bucket.
        Err(e) if is_gone(&e) => {
            shared.links.gone(path);
            return Ok(Outcome::Done);
        }
        Err(e)
            if e.raw_os_error() == Some(libc::EXDEV) || e.raw_os_error() == Some(libc::ELOOP) =>
        {
            debug!(path = %esc(path), "not mirrored: reached through a symlink");
            return Ok(Outcome::Done);
        }
        Err(e) => return Err(local_err(path)(e)),
    };
    if st.is_dir() {
        if shared.records.get(path).is_some_and(|r| r.dir) {
            return Ok(Outcome::Done);
        }
        shared.bucket.put_dir_marker(path).await?;
        shared.bucket.health().success();
        shared.records.set(
            path,
            Record {
                id: Identity::of(&st),
                sha256: String::new(),
                dir: true,
            },
        );
        return Ok(Outcome::Done);
    }
    shared.links.note(path, &st);
    if !st.is_file() {
        return Ok(Outcome::Done); // symlinks, fifos, sockets and devices are not mirrored
    }
    let id = Identity::of(&st);
    if shared
        .records
        .get(path)
        .is_some_and(|r| r.id == id && !r.dir)
    {
        return Ok(Outcome::Done);
    }
    // An open file is published only in the state an fsync vouched for: what was written
    // since is not complete (its last close makes it due again).
    let fsynced = urgent == Some(id);
    if shared.is_busy(st.ino, path) && !fsynced {
        return Ok(Outcome::Done);
    }
    upload(shared, path, &st, fsynced).await
}

/// Uploads a consistent snapshot of a closed file, or nothing.
async fn upload(
    shared: &Shared,
    path: &Path,
    st: &Stat,
    urgent: bool,
) -> Result<Outcome, SyncError> {
    let started = std::time::Instant::now();
    let retry = Outcome::Later(shared.opts.upload_delay.max(Duration::from_millis(50)));
    let file = match shared.local.open_file_beneath(path) {
        Ok(f) => Arc::new(f),
        Err(e) if is_gone(&e) => return Ok(Outcome::Done),
        Err(e) => return Err(local_err(path)(e)),
    };
    let id = Identity::of(st);
    let unchanged = |f: &std::fs::File| -> std::io::Result<bool> {
        let now = crate::os::local::Stat::from_file(f)?;
        Ok(Identity::of(&now) == id && (urgent || !shared.is_busy(now.ino, path)))
    };
    let up = match upload_snapshot(&shared.bucket, &file, path, st, unchanged).await? {
        Snapshot::Uploaded(up) => up,
        Snapshot::Moved => return Ok(retry),
    };
    let object = ObjectVersion {
        e_tag: up.e_tag,
        owner: Some((st.uid, st.gid)),
        until_ns: None,
    };
    let rec = Record {
        id,
        sha256: up.sha256,
        dir: false,
    };
    shared.records.set_with_object(path, rec, Some(object));
    shared.stats.uploads.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .upload_bytes
        .fetch_add(st.size, Ordering::Relaxed);
    shared.stats.upload_latency.record(started.elapsed());
    shared
        .stats
        .last_upload_ms
        .store(crate::counters::now_ms(), Ordering::Relaxed);
    shared.bucket.health().success();
    debug!(path = %esc(path), bytes = st.size, "uploaded");
    Ok(Outcome::Done)
}

fn exists_locally(shared: &Shared, path: &Path) -> bool {
    !matches!(shared.local.stat_beneath(path), Err(e) if is_gone(&e))
}

/// Whether `path` exists locally as the kind of thing an object there stands for: a directory
/// for a marker, anything else for a file's object. A path re-created as the other kind does
/// not keep a removed object alive: a marker left over a file would make a restore show a
/// directory instead of the file, and a file's object left under a directory would come back
/// as the removed file once the directory goes too. (A stat that fails otherwise counts as
/// there: nothing is deleted on a doubt.)
fn still_there(shared: &Shared, path: &Path, marker: bool) -> bool {
    match shared.local.stat_beneath(path) {
        Ok(st) => st.is_dir() == marker,
        Err(e) => !is_gone(&e),
    }
}

/// Deletes the object of a removed file, unless a file exists at the path again. A path that
/// can never be a key has no object.
async fn remove_file(shared: &Shared, path: &Path) -> Result<(), SyncError> {
    if !shared.bucket.can_hold(path) || still_there(shared, path, false) {
        return Ok(());
    }
    shared.bucket.delete(path).await?;
    shared.bucket.health().success();
    shared.records.remove(path);
    shared.stats.deletes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Deletes every object at or below a removed directory whose local path is absent. For a
/// renamed directory (`moved_to`), the object of a file that is only in the bucket is first
/// copied to its new key, so it moves with the directory (where the new path can be a key: the
/// overlay fetches bucket-only files before they move to a name that cannot). A directory
/// below which nothing can be a key has nothing in the bucket.
///
/// Which objects are a bucket-only file's, the index says (`guess`: a rename from an older
/// journal, or before an offline start's listing is loaded, when only the local disk can
/// tell: an object whose old path is absent and new path is not local). Not the old path being
/// absent otherwise: a file made there since the rename is uploaded after the intent, over an
/// object that still holds the renamed file's bytes.
async fn remove_tree(
    shared: &Shared,
    dir: &Path,
    moved_to: Option<&Path>,
    guess: bool,
) -> Result<(), SyncError> {
    if !shared.bucket.can_hold_below(dir) {
        return Ok(());
    }
    let listing = shared.bucket.list(Some(dir)).await?;
    shared.bucket.health().success();
    for obj in listing {
        let there = still_there(shared, &obj.rel, obj.is_dir_marker);
        if there && guess {
            continue;
        }
        if let (Some(to), false) = (moved_to, obj.is_dir_marker) {
            let dest = to.join(obj.rel.strip_prefix(dir).expect("listed below dir"));
            let bucket_only = if guess {
                !exists_locally(shared, &dest)
            } else {
                holds_bucket_only(shared, &obj.rel)
            };
            if bucket_only && shared.bucket.can_hold(&dest) {
                move_object(shared, &obj.rel, &dest).await?;
            }
        }
        if !there {
            delete_object(shared, &obj.rel, obj.is_dir_marker).await?;
        }
    }
    if !exists_locally(shared, dir) {
        shared.records.remove_tree(dir);
    }
    Ok(())
}

/// Deletes a listed object (a file's, or a directory's marker) and forgets its record.
async fn delete_object(shared: &Shared, rel: &Path, marker: bool) -> Result<(), SyncError> {
    if marker {
        shared.bucket.delete_dir_marker(rel).await?;
    } else {
        shared.bucket.delete(rel).await?;
    }
    shared.records.remove(rel);
    shared.stats.deletes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Whether the object at `key` holds the bytes of a file that is only in the bucket, renamed
/// since (the index serves it from there until the object moves).
fn holds_bucket_only(shared: &Shared, key: &Path) -> bool {
    shared.index.as_ref().is_some_and(|i| i.sources(key))
}

/// Whether the index awaits an offline start's listing (it knows no bucket-only file yet).
fn awaiting(shared: &Shared) -> bool {
    shared.index.as_ref().is_some_and(|i| i.awaiting())
}

/// Copies a bucket-only file's object to its new key (the old one is deleted by the caller),
/// and tells the index, which serves the file from there from now on. A source already gone
/// means an earlier attempt finished the move.
async fn move_object(shared: &Shared, from: &Path, to: &Path) -> Result<(), SyncError> {
    match shared.bucket.copy(from, to).await {
        Ok(()) => shared.stats.copies.fetch_add(1, Ordering::Relaxed),
        Err(BucketError::NotFound { .. }) => 0,
        Err(e) => return Err(e.into()),
    };
    if let Some(index) = &shared.index {
        index.object_moved(from, to);
    }
    Ok(())
}

async fn run_intent(shared: &Shared, seq: u64, intent: &Intent) -> Result<Outcome, SyncError> {
    match intent {
        Intent::Remove { path, dir: false } => {
            remove_file(shared, path).await.map(|_| Outcome::Done)
        }
        Intent::Remove { path, dir: true } => remove_tree(shared, path, None, false)
            .await
            .map(|_| Outcome::Done),
        Intent::Rename {
            from,
            to,
            dir: false,
            source,
        } => {
            // Either name may be one the bucket cannot hold: the old one has no object to
            // copy or delete, the new one gets none (and the old object goes all the same).
            let movable = shared.bucket.can_hold(from) && shared.bucket.can_hold(to);
            // A file whose bytes the bucket already has under the old name is copied there.
            let known = shared.records.get(from).filter(|_| movable);
            if let (Some(rec), Ok(st)) = (known, shared.local.stat_beneath(to)) {
                let now = Identity::of(&st);
                let same = !rec.dir
                    && rec.id.ino == now.ino
                    && rec.id.size == now.size
                    && rec.id.mtime_ns == now.mtime_ns;
                if same && st.is_file() && shared.bucket.copy(from, to).await.is_ok() {
                    shared.records.set(to, Record { id: now, ..rec });
                    shared.stats.copies.fetch_add(1, Ordering::Relaxed);
                }
            }
            // A file that is only in the bucket was renamed: its object moves. Whatever is at
            // the old name locally now came after the rename (this intent runs before any
            // upload of it), so the object there is still the renamed file's.
            let bucket_only = match source {
                Some(Source::Bucket { .. }) => holds_bucket_only(shared, from),
                Some(Source::Local { .. }) => false,
                // An older journal: a file absent at both names was bucket-only.
                None => !exists_locally(shared, from) && !exists_locally(shared, to),
            };
            if movable && bucket_only {
                move_object(shared, from, to).await?;
            }
            remove_file(shared, from).await?;
            Ok(Outcome::Touch(vec![to.clone()]))
        }
        Intent::Rename {
            from,
            to,
            dir: true,
            source,
        } => {
            // Without a journal that says what moved, or an index that knows the bucket-only
            // files (an offline start, its listing not loaded yet), the local disk decides.
            let guess = source.is_none() || awaiting(shared);
            remove_tree(shared, from, Some(to), guess).await?;
            let mut paths = vec![to.clone()];
            touch_below(shared, to, &mut paths)?;
            Ok(Outcome::Touch(paths))
        }
        Intent::Exchange {
            a, b, a_dir, b_dir, ..
        } => exchange(shared, seq, (a, *a_dir), (b, *b_dir)).await,
    }
}

/// Adds every local path below the directory `dir` to `paths` (nothing if it is gone).
fn touch_below(shared: &Shared, dir: &Path, paths: &mut Vec<PathBuf>) -> Result<(), SyncError> {
    match shared.local.walk_from(dir, shared.skip.as_deref()) {
        Ok(entries) => paths.extend(entries.into_iter().map(|(p, _)| p)),
        // (gone, or no directory now: an exchange with a file)
        Err(e) if is_gone(&e) => {}
        Err(e) => return Err(local_err(dir)(e)),
    }
    Ok(())
}

/// `RENAME_EXCHANGE` of `a` and `b`. What is local under either is uploaded afresh; what the
/// bucket holds there and is no longer local is deleted; the objects of bucket-only files
/// below them swap sides. A swap cannot be done in place (and a replay from a listing taken
/// half way could not tell which side an object belongs to), so it is three moves, each like
/// a directory rename: `a`'s bucket-only objects to a stage ([`crate::engine::journal::exchange_stage`]),
/// `b`'s to `a`, the stage's to `b`. The journal records which move is under way
/// ([`crate::engine::journal::Journal::advance`], durably, before it starts): a retry, or the replay
/// after a crash (`cli/mount.rs` gives the index the same moves), goes on with that move; each move
/// copies before it deletes, so it can be redone.
async fn exchange(
    shared: &Shared,
    seq: u64,
    (a, a_dir): (&Path, bool),
    (b, b_dir): (&Path, bool),
) -> Result<Outcome, SyncError> {
    let stage = crate::engine::journal::exchange_stage(seq, Path::new(""));
    let moves = [(a, stage.as_path()), (b, a), (stage.as_path(), b)];
    let resumed = shared.journal.step(seq);
    for step in resumed.max(1)..=3u8 {
        if step != resumed {
            shared
                .journal
                .advance(seq, step)
                .map_err(SyncError::Journal)?;
        }
        let (from, to) = moves[usize::from(step - 1)];
        if !shared.bucket.can_hold_below(from) {
            continue;
        }
        let listing = shared.bucket.list(Some(from)).await?;
        shared.bucket.health().success();
        // Where this move's objects end up once the exchange is done.
        let last = if step == 2 { a } else { b };
        for obj in listing {
            // (the stage is etlfs' own: nothing local ever stands for it)
            let there = from != stage && still_there(shared, &obj.rel, obj.is_dir_marker);
            let rel = obj.rel.strip_prefix(from).expect("listed below");
            // Before an offline start's listing is loaded the index knows no bucket-only
            // file, and the local disk decides, as for a rename (see `remove_tree`).
            let bucket_only = holds_bucket_only(shared, &obj.rel)
                || (awaiting(shared) && !there && !exists_locally(shared, &last.join(rel)));
            if !obj.is_dir_marker && bucket_only {
                let dest = to.join(rel);
                if shared.bucket.can_hold(&dest) {
                    move_object(shared, &obj.rel, &dest).await?;
                }
            }
            if !there {
                delete_object(shared, &obj.rel, obj.is_dir_marker).await?;
            }
        }
    }
    // A file that was at either name: its object goes unless a file is there now.
    for (path, dir) in [(a, a_dir), (b, b_dir)] {
        if !dir {
            remove_file(shared, path).await?;
        }
    }
    let mut paths = vec![a.to_path_buf(), b.to_path_buf()];
    touch_below(shared, a, &mut paths)?;
    touch_below(shared, b, &mut paths)?;
    Ok(Outcome::Touch(paths))
}

/// Start-up reconcile: which local files and directories the bucket lacks or holds stale.
///
/// With 100,000 files this is a start's peak of memory, so the listing is kept only as far as
/// the comparison needs (path, size, marker) and the local walk is looked at entry by entry,
/// never collected.
async fn reconcile(shared: &Shared) -> Result<Outcome, SyncError> {
    let mut in_bucket: HashMap<PathBuf, (u64, bool)> = HashMap::new();
    shared
        .bucket
        .list_each(None, |o| {
            in_bucket.insert(o.rel, (o.size, o.is_dir_marker));
        })
        .await?;
    shared.bucket.health().success();
    let mut touch = Vec::new();
    // Files without an upload record that the index vouched for: compared by checksum below.
    let mut unrecorded = Vec::new();
    let mut vouched =
        std::mem::take(&mut *shared.unrecorded.lock().unwrap_or_else(|e| e.into_inner()));
    // Names of files with several links found in the bucket already: looked at again below.
    let mut linked = Vec::new();
    let each = |path: &Path, st: crate::os::local::Stat| {
        if !(st.is_file() || st.is_dir()) {
            return;
        }
        shared.links.note(path, &st);
        let rec = shared.records.get(path);
        let fresh = match (&rec, in_bucket.get(path)) {
            // A directory needs nothing but its marker in the bucket.
            (_, Some((_, true))) if st.is_dir() => {
                if rec.is_none() {
                    let dir = Record {
                        id: Identity::of(&st),
                        sha256: String::new(),
                        dir: true,
                    };
                    shared.records.set(path, dir);
                }
                true
            }
            (Some(r), Some((size, false))) if st.is_file() => {
                !r.dir && r.id == Identity::of(&st) && *size == st.size
            }
            _ => false,
        };
        let candidate = match (&rec, in_bucket.get(path)) {
            (None, Some((size, false))) if st.is_file() && *size == st.size => vouched.remove(path),
            _ => None,
        };
        if let Some(d) = candidate {
            unrecorded.push((path.to_path_buf(), Identity::of(&st), d));
        } else if !fresh {
            // Forget a record the bucket no longer backs, so the sync uploads again.
            shared.records.remove(path);
            touch.push(path.to_path_buf());
        } else if st.is_file() && st.nlink > 1 {
            linked.push(path.to_path_buf());
        }
    };
    shared
        .local
        .walk_each(Path::new(""), shared.skip.as_deref(), each)
        .map_err(local_err(Path::new(".")))?;
    // Written by `etlfs backup` or `restore`: the same bytes as the object need no upload.
    let mut adopted = 0;
    for (path, id, departed) in unrecorded {
        let same = match hash_local(&shared.local, &path) {
            Ok(sha) => {
                super::publish::adopt_unrecorded(&shared.records, &path, &id, &sha, &departed)
            }
            Err(_) => false,
        };
        if same {
            adopted += 1;
        } else {
            touch.push(path);
        }
        // Hashing reads whole files: let the mount's other tasks run in between.
        tokio::task::yield_now().await;
    }
    if adopted > 0 {
        debug!(
            adopted,
            "files already in the bucket (same bytes) recorded without an upload"
        );
    }
    // The mount serves while this runs: a file changed through another name before this name
    // was noted above made nothing due here. Its state now tells.
    for path in linked {
        let moved = shared.local.stat_beneath(&path).is_ok_and(|st| {
            !shared
                .records
                .get(&path)
                .is_some_and(|r| r.id == Identity::of(&st))
        });
        if moved {
            touch.push(path.clone());
        }
    }
    // Records of files neither here nor in the bucket (gone while the mount was down).
    for p in shared.records.paths() {
        if !in_bucket.contains_key(p.as_path())
            && shared.local.stat_beneath(&p).is_err_and(|e| is_gone(&e))
        {
            shared.records.remove(&p);
        }
    }
    Ok(Outcome::Touch(touch))
}

/// Hex SHA-256 of the local file at `path`.
fn hash_local(local: &crate::os::local::LocalDir, path: &Path) -> std::io::Result<String> {
    let fd = local.open_beneath(path, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
    crate::os::local::sha256_of(&std::fs::File::from(fd))
}
