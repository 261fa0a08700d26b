//! `rename` over the union of local and bucket-only files.
//!
//! A bucket-only file is renamed without a download: the journal intent makes the mirror move
//! its object, and the index serves it under the new name meanwhile. Bucket-only files below a
//! renamed directory move with it the same way. The rare cases the bucket cannot take that way
//! (an exchange, no-replace, a rename over a directory, a new name that cannot be a key) fetch
//! the files they need first and then work on local files.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Child, Ino, Overlay, OverlayError, Result};
use crate::engine::events::Intent;
use crate::engine::index::moved_path;
use crate::engine::journal::Source;
use crate::engine::journal::exchange_stage;

/// One rename request, with what it found at both names.
struct Move<'a> {
    parent: Ino,
    name: &'a OsStr,
    new_parent: Ino,
    new_name: &'a OsStr,
    /// The kernel's `RENAME_*` flags.
    flags: u32,
    exchange: bool,
    old_dir: Arc<OwnedFd>,
    new_dir: Arc<OwnedFd>,
    /// The paths of both names; `None` once a directory on the way has no name any more.
    from_path: Option<PathBuf>,
    to_path: Option<PathBuf>,
    /// The local entries at both names (`None`: bucket-only, or nothing there).
    moved: Option<Child>,
    replaced: Option<Child>,
}

/// How a rename is carried out.
enum Plan<'a> {
    /// In the index and the bucket alone: the file moved is bucket-only.
    InBucket { from: &'a Path, to: &'a Path },
    /// On the local files (with the bucket-only files below a moved directory following).
    Local,
}

