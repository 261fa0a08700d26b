//! What the bucket holds: path → size, mtime, mode and checksum, loaded once at start.
//!
//! A listing gives only size and last-modified; the metadata etlfs attaches to each object
//! (mtime, mode, checksum, owner) needs one HEAD per object. For 100,000 objects that is far
//! too slow for a mount that must not come up before it knows them all, so the index keeps a
//! **manifest**: one compressed object (`<prefix>/.etlfs/manifest.v1.jsonl.gz`) with every
//! file's metadata and what identifies the object version it describes. Loading is then one
//! listing plus one GET, concurrently; only files the manifest does not vouch for are HEADed
//! (32 at a time). Objects written by other tools carry no etlfs metadata and are served with
//! sensible defaults (their last-modified time, mode 0644, no checksum to verify).
//!
//! The manifest and the rules that decide whether one of its entries still describes the
//! listed object are [`crate::engine::manifest`]'s; whatever is not vouched for is HEADed. A
//! HEAD that raced with a rewrite at worst describes a version newer than the listed one, which
//! the next load then refuses (its `until` is the listed time). The checksum check of every
//! download stays the last line of defence.
//!
//! The load builds its table in place: each listed file goes straight into the table as the
//! listing gave it, and the manifest or a HEAD then replaces it with what they describe — no
//! list of the listing beside it (with 100,000 files, a second copy is what a start's memory
//! peak was made of).
//!
//! The index holds only what a mount needs to show files that are not on the local disk: after
//! the load, entries for files that are local are dropped as soon as the overlay sees them, and
//! the overlay updates the index when a bucket-only file is removed or renamed. What a dropped
//! entry knew about its object version is kept until the mirror takes it
//! ([`Index::take_departed`]), so the manifest it writes keeps covering fetched files.
//!
//! Hostile or odd bucket content never reaches the namespace: a key whose relative path has an
//! empty, `.` or `..` segment, or a NUL, is refused; so is a file whose name is also a
//! directory prefix (`a` and `a/b`: the directory wins). Each refusal is logged once and counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::manifest;
use crate::escape::esc;
use crate::os::from_ns;
use crate::store::bucket::{
    Bucket, BucketError, CompactETag, FileMeta, ManifestObject, MetaRead, ObjectInfo,
};

/// Concurrent HEAD requests while loading.
const HEAD_CONCURRENCY: usize = 32;

/// A file that is (or may be) only in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub size: u64,
    pub mtime: SystemTime,
    pub mode: u32,
    /// Hex SHA-256 to verify a download against, when the object carries one.
    pub sha256: Option<String>,
    /// Owner (uid, gid) recorded at upload; `None`: the parent directory's owner.
    pub owner: Option<(u32, u32)>,
    /// Where the bytes are in the bucket: the path itself, or the old name of a file renamed
    /// while only in the bucket, until the mirror has moved the object.
    pub source: PathBuf,
}

/// Permission bits a restore may give a file: the bucket is not trusted (anyone holding its
/// credentials can write it), so set-uid, set-gid and sticky bits from it are never applied.
pub const RESTORED_MODE_BITS: u32 = 0o777;

impl RemoteFile {
    /// For tests: a 1-byte bucket-only file, mode 0644, mtime the epoch, whose object is at
    /// `source`.
    #[cfg(test)]
    pub(crate) fn test_object(source: &str) -> RemoteFile {
        RemoteFile {
            size: 1,
            mtime: std::time::UNIX_EPOCH,
            mode: 0o644,
            sha256: None,
            owner: None,
            source: PathBuf::from(source),
        }
    }

    /// The permission bits a restored (or bucket-only, as seen through the mount) file gets:
    /// the recorded ones without set-uid, set-gid and sticky.
    pub fn restored_mode(&self) -> u32 {
        self.mode & RESTORED_MODE_BITS
    }

    /// The owner a restored file gets: the recorded uid and gid, except that neither is ever 0
    /// from the bucket. An id that is missing or names root is replaced by the matching id of
    /// `fallback` (the owner of the directory the file is restored into), so a bucket object
    /// can make a file root's only where that directory is root's already.
    pub fn restored_owner(&self, fallback: (u32, u32)) -> (u32, u32) {
        match self.owner {
            Some((uid, gid)) => (
                if uid == 0 { fallback.0 } else { uid },
                if gid == 0 { fallback.1 } else { gid },
            ),
            None => fallback,
        }
    }
}

/// Which object version an index entry (or an upload record) describes: what a manifest entry
/// carries so the next listing can tell whether the object is still that version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Normalized e_tag, when the backend gave one.
    pub e_tag: Option<String>,
    /// The object's last-modified is at most this (bucket clock) for the version described;
    /// `None`: the last-modified of the manifest that first carries it.
    pub until: Option<SystemTime>,
}

/// An entry that left the index (the file became local, or was removed), with the version it
/// was loaded as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departed {
    pub file: RemoteFile,
    pub version: Version,
}

/// Whether a relative path from the bucket can name something in the served directory.
fn valid_rel(rel: &Path) -> bool {
    let s = rel.as_os_str().as_encoded_bytes();
    if s.is_empty()
        || s.contains(&0)
        || s.starts_with(b"/")
        || s.ends_with(b"/")
        || s.windows(2).any(|w| w == b"//")
    {
        return false;
    }
    rel.components().all(|c| matches!(c, Component::Normal(_)))
        && !s
            .split(|b| *b == b'/')
            .any(|seg| seg == b"." || seg == b".." || seg.len() > NAME_MAX)
}

/// The longest file name Linux filesystems take; a longer key segment could be listed but
/// never opened.
const NAME_MAX: usize = 255;

/// A file as the index keeps it: compact, since a mount may know 100,000 of them (the
/// checksum in binary, the object's path not repeated when it is the file's own).
#[derive(Debug, Clone)]
struct Stored {
    size: u64,
    mtime: SystemTime,
    mode: u32,
    owner: Option<(u32, u32)>,
    sha256: Option<Sha>,
    /// Where the object is, when not at the file's own path (a rename not carried out yet).
    source: Option<Box<Path>>,
    /// `None`: not known well enough to be written to a manifest (evicted, renamed, or its
    /// metadata could not be read).
    version: Option<Known>,
    /// Tells this file at this path apart from any other that was there (set by
    /// [`Inner::put`]; an object moving under it keeps it): see [`Index::stamp`].
    stamp: u64,
}

