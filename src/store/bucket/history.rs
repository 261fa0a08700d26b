//! History: the versions the mirror would otherwise destroy, kept in the bucket itself.
//!
//! A mirror copies corruption faithfully: a truncated or rewritten file is uploaded within
//! seconds. So before an object is replaced (an upload over it, a copy onto it) or removed (a
//! delete, the source of a rename), its current version is kept with one **server-side copy**
//! (no download) to
//!
//! ```text
//! <prefix>/.etlfs/history/<path>/<from_ms>-<until_ms>.<r|e|d>
//! ```
//!
//! - `from_ms`: the replaced object's last-modified (when the bucket got that version), Unix
//!   milliseconds on the bucket's clock (whole seconds on most backends);
//! - `until_ms`: when it was replaced or removed, Unix milliseconds on this machine's clock;
//! - `r`: replaced, `e`: replaced by an empty (0-byte) file, `d`: deleted or renamed away.
//!
//! The copy keeps the object's user metadata (`etlfs_mtime`, `etlfs_mode`, `etlfs_sha256`,
//! owner) on S3, GCS and Azure, so a kept version restores with its mode and mtime. A
//! FILESYSTEM bucket keeps metadata in sidecars; a kept version's sidecar is copied to
//! `<prefix>/.etlfs/meta/.etlfs/history/<path>/<version>` (the sidecar rule applied to the
//! history key). The whole layout is under the reserved `.etlfs/`, so it never shows as user
//! files, and it is plain objects: `aws s3 cp` of a version back to `<prefix>/<path>` restores
//! one file by hand.
//!
//! **Thinning**: at most one kept version per path per [`Settings::interval`] — a file that
//! Kubecost rewrites every minute costs one extra copy an hour, not sixty. What was last kept
//! for a path is remembered in memory, filled by one listing of the path's history the first
//! time this process replaces it (so a restart does not keep an extra copy). Three cases are
//! kept whatever the interval:
//! - a version replaced by an **empty** file (Kubecost killed between `ftruncate(0)` and its
//!   write leaves one): counted, logged with the path, and listed first by `etlfs history`;
//! - a **deletion** (or rename away): otherwise a point in time after it would show the last
//!   kept version as if the file still existed. A path is removed once, so this costs at most
//!   one copy per removal.
//!
//! **Tripwire**: a corruption storm (a bug that truncates or deletes many files at once) must
//! not lose versions to thinning. When [`Settings::tripwire_files`] destructive changes — a
//! replacement by an empty file, one that shrinks a file to less than half its size, a
//! deletion — are seen within [`Settings::tripwire_window`], a warning is logged, [`Stats`]
//! count the trip and say since when, and every version is kept whatever the interval until a
//! window passes without trips. A shrink is seen when the object is looked at, i.e. whenever
//! its version might be kept: shrinks thinned away before the trip are not counted (deletions
//! and empty replacements always are).
//!
//! **Garbage collection** ([`Bucket::gc_history`]) deletes kept versions whose `until` is older
//! than [`Settings::retention`], at most a bounded number per run. It is crash-safe without any
//! bookkeeping: a version exists only once its server-side copy completed, and is deleted only
//! when past retention, so a kill at any point loses nothing inside the retention. On a
//! FILESYSTEM bucket the version goes first and its sidecar second; a sidecar left by a kill in
//! between is past retention too and goes on the next run.
//!
//! A failure to keep a version fails the write that would have destroyed it (the mirror retries
//! it), except where keeping can never succeed (the history key would be too long): then the
//! write goes on, with a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use tracing::{info, warn};

use super::error::absent;
use super::{Bucket, BucketError, FileMeta, MAX_KEY_LEN, RESERVED, Result};
use crate::escape::esc;

/// The history's directory under the reserved prefix.
pub const HISTORY: &str = "history";
/// Default `--history-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// Default `--history-retention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Deletions per garbage-collection run: bounds the time and requests one run takes; what is
/// left is deleted by the next run.
pub const GC_MAX_DELETES: usize = 1000;
/// How often a mount collects garbage.
pub const GC_EVERY: Duration = Duration::from_secs(600);
/// Paths whose last kept version the thinning remembers before it forgets stale ones.
const THINNING_MEMORY: usize = 100_000;
/// Default `--history-tripwire`: this many destructive changes within the window look like
/// corruption rather than Kubecost's own rewrites and clean-ups.
pub const DEFAULT_TRIPWIRE_FILES: usize = 50;
/// Default `--history-tripwire-window`.
pub const DEFAULT_TRIPWIRE_WINDOW: Duration = Duration::from_secs(300);

