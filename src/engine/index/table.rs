//! The index's table: how each file is kept (compactly: a mount may know 100,000 of them), the
//! directory tree beside it, the entries that departed, and which object serves which file.
//!
//! Apart from [`super::Index`]'s methods because these keep what must change together — a
//! file's entry, its link in the directory tree, the object that serves it, its stamp —
//! together; the methods take the lock and change the table mostly through them.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Departed, RemoteFile, Version, moved_path};
use crate::os::{from_ns, narrow, ns};
use crate::store::bucket::{CompactETag, CompactSha, FileMeta};

/// A file as the index keeps it: compact, since a mount may know 100,000 of them (the
/// checksum in binary, the object's path not repeated when it is the file's own).
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) size: u64,
    /// Nanoseconds since the epoch (half a `SystemTime`).
    pub(super) mtime_ns: i64,
    pub(super) mode: u32,
    pub(super) owner: Option<(u32, u32)>,
    sha256: Option<CompactSha>,
    /// Where the object is, when not at the file's own path (a rename not carried out yet).
    /// Rare, so a thin pointer: 8 bytes in each entry, not a boxed path's 16.
    pub(super) source: Option<Box<PathBuf>>,
    /// `None`: not known well enough to be written to a manifest (evicted, renamed, or its
    /// metadata could not be read).
    pub(super) version: Option<Known>,
    /// Tells this file at this path apart from any other that was there (set by
    /// [`Inner::put`]; an object moving under it keeps it): see [`Index::stamp`].
    pub(super) stamp: u64,
}

/// [`Version`], kept compact.
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub(super) e_tag: Option<CompactETag>,
    /// [`Version::until`] in nanoseconds, `i64::MIN` for `None` (an `Option` costs 8 bytes
    /// more per file).
    until_ns: i64,
}

impl Known {
    pub(super) fn new(v: Version) -> Known {
        Known::at(v.e_tag.as_deref().map(CompactETag::new), v.until)
    }

    pub(super) fn at(e_tag: Option<CompactETag>, until: Option<SystemTime>) -> Known {
        Known {
            e_tag,
            until_ns: until.map_or(i64::MIN, |t| narrow(ns(t))),
        }
    }

    pub(super) fn until(&self) -> Option<SystemTime> {
        (self.until_ns != i64::MIN).then(|| from_ns(self.until_ns.into()))
    }

    pub(super) fn version(&self) -> Version {
        Version {
            e_tag: self.e_tag.as_ref().map(CompactETag::text),
            until: self.until(),
        }
    }
}

impl Stored {
    /// An object without etlfs metadata, as it is served: its listed time, mode 0644.
    pub(super) fn plain(size: u64, last_modified: SystemTime) -> Stored {
        Stored {
            size,
            mtime_ns: narrow(ns(last_modified)),
            mode: 0o644,
            owner: None,
            sha256: None,
            source: None,
            version: None,
            stamp: 0,
        }
    }

    pub(super) fn with_meta(size: u64, m: &FileMeta) -> Stored {
        Stored::described(size, m.mtime_ns, m.mode, &m.sha256, m.owner)
    }

    pub(super) fn described(
        size: u64,
        mtime_ns: i128,
        mode: u32,
        sha256: &str,
        owner: Option<(u32, u32)>,
    ) -> Stored {
        Stored {
            size,
            mtime_ns: narrow(mtime_ns),
            mode: mode & 0o7777,
            owner,
            sha256: CompactSha::new(sha256),
            source: None,
            version: None,
            stamp: 0,
        }
    }

    pub(super) fn from_remote(file: &RemoteFile, path: &Path, version: Option<Version>) -> Stored {
        Stored {
            size: file.size,
            mtime_ns: narrow(ns(file.mtime)),
            mode: file.mode,
            owner: file.owner,
            sha256: file.sha256.as_deref().and_then(CompactSha::new),
            source: (file.source != path).then(|| Box::new(file.source.clone())),
            version: version.map(Known::new),
            stamp: 0,
        }
    }

    pub(super) fn mtime(&self) -> SystemTime {
        from_ns(self.mtime_ns.into())
    }

    pub(super) fn departed(&self, path: &Path) -> Option<Departed> {
        Some(Departed {
            file: self.remote(path),
            version: self.version.as_ref()?.version(),
        })
    }

    pub(super) fn remote(&self, path: &Path) -> RemoteFile {
        RemoteFile {
            size: self.size,
            mtime: self.mtime(),
            mode: self.mode,
            sha256: self.sha256.as_ref().map(CompactSha::text),
            owner: self.owner,
            source: self
                .source
                .as_deref()
                .map_or(path, PathBuf::as_path)
                .to_path_buf(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    /// Boxed paths and names: a `PathBuf` is a third larger and may carry spare capacity.
    pub(super) files: HashMap<Box<Path>, Stored>,
    /// Directory path → its entries' names and whether each is a directory.
    pub(super) children: HashMap<PathBuf, BTreeMap<Box<OsStr>, bool>>,
    /// Entries that left `files` with a known version, until the mirror takes them.
    pub(super) departed: HashMap<Box<Path>, Stored>,
    /// Where the object of each file renamed while bucket-only is (its `source`) → the file.
    /// One file per object: a bucket-only file is never copied (a hard link fetches it).
    /// Few entries: only renames the mirror has not carried out yet.
    pub(super) by_source: HashMap<PathBuf, (PathBuf, u64)>,
    pub(super) last_stamp: u64,
}

impl Inner {
    /// Puts a file at `path` (replacing whatever was there) with a new stamp.
    pub(super) fn put(&mut self, path: PathBuf, mut s: Stored) {
        self.last_stamp += 1;
        s.stamp = self.last_stamp;
        if let Some(old) = self.files.remove(path.as_path()) {
            self.forget_source(&old);
        }
        if let Some(src) = &s.source {
            self.by_source
                .insert(src.to_path_buf(), (path.clone(), s.stamp));
        }
        self.files.insert(path.into_boxed_path(), s);
    }

    /// Takes the file at `path` out of `files`.
    pub(super) fn take(&mut self, path: &Path) -> Option<Stored> {
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

    pub(super) fn link(&mut self, path: &Path, is_dir: bool) {
        let mut cur = path.to_path_buf();
        let mut dir = is_dir;
        while let (Some(parent), Some(name)) = (
            cur.parent().map(Path::to_path_buf),
            cur.file_name().map(Box::<OsStr>::from),
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
    pub(super) fn rename(&mut self, from: &Path, to: &Path) {
        let moved: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| p.starts_with(from))
            .map(|p| p.to_path_buf())
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
            s.source = Some(s.source.take().unwrap_or_else(|| Box::new(p.clone())));
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
    pub(super) fn is_dir(&self, path: &Path) -> Option<bool> {
        let (parent, name) = (path.parent()?, path.file_name()?);
        self.children.get(parent)?.get(name).copied()
    }

    pub(super) fn unlink(&mut self, path: &Path) {
        if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
            if let Some(c) = self.children.get_mut(parent) {
                c.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The table's entries are what a mount of 100,000 files spends its memory on.
    #[test]
    fn an_entry_stays_small() {
        assert!(std::mem::size_of::<super::Stored>() <= 120);
    }
}