/// A checksum: 32 bytes when it is lowercase hex SHA-256 (what etlfs writes), else the text
/// as the object carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sha {
    Bin([u8; 32]),
    Text(Box<str>),
}

impl Sha {
    fn new(hex_text: &str) -> Option<Sha> {
        if hex_text.is_empty() {
            return None;
        }
        let mut bin = [0u8; 32];
        match hex::decode_to_slice(hex_text, &mut bin) {
            Ok(()) if hex::encode(bin) == hex_text => Some(Sha::Bin(bin)),
            _ => Some(Sha::Text(hex_text.into())),
        }
    }

    fn text(&self) -> String {
        match self {
            Sha::Bin(b) => hex::encode(b),
            Sha::Text(t) => t.to_string(),
        }
    }
}

/// [`Version`], kept compact.
#[derive(Debug, Clone)]
struct Known {
    e_tag: Option<CompactETag>,
    until: Option<SystemTime>,
}

impl Known {
    fn new(v: Version) -> Known {
        Known {
            e_tag: v.e_tag.as_deref().map(CompactETag::new),
            until: v.until,
        }
    }

    fn version(&self) -> Version {
        Version {
            e_tag: self.e_tag.as_ref().map(CompactETag::text),
            until: self.until,
        }
    }
}

impl Stored {
    /// An object without etlfs metadata, as it is served: its listed time, mode 0644.
    fn plain(size: u64, last_modified: SystemTime) -> Stored {
        Stored {
            size,
            mtime: last_modified,
            mode: 0o644,
            owner: None,
            sha256: None,
            source: None,
            version: None,
            stamp: 0,
        }
    }

    fn with_meta(size: u64, m: &FileMeta) -> Stored {
        Stored::described(size, m.mtime_ns, m.mode, &m.sha256, m.owner)
    }

    fn described(
        size: u64,
        mtime_ns: i128,
        mode: u32,
        sha256: &str,
        owner: Option<(u32, u32)>,
    ) -> Stored {
        Stored {
            size,
            mtime: from_ns(mtime_ns),
            mode: mode & 0o7777,
            owner,
            sha256: Sha::new(sha256),
            source: None,
            version: None,
            stamp: 0,
        }
    }

    fn from_remote(file: &RemoteFile, path: &Path, version: Option<Version>) -> Stored {
        Stored {
            size: file.size,
            mtime: file.mtime,
            mode: file.mode,
            owner: file.owner,
            sha256: file.sha256.as_deref().and_then(Sha::new),
            source: (file.source != path).then(|| file.source.clone().into_boxed_path()),
            version: version.map(Known::new),
            stamp: 0,
        }
    }

    fn departed(&self, path: &Path) -> Option<Departed> {
        Some(Departed {
            file: self.remote(path),
            version: self.version.as_ref()?.version(),
        })
    }

    fn remote(&self, path: &Path) -> RemoteFile {
        RemoteFile {
            size: self.size,
            mtime: self.mtime,
            mode: self.mode,
            sha256: self.sha256.as_ref().map(Sha::text),
            owner: self.owner,
            source: self.source.as_deref().unwrap_or(path).to_path_buf(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<PathBuf, Stored>,
    /// Directory path → its entries' names and whether each is a directory.
    children: HashMap<PathBuf, BTreeMap<OsString, bool>>,
    /// Entries that left `files` with a known version, until the mirror takes them.
    departed: HashMap<PathBuf, Stored>,
    /// Where the object of each file renamed while bucket-only is (its `source`) → the file.
    /// One file per object: a bucket-only file is never copied (a hard link fetches it).
    /// Few entries: only renames the mirror has not carried out yet.
    by_source: HashMap<PathBuf, (PathBuf, u64)>,
    last_stamp: u64,
}

impl Inner {
    /// Puts a file at `path` (replacing whatever was there) with a new stamp.
    fn put(&mut self, path: PathBuf, mut s: Stored) {
        self.last_stamp += 1;
        s.stamp = self.last_stamp;
        if let Some(old) = self.files.remove(&path) {
            self.forget_source(&old);
        }
        if let Some(src) = &s.source {
            self.by_source
                .insert(src.to_path_buf(), (path.clone(), s.stamp));
        }
        self.files.insert(path, s);
    }

    /// Takes the file at `path` out of `files`.
    fn take(&mut self, path: &Path) -> Option<Stored> {
        let s = self.files.remove(path)?;
        self.forget_source(&s);
        Some(s)
    }

    fn forget_source(&mut self, s: &Stored) {
        if let Some(src) = &s.source {
            if self
                .by_source
                .get(&**src)
                .is_some_and(|(_, stamp)| *stamp == s.stamp)
            {
                self.by_source.remove(&**src);
            }
        }
    }

    fn link(&mut self, path: &Path, is_dir: bool) {
        let mut cur = path.to_path_buf();
        let mut dir = is_dir;
        while let (Some(parent), Some(name)) = (
            cur.parent().map(Path::to_path_buf),
            cur.file_name().map(OsString::from),
        ) {
            let entry = self.children.entry(parent.clone()).or_default();
            let known = entry.insert(name, dir);
            if known == Some(true) && dir {
                break; // the rest of the chain is already there
            }
            cur = parent;
            dir = true;
        }
    }

    /// See [`Index::rename`].
    fn rename(&mut self, from: &Path, to: &Path) {
        let moved: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for p in moved {
            let Some(mut s) = self.take(&p) else {
                continue;
            };
            self.unlink(&p);
            let new = moved_path(&p, from, to);
            self.link(&new, false);
            // The bytes stay where they are until the mirror moves them; the object under the
            // new name will be a copy, a version we have not seen.
            s.source = Some(
                s.source
                    .take()
                    .unwrap_or_else(|| p.clone().into_boxed_path()),
            );
            s.version = None;
            self.put(new, s);
        }
        // Child lists of a renamed directory move with it.
        let dirs: Vec<PathBuf> = self
            .children
            .keys()
            .filter(|d| d.starts_with(from))
            .cloned()
            .collect();
        for d in dirs {
            if let Some(c) = self.children.remove(&d) {
                let new = moved_path(&d, from, to);
                self.children.entry(new).or_default().extend(c);
            }
        }
        if let Some(is_dir) = self.is_dir(from) {
            self.unlink(from);
            self.link(to, is_dir);
        } else {
            self.unlink(from);
        }
    }

    /// Whether `path` is listed in its parent, and as a directory.
    fn is_dir(&self, path: &Path) -> Option<bool> {
        let (parent, name) = (path.parent()?, path.file_name()?);
        self.children.get(parent)?.get(name).copied()
    }

    fn unlink(&mut self, path: &Path) {
        if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
            if let Some(c) = self.children.get_mut(parent) {
                c.remove(name);
            }
        }
    }
}

/// How the manifest served a load, for the log and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Files listed (after refusals).
    pub files: u64,
    /// Files whose metadata came from the manifest.
    pub from_manifest: u64,
    /// Metadata reads (HEADs, or sidecar GETs on FILESYSTEM) made.
    pub heads: u64,
    /// Manifest entries the listing showed to be out of date.
    pub stale: u64,
    /// Manifest entries for objects the listing does not have.
    pub unused: u64,
    /// `None`: no manifest; otherwise whether it was usable, and why not.
    pub manifest: Option<Result<(), String>>,
    /// Directories the bucket implies (by the keys below them) but holds no marker for.
    pub unmarked_dirs: u64,
}

impl LoadReport {
    /// Whether a new manifest would let the next load skip HEADs or read less.
    pub fn manifest_outdated(&self) -> bool {
        self.heads > 0 || self.stale > 0 || self.unused > 0 || matches!(self.manifest, Some(Err(_)))
    }
}

/// The bucket's contents as the overlay needs them.
#[derive(Debug, Default)]
pub struct Index {
    inner: RwLock<Inner>,
    refused: AtomicU64,
    /// Bumped by every change, so a manifest writer can tell whether it has news.
    generation: AtomicU64,
    report: LoadReport,
    /// Made before the listing could be loaded (an offline start), until [`Index::absorb`]
    /// takes it: objects it does not know may be bucket-only files all the same.
    awaiting: std::sync::atomic::AtomicBool,
}

impl Index {
    /// An empty index for a mount that starts before the bucket can be listed; the listing
    /// comes later through [`Index::absorb`].
    pub fn awaiting_listing() -> Index {
        let index = Index::default();
        index.awaiting.store(true, Ordering::Relaxed);
        index
    }