/// How history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// At most one kept version per path per this long (empty replacements and deletions are
    /// kept regardless). Zero keeps every version.
    pub interval: Duration,
    /// Kept versions are deleted this long after they were replaced. Zero: history is off.
    pub retention: Duration,
    /// The tripwire goes off at this many destructive changes within `tripwire_window`;
    /// zero turns it off.
    pub tripwire_files: usize,
    /// The tripwire's window; a trip also lasts this long after the last destructive change.
    pub tripwire_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: DEFAULT_INTERVAL,
            retention: DEFAULT_RETENTION,
            tripwire_files: DEFAULT_TRIPWIRE_FILES,
            tripwire_window: DEFAULT_TRIPWIRE_WINDOW,
        }
    }
}

impl Settings {
    pub fn enabled(&self) -> bool {
        !self.retention.is_zero()
    }
}

/// What history did, for /metrics. Shared by every clone of a bucket.
#[derive(Debug, Default)]
pub struct Stats {
    pub versions_kept: AtomicU64,
    pub bytes_kept: AtomicU64,
    pub gc_deletions: AtomicU64,
    pub empty_replacements: AtomicU64,
    /// Times the tripwire went off.
    pub tripwire_trips: AtomicU64,
    /// Unix ms of the current trip's start, 0 when not tripped.
    pub tripped_since_ms: AtomicU64,
    /// Unix ms until which the current trip lasts.
    pub tripped_until_ms: AtomicU64,
}

impl Stats {
    /// Since when the tripwire says many files are being destroyed, if it does now.
    pub fn tripped_since(&self) -> Option<SystemTime> {
        let until = self.tripped_until_ms.load(Ordering::Relaxed);
        let since = self.tripped_since_ms.load(Ordering::Relaxed);
        (since != 0 && ms(SystemTime::now()) < until).then(|| from_ms(since))
    }
}

/// Why a version was kept: the last letter of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Replaced by an empty file (`e`): the likely victim of a writer killed mid-rewrite.
    ReplacedByEmpty,
    /// Replaced by another version (`r`).
    Replaced,
    /// Deleted or renamed away (`d`).
    Deleted,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Replaced => 'r',
            Kind::ReplacedByEmpty => 'e',
            Kind::Deleted => 'd',
        }
    }

    fn of(letter: &str) -> Option<Kind> {
        match letter {
            "r" => Some(Kind::Replaced),
            "e" => Some(Kind::ReplacedByEmpty),
            "d" => Some(Kind::Deleted),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Replaced => "replaced",
            Kind::ReplacedByEmpty => "replaced by an empty file",
            Kind::Deleted => "deleted",
        }
    }
}

/// What is about to happen to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An upload or copy replaces it; the new size when known.
    Replace { new_size: Option<u64> },
    /// It is deleted (or renamed away).
    Delete,
}

/// One kept version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptVersion {
    /// The file's path relative to the served directory.
    pub rel: PathBuf,
    /// When the bucket got this version (its last-modified then).
    pub from: SystemTime,
    /// When it was replaced or removed.
    pub until: SystemTime,
    pub kind: Kind,
    pub size: u64,
    /// Its version segment, `<from_ms>-<until_ms>.<r|e|d>`.
    pub name: String,
}

impl KeptVersion {
    /// Where its bytes are, as a `source` that [`Bucket::get_stream_source`] reads:
    /// `.etlfs/history/<path>/<name>` (a user path never starts with `.etlfs/`).
    pub fn source(&self) -> PathBuf {
        Path::new(RESERVED)
            .join(HISTORY)
            .join(&self.rel)
            .join(&self.name)
    }
}

/// Per-bucket history state (shared by every clone).
#[derive(Debug)]
pub struct History {
    settings: Settings,
    /// Path → `until` of its newest kept version, as far as this process knows.
    last_kept: Mutex<HashMap<PathBuf, SystemTime>>,
    /// Times of the recent destructive changes (for the tripwire), oldest first.
    destructive: Mutex<std::collections::VecDeque<SystemTime>>,
}

impl History {
    pub fn new(settings: Settings) -> History {
        History {
            settings,
            last_kept: Mutex::default(),
            destructive: Mutex::default(),
        }
    }

