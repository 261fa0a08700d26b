//! Lazy restore: bring bucket-only files to the local disk — whole and verified, or not at
//! all — in the order the application needs them, many at once.
//!
//! Every download of a mount goes through one [`queue`]: a fixed number of workers
//! (`--fetch-concurrency`, default [`DEFAULT_CONCURRENCY`]) take the most urgent job first —
//! an application's open, then readahead, then the background prefetch. Many at once because
//! a real bucket takes 10–50 ms per request whatever the size: one at a time, a new node's
//! restore would take minutes where a parallel copy takes seconds. Single flight: one download
//! per path however many wait for it.
//!
//! - **Readahead**: when an application opens a bucket-only file, the other bucket-only files
//!   of its directory are queued behind it, newest first (Kubecost reads whole directories,
//!   newest data first): at most [`READAHEAD_MAX`], each directory once per mount.
//! - **Prefetch** ([`Fetcher::prefetch`]): a new node (or a lost volume) copies every
//!   bucket-only file in the background, directory by directory, newest first. Under
//!   `--max-local-bytes` background downloads stop at the bound ([`LocalBudget`]): they never
//!   evict what the application uses.
//! - **Progress** ([`Fetcher::progress`]): files and bytes still only in the bucket, the rate
//!   of the last seconds and the time that leaves, for `/status` and `/metrics`.
//!
//! Nobody waits on a download while holding anything the application needs: the FUSE layer
//! parks the request that needs the file and answers it when its flight lands. It gives up on a
//! bucket that has delivered nothing for a while ([`Fetcher::idle_for`]).
//!
//! One download ([`download`]) goes to a temporary file in the state directory, is checked
//! against the object's size and SHA-256, and is renamed into place with `RENAME_NOREPLACE`,
//! so a local file that appeared meanwhile always wins. A failed or corrupt download leaves
//! nothing behind; the next open tries again. The first read of a large file waits for the
//! whole download: the checksum can only be verified at the end, and serving bytes before that
//! could show the application data that later turns out corrupt.

mod download;
pub mod queue;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

pub use download::{Placement, download_verified};
pub use queue::{Depth, Flight, Outcome, Priority};

use crate::engine::events::ChangeSink;
use crate::engine::index::{Index, RemoteFile};
use crate::escape::esc;
use crate::os::local::LocalDir;
use crate::os::state::StateDir;
use crate::store::bucket::{Bucket, BucketError};
use queue::Queue;

/// Downloads at once unless `--fetch-concurrency` says otherwise: enough to keep a bucket at
/// 20 ms per request busy with small files.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// Why a file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{} is not in the bucket index", esc(.0))]
    NotInBucket(PathBuf),
    #[error("downloading {}: {source}", esc(.path))]
    Bucket {
        path: PathBuf,
        #[source]
        source: Box<BucketError>,
    },
    #[error("{}: downloaded {got} bytes, the bucket listed {want}", esc(.path))]
    WrongSize { path: PathBuf, got: u64, want: u64 },
    // `want` comes from the object's metadata.
    #[error("{}: checksum mismatch (object is corrupt): expected {}, got {got}", esc(.path), esc(.want))]
    Corrupt {
        path: PathBuf,
        want: String,
        got: String,
    },
    /// The download was dropped before it finished (the mount is stopping).
    #[error("{}: the download was abandoned", esc(.0))]
    Abandoned(PathBuf),
    #[error("{op} for {}: {source}", esc(.path))]
    Local {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Counters for logs, tests and `/metrics`.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
    pub bytes: AtomicU64,
    /// Duration of each successful download, from its start to the file in place.
    pub latency: crate::counters::Latency,
}

/// The bound `--max-local-bytes` puts on background downloads: they start only while what
/// they would add fits, and what they place is counted (and later evictable).
pub trait LocalBudget: Send + Sync + std::fmt::Debug {
    /// Whether `bytes` more would still fit under the bound.
    fn admits(&self, bytes: u64) -> bool;
    /// A background download placed `bytes` at `path`.
    fn placed(&self, path: &Path, bytes: u64);
}

/// What the background prefetch is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefetchState {
    /// Not started (`--no-prefetch`, or nothing was bucket-only at start).
    Off,
    Running,
    /// Every bucket-only file was queued and its download ended.
    Done,
    /// Stopped at the `--max-local-bytes` bound.
    Bounded,
}

