//! Write-back: every change made through the mount reaches the bucket on its own.
//!
//! The overlay reports what happens (a writer opened or closed a file, a path changed, a
//! removal or rename is about to happen) through [`ChangeSink`]; this module turns that into
//! bucket operations on a tokio runtime, so a FUSE reply never waits for the network.
//!
//! # What gets uploaded, and when
//!
//! A path becomes *due* when its last writer closes it (or on `fsync`, or a truncate, chmod or
//! utimens without an open handle). New activity on the path restarts its `--upload-delay`,
//! so the same file rewritten many times a second is uploaded once. When a path is due, a sync
//! task looks at the local file *now* and makes the bucket match it:
//!
//! - a file still open for writing is skipped (its last close makes it due again), so the
//!   bucket never sees Kubecost's intermediate state between `ftruncate(0)` and the `write`;
//!   after an `fsync` it is uploaded while open, but only if it is still in the state the
//!   fsync flushed (the sink notes its identity when the fsync returns);
//! - the upload is a consistent snapshot: the file's identity (inode, size, mtime, ctime) is
//!   taken before reading and checked again after the last byte is read and before the object
//!   is committed (single PUT, or multipart completion); if it moved, nothing is committed and
//!   the path is retried;
//! - a successful upload is recorded (`records.rs`) with that identity and the checksum.
//!
//! A file with several hard links is one object per name, each uploaded like any file: a
//! change reported for the inode makes every name of it due, those the overlay knows and those
//! `links.rs` noted (links made before the mount).
//!
//! # Removals and renames
//!
//! Deleting objects is only ever done on behalf of an [`Intent`] the application caused, and
//! the intent is in the durable journal before the local operation runs. An intent is carried
//! out alone (no sync task runs at the same time) and only removes objects whose path is
//! absent locally at that moment; a path that was re-created meanwhile is uploaded instead.
//! Absent as what the object stands for: a file's object goes unless a file is there (a
//! directory made at its path does not keep it), a marker unless a directory is. A renamed
//! file whose record still matches is copied server-side rather than uploaded again.
//!
//! Intents are carried out in order, each before any upload of a change made after it: so
//! when a rename's intent runs, the objects at its old names are still what those names held
//! when it happened. The object of a file that was only in the bucket (the index serves it
//! from there, see `index.rs`) is copied to its new name then, even if something was made
//! at the old name since (that is uploaded afterwards, over the old object). An exchange
//! moves such objects both ways: through a stage ([`exchange_stage`]), in three moves whose
//! progress the journal records.
//!
//! A name the bucket can never hold (not UTF-8, a control character: see `Bucket::key`) has
//! no object, so its side of an intent needs nothing: removing it is a no-op, renaming it to
//! an ordinary name uploads what arrives there (everything below, for a directory), and
//! renaming an ordinary name to it deletes the old objects, as a removal would (the overlay
//! fetches bucket-only files first, so their bytes are local before their object goes).
//!
//! # Failures
//!
//! Every failed operation is logged, counted and retried with exponential backoff (100 ms up to
//! 30 s), forever: a bucket outage never fails an application write; the backlog drains when the
//! bucket returns. Paths that can never be keys (not UTF-8, `.etlfs` at the top) are reported
//! once and skipped.
//!
//! # Start and stop
//!
//! At start the journal is replayed and the whole directory is reconciled against the records
//! and a bucket listing: whatever the bucket lacks or holds stale is uploaded (this is also the
//! retroactive backup of data that existed before etlfs was first mounted). Objects without a
//! local file are never deleted by the reconcile. [`Mirror::drain`] uploads everything pending
//! at once, up to a deadline; what is left stays for the next start.
//!
//! # The manifest
//!
//! `publish.rs` keeps the bucket's manifest (a cache of every file's metadata, see
//! `engine/manifest.rs`) describing what the records and the index know, so the next mount over an empty
//! directory needs no HEAD per object: at most once a minute while things change, and at the
//! end of a drain. Uploads record the e_tag their put returned for it.

mod links;
mod publish;
mod records;
mod worker;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::engine::events::{ChangeSink, Intent, WriteCount};
use crate::engine::journal::Journal;
use crate::os::local::LocalDir;
use crate::os::state::StateDir;
use crate::store::bucket::Bucket;
pub use records::ObjectVersion;
pub use records::{Identity, Record, Records};
pub use worker::SyncError;