    /// Whether the listing has not been loaded yet ([`Index::awaiting_listing`]): the mirror
    /// cannot tell from the index which objects are bucket-only files' then.
    pub fn awaiting(&self) -> bool {
        self.awaiting.load(Ordering::Relaxed)
    }

    /// Lists the whole prefix (paginated by `object_store`), reads the manifest at the same
    /// time, and HEADs each file the manifest does not vouch for.
    pub async fn load(bucket: &Bucket) -> Result<Index, BucketError> {
        let started = std::time::Instant::now();
        let mut index = Index::default();
        let mut listing = Listing::default();
        let listed = async {
            let skipped = bucket.list_each(None, |o| listing.add(o, &index)).await;
            (skipped, started.elapsed())
        };
        let ((skipped, listed_in), manifest) = futures::join!(listed, bucket.get_manifest());
        // Keys the listing had to leave out (the bucket logged each): refused as well.
        index.refused.fetch_add(skipped?, Ordering::Relaxed);
        let Listing {
            mut files,
            dirs,
            unmarked,
        } = listing.close(&index);

        let mut report = LoadReport {
            files: files.len() as u64,
            unmarked_dirs: unmarked,
            ..LoadReport::default()
        };
        match manifest {
            Ok(Some(m)) => {
                // Read once to check it whole (some damage shows only at its end), then again
                // to apply it: nothing of a manifest that turns out bad is used.
                let res =
                    manifest::read(&m, |_| ()).map(|_| apply_manifest(&m, &mut files, &mut report));
                if let Err(e) = &res {
                    // Built from serde's words on the manifest's bytes, which are the bucket's.
                    tracing::warn!(error = %esc(e), "the bucket's manifest is unreadable; reading each object's metadata instead");
                }
                report.manifest = Some(res);
            }
            Ok(None) => {
                tracing::info!("no manifest in the bucket; reading each object's metadata")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the bucket's manifest; reading each object's metadata instead");
                report.manifest = Some(Err(e.to_string()));
            }
        }
        report.heads = head_the_rest(bucket, &mut files).await;

        let inner = index.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for d in &dirs {
            inner.link(d, true);
        }
        for path in files.keys() {
            inner.link(path, false);
        }
        // The table built above becomes the index's own, stamped as [`Inner::put`] would.
        for s in files.values_mut() {
            inner.last_stamp += 1;
            s.stamp = inner.last_stamp;
        }
        inner.files = files;
        tracing::info!(
            files = report.files,
            from_manifest = report.from_manifest,
            heads = report.heads,
            stale_manifest_entries = report.stale,
            listed_in = ?listed_in,
            elapsed = ?started.elapsed(),
            "bucket metadata loaded"
        );
        index.report = report;
        Ok(index)
    }

    fn refuse(&self, rel: &Path, why: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = %esc(rel), "bucket object not shown: {why}");
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys refused while loading.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// How the load went: files, HEADs made, what the manifest served.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// Changes so far (a manifest writer compares it with what it last wrote).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn file(&self, path: &Path) -> Option<RemoteFile> {
        self.read().files.get(path).map(|s| s.remote(path))
    }

    /// Whether the bucket has anything below `dir`.
    pub fn has_children(&self, dir: &Path) -> bool {
        self.read().children.get(dir).is_some_and(|c| !c.is_empty())
    }

    /// Entries of a directory: name and whether it is a directory.
    pub fn children(&self, dir: &Path) -> Vec<(OsString, bool)> {
        self.read()
            .children
            .get(dir)
            .map(|c| c.iter().map(|(n, d)| (n.clone(), *d)).collect())
            .unwrap_or_default()
    }

