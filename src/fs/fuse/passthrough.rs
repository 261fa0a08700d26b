//! FUSE passthrough: the local file registered as the kernel's backing file of a FUSE file,
//! and the attribute validity that follows from it.
//!
//! The kernel allows one backing file per inode at a time, so backing ids are cached per
//! inode and shared by all handles open on it; the last `release` drops the id. If registering
//! fails (no capability, e.g. inside a user namespace) passthrough turns off, once and for
//! good, and reads and writes are served by etlfs.
//!
//! The kernel writes a passthrough file's shared mappings to the disk underneath without its
//! FUSE inode noticing, so attributes of an inode with a passthrough handle open for writing
//! are given without a cache validity ([`Core::attr_ttl`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use fuser::{BackingId, FileHandle, FopenFlags, Generation, ReplyCreate, ReplyOpen};
use tracing::warn;

use super::reply::file_attr;
use super::{Core, TTL};
use crate::fs::overlay::{Entry, Ino, Opened, OverlayError};

#[derive(Debug, Default)]
pub(super) struct BackingCache {
    by_inode: HashMap<Ino, Weak<BackingId>>,
    by_handle: HashMap<u64, Arc<BackingId>>,
    /// Passthrough handles with write access, per inode.
    writers: HashMap<Ino, u32>,
    /// The handles counted in `writers`.
    writable: HashSet<u64>,
}

impl Core {
    fn backing(&self) -> std::sync::MutexGuard<'_, BackingCache> {
        self.backing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backing id for `ino`, registering `opened.file` if the inode has none yet.
    /// `None` means passthrough is off (or just failed and is now off). `flags` are the
    /// open's: a handle with write access is counted (see [`Core::attr_ttl`]).
    pub(super) fn backing_for(
        &self,
        ino: Ino,
        opened: &Opened,
        flags: i32,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let mut cache = self.backing();
        let id = match cache.by_inode.get(&ino).and_then(Weak::upgrade) {
            Some(id) => id,
            None => match register(&opened.file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    cache.by_inode.insert(ino, Arc::downgrade(&id));
                    id
                }
                Err(e) => {
                    if self.passthrough.swap(false, Ordering::Relaxed) {
                        warn!(error = %e, "FUSE passthrough refused by the kernel; \
                               serving reads and writes through etlfs from now on");
                    }
                    return None;
                }
            },
        };
        cache.by_handle.insert(opened.fh, Arc::clone(&id));
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            *cache.writers.entry(ino).or_insert(0) += 1;
            cache.writable.insert(opened.fh);
            self.writers_open.fetch_add(1, Ordering::SeqCst);
            self.write_events.fetch_add(1, Ordering::SeqCst);
        }
        Some(id)
    }

    pub(super) fn drop_backing(&self, ino: Ino, fh: u64) {
        let mut cache = self.backing();
        if cache.writable.remove(&fh) {
            if let Some(n) = cache.writers.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    cache.writers.remove(&ino);
                }
            }
            self.writers_open.fetch_sub(1, Ordering::SeqCst);
            self.write_events.fetch_add(1, Ordering::SeqCst);
        }
        if cache.by_handle.remove(&fh).is_some()
            && cache
                .by_inode
                .get(&ino)
                .is_some_and(|w| w.strong_count() == 0)
        {
            cache.by_inode.remove(&ino);
        }
    }

    /// Runs `get` (which reads the attributes of a node from the disk) and says how long the
    /// kernel may cache what it returned: [`TTL`], or nothing for an inode with a passthrough
    /// handle open for writing. The kernel itself writes such a file's shared mappings to the
    /// disk underneath, and the times that moves (as on any filesystem, at the first write to
    /// a page) never reach its cached attributes: `stat` would show the old mtime and ctime
    /// for a minute. (An `mmap` marks the attributes stale, so the ones cached before it are
    /// asked for again.) Without a validity the kernel asks again at each `stat` while the
    /// file is open for writing, and once after its release. An open or release of such a
    /// handle while `get` ran counts as open: `get` may have read the times before the writes.
    /// Files not open for writing pay two atomic loads (and a lookup in a map while another
    /// file is); outside passthrough mode there are no such handles (the kernel sees every
    /// write then).
    pub(super) fn attr_ttl<T>(
        &self,
        get: impl FnOnce() -> Result<T, OverlayError>,
        ino: impl Fn(&T) -> Ino,
    ) -> (Duration, Result<T, OverlayError>) {
        let events = self.write_events.load(Ordering::SeqCst);
        let got = get();
        let quiet = |ino: Ino| {
            self.write_events.load(Ordering::SeqCst) == events
                && (self.writers_open.load(Ordering::SeqCst) == 0
                    || !self.backing().writers.contains_key(&ino))
        };
        let ttl = match &got {
            Ok(v) if !quiet(ino(v)) => Duration::ZERO,
            _ => TTL,
        };
        (ttl, got)
    }

    /// Replies to an open of `ino` with `flags` that ended in `res`.
    pub(super) fn reply_open(
        &self,
        ino: Ino,
        flags: i32,
        res: Result<Opened, OverlayError>,
        reply: ReplyOpen,
    ) {
        let opened = match res {
            Ok(o) => o,
            Err(e) => return fail!(reply, "open", e),
        };
        // Under `noatime`, a twin of the file on a noatime mount (`Overlay::noatime_backing`).
        let register = |f: &std::fs::File| {
            reply.open_backing(self.overlay.noatime_backing(f).as_ref().unwrap_or(f))
        };
        match self.backing_for(ino, &opened, flags, register) {
            Some(id) => reply.opened_passthrough(FileHandle(opened.fh), FopenFlags::empty(), &id),
            None => reply.opened(FileHandle(opened.fh), open_flags()),
        }
    }

    /// Replies to a create that made `entry` and opened it as `opened` with `flags`; the
    /// kernel may cache name and attributes for `ttl` (see [`Core::entry_ttl`]).
    pub(super) fn reply_created(
        &self,
        entry: &Entry,
        opened: Opened,
        flags: i32,
        ttl: Duration,
        reply: ReplyCreate,
    ) {
        let attr = file_attr(&entry.attr);
        let register = |f: &std::fs::File| {
            reply.open_backing(self.overlay.noatime_backing(f).as_ref().unwrap_or(f))
        };
        // The full validity even for a handle with write access: the kernel has not mapped it
        // yet, and mapping it marks these attributes stale.
        match self.backing_for(entry.ino, &opened, flags, register) {
            Some(id) => reply.created_passthrough(
                &ttl,
                &attr,
                Generation(0),
                FileHandle(opened.fh),
                FopenFlags::empty(),
                &id,
            ),
            None => reply.created(
                &ttl,
                &attr,
                Generation(0),
                FileHandle(opened.fh),
                open_flags(),
            ),
        }
    }
}

/// Flags for an opened file without passthrough: keep the page cache across opens (all
/// writes go through this mount, so cached pages cannot go stale).
fn open_flags() -> FopenFlags {
    FopenFlags::FOPEN_KEEP_CACHE
}

/// An [`Core::attr_ttl`] result with the validity inside, for [`Core::serve`].
pub(super) fn with_ttl<T>(
    (ttl, got): (Duration, Result<T, OverlayError>),
) -> Result<(Duration, T), OverlayError> {
    got.map(|v| (ttl, v))
}