impl PrefetchState {
    fn from_u8(v: u8) -> PrefetchState {
        match v {
            1 => PrefetchState::Running,
            2 => PrefetchState::Done,
            3 => PrefetchState::Bounded,
            _ => PrefetchState::Off,
        }
    }
}

/// How far the restore is: what is still only in the bucket, and how fast it comes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Progress {
    pub files_left: u64,
    pub bytes_left: u64,
    /// Downloaded bytes per second over the last [`RATE_WINDOW`].
    pub bytes_per_second: u64,
    /// `bytes_left` at that rate; `None` while nothing comes (or nothing is left to come).
    pub eta_seconds: Option<u64>,
    pub prefetch: PrefetchState,
    pub queue: Depth,
}

/// At most this many files of a directory are read ahead (its newest); the prefetch brings
/// the rest. Keeps the queue small in a directory of very many files.
pub const READAHEAD_MAX: usize = 1024;

/// The prefetch gives memory back to the kernel after this many files.
const TRIM_EVERY: u64 = 2048;

/// How often a download is tried again at the object's new key when the mirror moved it
/// while the download was starting.
const MOVED_RETRIES: usize = 3;

/// The span the download rate is measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The downloader.
pub struct Fetcher {
    bucket: Bucket,
    local: LocalDir,
    state: Arc<StateDir>,
    index: Arc<Index>,
    sink: Arc<dyn ChangeSink>,
    queue: Arc<Queue>,
    workers: usize,
    budget: OnceLock<Arc<dyn LocalBudget>>,
    /// Directories whose files were queued as readahead.
    read_ahead: Mutex<HashSet<PathBuf>>,
    /// Time base of `last_activity_ms`.
    born: Instant,
    /// When the bucket last delivered anything (a chunk of a body, a finished download), in ms
    /// since `born`.
    last_activity_ms: AtomicU64,
    /// `(when, bytes fetched so far)` at each finished download of the last [`RATE_WINDOW`].
    rate: Mutex<VecDeque<(Instant, u64)>>,
    prefetch: AtomicU8,
    /// Held while a download is renamed into place, and by the overlay while it removes or
    /// renames bucket-only names (see [`Fetcher::placing`]).
    placing: Mutex<()>,
    pub stats: FetchStats,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("bucket", &self.bucket)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// `local` must be a descriptor of the served directory opened before the mount. Starts
    /// `concurrency` workers on `rt`.
    pub fn new(
        bucket: Bucket,
        local: LocalDir,
        state: Arc<StateDir>,
        index: Arc<Index>,
        sink: Arc<dyn ChangeSink>,
        concurrency: usize,
        rt: &tokio::runtime::Handle,
    ) -> Arc<Fetcher> {
        let workers = concurrency.max(1);
        let fetcher = Arc::new(Fetcher {
            bucket,
            local,
            state,
            index,
            sink,
            queue: Arc::new(Queue::new(workers)),
            workers,
            budget: OnceLock::new(),
            read_ahead: Mutex::new(HashSet::new()),
            born: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            rate: Mutex::new(VecDeque::new()),
            prefetch: AtomicU8::new(0),
            placing: Mutex::new(()),
            stats: FetchStats::default(),
        });
        for _ in 0..workers {
            rt.spawn(worker(Arc::downgrade(&fetcher), Arc::clone(&fetcher.queue)));
        }
        fetcher
    }

    /// Keeps downloads from being placed while held: the overlay holds it while it decides
    /// that a name is bucket-only and removes or renames it in the index, so a download that
    /// finishes meanwhile either lands first (and the name is local) or finds its file gone
    /// and is dropped — it never brings back a name that was removed or renamed.
    pub fn placing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.placing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bounds background downloads (see [`LocalBudget`]); set once, before any runs.
    pub fn set_budget(&self, budget: Arc<dyn LocalBudget>) {
        let _ = self.budget.set(budget);
    }

    /// The bucket files are fetched from.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// The download of `path` at `priority` (joining one queued or running).
    pub fn request(&self, path: &Path, priority: Priority) -> Flight {
        self.queue.request(path, priority)
    }

    /// Makes `path` local at the urgency of an open: downloads it unless it is local already.
    pub async fn fetch(&self, path: &Path) -> Outcome {
        self.request(path, Priority::Open).await
    }