/// Settings of the mirror.
#[derive(Debug, Clone, Copy)]
pub struct MirrorOptions {
    /// Quiet time after the last change before a path is uploaded.
    pub upload_delay: Duration,
    /// Longest a change waits for its upload however often the file changes: a file rewritten
    /// more often than `upload_delay` would otherwise never be uploaded.
    pub upload_max_delay: Duration,
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// No file was local at start (a new node): nothing can have changed while etlfs was down,
    /// so with no upload records and no journal to replay either, the start-up reconcile
    /// (a second listing of the whole bucket, and a walk) is skipped.
    pub nothing_local: bool,
}

/// Counters for logs, tests, `/metrics` and `/status` (read there, written only here).
#[derive(Debug, Default)]
pub struct Stats {
    pub uploads: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub upload_failures: AtomicU64,
    pub deletes: AtomicU64,
    pub delete_failures: AtomicU64,
    pub copies: AtomicU64,
    pub skipped_paths: AtomicU64,
    /// Paths due or in flight, plus intents not yet carried out.
    pub pending: AtomicU64,
    /// 1 once the start-up reconcile has finished.
    pub reconciled: AtomicU64,
    /// Size of the pending files, as of their last change.
    pub pending_bytes: AtomicU64,
    /// Unix ms of the oldest change not yet in the bucket; 0 when nothing is pending.
    pub oldest_pending_ms: AtomicU64,
    /// Failed operations scheduled again after a backoff.
    pub retries: AtomicU64,
    /// Unix ms of the last successful upload; 0 = none since start.
    pub last_upload_ms: AtomicU64,
    /// Duration of each successful upload, from opening the file to the committed object.
    pub upload_latency: crate::counters::Latency,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

pub(crate) enum Msg {
    /// `urgent`: an fsync of the file in this state (see [`ChangeSink::changed`]).
    Touch {
        path: PathBuf,
        urgent: Option<Identity>,
    },
    Intent {
        seq: u64,
        intent: Intent,
    },
    Drain {
        reply: oneshot::Sender<()>,
    },
}

/// State shared by the sink (FUSE threads) and the worker tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub bucket: Bucket,
    pub local: LocalDir,
    pub records: Records,
    pub journal: Journal,
    /// Removals kept across the next start, against a killed etlfs' late requests.
    pub tombstones: crate::engine::tombstones::Tombstones,
    /// Open write handles per local inode, as the overlay counts them.
    pub writers: Arc<WriteCount>,
    /// Creating or truncating opens in flight per path ([`ChangeSink::opening_started`]).
    pub creating: Mutex<HashMap<PathBuf, u32>>,
    /// The state directory, relative to the served one, when it lives inside it.
    pub skip: Option<PathBuf>,
    pub stats: Stats,
    pub opts: MirrorOptions,
    /// Bucket-only files, whose objects move when they are renamed.
    pub index: Option<Arc<crate::engine::index::Index>>,
    /// Names of files with several hard links.
    pub links: links::Links,
    /// Intents carried out since start, kept while [`Mirror::record_done_intents`] asks for
    /// them (an offline start, until the listing it loads late is reconciled with them). Its
    /// lock also makes marking an intent done and keeping it one step ([`Shared::intent_done`]).
    pub done_intents: Mutex<Option<Vec<crate::engine::journal::Pending>>>,
    /// Files the index knew (object version and checksum) that are local and have no upload
    /// record: written by `etlfs backup` or `etlfs restore`. Filled once, by
    /// [`publish::Publisher::new`] before the worker starts; the start's reconcile takes them
    /// and adopts each whose bytes are the object's instead of uploading it again.
    pub unrecorded: Mutex<HashMap<PathBuf, crate::engine::index::Departed>>,
}

impl Shared {
    /// Marks intent `seq` done in the journal and, while [`Mirror::record_done_intents`] asks
    /// for it, keeps it, as one step under the lock of the kept intents: a late listing takes
    /// the kept ones and the journal's pending ones under the same lock
    /// ([`Mirror::take_intents_since_recording`]), so it finds each intent in exactly one of
    /// the two. Were the steps apart, an intent marked done before the listing read the
    /// journal but kept only after it took the kept list would be in neither, and the listing
    /// merged without it (a removed file shown again, its download failing).
    pub fn intent_done(&self, seq: u64, intent: Option<&Intent>) -> io::Result<()> {
        let mut kept = self.done_intents.lock().unwrap_or_else(|e| e.into_inner());
        // (It leaves the journal's pending intents even if its line is not written: kept
        // all the same, it is still in one of the two.)
        let marked = self.journal.done(seq);
        if let (Some(kept), Some(intent)) = (kept.as_mut(), intent) {
            kept.push(crate::engine::journal::Pending {
                seq,
                intent: intent.clone(),
                step: 0,
            });
        }
        marked
    }

