//! What the bucket holds: path → size, mtime, mode and checksum, loaded once at start.
//!
//! A listing gives only size and last-modified; the metadata etlfs attaches to each object
//! (mtime, mode, checksum) needs one HEAD per object, done concurrently. Objects written by other
//! tools carry no etlfs metadata and are served with sensible defaults (their last-modified time,
//! mode 0644, no checksum to verify).
//!
//! The index holds only what a mount needs to show files that are not on the local disk: after
//! the load, entries for files that are local are dropped as soon as the overlay sees them, and
//! the overlay updates the index when a bucket-only file is removed or renamed.
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

use crate::bucket::{Bucket, BucketError};

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

#[derive(Debug, Default)]
struct Inner {
    files: HashMap<PathBuf, RemoteFile>,
    /// Directory path → its entries' names and whether each is a directory.
    children: HashMap<PathBuf, BTreeMap<OsString, bool>>,
}

impl Inner {
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

    fn unlink(&mut self, path: &Path) {
        if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
            if let Some(c) = self.children.get_mut(parent) {
                c.remove(name);
            }
        }
    }
}

/// The bucket's contents as the overlay needs them.
#[derive(Debug, Default)]
pub struct Index {
    inner: RwLock<Inner>,
    refused: AtomicU64,
}

impl Index {
    /// Lists the whole prefix (paginated by `object_store`) and reads each file's metadata.
    pub async fn load(bucket: &Bucket) -> Result<Index, BucketError> {
        let listing = bucket.list(None).await?;
        let index = Index::default();
        let mut dirs = HashSet::new();
        let mut files = Vec::new();
        for obj in listing {
            if !valid_rel(&obj.rel) {
                index.refuse(&obj.rel, "not a safe relative path");
                continue;
            }
            if obj.is_dir_marker {
                dirs.insert(obj.rel);
            } else {
                files.push(obj);
            }
        }
        // Every parent of a file is a directory, marker or not.
        for f in &files {
            let mut p = f.rel.parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                if !dirs.insert(d.to_path_buf()) {
                    break;
                }
                p = d.parent();
            }
        }
        let metas: Vec<_> = futures::stream::iter(files.into_iter().filter(|f| {
            if dirs.contains(&f.rel) {
                index.refuse(
                    &f.rel,
                    "both a file and a directory in the bucket; the directory wins",
                );
                false
            } else {
                true
            }
        }))
        .map(|obj| async move {
            let meta = bucket.meta(&obj.rel).await;
            (obj, meta)
        })
        .buffer_unordered(HEAD_CONCURRENCY)
        .collect()
        .await;
        {
            let mut inner = index.inner.write().unwrap_or_else(|e| e.into_inner());
            for d in &dirs {
                inner.link(d, true);
            }
            for (obj, meta) in metas {
                let (mtime, mode, sha256, owner) = match meta {
                    Ok(Some(m)) => (
                        m.mtime(),
                        m.mode & 0o7777,
                        Some(m.sha256.clone()).filter(|s| !s.is_empty()),
                        m.owner,
                    ),
                    Ok(None) => (obj.last_modified, 0o644, None, None),
                    Err(BucketError::NotFound { .. }) => continue, // deleted while we listed
                    Err(e) => {
                        tracing::warn!(path = %obj.rel.display(), error = %e, "unreadable object metadata; serving the object with defaults");
                        (obj.last_modified, 0o644, None, None)
                    }
                };
                inner.link(&obj.rel, false);
                let rel = obj.rel.clone();
                inner.files.insert(
                    rel.clone(),
                    RemoteFile {
                        size: obj.size,
                        mtime,
                        mode,
                        sha256,
                        owner,
                        source: rel,
                    },
                );
            }
        }
        Ok(index)
    }

    fn refuse(&self, rel: &Path, why: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = %rel.display(), "bucket object not shown: {why}");
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys refused while loading.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn file(&self, path: &Path) -> Option<RemoteFile> {
        self.read().files.get(path).cloned()
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
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect()
    }

    /// Forgets a file: it is local now, or it was removed.
    pub fn remove(&self, path: &Path) -> Option<RemoteFile> {
        let mut inner = self.write();
        let f = inner.files.remove(path)?;
        inner.unlink(path);
        Some(f)
    }

    /// Adds (or replaces) a bucket-only file, e.g. a local file evicted to the bucket.
    pub fn insert(&self, path: &Path, file: RemoteFile) {
        let mut inner = self.write();
        inner.link(path, false);
        inner.files.insert(path.to_path_buf(), file);
    }

    /// A bucket-only file, or everything below a directory, was renamed.
    pub fn rename(&self, from: &Path, to: &Path) {
        let mut inner = self.write();
        let moved: Vec<(PathBuf, RemoteFile)> = inner
            .files
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        for (p, f) in moved {
            inner.files.remove(&p);
            inner.unlink(&p);
            let new = moved_path(&p, from, to);
            inner.link(&new, false);
            inner.files.insert(new, f);
        }
        // Child lists of a renamed directory move with it.
        let dirs: Vec<PathBuf> = inner
            .children
            .keys()
            .filter(|d| d.starts_with(from))
            .cloned()
            .collect();
        for d in dirs {
            if let Some(c) = inner.children.remove(&d) {
                let new = moved_path(&d, from, to);
                inner.children.entry(new).or_default().extend(c);
            }
        }
        inner.unlink(from);
    }

    /// The object of a file renamed while bucket-only now sits under its new name.
    pub fn moved(&self, path: &Path) {
        if let Some(f) = self.write().files.get_mut(path) {
            f.source = path.to_path_buf();
        }
    }

    pub fn len(&self) -> usize {
        self.read().files.len()
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
    use std::sync::Arc;

    use bytes::Bytes;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;
    use crate::bucket::FileMeta;

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
        let f = |p: &str| RemoteFile {
            size: 1,
            mtime: SystemTime::UNIX_EPOCH,
            mode: 0o644,
            sha256: None,
            owner: None,
            source: PathBuf::from(p),
        };
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
        idx.moved(Path::new("e/sub/b"));
        assert_eq!(
            idx.file(Path::new("e/sub/b")).unwrap().source,
            PathBuf::from("e/sub/b")
        );
        idx.remove(Path::new("e/a"));
        assert_eq!(
            idx.children(Path::new("e")),
            vec![(OsString::from("sub"), true)]
        );
    }
}
