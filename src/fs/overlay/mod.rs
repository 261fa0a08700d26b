//! The namespace etlfs serves: the local directory today, local ∪ bucket once restore lands.
//!
//! `Overlay` is the filesystem without FUSE: every method is one request, takes plain
//! arguments and returns plain results (`Entry`, `Attr`, `Opened`, ...) or an
//! [`OverlayError`] that knows its errno. `fs/fuse` translates kernel requests into these
//! calls and the results into replies, so the core can be tested without a mount.
//!
//! # Residency of a file
//!
//! ```text
//!  Remote ──open──▶ Fetching ──▶ Local ──write/truncate/create──▶ Dirty
//!                                  ▲                                │ last writer closes
//!                                  └──────── Uploading ◀── debounce ┘
//! ```
//!
//! Only `Local` and `Dirty` exist so far: every file is on the local disk, and a file turns
//! `Dirty` when it is opened for writing, created or truncated, and back to `Local` when its
//! last writer closes. That transition is the point where the mirror (next step) takes a
//! consistent snapshot; `Remote`/`Fetching` come with lazy restore, `Uploading` with the mirror.
//!
//! # Concurrency
//!
//! FUSE requests arrive on several session threads. The inode and handle tables are behind
//! their own locks, held only to copy out an `Arc` of a descriptor; no system call runs with a
//! table lock held, except bookkeeping that must be atomic with the table update.

mod cache;
mod error;
mod handle;
mod inode;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use cache::LocalCache;

pub use error::{OverlayError, Result};
use handle::{DirHandle, DirSnapshotEntry, FileHandle, HandleTable};
use inode::{InodeTable, Slot};
pub use inode::{ROOT, Residency};

use crate::engine::fetch::Fetcher;
use crate::engine::index::{Index, RemoteFile};
use crate::engine::journal::Source;
use crate::engine::mirror::{ChangeSink, Intent};
use crate::escape::esc;
use crate::os::local::{self, LocalDir, Stat};
pub use crate::os::local::{Creds, TimeSet, XattrReply};

/// A node id as the kernel sees it.
pub type Ino = u64;

/// A local entry about to be removed, renamed or replaced ([`Overlay::child_id`]).
#[derive(Debug, Clone, Copy)]
struct Child {
    id: Ino,
    dir: bool,
    /// Its local inode number (what the journal records: see [`Source`]).
    ino: u64,
}

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    fn from_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => FileKind::File,
        }
    }
}

/// Attributes of a file as the application sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: FileKind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl Attr {
    fn from_stat(ino: Ino, st: &Stat) -> Attr {
        Attr {
            ino,
            size: st.size,
            blocks: st.blocks,
            atime: st.atime,
            mtime: st.mtime,
            ctime: st.ctime,
            kind: FileKind::from_mode(st.mode),
            perm: (st.mode & 0o7777) as u16,
            nlink: u32::try_from(st.nlink).unwrap_or(u32::MAX),
            uid: st.uid,
            gid: st.gid,
            rdev: st.rdev as u32,
            blksize: st.blksize,
        }
    }
}

/// A name resolved to a node; each `Entry` returned counts as one kernel lookup reference.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub ino: Ino,
    pub attr: Attr,
}

/// What `setattr` should change; `None` leaves a field alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

/// An open file: the handle number for the kernel and the local file behind it (which
/// `fs/fuse` registers as the passthrough backing file).
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    pub file: Arc<File>,
}

/// One directory entry for `readdir`.
#[derive(Debug, Clone)]
pub struct DirItem {
    pub ino: Ino,
    /// The offset of the *next* entry, which the kernel passes back to continue.
    pub next_offset: u64,
    pub kind: FileKind,
    pub name: OsString,
}

/// Filesystem statistics, from the local filesystem underneath.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A name in the tree that the mount must not show or let anyone touch.
#[derive(Debug)]
struct Hidden {
    parent: Ino,
    name: OsString,
}

/// The filesystem core.
#[derive(Debug)]
pub struct Overlay {
    local: LocalDir,
    inodes: InodeTable,
    handles: HandleTable,
    hidden: Option<Hidden>,
    /// Where changes are reported (the mirror).
    sink: Arc<dyn ChangeSink>,
    /// Bucket-only files: absent without a bucket (and in core tests).
    remote: Option<Remote>,
    /// `--max-local-bytes`: local files as an LRU cache of the bucket.
    cache: Option<Arc<LocalCache>>,
    /// Opens hold it shared, an eviction exclusively: a file is never evicted while an open
    /// of it is under way.
    evict_lock: RwLock<()>,
    /// Files evicted to the bucket since start (for `/metrics`).
    evictions: std::sync::atomic::AtomicU64,
    /// What the mount options ask of the served files.
    policy: Policy,
    /// Whether the kernel refused a private noatime mount for a backing file (said once).
    noatime_refused: std::sync::atomic::AtomicBool,
}

/// What the mount's `-o` options ask of the overlay itself (see [`crate::fs::mountopts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// `ro`: every change is refused with EROFS. The kernel refuses them first on a read-only
    /// mount; this holds whatever reaches us anyway.
    pub read_only: bool,
    /// `noatime`: files are opened for the application with `O_NOATIME`, so that reads etlfs
    /// serves leave the access time of the file underneath alone.
    pub noatime_files: bool,
    /// `noatime` or `nodiratime`: the same for directories.
    pub noatime_dirs: bool,
}

/// How often an operation is run again after the downloads it needed: a file can be evicted
/// again (`--max-local-bytes`) between its download and the retry.
pub const FETCH_ATTEMPTS: usize = 4;

