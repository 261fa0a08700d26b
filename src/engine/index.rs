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
//! ([`Index::take_departed`]), so the manifest it writes keeps covering fetched files; at a
//! start, a local file whose upload record already knows its version is simply forgotten
//! ([`Index::forget`]), so a restart over many local files never holds a second table of them.
//!
//! Hostile or odd bucket content never reaches the namespace: a key whose relative path has an
//! empty, `.` or `..` segment, or a NUL, is refused; so is a file whose name is also a
//! directory prefix (`a` and `a/b`: the directory wins). Each refusal is logged once and counted.
//!
//! The table and its invariants are in [`table`]; the load that builds it is in [`load`].

mod load;
mod table;

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use self::load::LoadReport;
use self::table::{Inner, Stored};
use crate::escape::esc;

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
            .map(|c| c.iter().map(|(n, d)| (n.to_os_string(), *d)).collect())
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
                    .map(move |(n, _)| parent.join(&**n))
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
            .map(|(p, s)| (p.to_path_buf(), s.remote(p)))
            .collect()
    }

    /// The files at or below `path` (a directory, or a file itself).
    pub fn files_below(&self, path: &Path) -> Vec<PathBuf> {
        self.read()
            .files
            .keys()
            .filter(|p| p.starts_with(path))
            .map(|p| p.to_path_buf())
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
            inner.departed.insert(path.into(), s);
        }
        Some(file)
    }

    /// Forgets a file without keeping what it knew about its object version (a file found
    /// local at start whose upload record knows that already).
    pub fn forget(&self, path: &Path) {
        let mut inner = self.write();
        if inner.take(path).is_some() {
            inner.unlink(path);
        }
    }

    /// Forgets a directory and everything below it (an `rmdir` the bucket has not followed
    /// yet: its marker, and whatever it still lists below, must not bring it back).
    pub fn remove_dir(&self, dir: &Path) {
        let mut inner = self.write();
        let below: Vec<PathBuf> = inner
            .files
            .keys()
            .filter(|p| p.starts_with(dir))
            .map(|p| p.to_path_buf())
            .collect();
        for p in below {
            if let Some(s) = inner.take(&p) {
                if s.version.is_some() {
                    inner.departed.insert(p.into(), s);
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
        let paths: Vec<PathBuf> = inner
            .departed
            .keys()
            .filter(|p| take(p))
            .map(|p| p.to_path_buf())
            .collect();
        paths
            .into_iter()
            .filter_map(|p| {
                let s = inner.departed.remove(p.as_path())?;
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
            .filter_map(|(p, s)| s.departed(&p).map(|d| (p.into(), d)))
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
        let Some(s) = inner
            .files
            .get_mut(path.as_path())
            .filter(|s| s.stamp == stamp)
        else {
            return;
        };
        if path == to {
            s.source = None;
        } else {
            s.source = Some(Box::new(to.to_path_buf()));
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
            inner.put(path.into(), stored);
            added += 1;
        }
        for (dir, children) in theirs.children {
            for (name, is_dir) in children {
                if is_dir {
                    inner.link(&dir.join(&*name), true);
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

/// Where `p`, at or below `from`, ends up when `from` is renamed to `to`.
pub fn moved_path(p: &Path, from: &Path, to: &Path) -> PathBuf {
    match p.strip_prefix(from) {
        Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
        _ => to.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

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
}
