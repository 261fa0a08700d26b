//! The namespace etlfs serves: the local directory, united with the files that are only in
//! the bucket when there is one.
//!
//! `Overlay` is the filesystem without FUSE: every method is one request, takes plain
//! arguments and returns plain results (`Entry`, `Attr`, `Opened`, ...) or an
//! [`OverlayError`] that knows its errno. `fs/fuse` translates kernel requests into these
//! calls and the results into replies, so the core can be tested without a mount.
//!
//! The requests are grouped by what they do: [`namespace`] reads names, attributes and
//! listings; [`files`] opens, serves and releases files; [`changes`] and [`rename`] change the
//! tree; [`remote`] makes bucket-only files local on demand; [`evict`] keeps the local disk
//! within `--max-local-bytes`. [`nodes`] is how each of them reaches a node's local inode;
//! [`access`] holds the permission checks the filesystem underneath cannot make itself.
//!
//! # The life of a file
//!
//! - **bucket-only**: in the index, not on the local disk; its node has no descriptor and its
//!   attributes come from the index. Opening it downloads it first (the request waits
//!   without holding a FUSE thread); an `O_TRUNC` open or a truncate to zero makes it local
//!   and empty instead, without a download.
//! - **local**: on the local disk; its node holds an `O_PATH` descriptor, or is parked (the
//!   descriptor closed to stay within the budget, opened again by name when needed).
//! - **being written**: local, with handles that have write access (create, open for
//!   writing) or just truncated. Each such handle is counted in the one count of writers the
//!   mirror reads too ([`ChangeSink::write_count`]); the release of the last one is the
//!   consistent point from which the mirror uploads, after a quiet time
//!   ([`ChangeSink::writer_closed`]).
//! - **evicted**: under `--max-local-bytes`, a local file that nobody has open, that has one
//!   link and whose exact version the bucket holds is deleted locally: bucket-only again.
//!
//! Those states are what the overlay decides by: the node's [`inode::Slot`] (descriptor,
//! parked, none) and the count of writers of its local inode. Whether the bucket holds the local version is the
//! mirror's knowledge, which eviction asks for ([`ChangeSink::in_bucket`]).
//!
//! # Concurrency
//!
//! FUSE requests arrive on several session threads. The inode and handle tables are behind
//! their own locks, held only to copy out an `Arc` of a descriptor; no system call runs with a
//! table lock held, except bookkeeping that must be atomic with the table update.

mod access;
mod cache;
mod changes;
mod error;
mod evict;
mod files;
mod handle;
mod inode;
mod namespace;
mod nodes;
mod remote;
mod rename;

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use cache::LocalCache;
pub use error::{OverlayError, Result};
use handle::HandleTable;
use inode::InodeTable;
pub use inode::ROOT;

use crate::engine::events::{ChangeSink, WriteCount};
use crate::engine::fetch::Fetcher;
use crate::engine::index::Index;
use crate::escape::esc;
pub use crate::os::local::{Creds, TimeSet, XattrReply};
use crate::os::local::{LocalDir, Stat};

/// A node id as the kernel sees it.
pub type Ino = u64;

/// A local entry about to be removed, renamed or replaced ([`Overlay::child_id`]).
#[derive(Debug, Clone, Copy)]
struct Child {
    id: Ino,
    dir: bool,
    /// Its local inode number (what the journal records: see [`crate::engine::journal::Source`]).
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
    /// Open write handles per local inode: counted here, read by the sink
    /// ([`ChangeSink::write_count`]).
    writers: Arc<WriteCount>,
    /// Bucket-only files: absent without a bucket (and in core tests).
    remote: Option<Remote>,
    /// `--max-local-bytes`: local files as an LRU cache of the bucket.
    cache: Option<Arc<LocalCache>>,
    /// Opens hold it shared, an eviction exclusively: a file is never evicted while an open
    /// of it is under way.
    evict_lock: RwLock<()>,
    /// Files evicted to the bucket since start (for `/metrics`).
    evictions: Arc<AtomicU64>,
    /// What the mount options ask of the served files.
    policy: Policy,
    /// Whether the kernel refused a private noatime mount for a backing file (said once).
    noatime_refused: AtomicBool,
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
            writers: sink.write_count(),
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
    /// files at start with their sizes; their total is kept in `local_bytes` as it changes.
    pub fn with_cache(
        mut self,
        max: u64,
        existing: Vec<(PathBuf, u64)>,
        local_bytes: Arc<AtomicU64>,
    ) -> Overlay {
        let cache = Arc::new(LocalCache::new(max, existing, local_bytes));
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
}

/// What the mount options ask of each request.
impl Overlay {
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
                if !self.noatime_refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "noatime: no private noatime mount for passthrough; \
                        reads the kernel serves update access times as the disk underneath does");
                }
                None
            }
        }
    }
}

/// What logs, `/metrics` and tests see of the overlay.
impl Overlay {
    /// The path of a node relative to the served directory (its primary name).
    pub fn path_of(&self, ino: Ino) -> Option<PathBuf> {
        self.inodes.path(ino)
    }

    /// Files evicted to the bucket since start (`--max-local-bytes`), as a counter the status
    /// server reads without holding the overlay.
    pub fn evictions(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.evictions)
    }

    /// Open file and directory handles (for shutdown logs and tests).
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

#[cfg(test)]
mod tests;