    /// Whether the file (local inode `ino`, at `path`) is open for writing, or being created
    /// or truncated by an open (through any name of it): its content is not a state anybody
    /// closed.
    pub fn is_busy(&self, ino: u64, path: &Path) -> bool {
        if self.writers.is_open(ino) {
            return true;
        }
        let creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        !creating.is_empty()
            && (creating.contains_key(path)
                || self
                    .links
                    .with_names(ino, &[])
                    .iter()
                    .any(|p| creating.contains_key(p)))
    }
}

/// What a start knows of the upload records before it loads them: which files' records
/// already know the object version they left ([`Records::scan`]). The index's entry for such a
/// file, found local, has nothing to add to its record and is dropped at once; only the
/// others are kept for the records to take over. Kept until the records load (after the walk
/// of the local directory), the entries of 100,000 local files would be a second table as
/// big as the index, held beside the records: what a restart's memory peak was made of.
#[derive(Debug)]
pub struct Takeover {
    state: Arc<StateDir>,
    scan: records::Scan,
}

impl Takeover {
    /// Scans the upload records in the state directory.
    pub fn scan(state: Arc<StateDir>) -> Takeover {
        let scan = Records::scan(&state);
        Takeover { state, scan }
    }

    /// Whether the record of the file at `path` knows the object version it left.
    pub fn described(&self, path: &Path) -> bool {
        self.scan.described.contains(&records::path_hash(path))
    }
}

/// The write-back engine.
#[derive(Debug)]
pub struct Mirror {
    shared: Arc<Shared>,
    manifest: Arc<publish::Publisher>,
    tx: mpsc::UnboundedSender<Msg>,
    /// Intents written to the journal whose local operation has not finished yet.
    staged: Mutex<HashMap<u64, Intent>>,
}

impl Mirror {
    /// Opens the journal and the records in the state directory `takeover` scanned and
    /// starts the worker on `rt`. `local` must be a descriptor of the served directory opened
    /// before the mount.
    pub fn start(
        bucket: Bucket,
        local: LocalDir,
        takeover: Takeover,
        skip: Option<PathBuf>,
        opts: MirrorOptions,
        index: Option<Arc<crate::engine::index::Index>>,
        rt: &tokio::runtime::Handle,
    ) -> io::Result<Arc<Mirror>> {
        let Takeover { state, scan } = takeover;
        let records_in_file = scan.records;
        drop(scan);
        let (journal, replay) = Journal::open(&state)?;
        let tombstones = crate::engine::tombstones::Tombstones::open(Arc::clone(&state));
        // Made for as many records as the file has, at once.
        let records = Records::load_expecting(state, records_in_file)?;
        if !replay.is_empty() {
            tracing::info!(
                intents = replay.len(),
                "replaying removals and renames from the journal"
            );
        }
        let shared = Arc::new(Shared {
            bucket,
            local,
            records,
            journal,
            tombstones,
            writers: Arc::default(),
            creating: Mutex::new(HashMap::new()),
            skip,
            stats: Stats::default(),
            opts,
            index,
            links: links::Links::default(),
            done_intents: Mutex::new(None),
            unrecorded: Mutex::new(HashMap::new()),
        });
        // The publisher hands the start's reconcile the files without an upload record
        // (`unrecorded`): it must have done so before the worker, whose first job is that
        // reconcile, can run. The other way round, a reconcile that got there first would find
        // none and upload every file a backup or restore had put in the bucket already.
        let manifest = Arc::new(publish::Publisher::new(Arc::clone(&shared)));
        let (tx, rx) = mpsc::unbounded_channel();
        rt.spawn(worker::Worker::new(Arc::clone(&shared), rx, replay).run());
        rt.spawn(Arc::clone(&manifest).run());
        Ok(Arc::new(Mirror {
            shared,
            manifest,
            tx,
            staged: Mutex::new(HashMap::new()),
        }))
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// From now on, keeps the intents carried out in the bucket (forgetting any kept so far),
    /// until [`Mirror::take_done_intents`]: a listing taken before one of them ran still shows
    /// its old names.
    pub fn record_done_intents(&self) {
        *self
            .shared
            .done_intents
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// What a listing taken since [`Mirror::record_done_intents`] may lack, in order: the
    /// intents carried out since then, and those still pending in the journal. Stops keeping
    /// the former. Both are read under the lock [`Shared::intent_done`] holds, so each intent
    /// is in exactly one of them: in neither, a late listing is merged without it; in both,
    /// an exchange is applied twice, which swaps it back.
    pub fn take_intents_since_recording(&self) -> Vec<crate::engine::journal::Pending> {
        let mut kept = self
            .shared
            .done_intents
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut intents = kept.take().unwrap_or_default();
        intents.extend(self.shared.journal.pending_intents());
        intents
    }

    /// Removals and renames journaled but not yet carried out in the bucket.
    pub fn journal_pending(&self) -> usize {
        self.shared.journal.pending()
    }

    /// Size of the journal file in bytes.
    pub fn journal_size(&self) -> u64 {
        self.shared.journal.size()
    }

    /// Uploads everything pending now and waits until nothing is left or `timeout` passes,
    /// then writes the manifest if there is time left. Returns whether everything was drained.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let (reply, done) = oneshot::channel();
        if self.tx.send(Msg::Drain { reply }).is_err() {
            return false;
        }
        let drained = matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(())));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(left, self.manifest.write(true))
            .await
            .is_err()
        {
            tracing::info!(
                "no time left to write the manifest; the next mount reads metadata per object where it must"
            );
        }
        if let Err(e) = self.shared.records.save() {
            tracing::warn!(error = %e, "could not save the upload records");
        }
        drained
    }

    fn send(&self, msg: Msg) {
        // The worker only stops when the mirror is dropped; a send error means shutdown.
        let _ = self.tx.send(msg);
    }
}