impl Overlay {
    /// `rename`, with the kernel's `RENAME_NOREPLACE` / `RENAME_EXCHANGE` flags.
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.writable()?;
        self.check_reserved(parent, name)?;
        self.check_reserved(new_parent, new_name)?;
        // No download lands while this decides which names are bucket-only and moves them.
        let _placing = self.remote.as_ref().map(|r| r.fetcher.placing());
        let old_dir = self.dir_fd(parent)?;
        let new_dir = self.dir_fd(new_parent)?;
        let m = Move {
            parent,
            name,
            new_parent,
            new_name,
            flags,
            exchange: flags & libc::RENAME_EXCHANGE != 0,
            from_path: self.child_path(parent, name),
            to_path: self.child_path(new_parent, new_name),
            moved: self.child_id(&old_dir, name),
            replaced: self.child_id(&new_dir, new_name),
            old_dir,
            new_dir,
        };
        match self.plan_rename(&m)? {
            Plan::InBucket { from, to } => {
                // The file is not on the filesystem: it is asked about the directories alone.
                self.check_entries(&m.old_dir, "rename")?;
                self.check_entries(&m.new_dir, "rename")?;
                self.rename_remote(&m, from, to)
            }
            Plan::Local => {
                self.journaled(rename_intents(&m), || self.rename_local(&m))?;
                self.follow_rename(&m);
                Ok(())
            }
        }
    }

    /// How the bucket-only files at and below both names let the rename be done: refused (as
    /// the application would be refused if they were local), only once some are downloaded
    /// ([`OverlayError::NeedsFetch`]), in the bucket alone, or on the local files.
    fn plan_rename<'a>(&self, m: &'a Move) -> Result<Plan<'a>> {
        if let (Some(Child { dir: true, .. }), Some(to), Some(r), false) =
            (m.replaced, &m.to_path, &self.remote, m.exchange)
        {
            if r.index.has_children(to) {
                // Files only in the bucket are in the directory being replaced, as far as the
                // application can see (as for rmdir): replacing it would merge the two. (Once
                // the caller may change both directories at all.)
                self.check_entries(&m.old_dir, "rename")?;
                self.check_entries(&m.new_dir, "rename")?;
                return Err(OverlayError::local("rename")(
                    std::io::Error::from_raw_os_error(libc::ENOTEMPTY),
                ));
            }
        }
        let (Some(from), Some(to), Some(remote)) = (&m.from_path, &m.to_path, &self.remote) else {
            return Ok(Plan::Local);
        };
        let bucket = remote.fetcher.bucket();
        let from_remote = m.moved.is_none() && remote.index.file(from).is_some();
        let to_remote = m.replaced.is_none() && remote.index.file(to).is_some();
        if m.flags & libc::RENAME_NOREPLACE != 0 && to_remote {
            return Err(OverlayError::local("rename")(
                std::io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
        if from_remote && m.flags == 0 && !m.replaced.is_some_and(|c| c.dir) && bucket.can_hold(to)
        {
            return Ok(Plan::InBucket { from, to });
        }
        // The rare cases (exchange, no-replace, over a directory, to a name the bucket
        // cannot hold) work on local files.
        let mut fetch = Vec::new();
        if from_remote {
            fetch.push(from.clone());
        }
        if to_remote && m.exchange {
            fetch.push(to.clone());
        }
        // Bucket-only files below a moving directory stay bucket-only: the mirror moves
        // their objects. Except where their new name cannot be a key (the mirror could not
        // move their object there, and it goes with the old name), or, in an exchange, the
        // name of the stage the mirror moves them through (see `mirror/`): those are
        // fetched, and then move as local files do.
        let cannot_move = |p: &Path, from: &Path, to: &Path, staged: bool| {
            let rest = p.strip_prefix(from).unwrap_or(p);
            !bucket.can_hold(&moved_path(p, from, to))
                || (staged && !bucket.can_hold(&exchange_stage(u64::MAX, rest)))
        };
        if m.moved.is_some_and(|c| c.dir) && remote.index.has_children(from) {
            fetch.extend(
                remote
                    .index
                    .files_below(from)
                    .into_iter()
                    .filter(|p| cannot_move(p, from, to, m.exchange)),
            );
        }
        if m.exchange && m.replaced.is_some_and(|c| c.dir) && remote.index.has_children(to) {
            fetch.extend(
                remote
                    .index
                    .files_below(to)
                    .into_iter()
                    .filter(|p| cannot_move(p, to, from, false)),
            );
        }
        if !fetch.is_empty() {
            // Retried once they are local; by then they are no longer bucket-only.
            return Err(OverlayError::NeedsFetch(fetch));
        }
        Ok(Plan::Local)
    }

    /// The local rename itself, and the index following it.
    fn rename_local(&self, m: &Move) -> Result<()> {
        self.local
            .rename(
                m.old_dir.as_fd(),
                m.name,
                m.new_dir.as_fd(),
                m.new_name,
                m.flags,
            )
            .map_err(OverlayError::local("rename"))?;
        // Before the mirror hears of the rename: the index tells it which objects are
        // bucket-only files' (and must move).
        if let (Some(from), Some(to), Some(remote)) = (&m.from_path, &m.to_path, &self.remote) {
            if m.exchange {
                // Bucket-only files below either side move with it (the two nodes
                // themselves are local).
                remote.index.exchange(from, to);
            } else if m.moved.is_some_and(|c| c.dir) {
                // Bucket-only files below a renamed directory move with it.
                remote.index.rename(from, to);
            } else {
                // A local file now stands where a bucket-only one may have been.
                remote.index.remove(to);
            }
        }
        Ok(())
    }

    /// After a local rename: the disk cache's paths and the nodes' names follow it.
    fn follow_rename(&self, m: &Move) {
        let (from, to) = ((m.parent, m.name), (m.new_parent, m.new_name));
        if let (Some(from), Some(to), Some(cache)) = (&m.from_path, &m.to_path, &self.cache) {
            if m.exchange {
                cache.remove(from);
                cache.remove(to);
            } else {
                cache.remove(to);
                cache.rename(from, to);
            }
        }
        let (moved, replaced) = (m.moved.map(|c| c.id), m.replaced.map(|c| c.id));
        if let Some(id) = moved {
            self.inodes.renamed(id, from, to);
        }
        if let Some(id) = replaced.filter(|r| Some(*r) != moved) {
            if m.exchange {
                self.inodes.renamed(id, to, from);
            } else {
                self.inodes.unlinked(id, m.new_parent, m.new_name);
            }
        }
    }

    /// Rename of a file that is only in the bucket (at `from`, to `to`): no download. The
    /// journal intent makes the mirror copy the object to its new key and delete the old one;
    /// until then the index serves the new name from the old key.
    fn rename_remote(&self, m: &Move, from: &Path, to: &Path) -> Result<()> {
        let intent = Intent::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
            dir: false,
            source: Some(Source::Bucket {
                replaced: m.replaced.map(|c| c.ino),
            }),
        };
        self.journaled(vec![intent], || {
            if m.replaced.is_some() {
                // The local file being replaced goes, as a rename over it would make it go.
                self.local
                    .unlink(m.new_dir.as_fd(), m.new_name)
                    .map_err(OverlayError::local("rename"))?;
            }
            // Before the mirror hears of it: the index says the object at `from` is this
            // file's (and must move, see `mirror/`).
            if let Some(r) = &self.remote {
                r.index.rename(from, to);
            }
            Ok(())
        })?;
        if let Some(c) = m.replaced {
            self.inodes.unlinked(c.id, m.new_parent, m.new_name);
        }
        if let Some(id) = self.inodes.find_remote(m.parent, m.name, from) {
            self.inodes
                .renamed(id, (m.parent, m.name), (m.new_parent, m.new_name));
        }
        Ok(())
    }
}

/// What the journal records before a local rename: the move (or exchange) of the local
/// entries, so a crash cannot lose it.
fn rename_intents(m: &Move) -> Vec<Intent> {
    match (m.moved, m.replaced, m.from_path.clone(), m.to_path.clone()) {
        (Some(a_node), Some(b_node), Some(a), Some(b)) if m.exchange => vec![Intent::Exchange {
            a,
            b,
            a_dir: a_node.dir,
            b_dir: b_node.dir,
            a_ino: a_node.ino,
            b_ino: b_node.ino,
        }],
        (Some(moved), _, Some(from), Some(to)) if !m.exchange => vec![Intent::Rename {
            from,
            to,
            dir: moved.dir,
            source: Some(Source::Local { ino: moved.ino }),
        }],
        _ => vec![],
    }
}