    /// What an application's open of the bucket-only `path` needs: its download, first in
    /// line; the other bucket-only files of its directory follow as readahead.
    pub fn open(&self, path: &Path) -> Flight {
        let flight = self.request(path, Priority::Open);
        if let Some(dir) = path.parent() {
            let first = self
                .read_ahead
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(dir.to_path_buf());
            if first {
                let mut queued = 0;
                for (p, f) in self.files_in(dir).into_iter().take(READAHEAD_MAX) {
                    if p != path && self.admits(f.size) {
                        self.queue.enqueue(&p, Priority::Readahead);
                        queued += 1;
                    }
                }
                if queued > 0 {
                    tracing::debug!(dir = %esc(dir), files = queued, "readahead queued");
                }
            }
        }
        flight
    }

    /// The bucket-only files directly in `dir`, newest first.
    fn files_in(&self, dir: &Path) -> Vec<(PathBuf, RemoteFile)> {
        let mut files: Vec<(PathBuf, RemoteFile)> = self
            .index
            .children(dir)
            .into_iter()
            .filter(|(_, is_dir)| !is_dir)
            .filter_map(|(name, _)| {
                let p = dir.join(name);
                self.index.file(&p).map(|f| (p, f))
            })
            .collect();
        files.sort_by(|a, b| b.1.mtime.cmp(&a.1.mtime).then_with(|| a.0.cmp(&b.0)));
        files
    }

    fn admits(&self, bytes: u64) -> bool {
        self.budget.get().is_none_or(|b| b.admits(bytes))
    }