impl ChangeSink for Mirror {
    fn opening_started(&self, path: &Path) {
        *self
            .shared
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_owned())
            .or_insert(0) += 1;
    }

    fn opening_done(&self, path: &Path) {
        let mut creating = self
            .shared
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = creating.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                creating.remove(path);
            }
        }
    }

    fn write_count(&self) -> Arc<WriteCount> {
        Arc::clone(&self.shared.writers)
    }

    fn writer_closed(&self, ino: u64, paths: &[PathBuf]) {
        let last = !self.shared.writers.is_open(ino);
        // The names the overlay does not know are due once the file is closed for good.
        let paths = if last {
            self.shared.links.with_names(ino, paths)
        } else {
            paths.to_vec()
        };
        for path in paths {
            self.send(Msg::Touch { path, urgent: None });
        }
    }

    fn changed(&self, ino: u64, paths: &[PathBuf], urgent: bool) {
        let paths = self.shared.links.with_names(ino, paths);
        // An fsync vouches for the state it flushed, not for what is written after it while
        // the file stays open: note which state that is, now (the application waits for this
        // reply before it writes on), so that only it is published. (A name that no longer
        // leads to the inode vouches for nothing.)
        let urgent = urgent
            .then(|| {
                paths.iter().find_map(|p| {
                    let st = self.shared.local.stat_beneath(p).ok()?;
                    (st.is_file() && st.ino == ino).then(|| Identity::of(&st))
                })
            })
            .flatten();
        for path in paths {
            self.send(Msg::Touch { path, urgent });
        }
    }

    fn intent(&self, intent: Intent) -> io::Result<u64> {
        let seq = self.shared.journal.append(intent.clone())?;
        self.staged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, intent);
        Ok(seq)
    }

    fn finish(&self, token: u64, ok: bool) {
        let Some(intent) = self
            .staged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token)
        else {
            return;
        };
        if ok {
            self.send(Msg::Intent { seq: token, intent });
        } else if let Err(e) = self.shared.journal.done(token) {
            tracing::warn!(error = %e, "could not cancel a journal intent; it is replayed harmlessly at next start");
        }
    }

    fn fetched(&self, path: &Path, st: &crate::os::local::Stat, sha256: &str) {
        let rec = Record {
            id: Identity::of(st),
            sha256: sha256.to_owned(),
            dir: false,
        };
        self.shared.records.set(path, rec);
        // The object version the index knew goes on with the record, for the manifest.
        if let Some(departed) = self
            .shared
            .index
            .as_ref()
            .and_then(|i| i.take_departed(path))
        {
            publish::adopt(&self.shared.records, path, departed);
        }
    }

    fn in_bucket(&self, path: &Path, st: &crate::os::local::Stat) -> Option<String> {
        let rec = self.shared.records.get(path)?;
        (!rec.dir && rec.id == Identity::of(st) && !self.shared.is_busy(st.ino, path))
            .then_some(rec.sha256)
    }
}

#[cfg(test)]
mod tests;