    /// Every directory the bucket implies (to be created locally at start).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let inner = self.read();
        let mut out: Vec<PathBuf> = inner
            .children
            .iter()
            .flat_map(|(parent, c)| {
                c.iter()
                    .filter(|(_, d)| **d)
                    .map(move |(n, _)| parent.join(n))
            })
            .collect();
        out.sort();
        out
    }

    /// Files of the index (for prefetch).
    pub fn files(&self) -> Vec<(PathBuf, RemoteFile)> {
        self.read()
            .files
            .iter()
            .map(|(p, s)| (p.clone(), s.remote(p)))
            .collect()
    }

    /// The files at or below `path` (a directory, or a file itself).
    pub fn files_below(&self, path: &Path) -> Vec<PathBuf> {
        self.read()
            .files
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect()
    }

    /// Calls `f` with every file whose object version is known, under the read lock (for a
    /// manifest writer, which encodes as it goes).
    pub fn for_each_versioned(&self, mut f: impl FnMut(&Path, &RemoteFile, &Version)) {
        let inner = self.read();
        for (p, s) in &inner.files {
            if let Some(k) = &s.version {
                f(p, &s.remote(p), &k.version());
            }
        }
    }

    /// Whether `path` is a bucket-only file whose object version is known.
    pub fn is_versioned(&self, path: &Path) -> bool {
        self.read()
            .files
            .get(path)
            .is_some_and(|s| s.version.is_some())
    }

    /// Forgets a file: it is local now, or it was removed. What it knew about its object
    /// version is kept for [`Index::take_departed`].
    pub fn remove(&self, path: &Path) -> Option<RemoteFile> {
        let mut inner = self.write();
        let s = inner.take(path)?;
        inner.unlink(path);
        let file = s.remote(path);
        if s.version.is_some() {
            inner.departed.insert(path.to_path_buf(), s);
        }
        Some(file)
    }

    /// Forgets a directory and everything below it (an `rmdir` the bucket has not followed
    /// yet: its marker, and whatever it still lists below, must not bring it back).
    pub fn remove_dir(&self, dir: &Path) {
        let mut inner = self.write();
        let below: Vec<PathBuf> = inner
            .files
            .keys()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for p in below {
            if let Some(s) = inner.take(&p) {
                if s.version.is_some() {
                    inner.departed.insert(p, s);
                }
            }
        }
        inner.children.retain(|d, _| !d.starts_with(dir));
        inner.unlink(dir);
    }

    /// What a removed entry knew about its object (a fetched file's record takes it over).
    pub fn take_departed(&self, path: &Path) -> Option<Departed> {
        let s = self
            .inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .departed
            .remove(path)?;
        s.departed(path)
    }

    /// The entries [`Index::drain_departed`] would give whose path `take` accepts; the others
    /// stay for [`Index::take_departed`].
    pub fn drain_departed_if(&self, take: impl Fn(&Path) -> bool) -> Vec<(PathBuf, Departed)> {
        let mut inner = self.write();
        let paths: Vec<PathBuf> = inner.departed.keys().filter(|p| take(p)).cloned().collect();
        paths
            .into_iter()
            .filter_map(|p| {
                let s = inner.departed.remove(&p)?;
                s.departed(&p).map(|d| (p, d))
            })
            .collect()
    }

    /// Everything [`Index::take_departed`] has not taken yet, converted one at a time (at a
    /// start over a full directory, that is every file).
    pub fn drain_departed(&self) -> impl Iterator<Item = (PathBuf, Departed)> + use<> {
        let all = std::mem::take(
            &mut self
                .inner
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .departed,
        );
        all.into_iter()
            .filter_map(|(p, s)| s.departed(&p).map(|d| (p, d)))
    }

    /// Gives back the memory of entries removed in bulk (at start, every file found locally
    /// leaves the index: with 100,000 of them the emptied tables would keep ~20 MB).
    pub fn shrink(&self) {
        let mut inner = self.write();
        inner.files.shrink_to_fit();
        inner.children.shrink_to_fit();
        inner.by_source.shrink_to_fit();
        inner.departed.shrink_to_fit();
    }

    /// Adds (or replaces) a bucket-only file, e.g. a local file evicted to the bucket.
    pub fn insert(&self, path: &Path, file: RemoteFile) {
        self.insert_versioned(path, file, None);
    }

    /// Adds (or replaces) a file whose object version is known (`etlfs backup` just uploaded
    /// it), so that it goes into the manifest.
    pub fn insert_versioned(&self, path: &Path, file: RemoteFile, version: Option<Version>) {
        let mut inner = self.write();
        inner.link(path, false);
        let stored = Stored::from_remote(&file, path, version);
        inner.put(path.to_path_buf(), stored);
    }

    /// A bucket-only file, or everything below a directory, was renamed.
    pub fn rename(&self, from: &Path, to: &Path) {
        self.write().rename(from, to);
    }

    /// `a` and `b` (files or directories) swapped places (`RENAME_EXCHANGE`): what is listed
    /// at or below each is now at or below the other, its bytes where they were.
    pub fn exchange(&self, a: &Path, b: &Path) {
        let mut inner = self.write();
        // Through a name no path can have (a NUL in it), as a `mv a t; mv b a; mv t b`.
        let tmp = Path::new("\0exchange");
        inner.rename(a, tmp);
        inner.rename(b, a);
        inner.rename(tmp, b);
    }

    /// The object at `from` was copied to `to` (the mirror carrying out a rename of a file
    /// that was only in the bucket): the file reading it reads from `to` now. Called before
    /// `from` is deleted.
    pub fn object_moved(&self, from: &Path, to: &Path) {
        let mut inner = self.write();
        let Some((path, stamp)) = inner.by_source.remove(from) else {
            return;
        };
        let Some(s) = inner.files.get_mut(&path).filter(|s| s.stamp == stamp) else {
            return;
        };
        if path == to {
            s.source = None;
        } else {
            s.source = Some(to.to_path_buf().into_boxed_path());
            inner.by_source.insert(to.to_path_buf(), (path, stamp));
        }
    }

    /// Whether a file of the index still reads its bytes from the object at `key`, under
    /// another name (renamed while bucket-only, the mirror has not moved the object yet):
    /// that object must move, never be overwritten or deleted first.
    pub fn sources(&self, key: &Path) -> bool {
        self.read().by_source.contains_key(key)
    }

    /// What tells the file now at `path` apart from any other file that was or will be there
    /// (a download that took long checks it is still wanted by it; the object moving does
    /// not change it).
    pub fn stamp(&self, path: &Path) -> Option<u64> {
        self.read().files.get(path).map(|s| s.stamp)
    }

    pub fn len(&self) -> usize {
        self.read().files.len()
    }

    /// Adds the files of `other` (a listing loaded after the mount came up) that are not
    /// known here and not `local`; returns how many.
    pub fn absorb(&self, other: Index, local: impl Fn(&Path) -> bool) -> usize {
        let theirs = other.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut inner = self.write();
        let mut added = 0;
        for (path, stored) in theirs.files {
            if inner.files.contains_key(&path) || local(&path) {
                continue;
            }
            inner.link(&path, false);
            // (with a stamp of this index, and where it reads from if renamed while
            // bucket-only: the mirror moves that object)
            inner.put(path, stored);
            added += 1;
        }
        for (dir, children) in theirs.children {
            for (name, is_dir) in children {
                if is_dir {
                    inner.link(&dir.join(name), true);
                }
            }
        }
        drop(inner);
        self.refused
            .fetch_add(other.refused.into_inner(), Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.awaiting.store(false, Ordering::Relaxed);
        added
    }

    /// The bytes of every file of the index (what a restore has left to download).
    pub fn bytes(&self) -> u64 {
        self.read().files.values().map(|s| s.size).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.read().files.is_empty()
    }
}