    /// The background copy of every bucket-only file: directory by directory, newest first,
    /// a window of twice the workers queued at a time (so opens and readahead overtake it, and
    /// the queue stays small however many files there are). Ends when every file was tried, or
    /// at the `--max-local-bytes` bound.
    pub async fn prefetch(self: Arc<Self>) {
        self.prefetch
            .store(PrefetchState::Running as u8, Ordering::Relaxed);
        tracing::info!(
            files = self.index.len(),
            bytes = self.index.bytes(),
            workers = self.workers,
            "prefetching bucket-only files in the background"
        );
        let window = self.workers * 2;
        let mut inflight = FuturesUnordered::new();
        let mut pending = 0u64; // bytes queued and not yet ended
        let mut dirs = vec![PathBuf::new()];
        dirs.extend(self.index.dirs());
        let (mut failed, mut bounded) = (0u64, false);
        let mut done = 0u64;
        let index = Arc::clone(&self.index);
        let mut ended = |(res, size): (Outcome, u64), pending: &mut u64| {
            *pending -= size;
            failed += u64::from(res.is_err());
            done += 1;
            if done % TRIM_EVERY == 0 {
                // The index empties while the upload records fill: give back what the one
                // freed, so the two never add up (a new node of 100,000 files).
                index.shrink();
                crate::os::sys::trim_heap();
            }
        };
        'dirs: for dir in dirs {
            for (path, f) in self.files_in(&dir) {
                if !self.admits(pending + f.size) {
                    bounded = true;
                    break 'dirs;
                }
                while inflight.len() >= window {
                    if let Some(done) = inflight.next().await {
                        ended(done, &mut pending);
                    }
                }
                let flight = self.request(&path, Priority::Prefetch);
                pending += f.size;
                inflight.push(flight.map(move |res| (res, f.size)));
            }
        }
        while let Some(done) = inflight.next().await {
            ended(done, &mut pending);
        }
        let state = if bounded {
            PrefetchState::Bounded
        } else {
            PrefetchState::Done
        };
        self.prefetch.store(state as u8, Ordering::Relaxed);
        tracing::info!(
            failed,
            left = self.index.len(),
            stopped_at_bound = bounded,
            "prefetch finished"
        );
    }

    /// How long the bucket has delivered nothing (no byte of any download, no download
    /// finished), counting from `since` at the latest: a waiter gives up on a stalled bucket
    /// by it, not on a slow one.
    pub fn idle_for(&self, since: Instant) -> Duration {
        let last = self.born + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(last.max(since))
    }

    fn activity(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The restore's progress now.
    pub fn progress(&self) -> Progress {
        let (files_left, bytes_left) = (self.index.len() as u64, self.index.bytes());
        let bytes_per_second = {
            let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
            prune(&mut rate);
            match (rate.front(), rate.back()) {
                (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                    // Over the window (or since the first download in it, if later).
                    let span = Instant::now()
                        .saturating_duration_since(t0)
                        .max(Duration::from_secs(1));
                    ((b1 - b0) as f64 / span.as_secs_f64()) as u64
                }
                _ => 0,
            }
        };
        Progress {
            files_left,
            bytes_left,
            bytes_per_second,
            eta_seconds: (bytes_per_second > 0 && files_left > 0)
                .then(|| bytes_left.div_ceil(bytes_per_second)),
            prefetch: PrefetchState::from_u8(self.prefetch.load(Ordering::Relaxed)),
            queue: self.queue.depth(),
        }
    }

    async fn download(&self, path: &Path) -> Result<Option<u64>, FetchError> {
        let Some(remote) = self.index.file(path) else {
            // Made local, removed or renamed since it was queued: nothing to do (a waiting
            // request looks again, under the file's new name if it has one).
            return if self.local.stat_beneath(path).is_ok() {
                Ok(None)
            } else {
                tracing::debug!(path = %esc(path), "queued download no longer in the index");
                Err(FetchError::NotInBucket(path.to_owned()))
            };
        };
        if self.local.stat_beneath(path).is_ok() {
            self.index.remove(path);
            return Ok(None);
        }
        let started = Instant::now();
        let mut remote = remote;
        let mut res = self.download_to_place(path, &remote).await;
        // The mirror moved the object meanwhile (it carried out the rename, or an exchange
        // moves it twice): the index names where it is now.
        for _ in 0..MOVED_RETRIES {
            let Err(FetchError::Bucket { source, .. }) = &res else {
                break;
            };
            let moved = match (source.as_ref(), self.index.file(path)) {
                (BucketError::NotFound { .. }, Some(now)) if now.source != remote.source => now,
                _ => break,
            };
            remote = moved;
            res = self.download_to_place(path, &remote).await;
        }
        match &res {
            Ok(bytes) => {
                self.stats.latency.record(started.elapsed());
                self.bucket.health().success();
                self.stats.fetches.fetch_add(1, Ordering::Relaxed);
                let total = self.stats.bytes.fetch_add(*bytes, Ordering::Relaxed) + bytes;
                self.activity();
                let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
                rate.push_back((Instant::now(), total));
                prune(&mut rate);
                tracing::debug!(path = %esc(path), bytes, "fetched from the bucket");
            }
            Err(e) => {
                if let FetchError::Bucket { source, .. } = e {
                    self.bucket.failed(source);
                }
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "fetch failed; the next open tries again");
            }
        }
        res.map(Some)
    }

    async fn download_to_place(&self, path: &Path, remote: &RemoteFile) -> Result<u64, FetchError> {
        // The same file is still there, bucket-only (its object may have moved meanwhile).
        let stamp = self.index.stamp(path);
        let still_wanted = || stamp.is_some() && self.index.stamp(path) == stamp;
        let placed = download::download_verified_with(
            &self.bucket,
            &self.local,
            &self.state,
            path,
            remote,
            Placement::default(),
            &|_| self.activity(),
            Some(download::Gate {
                lock: &self.placing,
                still_wanted: &still_wanted,
                placed: &|st: &crate::os::local::Stat, sha: &str| {
                    self.index.remove(path);
                    // The bucket holds exactly this version under this name (unless it was
                    // fetched from the old key of a rename the mirror has not carried out
                    // yet): no need to upload it again. The record takes over what the index
                    // knew of the object (the manifest writer leaves that to it).
                    if remote.source == path {
                        self.sink.fetched(path, st, sha);
                    }
                },
            }),
        )
        .await?;
        if placed.is_none() && self.local.stat_beneath(path).is_ok() {
            // A local file won: it is the application's newest data.
            self.index.remove(path);
        }
        drop(placed);
        Ok(remote.size)
    }
}

/// Keeps the rate samples of the last [`RATE_WINDOW`] (at most a few thousand).
fn prune(rate: &mut VecDeque<(Instant, u64)>) {
    let now = Instant::now();
    while rate.len() > 4096
        || rate
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
    {
        rate.pop_front();
    }
}

/// One worker: takes the most urgent job, downloads, tells the waiters, again. Holds the
/// fetcher only while it works, so a dropped fetcher ends its workers.
async fn worker(fetcher: Weak<Fetcher>, queue: Arc<Queue>) {
    loop {
        let (path, priority) = queue.next().await;
        let Some(f) = fetcher.upgrade() else {
            queue.finish(
                &path,
                priority,
                Err(Arc::new(FetchError::Abandoned(path.clone()))),
            );
            return;
        };
        let res = f.download(&path).await;
        if let (Ok(Some(bytes)), true, Some(b)) = (&res, priority != Priority::Open, f.budget.get())
        {
            b.placed(&path, *bytes);
        }
        drop(f);
        queue.finish(&path, priority, res.map(drop).map_err(Arc::new));
    }
}