/// What the overlay needs to show and fetch files that are only in the bucket.
#[derive(Debug)]
pub struct Remote {
    pub index: Arc<Index>,
    pub fetcher: Arc<Fetcher>,
    /// The runtime downloads run on: a parked request waits on it.
    pub rt: tokio::runtime::Handle,
}

impl Overlay {
    /// Serves `local`. `hidden` is a path relative to it (the state directory, when it lives
    /// inside the served directory) that stays invisible through the mount.
    pub fn new(
        local: LocalDir,
        hidden: Option<&Path>,
        sink: Arc<dyn ChangeSink>,
    ) -> std::io::Result<Overlay> {
        let root_stat = local.root_stat();
        let inodes = InodeTable::new(local.root_clone()?, &root_stat);
        let hidden = match hidden {
            None => None,
            Some(rel) => {
                let name = rel.file_name().ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("hidden path {} has no file name", esc(rel)),
                    )
                })?;
                let parent = match rel.parent() {
                    Some(p) if !p.as_os_str().is_empty() => {
                        let fd = local.open_beneath(p, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                        let st = local.stat(fd.as_fd())?;
                        inodes.id_of(st.dev, st.ino).ok_or_else(|| {
                            std::io::Error::other(format!(
                                "{} is on another filesystem than the served directory",
                                esc(p)
                            ))
                        })?
                    }
                    _ => ROOT,
                };
                Some(Hidden {
                    parent,
                    name: name.to_owned(),
                })
            }
        };
        Ok(Overlay {
            local,
            inodes,
            handles: HandleTable::default(),
            hidden,
            sink,
            remote: None,
            cache: None,
            evict_lock: RwLock::new(()),
            evictions: Default::default(),
            policy: Policy::default(),
            noatime_refused: Default::default(),
        })
    }

    /// Serves under what the mount options ask (read-only, no access times).
    pub fn with_policy(mut self, policy: Policy) -> Overlay {
        self.policy = policy;
        self
    }

    /// Under `noatime`, what to hand the kernel as the passthrough backing file of `file` (an
    /// open local file) instead of `file` itself: the same file reached through a private
    /// noatime mount, see [`LocalDir::noatime_twin`]. `None` without `noatime`, or when that
    /// mount cannot be made (said once: passthrough reads then update access times as the
    /// disk underneath does).
    pub fn noatime_backing(&self, file: &File) -> Option<File> {
        if !self.policy.noatime_files {
            return None;
        }
        match self.local.noatime_twin(file.as_fd()) {
            Ok(twin) => Some(twin),
            Err(e) => {
                if !self
                    .noatime_refused
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(error = %e, "noatime: no private noatime mount for passthrough; \
                        reads the kernel serves update access times as the disk underneath does");
                }
                None
            }
        }
    }

    /// EROFS on a read-only mount: called first by every request that would change something.
    fn writable(&self) -> Result<()> {
        if self.policy.read_only {
            return Err(OverlayError::ReadOnly);
        }
        Ok(())
    }

    /// The flags to open a local file (or directory) with for the application: the
    /// application's own, less `O_DIRECT`, plus `O_NOATIME` under `noatime`.
    ///
    /// `O_DIRECT` stays with the kernel: it already serves a FUSE file opened with `O_DIRECT`
    /// without its page cache (each read and write of that handle reaches us, or the backing
    /// file, which passthrough opens with the application's own flags). Our descriptor serves
    /// daemon-mode requests, whose buffers, offsets and sizes are the kernel's, not aligned
    /// for the disk underneath, which would refuse them with EINVAL. The data then goes
    /// through the local file's page cache, which the disk writes back as for any write; an
    /// application that needs it on the disk asks with fsync or O_SYNC, as with O_DIRECT on
    /// most filesystems.
    fn local_flags(&self, flags: i32, dir: bool) -> i32 {
        let noatime = if dir {
            self.policy.noatime_dirs
        } else {
            self.policy.noatime_files
        };
        (flags & !libc::O_DIRECT) | if noatime { libc::O_NOATIME } else { 0 }
    }

    /// Holds at most `budget` descriptors for files the kernel knows; past it, idle files'
    /// descriptors are closed and reopened by name on demand (see the inode table).
    pub fn with_fd_budget(mut self, budget: usize) -> Overlay {
        self.inodes.set_fd_budget(budget);
        self
    }

    /// Serves files that are only in the bucket, too.
    pub fn with_remote(mut self, remote: Remote) -> Overlay {
        self.remote = Some(remote);
        self
    }

    /// Bounds the local disk to `max` bytes of files (needs a remote). `existing` are the local
    /// files at start with their sizes.
    pub fn with_cache(mut self, max: u64, existing: Vec<(PathBuf, u64)>) -> Overlay {
        let cache = Arc::new(LocalCache::new(max, existing));
        if let Some(r) = &self.remote {
            r.fetcher.set_budget(Arc::clone(&cache) as _);
        }
        self.cache = Some(cache);
        self
    }

    /// The runtime downloads run on (none without a bucket).
    pub fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.remote.as_ref().map(|r| &r.rt)
    }

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

    /// Records a use of a local file for the LRU, and evicts if the disk is over its bound.
    fn used(&self, ino: Ino) {
        let Some(cache) = &self.cache else { return };
        let (Some(path), Some((Some(fd), false))) = (self.inodes.path(ino), self.fd_of(ino)) else {
            return;
        };
        if let Ok(st) = self.local.stat(fd.as_fd()) {
            cache.touch(&path, st.size);
        }
        if cache.over_limit() {
            self.evict();
        }
    }

    /// Evicts least recently used clean, closed files until the disk is within its bound.
    fn evict(&self) {
        let (Some(cache), Some(remote)) = (&self.cache, &self.remote) else {
            return;
        };
        for path in cache.candidates() {
            if !cache.over_limit() {
                break;
            }
            let _exclusive = self.evict_lock.write().unwrap_or_else(|e| e.into_inner());
            let st = match self.local.stat_beneath(&path) {
                Ok(st) if st.is_file() => st,
                _ => {
                    cache.remove(&path);
                    continue;
                }
            };
            if st.nlink > 1 {
                // Removing one name of a file with several frees nothing, and would make the
                // name come back from the bucket as a file of its own, no longer linked.
                continue;
            }
            // Only what the bucket holds exactly, and nothing open.
            let Some(sha256) = self.sink.in_bucket(&path, &st) else {
                continue;
            };
            if !self.inodes.detach_if_idle(st.dev, st.ino) {
                continue;
            }
            remote.index.insert(
                &path,
                RemoteFile {
                    size: st.size,
                    mtime: st.mtime,
                    mode: st.mode & 0o7777,
                    sha256: Some(sha256),
                    owner: Some((st.uid, st.gid)),
                    source: path.clone(),
                },
            );
            match self.local.unlink_beneath(&path) {
                Ok(()) => {
                    cache.remove(&path);
                    self.evictions
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(path = %esc(&path), bytes = st.size, "evicted to the bucket");
                }
                Err(e) => {
                    remote.index.remove(&path);
                    tracing::warn!(path = %esc(&path), error = %e, "eviction failed");
                }
            }
        }
    }

    /// The bucket-only file at `path`, if there is one.
    fn remote_file(&self, path: &Path) -> Option<RemoteFile> {
        self.remote.as_ref()?.index.file(path)
    }

    fn remote_attr(&self, ino: Ino, f: &RemoteFile) -> Attr {
        let root = self.local.root_stat();
        let (uid, gid) = f.restored_owner((root.uid, root.gid));
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
    fn hydrate(&self, ino: Ino) -> Result<Arc<OwnedFd>> {
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
    fn materialize_empty(&self, ino: Ino) -> Result<Arc<OwnedFd>> {
        let path = self
            .inodes
            .path(ino)
            .ok_or(OverlayError::UnknownInode(ino))?;
        let Some(f) = self.remote_file(&path) else {
            return self.hydrate(ino);
        };
        match self.local.open_beneath(
            &path,
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            f.restored_mode(),
        ) {
            Ok(file) => {
                let root = self.local.root_stat();
                let (uid, gid) = f.restored_owner((root.uid, root.gid));
                let _ = self.local.set_owner(file.as_fd(), Some(uid), Some(gid));
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(OverlayError::local("create")(e)),
        }
        self.attach_local(ino, &path)
    }

    fn is_hidden(&self, parent: Ino, name: &OsStr) -> bool {
        self.hidden
            .as_ref()
            .is_some_and(|h| h.parent == parent && h.name == name)
    }

    /// Refuses any change that names the hidden state directory.
    fn check_reserved(&self, parent: Ino, name: &OsStr) -> Result<()> {
        if self.is_hidden(parent, name) {
            return Err(OverlayError::Reserved(name.to_owned()));
        }
        Ok(())
    }

    /// A node's descriptor (`None` while bucket-only) and kind; `None` if the node is unknown
    /// or was parked and its name no longer leads to its inode.
    fn fd_of(&self, ino: Ino) -> Option<(Option<Arc<OwnedFd>>, bool)> {
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
    fn node_fd(&self, ino: Ino) -> Result<Arc<OwnedFd>> {
        match self.fd_of(ino) {
            Some((Some(fd), _)) => Ok(fd),
            Some((None, _)) => self.hydrate(ino),
            None => Err(OverlayError::UnknownInode(ino)),
        }
    }

    fn dir_fd(&self, ino: Ino) -> Result<Arc<OwnedFd>> {
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
    fn entry(&self, parent: Ino, name: &OsStr, fd: OwnedFd, st: Stat) -> Entry {
        let ino = self.inodes.insert_lookup(parent, name, fd, &st);
        Entry {
            ino,
            attr: Attr::from_stat(ino, &st),
        }
    }

    /// The node a child entry of `parent` is (by a stat of the name, no reference taken).
    /// Called before a name is removed or replaced: a parked node of that inode gets the
    /// descriptor, so the inode stays pinned while the kernel knows its number.
    fn child_id(&self, dir: &OwnedFd, name: &OsStr) -> Option<Child> {
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
    fn child_path(&self, parent: Ino, name: &OsStr) -> Option<PathBuf> {
        Some(self.inodes.path(parent)?.join(name))
    }

    /// Reports a change of a node to the mirror, under every name of it the kernel knows.
    fn changed(&self, ino: Ino, urgent: bool) {
        let paths = self.inodes.paths(ino);
        self.sink.changed(self.local_ino_of(ino), &paths, urgent);
    }

    /// The local inode number of a node (see [`local_ino`]): its id, unless that is synthetic.
    fn local_ino_of(&self, ino: Ino) -> u64 {
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
    fn journaled<T>(&self, intents: Vec<Intent>, op: impl FnOnce() -> Result<T>) -> Result<T> {
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

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Entry> {
        if self.is_hidden(parent, name) {
            return Err(OverlayError::local("lookup")(
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        let dir = self.dir_fd(parent)?;
        match self.local.lookup(dir.as_fd(), name) {
            Ok((fd, st)) => Ok(self.entry(parent, name, fd, st)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let path = self.child_path(parent, name);
                match path
                    .as_deref()
                    .and_then(|p| self.remote_file(p).map(|f| (p, f)))
                {
                    Some((p, f)) => {
                        let ino = self.inodes.insert_remote(parent, name, p);
                        Ok(Entry {
                            ino,
                            attr: self.remote_attr(ino, &f),
                        })
                    }
                    None => Err(OverlayError::local("lookup")(e)),
                }
            }
            Err(e) => Err(OverlayError::local("lookup")(e)),
        }
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        if let Some((None, _)) = self.fd_of(ino) {
            // Bucket-only: the index knows size, mtime and mode without a download.
            let path = self
                .inodes
                .path(ino)
                .ok_or(OverlayError::UnknownInode(ino))?;
            if let Some(f) = self.remote_file(&path) {
                return Ok(self.remote_attr(ino, &f));
            }
        }
        let fd = self.node_fd(ino)?;
        let st = self
            .local
            .stat(fd.as_fd())
            .map_err(OverlayError::local("getattr"))?;
        Ok(Attr::from_stat(ino, &st))
    }

    pub fn setattr(&self, ino: Ino, fh: Option<u64>, set: SetAttr) -> Result<Attr> {
        self.writable()?;
        let fd = match self.fd_of(ino) {
            Some((None, _)) if set.size == Some(0) => self.materialize_empty(ino)?,
            _ => self.node_fd(ino)?,
        };
        let fd = fd.as_fd();
        if let Some(mode) = set.mode {
            self.local
                .set_mode(fd, mode & 0o7777)
                .map_err(OverlayError::local("chmod"))?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            self.local
                .set_owner(fd, set.uid, set.gid)
                .map_err(OverlayError::local("chown"))?;
        }
        if let Some(size) = set.size {
            let by_handle = fh.and_then(|fh| self.handles.file(fh)).filter(|(_, w)| *w);
            match by_handle {
                Some((file, _)) => file.set_len(size),
                None => self.local.truncate(fd, size),
            }
            .map_err(OverlayError::local("truncate"))?;
            self.modified(ino);
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let st = self
                .local
                .stat(fd)
                .map_err(OverlayError::local("utimens"))?;
            let (parent_fd, name);
            let symlink_at = if st.is_symlink() {
                let (p, n) = self
                    .inodes
                    .with_node(ino, |n| (n.parent, n.name.clone()))
                    .ok_or(OverlayError::UnknownInode(ino))?;
                parent_fd = self.dir_fd(p)?;
                name = n;
                Some((parent_fd.as_fd(), name.as_os_str()))
            } else {
                None
            };
            self.local
                .set_times(fd, symlink_at, set.atime, set.mtime)
                .map_err(OverlayError::local("utimens"))?;
        }
        if set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
        {
            // Mode and mtime travel with the object; a file still being written is uploaded
            // after its last close anyway.
            self.changed(ino, false);
        }
        self.getattr(ino)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let fd = self.node_fd(ino)?;
        self.local
            .readlink(fd.as_fd())
            .map_err(OverlayError::local("readlink"))
    }

    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        creds: Creds,
    ) -> Result<Entry> {
        self.writable()?;
        self.check_reserved(parent, name)?;
        let dir = self.dir_fd(parent)?;
        let (fd, st) = self
            .local
            .mknod(dir.as_fd(), name, mode, u64::from(rdev), creds)
            .map_err(OverlayError::local("mknod"))?;
        Ok(self.entry(parent, name, fd, st))
    }

    pub fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, creds: Creds) -> Result<Entry> {
        self.writable()?;
        self.check_reserved(parent, name)?;
        let dir = self.dir_fd(parent)?;
        let (fd, st) = self
            .local
            .mkdir(dir.as_fd(), name, mode, creds)
            .map_err(OverlayError::local("mkdir"))?;
        let entry = self.entry(parent, name, fd, st);
        self.changed(entry.ino, false);
        Ok(entry)
    }

    pub fn symlink(&self, parent: Ino, name: &OsStr, target: &Path, creds: Creds) -> Result<Entry> {
        self.writable()?;
        self.check_reserved(parent, name)?;
        let dir = self.dir_fd(parent)?;
        let (fd, st) = self
            .local
            .symlink(dir.as_fd(), name, target.as_os_str(), creds)
            .map_err(OverlayError::local("symlink"))?;
        Ok(self.entry(parent, name, fd, st))
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Result<Entry> {
        self.writable()?;
        self.check_reserved(new_parent, new_name)?;
        let fd = self.node_fd(ino)?;
        let dir = self.dir_fd(new_parent)?;
        self.local
            .link(fd.as_fd(), dir.as_fd(), new_name)
            .map_err(OverlayError::local("link"))?;
        let entry = self.lookup(new_parent, new_name)?;
        // Every name of it: the new one is a new object, and the mirror learns that the file
        // has several (the link moved its ctime, so the others are uploaded again too).
        self.changed(entry.ino, false);
        Ok(entry)
    }

    pub fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &OsStr, dir: bool) -> Result<()> {
        self.writable()?;
        self.check_reserved(parent, name)?;
        // No download lands while this decides whether the name is bucket-only.
        let _placing = self.remote.as_ref().map(|r| r.fetcher.placing());
        let dir_fd = self.dir_fd(parent)?;
        let child = self.child_id(&dir_fd, name);
        let path = self.child_path(parent, name);
        if let (None, Some(p), false) = (child, &path, dir) {
            if self.remote_file(p).is_some() {
                return self.remove_remote(parent, name, p);
            }
        }
        if let (true, Some(p), Some(r)) = (dir, &path, &self.remote) {
            if r.index.has_children(p) {
                // Files only in the bucket are in it, as far as the application can see.
                return Err(OverlayError::local("rmdir")(
                    std::io::Error::from_raw_os_error(libc::ENOTEMPTY),
                ));
            }
        }
        let intents = match (child, path.clone()) {
            (Some(_), Some(path)) => vec![Intent::Remove { path, dir }],
            _ => vec![],
        };
        self.journaled(intents, || {
            if dir {
                self.local
                    .rmdir(dir_fd.as_fd(), name)
                    .map_err(OverlayError::local("rmdir"))
            } else {
                self.local
                    .unlink(dir_fd.as_fd(), name)
                    .map_err(OverlayError::local("unlink"))
            }
        })?;
        if let Some(c) = child {
            self.inodes.unlinked(c.id, parent, name);
        }
        if let (Some(cache), Some(p)) = (&self.cache, &path) {
            cache.remove(p);
        }
        if let (true, Some(p), Some(r)) = (dir, &path, &self.remote) {
            // The bucket listing named it (its marker): it must not be listed in its parent
            // any more, nor keep the parent from being removed.
            r.index.remove_dir(p);
        }
        Ok(())
    }

    /// Unlink of a file that is only in the bucket: nothing to do locally, no download.
    fn remove_remote(&self, parent: Ino, name: &OsStr, path: &Path) -> Result<()> {
        let intent = Intent::Remove {
            path: path.to_owned(),
            dir: false,
        };
        self.journaled(vec![intent], || Ok(()))?;
        if let Some(r) = &self.remote {
            r.index.remove(path);
        }
        if let Some(id) = self.inodes.find_remote(parent, name, path) {
            self.inodes.unlinked(id, parent, name);
        }
        Ok(())
    }

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
        let (from_path, to_path) = (
            self.child_path(parent, name),
            self.child_path(new_parent, new_name),
        );
        let moved = self.child_id(&old_dir, name);
        let replaced = self.child_id(&new_dir, new_name);
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if let (Some(Child { dir: true, .. }), Some(to), Some(r), false) =
            (replaced, &to_path, &self.remote, exchange)
        {
            if r.index.has_children(to) {
                // Files only in the bucket are in the directory being replaced, as far as the
                // application can see (as for rmdir): replacing it would merge the two.
                return Err(OverlayError::local("rename")(
                    std::io::Error::from_raw_os_error(libc::ENOTEMPTY),
                ));
            }
        }
        if let (Some(from), Some(to), Some(remote)) = (&from_path, &to_path, &self.remote) {
            let bucket = remote.fetcher.bucket();
            let from_remote = moved.is_none() && remote.index.file(from).is_some();
            let to_remote = replaced.is_none() && remote.index.file(to).is_some();
            if flags & libc::RENAME_NOREPLACE != 0 && to_remote {
                return Err(OverlayError::local("rename")(
                    std::io::Error::from_raw_os_error(libc::EEXIST),
                ));
            }
            if from_remote && flags == 0 && !replaced.is_some_and(|c| c.dir) && bucket.can_hold(to)
            {
                return self.rename_remote(
                    parent, name, new_parent, new_name, from, to, &new_dir, replaced,
                );
            }
            // The rare cases (exchange, no-replace, over a directory, to a name the bucket
            // cannot hold) work on local files.
            let mut fetch = Vec::new();
            if from_remote {
                fetch.push(from.clone());
            }
            if to_remote && exchange {
                fetch.push(to.clone());
            }
            // Bucket-only files below a moving directory stay bucket-only: the mirror moves
            // their objects. Except where their new name cannot be a key (the mirror could not
            // move their object there, and it goes with the old name), or, in an exchange, the
            // name of the stage the mirror moves them through (see `mirror/`): those are
            // fetched, and then move as local files do.
            let cannot_move = |p: &Path, from: &Path, to: &Path, staged: bool| {
                let rest = p.strip_prefix(from).unwrap_or(p);
                !bucket.can_hold(&crate::engine::index::moved_path(p, from, to))
                    || (staged
                        && !bucket.can_hold(&crate::engine::mirror::exchange_stage(u64::MAX, rest)))
            };
            if moved.is_some_and(|c| c.dir) && remote.index.has_children(from) {
                fetch.extend(
                    remote
                        .index
                        .files_below(from)
                        .into_iter()
                        .filter(|p| cannot_move(p, from, to, exchange)),
                );
            }
            if exchange && replaced.is_some_and(|c| c.dir) && remote.index.has_children(to) {
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
        }
        let mut intents = Vec::new();
        match (moved, replaced, from_path.clone(), to_path.clone()) {
            (Some(m), Some(r), Some(a), Some(b)) if exchange => intents.push(Intent::Exchange {
                a,
                b,
                a_dir: m.dir,
                b_dir: r.dir,
                a_ino: m.ino,
                b_ino: r.ino,
            }),
            (Some(m), _, Some(from), Some(to)) if !exchange => intents.push(Intent::Rename {
                from,
                to,
                dir: m.dir,
                source: Some(Source::Local { ino: m.ino }),
            }),
            _ => {}
        }
        self.journaled(intents, || {
            self.local
                .rename(old_dir.as_fd(), name, new_dir.as_fd(), new_name, flags)
                .map_err(OverlayError::local("rename"))?;
            // Before the mirror hears of the rename: the index tells it which objects are
            // bucket-only files' (and must move).
            if let (Some(from), Some(to), Some(remote)) = (&from_path, &to_path, &self.remote) {
                if exchange {
                    // Bucket-only files below either side move with it (the two nodes
                    // themselves are local).
                    remote.index.exchange(from, to);
                } else if moved.is_some_and(|c| c.dir) {
                    // Bucket-only files below a renamed directory move with it.
                    remote.index.rename(from, to);
                } else {
                    // A local file now stands where a bucket-only one may have been.
                    remote.index.remove(to);
                }
            }
            Ok(())
        })?;
        if let (Some(from), Some(to), Some(cache)) = (&from_path, &to_path, &self.cache) {
            if exchange {
                cache.remove(from);
                cache.remove(to);
            } else {
                cache.remove(to);
                cache.rename(from, to);
            }
        }
        let (moved, replaced) = (moved.map(|c| c.id), replaced.map(|c| c.id));
        if let Some(id) = moved {
            self.inodes
                .renamed(id, (parent, name), (new_parent, new_name));
        }
        if let Some(id) = replaced.filter(|r| Some(*r) != moved) {
            if exchange {
                self.inodes
                    .renamed(id, (new_parent, new_name), (parent, name));
            } else {
                self.inodes.unlinked(id, new_parent, new_name);
            }
        }
        Ok(())
    }

    /// Rename of a file that is only in the bucket: no download. The journal intent makes the
    /// mirror copy the object to its new key and delete the old one; until then the index
    /// serves the new name from the old key.
    #[allow(clippy::too_many_arguments)]
    fn rename_remote(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        from: &Path,
        to: &Path,
        new_dir: &OwnedFd,
        replaced: Option<Child>,
    ) -> Result<()> {
        let intent = Intent::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
            dir: false,
            source: Some(Source::Bucket {
                replaced: replaced.map(|c| c.ino),
            }),
        };
        self.journaled(vec![intent], || {
            if replaced.is_some() {
                // The local file being replaced goes, as a rename over it would make it go.
                self.local
                    .unlink(new_dir.as_fd(), new_name)
                    .map_err(OverlayError::local("rename"))?;
            }
            // Before the mirror hears of it: the index says the object at `from` is this
            // file's (and must move, see `mirror/`).
            if let Some(r) = &self.remote {
                r.index.rename(from, to);
            }
            Ok(())
        })?;
        if let Some(c) = replaced {
            self.inodes.unlinked(c.id, new_parent, new_name);
        }
        if let Some(id) = self.inodes.find_remote(parent, name, from) {
            self.inodes
                .renamed(id, (parent, name), (new_parent, new_name));
        }
        Ok(())
    }

    fn register_open(&self, ino: Ino, file: File, writable: bool) -> Opened {
        self.register_handle(ino, file, writable, false)
    }

    fn register_handle(&self, ino: Ino, file: File, writable: bool, exec: bool) -> Opened {
        // (the sink counts writers by local inode; see `local_ino`)
        if writable {
            self.inodes.with_node(ino, |n| {
                n.writers += 1;
                n.residency = Residency::Dirty;
            });
            self.sink.writer_opened(local_ino(&file, ino));
        }
        self.inodes.with_node(ino, |n| {
            n.openers += 1;
            n.executors += u32::from(exec);
        });
        let file = Arc::new(file);
        let fh = self.handles.insert_file(FileHandle {
            ino,
            file: Arc::clone(&file),
            writable,
            exec,
        });
        Opened { fh, file }
    }

    pub fn open(&self, ino: Ino, flags: i32) -> Result<Opened> {
        let opened = {
            let _shared = self.evict_lock.read().unwrap_or_else(|e| e.into_inner());
            self.open_locked(ino, flags)?
        };
        self.used(ino);
        Ok(opened)
    }

    fn open_locked(&self, ino: Ino, flags: i32) -> Result<Opened> {
        if is_writable(flags) {
            self.writable()?;
        }
        // The kernel refuses write access to a file being executed (ETXTBSY), but for an
        // `O_RDONLY | O_TRUNC` open it checks only after this open has returned — and with
        // atomic O_TRUNC, this open is what truncates. So refuse it here, as the kernel would.
        if flags & libc::O_TRUNC != 0
            && self
                .inodes
                .with_node(ino, |n| n.executors > 0)
                .unwrap_or(false)
        {
            return Err(OverlayError::local("open")(
                std::io::Error::from_raw_os_error(libc::ETXTBSY),
            ));
        }
        // An O_TRUNC open empties the file before its writer is registered: the mirror must
        // not take that empty file for a closed one in between, under any of its names.
        let emptying = if flags & libc::O_TRUNC != 0 && is_writable(flags) {
            self.inodes.paths(ino)
        } else {
            Vec::new()
        };
        for p in &emptying {
            self.sink.opening_started(p);
        }
        let res = self.open_file(ino, flags);
        for p in &emptying {
            self.sink.opening_done(p);
        }
        res
    }

    /// Opens the local file behind `ino` (fetching or materializing a bucket-only one).
    fn open_file(&self, ino: Ino, flags: i32) -> Result<Opened> {
        let (fd, is_dir) = self.fd_of(ino).ok_or(OverlayError::UnknownInode(ino))?;
        if is_dir && flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(OverlayError::local("open")(
                std::io::Error::from_raw_os_error(libc::EISDIR),
            ));
        }
        let fd = match fd {
            // A descriptor looked up just before its file was evicted points at the deleted
            // inode: the file is bucket-only again.
            Some(fd)
                if self.cache.is_some()
                    && self
                        .local
                        .stat(fd.as_fd())
                        .is_ok_and(|st| st.nlink == 0 && !is_dir) =>
            {
                self.inodes.make_remote(ino);
                self.hydrate(ino)?
            }
            Some(fd) => fd,
            // Bucket-only: O_TRUNC needs no download, anything else fetches the file first.
            None if flags & libc::O_TRUNC != 0 => self.materialize_empty(ino)?,
            None => self.hydrate(ino)?,
        };
        let file = self
            .local
            .reopen(fd.as_fd(), self.local_flags(flags, is_dir))
            .map_err(OverlayError::local("open"))?;
        Ok(self.register_handle(ino, file, is_writable(flags), is_exec(flags)))
    }

    pub fn create(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
        creds: Creds,
    ) -> Result<(Entry, Opened)> {
        self.writable()?;
        self.check_reserved(parent, name)?;
        let dir = self.dir_fd(parent)?;
        // The mirror must not take the new, empty file for a closed one before its writer is
        // registered (the start's reconcile can find it in between).
        let path = self.child_path(parent, name);
        if let Some(p) = &path {
            self.sink.opening_started(p);
        }
        let created = self.local.create(
            dir.as_fd(),
            name,
            self.local_flags(flags, false),
            mode,
            creds,
        );
        let res = created
            .map_err(OverlayError::local("create"))
            .map(|(file, fd, st)| {
                let entry = self.entry(parent, name, fd, st);
                // A created file is new content for the mirror even if nobody writes to it, so it
                // counts as a writer until released whatever the access mode.
                let opened = self.register_open(entry.ino, file, true);
                (entry, opened)
            });
        if let Some(p) = &path {
            self.sink.opening_done(p);
        }
        res
    }

    fn handle_file(&self, fh: u64) -> Result<(Arc<File>, bool)> {
        self.handles.file(fh).ok_or(OverlayError::UnknownHandle(fh))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let (file, _) = self.handle_file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(OverlayError::local("read")(e)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        self.writable()?;
        let (file, _) = self.handle_file(fh)?;
        file.write_all_at(data, offset)
            .map_err(OverlayError::local("write"))?;
        Ok(data.len() as u32)
    }

    pub fn release(&self, fh: u64) -> Result<()> {
        let h = self
            .handles
            .remove_file(fh)
            .ok_or(OverlayError::UnknownHandle(fh))?;
        if h.exec {
            self.inodes
                .with_node(h.ino, |n| n.executors = n.executors.saturating_sub(1));
        }
        if h.writable {
            let last = self
                .inodes
                .with_node(h.ino, |n| {
                    n.writers = n.writers.saturating_sub(1);
                    n.writers == 0
                })
                .unwrap_or(false);
            let paths = if last {
                self.inodes.paths(h.ino)
            } else {
                Vec::new()
            };
            let local = local_ino(&h.file, h.ino);
            self.sink.writer_closed(local, &paths);
            if last {
                self.closed(h.ino);
            }
        }
        self.inodes
            .with_node(h.ino, |n| n.openers = n.openers.saturating_sub(1));
        self.used(h.ino);
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let (file, _) = self.handle_file(fh)?;
        if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }
        .map_err(OverlayError::local("fsync"))?;
        // An fsync is the application saying "this state is complete": upload it now.
        if let Some(ino) = self.handles.file_ino(fh) {
            let paths = self.inodes.paths(ino);
            self.sink.changed(local_ino(&file, ino), &paths, true);
        }
        Ok(())
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        self.writable()?;
        let (file, _) = self.handle_file(fh)?;
        local::fallocate(&file, mode, offset, len).map_err(OverlayError::local("fallocate"))?;
        Ok(())
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let (file, _) = self.handle_file(fh)?;
        local::lseek(&file, offset, whence).map_err(OverlayError::local("lseek"))
    }

    /// A change made without an open handle (truncate by path, for now): a writer that opens
    /// and closes in one step.
    fn modified(&self, ino: Ino) {
        let idle = self
            .inodes
            .with_node(ino, |n| {
                n.residency = Residency::Dirty;
                n.writers == 0
            })
            .unwrap_or(false);
        if idle {
            self.changed(ino, false);
            self.closed(ino);
        }
    }

    /// The last writer of a file went away: this is the consistent point the mirror uploads.
    fn closed(&self, ino: Ino) {
        self.inodes
            .with_node(ino, |n| n.residency = Residency::Local);
        tracing::trace!(ino, path = ?self.inodes.path(ino).as_deref().map(esc), "file closed after a change");
    }

    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        let fd = self.dir_fd(ino)?;
        let file = self
            .local
            .reopen(
                fd.as_fd(),
                self.local_flags(libc::O_RDONLY | libc::O_DIRECTORY, true),
            )
            .map_err(OverlayError::local("opendir"))?;
        let listing = self
            .local
            .read_dir(fd.as_fd(), self.policy.noatime_dirs)
            .map_err(OverlayError::local("readdir"))?;
        let root_dev = self.local.root_stat().dev;
        let mut entries: Vec<DirSnapshotEntry> = listing
            .into_iter()
            .filter(|e| !self.is_hidden(ino, &e.name))
            .map(|e| DirSnapshotEntry {
                ino: self.inodes.id_of(root_dev, e.ino).unwrap_or(e.ino),
                kind: FileKind::from_mode(e.file_type),
                name: e.name,
            })
            .collect();
        // The union: what is only in the bucket shows beside what is local.
        if let (Some(r), Some(dir)) = (&self.remote, self.inodes.path(ino)) {
            let local: std::collections::HashSet<OsString> =
                entries.iter().map(|e| e.name.clone()).collect();
            for (name, is_dir) in r.index.children(&dir) {
                if local.contains(&name) || self.is_hidden(ino, &name) {
                    continue;
                }
                let path = dir.join(&name);
                entries.push(DirSnapshotEntry {
                    ino: inode::remote_dir_entry_id(&path),
                    kind: if is_dir {
                        FileKind::Dir
                    } else {
                        FileKind::File
                    },
                    name,
                });
            }
        }
        Ok(self.handles.insert_dir(DirHandle {
            entries: Arc::new(entries),
            file: Arc::new(file),
        }))
    }

    /// Entries of an open directory from `offset` on, `.` and `..` first.
    pub fn readdir(&self, ino: Ino, fh: u64, offset: u64) -> Result<Vec<DirItem>> {
        let (entries, _) = self
            .handles
            .dir(fh)
            .ok_or(OverlayError::UnknownHandle(fh))?;
        let parent = self
            .inodes
            .with_node(ino, |n| n.parent)
            .ok_or(OverlayError::UnknownInode(ino))?;
        let dots = [(ino, "."), (parent, "..")].map(|(i, n)| DirItem {
            ino: i,
            next_offset: 0,
            kind: FileKind::Dir,
            name: n.into(),
        });
        let items = dots
            .into_iter()
            .chain(entries.iter().map(|e| DirItem {
                ino: e.ino,
                next_offset: 0,
                kind: e.kind,
                name: e.name.clone(),
            }))
            .enumerate()
            .skip(offset as usize)
            .map(|(i, mut item)| {
                item.next_offset = i as u64 + 1;
                item
            })
            .collect();
        Ok(items)
    }

    /// Releases every handle still open, as if the kernel had sent their RELEASE: once the
    /// FUSE session has ended it never will, and a lazily detached mount can end with the
    /// RELEASE of the application's last close still queued in the kernel. A file closed that
    /// way is then due like any other, so the drain uploads it. Returns how many there were.
    pub fn release_all(&self) -> usize {
        let (files, dirs) = self.handles.ids();
        for fh in &files {
            let _ = self.release(*fh);
        }
        for fh in &dirs {
            let _ = self.releasedir(*fh);
        }
        files.len() + dirs.len()
    }

    pub fn releasedir(&self, fh: u64) -> Result<()> {
        self.handles
            .remove_dir(fh)
            .map(drop)
            .ok_or(OverlayError::UnknownHandle(fh))
    }

    pub fn fsyncdir(&self, fh: u64) -> Result<()> {
        let (_, file) = self
            .handles
            .dir(fh)
            .ok_or(OverlayError::UnknownHandle(fh))?;
        file.sync_all().map_err(OverlayError::local("fsyncdir"))
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let st = self
            .local
            .statfs(self.local.root())
            .map_err(OverlayError::local("statfs"))?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
        })
    }

    pub fn getxattr(&self, ino: Ino, name: &OsStr, size: u32) -> Result<XattrReply> {
        let fd = self.node_fd(ino)?;
        self.local
            .get_xattr(fd.as_fd(), name, size)
            .map_err(OverlayError::local("getxattr"))
    }

    pub fn listxattr(&self, ino: Ino, size: u32) -> Result<XattrReply> {
        let fd = self.node_fd(ino)?;
        self.local
            .list_xattr(fd.as_fd(), size)
            .map_err(OverlayError::local("listxattr"))
    }

    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.writable()?;
        let fd = self.node_fd(ino)?;
        self.local
            .set_xattr(fd.as_fd(), name, value, flags)
            .map_err(OverlayError::local("setxattr"))
    }

    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        self.writable()?;
        let fd = self.node_fd(ino)?;
        self.local
            .remove_xattr(fd.as_fd(), name)
            .map_err(OverlayError::local("removexattr"))
    }

    /// The path of a node relative to the served directory (for logs and, later, bucket keys).
    pub fn path_of(&self, ino: Ino) -> Option<PathBuf> {
        self.inodes.path(ino)
    }

    /// The residency of a node, if the kernel knows it.
    pub fn residency(&self, ino: Ino) -> Option<Residency> {
        self.inodes.with_node(ino, |n| n.residency)
    }

    /// Open file and directory handles (for shutdown logs and tests).
    /// Files evicted to the bucket since start (`--max-local-bytes`).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of local files, when `--max-local-bytes` keeps count of them; `None` otherwise.
    pub fn cached_bytes(&self) -> Option<u64> {
        self.cache.as_deref().map(LocalCache::total)
    }

    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// Nodes the kernel currently knows.
    pub fn known_inodes(&self) -> usize {
        self.inodes.len()
    }

    /// Descriptors held for the nodes the kernel knows (bounded by the budget).
    pub fn held_descriptors(&self) -> usize {
        self.inodes.open_fds()
    }
}

/// The inode number of an open file on the local disk: what the mirror knows a writer by
/// (and checks before it uploads). A node's id is that number only for files that were local
/// when the kernel first saw them; one that was bucket-only keeps its synthetic id.
fn local_ino(file: &File, node: Ino) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file.metadata().map(|m| m.ino()).unwrap_or(node)
}

/// The kernel's `__FMODE_EXEC`: the open flags of the open that `execve` makes (it reaches the
/// filesystem in FUSE's OPEN). Not in libc: it is the kernel's own bit of `f_flags`.
const FMODE_EXEC: i32 = 0o40;

/// Whether an open is `execve`'s.
fn is_exec(flags: i32) -> bool {
    flags & FMODE_EXEC != 0
}

fn is_writable(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

#[cfg(test)]
mod tests;
