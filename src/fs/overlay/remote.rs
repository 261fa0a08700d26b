//! Files that are only in the bucket: shown from the index, made local on demand.
//!
//! A bucket-only file has a node without a descriptor. Its attributes come from the index, so
//! `ls -l` downloads nothing; an operation that needs its bytes fails at once with
//! [`OverlayError::NeedsFetch`], before it has changed anything, naming what to download. The
//! caller downloads ([`Overlay::fetch_needed`]) and runs the operation again: the FUSE layer
//! parks the request meanwhile, [`Overlay::blocking`] simply waits. Once the file is local, the
//! node gets its descriptor and the index forgets the file. A file about to be emptied
//! (`O_TRUNC`, truncate to zero) is made local as an empty file, without a download.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Attr, FETCH_ATTEMPTS, FileKind, Ino, Overlay, OverlayError, Result};
use crate::engine::index::RemoteFile;
use crate::os::creds;

impl Overlay {
    /// The downloads an operation that failed with [`OverlayError::NeedsFetch`] waits for,
    /// as one future that ends when all are local (or one failed). `open`: the application
    /// opens the file (its directory is then read ahead).
    pub fn fetch_needed(
        &self,
        paths: &[PathBuf],
        open: bool,
    ) -> futures::future::BoxFuture<'static, crate::engine::fetch::Outcome> {
        use futures::FutureExt;
        let Some(r) = &self.remote else {
            return futures::future::ready(Ok(())).boxed();
        };
        let flights: Vec<_> = paths
            .iter()
            .map(|p| {
                if open {
                    r.fetcher.open(p)
                } else {
                    r.fetcher.request(p, crate::engine::fetch::Priority::Open)
                }
            })
            .collect();
        futures::future::try_join_all(flights)
            .map(|res| res.map(drop))
            .boxed()
    }

    /// How long the bucket has delivered nothing to any download, counting from `since` at
    /// the latest.
    pub fn bucket_idle_for(&self, since: std::time::Instant) -> std::time::Duration {
        self.remote
            .as_ref()
            .map_or(std::time::Duration::ZERO, |r| r.fetcher.idle_for(since))
    }

    /// Runs `op`, downloading what it needs and running it again, waiting right here: for
    /// callers that may block (tests, tools). The FUSE layer parks the request instead.
    pub fn blocking<T>(&self, mut op: impl FnMut(&Overlay) -> Result<T>) -> Result<T> {
        for _ in 0..FETCH_ATTEMPTS {
            match op(self) {
                Err(OverlayError::NeedsFetch(paths)) => {
                    let rt = self.runtime().expect("only a remote needs downloads");
                    rt.block_on(self.fetch_needed(&paths, true))
                        .map_err(OverlayError::Fetch)?;
                }
                other => return other,
            }
        }
        op(self)
    }

    /// The bucket-only file at `path`, if there is one.
    pub(super) fn remote_file(&self, path: &Path) -> Option<RemoteFile> {
        self.remote.as_ref()?.index.file(path)
    }

    /// The attributes of a bucket-only file in directory `parent`: the mode and owner its
    /// download gives it (the directory's owner where the bucket names none, or root).
    pub(super) fn remote_attr(&self, ino: Ino, parent: Ino, f: &RemoteFile) -> Attr {
        let (uid, gid) = f.restored_owner(self.owner_of_dir(parent));
        Attr {
            ino,
            size: f.size,
            blocks: f.size.div_ceil(512),
            atime: f.mtime,
            mtime: f.mtime,
            ctime: f.mtime,
            kind: FileKind::File,
            perm: f.restored_mode() as u16,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
        }
    }

    /// The owner of directory `dir` (of the served directory if it cannot be found).
    fn owner_of_dir(&self, dir: Ino) -> (u32, u32) {
        let st = self
            .dir_fd(dir)
            .ok()
            .and_then(|fd| self.local.stat(fd.as_fd()).ok())
            .unwrap_or_else(|| self.local.root_stat());
        (st.uid, st.gid)
    }

    /// Gives a bucket-only node the local file that now exists at `path`.
    fn attach_local(&self, ino: Ino, path: &Path) -> Result<Arc<OwnedFd>> {
        let fd = self
            .local
            .open_beneath(path, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .map_err(OverlayError::local("open"))?;
        let st = self
            .local
            .stat(fd.as_fd())
            .map_err(OverlayError::local("open"))?;
        if let Some(r) = &self.remote {
            r.index.remove(path);
        }
        self.inodes
            .attach(ino, fd, &st)
            .ok_or(OverlayError::UnknownInode(ino))
    }

    /// Gives a bucket-only node its local file once downloaded. Never waits: if the file is
    /// not local yet, the caller is told what to download first ([`OverlayError::NeedsFetch`]).
    pub(super) fn hydrate(&self, ino: Ino) -> Result<Arc<OwnedFd>> {
        let path = self
            .inodes
            .path(ino)
            .ok_or(OverlayError::UnknownInode(ino))?;
        if self.remote.is_none() {
            return Err(OverlayError::UnknownInode(ino));
        }
        if self.local.stat_beneath(&path).is_err() {
            return Err(OverlayError::NeedsFetch(vec![path]));
        }
        self.attach_local(ino, &path)
    }

    /// Makes a bucket-only node local as an empty file, without downloading it: it is about to
    /// be truncated anyway (`O_TRUNC`, `truncate(0)`).
    pub(super) fn materialize_empty(&self, ino: Ino) -> Result<Arc<OwnedFd>> {
        let path = self
            .inodes
            .path(ino)
            .ok_or(OverlayError::UnknownInode(ino))?;
        let Some(f) = self.remote_file(&path) else {
            return self.hydrate(ino);
        };
        let parent = self
            .inodes
            .with_node(ino, |n| n.parent)
            .ok_or(OverlayError::UnknownInode(ino))?;
        match self.local.open_beneath(
            &path,
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            f.restored_mode(),
        ) {
            Ok(file) => {
                // The owner the download would give it; etlfs' doing, not the caller's.
                let (uid, gid) = f.restored_owner(self.owner_of_dir(parent));
                let _ =
                    creds::as_daemon(|| self.local.set_owner(file.as_fd(), Some(uid), Some(gid)));
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(OverlayError::local("create")(e)),
        }
        self.attach_local(ino, &path)
    }
}