    /// Records a destructive change at `now`; true if that sets the tripwire off (again).
    fn note_destructive(&self, now: SystemTime, stats: &Stats) -> bool {
        let (files, window) = (self.settings.tripwire_files, self.settings.tripwire_window);
        if files == 0 {
            return false;
        }
        let mut q = self.destructive.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(now);
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t).unwrap_or_default() > window)
        {
            q.pop_front();
        }
        if q.len() < files {
            return false;
        }
        let was = stats.tripped_since().is_some();
        stats
            .tripped_until_ms
            .store(ms(now + window), Ordering::Relaxed);
        if !was {
            stats.tripped_since_ms.store(ms(now), Ordering::Relaxed);
            stats.tripwire_trips.fetch_add(1, Ordering::Relaxed);
        }
        !was
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, SystemTime>> {
        self.last_kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// `<from_ms>-<until_ms>.<letter>`.
fn version_name(from: SystemTime, until: SystemTime, kind: Kind) -> String {
    format!("{}-{}.{}", ms(from), ms(until), kind.letter())
}

/// The parts of a version segment, or `None` if it is not one.
fn parse_version_name(name: &str) -> Option<(SystemTime, SystemTime, Kind)> {
    let (times, letter) = name.rsplit_once('.')?;
    let (f, u) = times.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(f) || !digits(u) {
        return None;
    }
    Some((
        from_ms(f.parse().ok()?),
        from_ms(u.parse().ok()?),
        Kind::of(letter)?,
    ))
}

/// Whether `source` names a kept version rather than a user path.
pub fn is_history_source(source: &Path) -> bool {
    source.starts_with(Path::new(RESERVED).join(HISTORY))
}

impl Bucket {
    /// The same bucket, keeping history as `settings` say (off when its retention is zero).
    pub fn with_history(mut self, settings: Settings) -> Bucket {
        self.history = settings
            .enabled()
            .then(|| std::sync::Arc::new(History::new(settings)));
        self
    }

    /// The history settings, if history is kept.
    pub fn history_settings(&self) -> Option<Settings> {
        self.history.as_ref().map(|h| h.settings())
    }

    /// Counters of kept versions and garbage collection.
    pub fn history_stats(&self) -> &std::sync::Arc<Stats> {
        &self.history_stats
    }

    /// `<prefix>/.etlfs/history/<rel>` (`None` for the whole history), with the key of `rel`
    /// checked as for any upload.
    fn history_dir(&self, rel: Option<&Path>) -> Result<Key> {
        let base = format!("{RESERVED}/{HISTORY}");
        let s = match rel {
            None => base,
            Some(rel) => {
                let k = self.key(rel)?;
                format!("{base}/{}", self.strip_prefix(&k))
            }
        };
        Ok(Key::parse(self.join(&s)).expect("valid segments"))
    }

    /// A key below the prefix, without it.
    fn strip_prefix<'a>(&self, k: &'a Key) -> &'a str {
        let s = k.as_ref();
        if self.prefix.is_empty() {
            s
        } else {
            s.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(s)
        }
    }

    /// The sidecar (FILESYSTEM) of a reserved object: `.etlfs/meta/` + its key below the prefix.
    fn reserved_sidecar(&self, k: &Key) -> Key {
        Key::parse(self.join(&format!("{RESERVED}/meta/{}", self.strip_prefix(k))))
            .expect("valid segments")
    }

    /// Keeps the current version of `rel` before `change` destroys it, if the settings say so.
    /// Called by every write that replaces or removes a file's object.
    pub(super) async fn keep_before(&self, rel: &Path, change: Change) -> Result<()> {
        let Some(h) = &self.history else {
            return Ok(());
        };
        let now = SystemTime::now();
        let mut empty = change == Change::Replace { new_size: Some(0) };
        let mut always = empty || change == Change::Delete;
        let interval = h.settings.interval;
        let recent = |last: Option<SystemTime>| {
            last.is_some_and(|l| now.duration_since(l).unwrap_or_default() < interval)
        };
        let known = h.lock().get(rel).copied();
        // While the tripwire is set off, nothing is thinned.
        let tripped = || self.history_stats.tripped_since().is_some();
        if !always && recent(known) && !tripped() {
            return Ok(());
        }
        let key = self.key(rel)?;
        let head = match self.store.head(&key).await {
            Ok(m) => m,
            Err(e) if absent(&e) => return Ok(()),
            Err(e) => return Err(BucketError::store("head", &key)(e)),
        };
        let destructive = match change {
            Change::Delete => true,
            // To nothing, or to less than half: a rewrite that merely trims a file is no
            // sign of corruption, and counting it would set the tripwire off on routine work.
            Change::Replace { new_size } => {
                new_size.is_some_and(|n| n.saturating_mul(2) < head.size)
            }
        };
        if destructive && h.note_destructive(now, &self.history_stats) {
            warn!(
                within = %humantime::format_duration(h.settings.tripwire_window),
                at_least = h.settings.tripwire_files,
                path = %esc(rel),
                "many files truncated, shrunk or deleted at once: possible corruption; every version is kept until it stops (see `etlfs history`)"
            );
        }
        if empty && head.size == 0 {
            // Empty over empty is no damage: an ordinary replacement (still kept when due,
            // or a point in time before it would not know the file existed).
            (empty, always) = (false, false);
            if recent(known) && !tripped() {
                return Ok(());
            }
        }
        if tripped() {
            always = true;
        }
        if !always && known.is_none() {
            let last = self
                .kept_versions(Some(rel))
                .await?
                .into_iter()
                .map(|v| v.until)
                .max();
            if let Some(last) = last {
                h.lock().insert(rel.to_owned(), last);
            }
            if recent(last) {
                return Ok(());
            }
        }
        let kind = match change {
            Change::Delete => Kind::Deleted,
            _ if empty => Kind::ReplacedByEmpty,
            Change::Replace { .. } => Kind::Replaced,
        };
        let from = SystemTime::from(head.last_modified);
        let name = version_name(from, now, kind);
        let dir = self.history_dir(Some(rel))?;
        let hkey = Key::parse(format!("{dir}/{name}")).expect("valid segments");
        if hkey.as_ref().len() > MAX_KEY_LEN {
            warn!(path = %esc(rel), "the history key of this path would be longer than 1024 bytes; its version is not kept");
            return Ok(());
        }
        self.fence.check()?;
        match self.store.copy(&key, &hkey).await {
            Ok(()) => {}
            // Gone meanwhile: nothing left to keep.
            Err(e) if absent(&e) => return Ok(()),
            Err(e) => {
                let e = BucketError::store("keep a version of", &key)(e);
                if e.is_permanent() {
                    warn!(path = %esc(rel), error = %e, "this path's version cannot be kept");
                    return Ok(());
                }
                return Err(e);
            }
        }
        if !self.user_metadata {
            let (from_meta, to_meta) = (self.meta_key(rel)?, self.reserved_sidecar(&hkey));
            match self.store.copy(&from_meta, &to_meta).await {
                Ok(()) => {}
                Err(e) if absent(&e) => {}
                Err(e) => return Err(BucketError::store("keep the metadata of", &from_meta)(e)),
            }
        }
        {
            let mut last = h.lock();
            if last.len() >= THINNING_MEMORY {
                // Entries older than the interval thin nothing any more; forgetting them costs
                // one listing at the path's next replacement, which keeps a version anyway.
                last.retain(|_, t| now.duration_since(*t).unwrap_or_default() < interval);
            }
            last.insert(rel.to_owned(), now);
        }
        let stats = &self.history_stats;
        stats.versions_kept.fetch_add(1, Ordering::Relaxed);
        stats.bytes_kept.fetch_add(head.size, Ordering::Relaxed);
        if kind == Kind::ReplacedByEmpty {
            stats.empty_replacements.fetch_add(1, Ordering::Relaxed);
            warn!(
                path = %esc(rel),
                bytes = head.size,
                kept = %esc(hkey.as_ref()),
                "a file was replaced by an empty one (a writer killed mid-rewrite?); its previous version is kept (see `etlfs history PATH`)"
            );
        } else {
            tracing::debug!(path = %esc(rel), kept = %esc(hkey.as_ref()), "version kept");
        }
        Ok(())
    }

    /// The kept versions of `rel` (its own, not those of paths below it), or of every path.
    pub async fn kept_versions(&self, rel: Option<&Path>) -> Result<Vec<KeptVersion>> {
        let dir = self.history_dir(rel)?;
        let metas: Vec<object_store::ObjectMeta> = match rel {
            Some(_) => {
                self.store
                    .list_with_delimiter(Some(&dir))
                    .await
                    .map_err(BucketError::store("list", &dir))?
                    .objects
            }
            None => self
                .store
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(BucketError::store("list", &dir))?,
        };
        let base = self.history_dir(None)?;
        let mut out = Vec::new();
        for m in metas {
            let Some(below) = m
                .location
                .as_ref()
                .strip_prefix(base.as_ref())
                .and_then(|s| s.strip_prefix('/'))
            else {
                continue;
            };
            let Some((path, name)) = below.rsplit_once('/') else {
                continue;
            };
            let Some((from, until, kind)) = parse_version_name(name) else {
                continue;
            };
            // Only paths etlfs itself could have kept: a key written by someone else that
            // names `.etlfs/...` (the state directory) or no valid path is never restored.
            if self.key(Path::new(path)).is_err() {
                continue;
            }
            out.push(KeptVersion {
                rel: PathBuf::from(path),
                from,
                until,
                kind,
                size: m.size,
                name: name.to_owned(),
            });
        }
        Ok(out)
    }

    /// The etlfs metadata a kept version carries (copied with it), if any.
    pub async fn kept_meta(&self, v: &KeptVersion) -> Result<Option<FileMeta>> {
        let key = self.source_key(&v.source())?;
        let sidecar = self.reserved_sidecar(&key);
        Ok(self.meta_read_at(&key, sidecar).await?.meta)
    }

    /// The key of a `source` (a user path, or a kept version's [`KeptVersion::source`]).
    fn source_key(&self, source: &Path) -> Result<Key> {
        if !is_history_source(source) {
            return self.key(source);
        }
        let s = source.to_str().ok_or_else(|| BucketError::BadKey {
            path: source.to_owned(),
            reason: "not valid UTF-8",
        })?;
        Key::parse(self.join(s)).map_err(|_| BucketError::BadKey {
            path: source.to_owned(),
            reason: "not a valid object key",
        })
    }

    /// The full key of a `source`, for messages and for people who recover by hand.
    pub fn source_key_name(&self, source: &Path) -> String {
        self.source_key(source)
            .map_or_else(|_| source.display().to_string(), |k| k.to_string())
    }

    /// The bytes of a `source` as a stream: a user path's object, or a kept version.
    pub async fn get_stream_source(
        &self,
        source: &Path,
    ) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes>>> {
        let key = self.source_key(source)?;
        self.get_stream_key(key).await
    }

    /// Deletes kept versions replaced before `now - retention`, at most `max` of them (and their
    /// sidecars). Returns how many versions were deleted. A no-op without history.
    pub async fn gc_history(&self, now: SystemTime, max: usize) -> Result<u64> {
        let Some(h) = &self.history else {
            return Ok(0);
        };
        let Some(cutoff) = now.checked_sub(h.settings.retention) else {
            return Ok(0);
        };
        let mut deleted = 0u64;
        let mut budget = max;
        let base = self.history_dir(None)?;
        let mut prefixes = vec![base.clone()];
        if !self.user_metadata {
            prefixes.push(self.reserved_sidecar(&base));
        }
        for (i, prefix) in prefixes.iter().enumerate() {
            let metas: Vec<object_store::ObjectMeta> = self
                .store
                .list(Some(prefix))
                .try_collect()
                .await
                .map_err(BucketError::store("list", prefix))?;
            for m in metas {
                if budget == 0 {
                    break;
                }
                let name = m.location.filename().unwrap_or_default();
                let Some((_, until, _)) = parse_version_name(name) else {
                    continue;
                };
                if until >= cutoff {
                    continue;
                }
                self.delete_key(&m.location).await?;
                budget -= 1;
                if i == 0 {
                    deleted += 1;
                    self.history_stats
                        .gc_deletions
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if deleted > 0 {
            info!(
                deleted,
                "old kept versions deleted (past --history-retention)"
            );
        }
        Ok(deleted)
    }
}

/// The background garbage collection of a mount: one run now, then every [`GC_EVERY`]. A
/// failed run is logged and tried again at the next.
pub async fn gc_loop(bucket: Bucket) {
    if bucket.history.is_none() {
        return;
    }
    loop {
        if let Err(e) = bucket.gc_history(SystemTime::now(), GC_MAX_DELETES).await {
            warn!(error = %e, "history garbage collection failed; trying again later");
        }
        tokio::time::sleep(GC_EVERY).await;
    }
}

#[cfg(test)]
mod tests;