/// The stamp of a file during [`Index::load`] while it is as the listing gave it (size,
/// last-modified as its mtime, the listed e_tag in its version): nothing has described it yet.
/// Stamps of the finished table start at 1.
const AS_LISTED: u64 = 0;
/// The stamp of a file during [`Index::load`] once the manifest or a HEAD has described it.
const DESCRIBED: u64 = u64::MAX;

/// What a load gathers from the listing: the files as listed and the directories.
#[derive(Default)]
struct Listing {
    files: HashMap<PathBuf, Stored>,
    dirs: HashSet<PathBuf>,
    /// Of `dirs`, those without a marker.
    unmarked: u64,
}

impl Listing {
    fn add(&mut self, obj: ObjectInfo, index: &Index) {
        if !valid_rel(&obj.rel) {
            index.refuse(&obj.rel, "not a safe relative path");
        } else if obj.is_dir_marker {
            self.dirs.insert(obj.rel);
        } else {
            let mut s = Stored::plain(obj.size, obj.last_modified);
            s.version = Some(Known {
                e_tag: obj.e_tag.as_deref().map(CompactETag::new),
                until: None,
            });
            s.stamp = AS_LISTED;
            self.files.insert(obj.rel, s);
        }
    }

    /// Every parent of a file is a directory, marker or not; a file that is also a directory
    /// is left out.
    fn close(mut self, index: &Index) -> Listing {
        for f in self.files.keys() {
            let mut p = f.parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                if !self.dirs.insert(d.to_path_buf()) {
                    break;
                }
                self.unmarked += 1;
                p = d.parent();
            }
        }
        let dirs = &self.dirs;
        self.files.retain(|f, _| {
            let both = dirs.contains(f);
            if both {
                index.refuse(
                    f,
                    "both a file and a directory in the bucket; the directory wins",
                );
            }
            !both
        });
        self
    }
}

/// The e_tag a file as listed was listed with.
fn listed_e_tag(s: &Stored) -> Option<&CompactETag> {
    s.version.as_ref()?.e_tag.as_ref()
}

/// Applies a manifest (already read whole without error) to the files as listed.
fn apply_manifest(
    m: &ManifestObject,
    files: &mut HashMap<PathBuf, Stored>,
    report: &mut LoadReport,
) {
    let read = manifest::read(m, |e| {
        let Some(s) = files.get_mut(Path::new(&*e.path)) else {
            report.unused += 1;
            return;
        };
        if s.stamp != AS_LISTED {
            // Two entries for one file: each vouches for itself, so the first valid one is as
            // good as any.
            return;
        }
        let Some(until) = manifest::vouches(&e, m.last_modified, s.size, s.mtime, listed_e_tag(s))
        else {
            report.stale += 1;
            return;
        };
        let mut file = match &e.meta {
            Some(f) => Stored::described(e.size, f.mtime_ns, f.mode, &f.sha256, f.owner),
            None => Stored::plain(e.size, s.mtime),
        };
        file.version = Some(Known {
            e_tag: e
                .e_tag
                .as_deref()
                .map(CompactETag::new)
                .or_else(|| listed_e_tag(s).cloned()),
            until: Some(until),
        });
        file.stamp = DESCRIBED;
        *s = file;
        report.from_manifest += 1;
    });
    debug_assert!(read.is_ok(), "a manifest read whole once reads again");
}

/// HEADs every file still as listed (32 at a time) and describes it by what the HEAD says;
/// returns how many were HEADed. A file gone since the listing leaves the table.
async fn head_the_rest(bucket: &Bucket, files: &mut HashMap<PathBuf, Stored>) -> u64 {
    let todo: Vec<PathBuf> = files
        .iter()
        .filter(|(_, s)| s.stamp == AS_LISTED)
        .map(|(p, _)| p.clone())
        .collect();
    let heads = todo.len() as u64;
    let sidecars = !bucket.user_metadata();
    let mut reads = futures::stream::iter(todo)
        .map(|path| async move {
            let read = bucket.meta_read(&path).await;
            (path, read)
        })
        .buffer_unordered(HEAD_CONCURRENCY);
    while let Some((path, read)) = reads.next().await {
        let Some(listed) = files.get_mut(&path) else {
            continue;
        };
        match read {
            Ok(read) => *listed = from_read(listed, read, sidecars),
            Err(BucketError::NotFound { .. }) => {
                files.remove(&path); // deleted while we listed
                continue;
            }
            Err(e) => {
                tracing::warn!(path = %esc(&path), error = %e, "unreadable object metadata; serving the object with defaults");
                listed.version = None;
            }
        }
        listed.stamp = DESCRIBED;
    }
    heads
}

/// A file as listed and the metadata read for it. The version it is recorded as ends at the
/// *listed* last-modified: if the read saw a later rewrite, that rewrite is newer and the next
/// load reads it again.
fn from_read(listed: &Stored, read: MetaRead, sidecars: bool) -> Stored {
    let (last_modified, listed_e_tag) = (listed.mtime, listed_e_tag(listed).cloned());
    let until = Some(last_modified);
    if sidecars {
        // The object and its sidecar are two writes (object first): a sidecar older than the
        // object may belong to another version, and a missing one may be about to appear.
        let mut file = match &read.meta {
            Some(m) => Stored::with_meta(listed.size, m),
            None => Stored::plain(listed.size, last_modified),
        };
        if read.meta.is_some() && read.last_modified >= last_modified {
            file.version = Some(Known {
                e_tag: listed_e_tag,
                until,
            });
        }
        return file;
    }
    // A HEAD sees the object as one version: its size, e_tag and metadata belong together.
    let size = read.size.unwrap_or(listed.size);
    let mut file = match &read.meta {
        Some(m) => Stored::with_meta(size, m),
        None => Stored::plain(size, last_modified),
    };
    file.version = Some(Known {
        e_tag: read.e_tag.as_deref().map(CompactETag::new).or(listed_e_tag),
        until,
    });
    file
}

