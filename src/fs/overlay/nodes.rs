//! How a request reaches the local inode behind a node id, and the bookkeeping every change
//! shares.
//!
//! A node's descriptor may be held, parked (closed to stay within the descriptor budget) or
//! absent (bucket-only). [`Overlay::fd_of`] opens a parked one again by name, checked to be
//! the same inode; [`Overlay::node_fd`] insists on a local file (a bucket-only one must be
//! downloaded first, see [`super::remote`]). The rest is what every changing request does
//! alike: refuse the hidden state directory, tell the mirror about a change under every name
//! of the file, and journal a removal or rename before it runs, so a crash can neither
//! resurrect nor lose anything.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use super::inode::{self, ROOT, Slot};
use super::{Attr, Child, Entry, Ino, Overlay, OverlayError, Result};
use crate::engine::events::Intent;
use crate::os::local::Stat;

impl Overlay {
    pub(super) fn is_hidden(&self, parent: Ino, name: &OsStr) -> bool {
        self.hidden
            .as_ref()
            .is_some_and(|h| h.parent == parent && h.name == name)
    }

    /// Refuses any change that names the hidden state directory.
    pub(super) fn check_reserved(&self, parent: Ino, name: &OsStr) -> Result<()> {
        if self.is_hidden(parent, name) {
            return Err(OverlayError::Reserved(name.to_owned()));
        }
        Ok(())
    }

    /// A node's descriptor (`None` while bucket-only) and kind; `None` if the node is unknown
    /// or was parked and its name no longer leads to its inode.
    pub(super) fn fd_of(&self, ino: Ino) -> Option<(Option<Arc<OwnedFd>>, bool)> {
        match self.inodes.slot(ino)? {
            (Slot::Fd(fd), is_dir) => Some((Some(fd), is_dir)),
            (Slot::Remote, is_dir) => Some((None, is_dir)),
            (Slot::Parked { parent, name }, is_dir) => {
                let dir = self.dir_fd(parent).ok()?;
                let (fd, st) = self.local.lookup(dir.as_fd(), &name).ok()?;
                if self.inodes.id_of(st.dev, st.ino) != Some(ino) {
                    return None;
                }
                Some((Some(self.inodes.unpark(ino, fd)?), is_dir))
            }
        }
    }

    /// The local descriptor of a node; a bucket-only file is downloaded first.
    pub(super) fn node_fd(&self, ino: Ino) -> Result<Arc<OwnedFd>> {
        match self.fd_of(ino) {
            Some((Some(fd), _)) => Ok(fd),
            Some((None, _)) => self.hydrate(ino),
            None => Err(OverlayError::UnknownInode(ino)),
        }
    }

    pub(super) fn dir_fd(&self, ino: Ino) -> Result<Arc<OwnedFd>> {
        // Directories are never parked.
        match self.inodes.slot(ino).map(|(slot, is_dir)| match slot {
            Slot::Fd(fd) => (Some(fd), is_dir),
            _ => (None, is_dir),
        }) {
            Some((Some(fd), true)) => Ok(fd),
            Some((_, false)) | Some((None, true)) => Err(OverlayError::NotADirectory(ino)),
            None => Err(OverlayError::UnknownInode(ino)),
        }
    }

    /// Registers a freshly found local inode and builds its entry.
    pub(super) fn entry(&self, parent: Ino, name: &OsStr, fd: OwnedFd, st: Stat) -> Entry {
        let ino = self.inodes.insert_lookup(parent, name, fd, &st);
        Entry {
            ino,
            attr: Attr::from_stat(ino, &st),
        }
    }

    /// The node a child entry of `parent` is (by a stat of the name, no reference taken).
    /// Called before a name is removed or replaced: a parked node of that inode gets the
    /// descriptor, so the inode stays pinned while the kernel knows its number.
    pub(super) fn child_id(&self, dir: &OwnedFd, name: &OsStr) -> Option<Child> {
        let (fd, st) = self.local.lookup(dir.as_fd(), name).ok()?;
        let id = self.inodes.id_of(st.dev, st.ino)?;
        if let Some((Slot::Parked { .. }, _)) = self.inodes.slot(id) {
            self.inodes.unpark(id, fd);
        }
        Some(Child {
            id,
            dir: st.is_dir(),
            ino: st.ino,
        })
    }

    /// The relative path of `name` in `parent`, if the parent still has a place in the tree.
    pub(super) fn child_path(&self, parent: Ino, name: &OsStr) -> Option<PathBuf> {
        Some(self.inodes.path(parent)?.join(name))
    }

    /// Reports a change of a node to the mirror, under every name of it the kernel knows.
    pub(super) fn changed(&self, ino: Ino, urgent: bool) {
        let paths = self.inodes.paths(ino);
        self.sink.changed(self.local_ino_of(ino), &paths, urgent);
    }

    /// The local inode number of a node (see `files::local_ino`): its id, unless that is synthetic.
    pub(super) fn local_ino_of(&self, ino: Ino) -> u64 {
        if ino == ROOT {
            return self.local.root_stat().ino;
        }
        if ino < inode::SYNTHETIC_BASE {
            return ino;
        }
        match self.fd_of(ino) {
            Some((Some(fd), _)) => self.local.stat(fd.as_fd()).map_or(ino, |st| st.ino),
            _ => ino,
        }
    }

    /// Runs a removal or rename with its intent durably journaled first: a crash can then
    /// neither resurrect what was removed nor lose a move. The intent is cancelled when the
    /// local operation fails, and goes to the mirror when `op` returns: `op` updates what the
    /// mirror consults (the index says which objects belong to bucket-only files) too.
    pub(super) fn journaled<T>(
        &self,
        intents: Vec<Intent>,
        op: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let mut tokens = Vec::with_capacity(intents.len());
        for intent in intents {
            match self.sink.intent(intent) {
                Ok(t) => tokens.push(t),
                Err(e) => {
                    for t in tokens {
                        self.sink.finish(t, false);
                    }
                    return Err(OverlayError::local("journal")(e));
                }
            }
        }
        let res = op();
        for t in tokens {
            self.sink.finish(t, res.is_ok());
        }
        res
    }
}