/// Where `p`, at or below `from`, ends up when `from` is renamed to `to`.
pub fn moved_path(p: &Path, from: &Path, to: &Path) -> PathBuf {
    match p.strip_prefix(from) {
        Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
        _ => to.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;
    use crate::engine::manifest::{ManifestWriter, manifest_until};
    use crate::store::bucket::FileMeta;

    #[test]
    fn unsafe_relative_paths_are_refused() {
        for ok in ["a", "a/b", "a b/c.d", "..a/b..", ".hidden"] {
            assert!(valid_rel(Path::new(ok)), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", "..", "./a", "a/."] {
            assert!(!valid_rel(Path::new(bad)), "{bad:?}");
        }
        assert!(valid_rel(Path::new(&"n".repeat(255))));
        assert!(!valid_rel(Path::new(&format!("d/{}", "n".repeat(256)))));
    }

    #[tokio::test]
    async fn load_builds_files_dirs_and_metadata() {
        let store = Arc::new(InMemory::new());
        let b = Bucket::new(store.clone(), "etl", true, vec![]);
        let meta = FileMeta {
            mtime_ns: 1_700_000_000_000_000_000,
            mode: 0o600,
            sha256: "ab".repeat(32),
            owner: None,
        };
        b.put_bytes(Path::new("bingen/1d/x"), Bytes::from_static(b"xyz"), &meta)
            .await
            .unwrap();
        b.put_dir_marker(Path::new("empty/dir")).await.unwrap();
        // written by another tool: no metadata
        store
            .put(&"etl/plain".into(), PutPayload::from_static(b"p"))
            .await
            .unwrap();
        // a file that is also a directory prefix
        store
            .put(&"etl/both".into(), PutPayload::from_static(b"f"))
            .await
            .unwrap();
        store
            .put(&"etl/both/inner".into(), PutPayload::from_static(b"i"))
            .await
            .unwrap();
        // outside the prefix
        store
            .put(&"other/x".into(), PutPayload::from_static(b"o"))
            .await
            .unwrap();

        let idx = Index::load(&b).await.unwrap();
        let x = idx.file(Path::new("bingen/1d/x")).unwrap();
        assert_eq!(
            (x.size, x.mode, x.sha256.as_deref()),
            (3, 0o600, Some(&*"ab".repeat(32)))
        );
        assert_eq!(x.mtime, meta.mtime());
        let p = idx.file(Path::new("plain")).unwrap();
        assert_eq!((p.mode, p.sha256.clone()), (0o644, None));
        assert!(idx.file(Path::new("both")).is_none());
        assert!(idx.file(Path::new("both/inner")).is_some());
        assert_eq!(idx.refused(), 1);
        assert_eq!(
            idx.dirs(),
            ["bingen", "bingen/1d", "both", "empty", "empty/dir"]
                .map(PathBuf::from)
                .to_vec()
        );
        let mut root: Vec<_> = idx
            .children(Path::new(""))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        root.sort();
        assert_eq!(root, ["bingen", "both", "empty", "plain"]);
        assert!(idx.has_children(Path::new("empty")));
        assert!(!idx.has_children(Path::new("empty/dir")));
    }

    #[test]
    fn rename_and_remove_keep_children_consistent() {
        let idx = Index::default();
        let f = RemoteFile::test_object;
        idx.insert(Path::new("d/a"), f("d/a"));
        idx.insert(Path::new("d/sub/b"), f("d/sub/b"));
        idx.rename(Path::new("d"), Path::new("e"));
        assert!(idx.file(Path::new("d/a")).is_none());
        assert_eq!(
            idx.file(Path::new("e/sub/b")).unwrap().source,
            PathBuf::from("d/sub/b")
        );
        assert_eq!(
            idx.children(Path::new("")),
            vec![(OsString::from("e"), true)]
        );
        assert!(idx.sources(Path::new("d/sub/b")));
        idx.object_moved(Path::new("d/sub/b"), Path::new("e/sub/b"));
        assert_eq!(
            idx.file(Path::new("e/sub/b")).unwrap().source,
            PathBuf::from("e/sub/b")
        );
        assert!(!idx.sources(Path::new("d/sub/b")));
        idx.remove(Path::new("e/a"));
        assert_eq!(
            idx.children(Path::new("e")),
            vec![(OsString::from("sub"), true)]
        );
    }

    fn file_at(p: &str) -> RemoteFile {
        RemoteFile {
            size: p.len() as u64,
            ..RemoteFile::test_object(p)
        }
    }

    fn sources(idx: &Index) -> BTreeMap<PathBuf, PathBuf> {
        idx.files()
            .into_iter()
            .map(|(p, f)| (p, f.source))
            .collect()
    }

    /// An exchange swaps what is below the two names, each file reading from where its bytes
    /// are, and the directory listings follow; a file renamed twice before its object moved
    /// follows it as it moves, one step at a time.
    #[test]
    fn an_exchange_swaps_and_sources_follow_the_objects() {
        let idx = Index::default();
        for p in ["a/x", "a/sub/y", "b/x", "b/z", "c"] {
            idx.insert(Path::new(p), file_at(p));
        }
        idx.exchange(Path::new("a"), Path::new("b"));
        let p = PathBuf::from;
        let want: BTreeMap<PathBuf, PathBuf> = [
            (p("a/x"), p("b/x")),
            (p("a/z"), p("b/z")),
            (p("b/x"), p("a/x")),
            (p("b/sub/y"), p("a/sub/y")),
            (p("c"), p("c")),
        ]
        .into();
        assert_eq!(sources(&idx), want);
        assert_eq!(idx.dirs(), vec![p("a"), p("b"), p("b/sub")]);
        assert_eq!(
            idx.children(Path::new("a")),
            vec![(OsString::from("x"), false), (OsString::from("z"), false)]
        );
        // The mirror moves the objects through a stage, as it does an exchange.
        let stage = Path::new("t");
        idx.object_moved(Path::new("a/x"), &stage.join("x"));
        idx.object_moved(Path::new("a/sub/y"), &stage.join("sub/y"));
        assert_eq!(idx.file(Path::new("b/x")).unwrap().source, p("t/x"));
        idx.object_moved(Path::new("b/x"), Path::new("a/x"));
        idx.object_moved(Path::new("b/z"), Path::new("a/z"));
        idx.object_moved(&stage.join("x"), Path::new("b/x"));
        idx.object_moved(&stage.join("sub/y"), Path::new("b/sub/y"));
        let settled: BTreeMap<PathBuf, PathBuf> = idx
            .files()
            .into_iter()
            .map(|(q, _)| (q.clone(), q))
            .collect();
        assert_eq!(sources(&idx), settled);

        // c -> d -> e before the mirror moved anything.
        idx.rename(Path::new("c"), Path::new("d"));
        let stamp = idx.stamp(Path::new("d"));
        idx.rename(Path::new("d"), Path::new("e"));
        assert_eq!(idx.file(Path::new("e")).unwrap().source, p("c"));
        assert!(idx.stamp(Path::new("d")).is_none() && idx.stamp(Path::new("e")) != stamp);
        let stamp = idx.stamp(Path::new("e"));
        idx.object_moved(Path::new("c"), Path::new("d"));
        assert_eq!(idx.file(Path::new("e")).unwrap().source, p("d"));
        idx.object_moved(Path::new("d"), Path::new("e"));
        assert_eq!(idx.file(Path::new("e")).unwrap().source, p("e"));
        assert_eq!(
            idx.stamp(Path::new("e")),
            stamp,
            "the same file, its object moved"
        );
        // A file replaced by a rename onto its name no longer holds the object it read.
        idx.insert(Path::new("f"), file_at("f"));
        idx.rename(Path::new("f"), Path::new("g"));
        idx.insert(Path::new("h"), file_at("h"));
        idx.rename(Path::new("h"), Path::new("g"));
        assert!(!idx.sources(Path::new("f")) && idx.sources(Path::new("h")));
        idx.remove(Path::new("g"));
        assert!(!idx.sources(Path::new("h")));
    }

    /// A listing loaded late (an offline start) and absorbed: a file it has renamed while
    /// bucket-only still tells the mirror which object it reads, under a stamp of this index.
    #[test]
    fn an_absorbed_listing_keeps_what_its_renamed_files_read() {
        let idx = Index::awaiting_listing();
        idx.insert(Path::new("a"), file_at("a"));
        let late = Index::default();
        late.insert(Path::new("b"), file_at("b"));
        late.rename(Path::new("b"), Path::new("c"));
        assert!(idx.awaiting());
        assert_eq!(idx.absorb(late, |_| false), 1);
        assert!(!idx.awaiting());
        assert!(idx.sources(Path::new("b")));
        assert_ne!(idx.stamp(Path::new("a")), idx.stamp(Path::new("c")));
        idx.object_moved(Path::new("b"), Path::new("c"));
        assert_eq!(idx.file(Path::new("c")).unwrap().source, PathBuf::from("c"));
        assert!(!idx.sources(Path::new("b")));
    }

    fn meta(i: u32) -> FileMeta {
        FileMeta {
            mtime_ns: 1_700_000_000_000_000_000 + i128::from(i) * 1_000_000_007,
            mode: 0o600 + (i % 3),
            sha256: format!("{i:064x}"),
            owner: Some((1000 + i, 2000)),
        }
    }

    /// A bucket of `n` files `d{i%7}/f{i}` with etlfs metadata, plus one without.
    async fn seeded(n: u32, user_metadata: bool) -> (Arc<InMemory>, Bucket) {
        let store = Arc::new(InMemory::new());
        let b = Bucket::new(store.clone(), "etl", user_metadata, vec![]);
        for i in 0..n {
            let body = Bytes::from(format!("body {i}"));
            b.put_bytes(&PathBuf::from(format!("d{}/f{i}", i % 7)), body, &meta(i))
                .await
                .unwrap();
        }
        store
            .put(&"etl/plain".into(), PutPayload::from_static(b"p"))
            .await
            .unwrap();
        (store, b)
    }

    /// What the index serves, for comparing two loads.
    fn served(idx: &Index) -> BTreeMap<PathBuf, RemoteFile> {
        idx.files().into_iter().collect()
    }

    async fn write_manifest(b: &Bucket, idx: &Index) {
        let mut w = ManifestWriter::new("test");
        idx.for_each_versioned(|p, f, v| w.add_remote(p, f, v));
        b.put_manifest(w.finish()).await.unwrap();
    }

    #[tokio::test]
    async fn a_manifest_replaces_the_heads_and_serves_the_same() {
        for user_metadata in [true, false] {
            let (_, b) = seeded(50, user_metadata).await;
            let first = Index::load(&b).await.unwrap();
            assert_eq!(first.report().heads, 51);
            assert_eq!(first.report().manifest, None);
            assert!(first.report().manifest_outdated());
            write_manifest(&b, &first).await;

            let second = Index::load(&b).await.unwrap();
            let r = second.report();
            // With sidecars, an object without one may be an upload whose sidecar is still
            // on its way: never vouched for.
            let heads = u64::from(!user_metadata);
            assert_eq!((r.heads, r.from_manifest), (heads, 51 - heads), "{r:?}");
            assert_eq!((r.stale, r.unused), (0, 0), "{r:?}");
            assert_eq!(r.manifest, Some(Ok(())));
            assert_eq!(served(&second), served(&first));
            let f = second.file(Path::new("d3/f10")).unwrap();
            assert_eq!(
                (f.mtime, f.mode, f.sha256.as_deref(), f.owner),
                (
                    meta(10).mtime(),
                    0o601,
                    Some(&*meta(10).sha256),
                    Some((1010, 2000))
                )
            );
            assert_eq!(second.file(Path::new("plain")).unwrap().sha256, None);
            assert_eq!(second.dirs(), first.dirs());
        }
    }

    #[tokio::test]
    async fn entries_the_listing_contradicts_are_read_again() {
        let (store, b) = seeded(20, true).await;
        write_manifest(&b, &Index::load(&b).await.unwrap()).await;
        // After the manifest: an outside writer replaces one object with another of the same
        // size, etlfs re-uploads another with the same bytes but a new mode (on S3 the e_tag
        // would not change, its newer time tells: see the next test), and a third is deleted.
        store
            .put(&"etl/d1/f1".into(), PutPayload::from_static(b"BODY 1"))
            .await
            .unwrap();
        let mut m2 = meta(2);
        m2.mode = 0o640;
        b.put_bytes(Path::new("d2/f2"), Bytes::from("body 2"), &m2)
            .await
            .unwrap();
        b.delete(Path::new("d3/f3")).await.unwrap();

        let idx = Index::load(&b).await.unwrap();
        let r = idx.report();
        assert_eq!((r.heads, r.stale, r.unused), (2, 2, 1), "{r:?}");
        assert_eq!(r.from_manifest, 18);
        assert_eq!(idx.file(Path::new("d1/f1")).unwrap().sha256, None);
        assert_eq!(idx.file(Path::new("d2/f2")).unwrap().mode, 0o640);
        assert!(idx.file(Path::new("d3/f3")).is_none());
    }

    #[tokio::test]
    async fn an_entry_is_only_as_good_as_its_until() {
        let (store, b) = seeded(3, true).await;
        let idx = Index::load(&b).await.unwrap();
        // Written by hand: one entry vouched for until before the object was written, one by
        // the manifest's own (later) time.
        let mut w = ManifestWriter::new("test");
        idx.for_each_versioned(|p, f, v| {
            let until = match p.to_str() {
                Some("d0/f0") => Some(UNIX_EPOCH + Duration::from_secs(1)),
                _ => None,
            };
            let v = Version {
                e_tag: v.e_tag.clone(),
                until,
            };
            w.add_remote(p, f, &v)
        });
        b.put_manifest(w.finish()).await.unwrap();
        drop(store);
        let again = Index::load(&b).await.unwrap();
        let r = again.report();
        assert_eq!((r.heads, r.stale, r.from_manifest), (1, 1, 3), "{r:?}");
    }

    #[tokio::test]
    async fn a_damaged_or_foreign_manifest_only_costs_heads() {
        let (_, b) = seeded(10, true).await;
        let idx = Index::load(&b).await.unwrap();
        let mut w = ManifestWriter::new("test");
        idx.for_each_versioned(|p, f, v| w.add_remote(p, f, v));
        let good = w.finish().to_vec();
        let header_v2 = {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(b"{\"etlfs_manifest\":2}\n{\"end\":0}\n")
                .unwrap();
            gz.finish().unwrap()
        };
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x20;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not gzip", b"{\"etlfs_manifest\":1}".to_vec()),
            ("truncated", good[..good.len() - 12].to_vec()),
            ("a flipped bit", flipped),
            ("another format", header_v2),
            ("empty", vec![]),
        ];
        for (what, body) in cases {
            b.put_manifest(Bytes::from(body)).await.unwrap();
            let again = Index::load(&b).await.unwrap();
            let r = again.report();
            assert_eq!((r.heads, r.from_manifest), (11, 0), "{what}: {r:?}");
            assert!(matches!(r.manifest, Some(Err(_))), "{what}: {r:?}");
            assert_eq!(served(&again), served(&idx), "{what}");
        }
    }

    #[test]
    fn departed_entries_keep_their_version_until_taken() {
        let idx = Index::default();
        let f = RemoteFile {
            size: 1,
            mtime: SystemTime::UNIX_EPOCH,
            mode: 0o644,
            sha256: Some("ab".into()),
            owner: None,
            source: PathBuf::from("a"),
        };
        let v = Version {
            e_tag: Some("e".into()),
            until: Some(SystemTime::UNIX_EPOCH),
        };
        idx.insert_versioned(Path::new("a"), f.clone(), Some(v.clone()));
        idx.insert(Path::new("b"), f.clone());
        let g = idx.generation();
        assert!(idx.is_versioned(Path::new("a")) && !idx.is_versioned(Path::new("b")));
        idx.remove(Path::new("a"));
        idx.remove(Path::new("b"));
        assert!(idx.generation() > g);
        assert_eq!(idx.take_departed(Path::new("b")), None);
        assert_eq!(
            idx.take_departed(Path::new("a")),
            Some(Departed {
                file: f,
                version: v
            })
        );
        assert_eq!(idx.drain_departed().count(), 0);
    }

    #[test]
    fn without_listed_e_tags_size_and_time_decide() {
        // What s3s-fs lists: no e_tag, so only size and last-modified can tell.
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let file = |size| RemoteFile {
            size,
            mtime: t0,
            mode: 0o600,
            sha256: Some("ab".repeat(32)),
            owner: Some((1, 2)),
            source: PathBuf::new(),
        };
        let version = |until| Version {
            e_tag: Some("\"e\"".into()),
            until,
        };
        let mut w = ManifestWriter::new("test");
        w.add_remote(Path::new("a"), &file(5), &version(None));
        w.add_remote(Path::new("b"), &file(5), &version(Some(t0)));
        w.add_remote(Path::new("c"), &file(5), &version(None));
        w.add_remote(Path::new("d"), &file(5), &version(None));
        w.add_remote(Path::new("gone"), &file(5), &version(None));
        let m = ManifestObject {
            body: w.finish(),
            last_modified: t0 + Duration::from_secs(10),
        };
        let slot = |rel: &str, size, lm: Duration| ObjectInfo {
            rel: rel.into(),
            size,
            last_modified: t0 + lm,
            is_dir_marker: false,
            e_tag: None,
        };
        let index = Index::default();
        let mut listing = Listing::default();
        for obj in [
            // written before the manifest's second: vouched for
            slot("a", 5, Duration::from_millis(9_999)),
            // listed at exactly the time its entry records
            slot("b", 5, Duration::ZERO),
            // another size
            slot("c", 6, Duration::ZERO),
            // rewritten in the manifest's own second (whole-second listing)
            slot("d", 5, Duration::from_secs(10)),
            // not in the manifest
            slot("e", 5, Duration::ZERO),
        ] {
            listing.add(obj, &index);
        }
        let mut files = listing.close(&index).files;
        let mut report = LoadReport::default();
        assert_eq!(manifest::read(&m, |_| ()), Ok(5));
        apply_manifest(&m, &mut files, &mut report);
        assert_eq!(
            (report.from_manifest, report.stale, report.unused),
            (2, 2, 1)
        );
        let described = |p: &str| files[Path::new(p)].stamp == DESCRIBED;
        let known: Vec<bool> = ["a", "b", "c", "d", "e"].map(described).to_vec();
        assert_eq!(known, [true, true, false, false, false]);
        let a = &files[Path::new("a")];
        assert_eq!(a.remote(Path::new("a")).sha256, Some("ab".repeat(32)));
        assert_eq!(
            a.version.as_ref().unwrap().until,
            Some(manifest_until(m.last_modified))
        );
    }
}
