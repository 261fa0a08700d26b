//! Links fuser's `Filesystem` callbacks to the overlay core in [`crate::fs::overlay`].
//!
//! This is the only module that sees fuser's `Request` and `Reply*` types. Each callback
//! unpacks the request, calls one `Overlay` method and turns the result into a reply; every
//! error goes through [`fail!`], which logs at the error's level and replies with its errno.
//!
//! It also owns the kernel-facing fast path. With FUSE passthrough (Linux ≥ 6.9, real root),
//! an opened local file is registered as the *backing file* of the FUSE file, and the kernel
//! then serves `read`, `write` and `mmap` straight from the disk underneath without calling us.
//! The kernel allows one backing file per inode at a time, so backing ids are cached per inode
//! and shared by all handles open on it; the last `release` drops the id. If registering fails
//! (no capability, e.g. inside a user namespace) we fall back, once and for good, to serving
//! reads and writes here.
//!
//! Writes through a shared mapping of a passthrough file change the file's times on the disk
//! underneath without the kernel's FUSE inode noticing, so attributes of an inode with a
//! passthrough handle open for writing are given to the kernel without a cache validity
//! (see [`Core::attr_ttl`]); every other reply keeps [`TTL`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, info, warn};

use crate::fs::overlay::{
    Attr, Creds, FileKind, Ino, Opened, Overlay, OverlayError, SetAttr, TimeSet, XattrReply,
};

/// How long the kernel may cache names and attributes. Every change to the served directory
/// goes through this mount (it hides the directory underneath), and the kernel updates its
/// caches on the operations it sends us, so a long validity is safe; it is what makes a
/// repeated `stat` as cheap as on the native disk. The one change the kernel does not see is
/// a write through a shared mapping of a passthrough file (see [`Core::attr_ttl`]).
const TTL: Duration = Duration::from_secs(60);

/// Logs a failed request at the error's level and replies with its errno.
macro_rules! fail {
    ($reply:expr, $op:literal, $err:expr) => {{
        let err: OverlayError = $err;
        if err.is_expected() {
            debug!(op = $op, error = %err, "request failed");
        } else {
            warn!(op = $op, error = %err, "request failed");
        }
        $reply.error(Errno::from_i32(err.errno()))
    }};
}

mod park;

/// Startup options for the FUSE layer.
#[derive(Debug, Clone, Copy)]
pub struct FuseOptions {
    /// Try kernel passthrough for local files.
    pub passthrough: bool,
    /// Serve extended attributes; without, every xattr request is answered ENOSYS.
    pub xattrs: bool,
    /// How long a request waiting for a download waits for a bucket that delivers nothing
    /// (`None`: as long as it takes).
    pub fetch_timeout: Option<Duration>,
}

#[derive(Debug, Default)]
struct BackingCache {
    by_inode: HashMap<Ino, Weak<BackingId>>,
    by_handle: HashMap<u64, Arc<BackingId>>,
    /// Passthrough handles with write access, per inode.
    writers: HashMap<Ino, u32>,
    /// The handles counted in `writers`.
    writable: std::collections::HashSet<u64>,
}

/// The `fuser::Filesystem` over an [`Overlay`].
#[derive(Debug)]
pub struct EtlFs {
    core: Arc<Core>,
}

/// The state of the FUSE layer, shared with the tasks that answer parked requests.
#[derive(Debug)]
pub struct Core {
    overlay: Arc<Overlay>,
    /// Shared with `/metrics`, which shows whether passthrough is (still) on.
    passthrough: Arc<AtomicBool>,
    backing: Mutex<BackingCache>,
    /// Opens and releases of passthrough handles with write access so far, and how many are
    /// open now (see [`Core::attr_ttl`]).
    write_events: AtomicU64,
    writers_open: AtomicU64,
    xattrs: bool,
    /// Requests parked until a download lands (see [`park`]); shared with `/metrics`.
    parked: Arc<AtomicU64>,
    fetch_timeout: Option<Duration>,
}

impl std::ops::Deref for EtlFs {
    type Target = Arc<Core>;

    fn deref(&self) -> &Arc<Core> {
        &self.core
    }
}

impl EtlFs {
    pub fn new(overlay: Arc<Overlay>, opts: FuseOptions) -> Self {
        EtlFs {
            core: Arc::new(Core {
                overlay,
                passthrough: Arc::new(AtomicBool::new(opts.passthrough)),
                backing: Mutex::new(BackingCache::default()),
                write_events: AtomicU64::new(0),
                writers_open: AtomicU64::new(0),
                xattrs: opts.xattrs,
                parked: Arc::new(AtomicU64::new(0)),
                fetch_timeout: opts.fetch_timeout,
            }),
        }
    }

    /// Whether FUSE passthrough is on: the requested mode until the kernel's INIT, then the
    /// mode in use (it turns off for good if the kernel refuses a backing file).
    pub fn passthrough_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.passthrough)
    }

    /// How many requests wait for a download now.
    pub fn parked_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.parked)
    }
}

impl Core {
    fn backing(&self) -> std::sync::MutexGuard<'_, BackingCache> {
        self.backing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backing id for `ino`, registering `opened.file` if the inode has none yet.
    /// `None` means passthrough is off (or just failed and is now off). `flags` are the
    /// open's: a handle with write access is counted (see [`Core::attr_ttl`]).
    fn backing_for(
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

    fn drop_backing(&self, ino: Ino, fh: u64) {
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
    fn attr_ttl<T>(
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
    fn reply_open(
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
}

/// Flags for an opened file without passthrough: keep the page cache across opens (all
/// writes go through this mount, so cached pages cannot go stale).
fn open_flags() -> FopenFlags {
    FopenFlags::FOPEN_KEEP_CACHE
}

/// An [`Core::attr_ttl`] result with the validity inside, for [`Core::serve`].
fn with_ttl<T>(
    (ttl, got): (Duration, Result<T, OverlayError>),
) -> Result<(Duration, T), OverlayError> {
    got.map(|v| (ttl, v))
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn creds(req: &Request) -> Creds {
    Creds {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    })
}

fn reply_xattr(reply: ReplyXattr, r: XattrReply) {
    match r {
        XattrReply::Size(n) => reply.size(n),
        XattrReply::Data(d) => reply.data(&d),
    }
}

impl Filesystem for EtlFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            // O_TRUNC arrives with the open instead of as a separate truncate, so opening a
            // bucket-only file with O_TRUNC needs no download.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
        ];
        for flag in wanted {
            if config.capabilities().contains(flag) {
                let _ = config.add_capabilities(flag);
            }
        }
        let mut passthrough = self.passthrough.load(Ordering::Relaxed);
        if passthrough {
            let kernel_has_it = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH);
            // Depth 2 lets the directory underneath sit on a stacked filesystem itself
            // (overlayfs, as in a container's root); the kernel's maximum.
            passthrough = kernel_has_it
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if !passthrough {
                info!(abi = %config.kernel_abi(), "kernel offers no FUSE passthrough");
            }
        }
        self.passthrough.store(passthrough, Ordering::Relaxed);
        info!(
            mode = if passthrough { "passthrough" } else { "daemon" },
            "I/O mode: {}",
            if passthrough {
                "kernel passthrough to the local files (reads, writes and mmap bypass etlfs)"
            } else {
                "reads and writes served through etlfs"
            }
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr_ttl(|| self.overlay.lookup(parent.0, name), |e| e.ino) {
            (ttl, Ok(e)) => reply.entry_with_ttls(&ttl, &TTL, &file_attr(&e.attr), Generation(0)),
            (_, Err(e)) => fail!(reply, "lookup", e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.overlay.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| with_ttl(c.attr_ttl(|| c.overlay.getattr(ino.0), |a| a.ino)),
            |_, res, reply| match res {
                Ok((ttl, a)) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => fail!(reply, "getattr", e),
            },
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_set(atime),
            mtime: time_set(mtime),
        };
        let (ino, fh) = (ino.0, fh.map(|f| f.0));
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| with_ttl(c.attr_ttl(|| c.overlay.setattr(ino, fh, set), |a| a.ino)),
            |_, res, reply| match res {
                Ok((ttl, a)) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => fail!(reply, "setattr", e),
            },
        );
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| c.overlay.readlink(ino.0),
            |_, res, reply| match res {
                Ok(t) => reply.data(&t),
                Err(e) => fail!(reply, "readlink", e),
            },
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.overlay.mknod(parent.0, name, mode, rdev, creds(req)) {
            Ok(e) => reply.entry(&TTL, &file_attr(&e.attr), Generation(0)),
            Err(e) => fail!(reply, "mknod", e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.overlay.mkdir(parent.0, name, mode, creds(req)) {
            Ok(e) => reply.entry(&TTL, &file_attr(&e.attr), Generation(0)),
            Err(e) => fail!(reply, "mkdir", e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.overlay.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => fail!(reply, "unlink", e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.overlay.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => fail!(reply, "rmdir", e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self
            .overlay
            .symlink(parent.0, link_name, target, creds(req))
        {
            Ok(e) => reply.entry(&TTL, &file_attr(&e.attr), Generation(0)),
            Err(e) => fail!(reply, "symlink", e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| {
                c.overlay
                    .rename(parent.0, &name, newparent.0, &newname, flags.bits())
            },
            |_, res, reply| match res {
                Ok(()) => reply.ok(),
                Err(e) => fail!(reply, "rename", e),
            },
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.to_owned();
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| {
                with_ttl(c.attr_ttl(|| c.overlay.link(ino.0, newparent.0, &newname), |e| e.ino))
            },
            |_, res, reply| match res {
                Ok((ttl, e)) => {
                    reply.entry_with_ttls(&ttl, &TTL, &file_attr(&e.attr), Generation(0))
                }
                Err(e) => fail!(reply, "link", e),
            },
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (ino, flags) = (ino.0, flags.0);
        self.serve(
            req.pid(),
            true,
            reply,
            move |c| c.overlay.open(ino, flags),
            move |c, res, reply| c.reply_open(ino, flags, res, reply),
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        tracing::trace!(fh = fh.0, offset, size, "read served by etlfs");
        match self.overlay.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => fail!(reply, "read", e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        tracing::trace!(fh = fh.0, offset, len = data.len(), "write served by etlfs");
        match self.overlay.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => fail!(reply, "write", e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Data is written to the local file as it arrives, and locks are kept by the kernel
        // (we do not take over POSIX or flock locking), so there is nothing to flush. ENOSYS
        // tells the kernel so once and for all: it stops sending FLUSH, saving a round trip
        // on every close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.drop_backing(ino.0, fh.0);
        match self.overlay.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => fail!(reply, "release", e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.overlay.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => fail!(reply, "fsync", e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.overlay.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => fail!(reply, "opendir", e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = match self.overlay.readdir(ino.0, fh.0, offset) {
            Ok(items) => items,
            Err(e) => return fail!(reply, "readdir", e),
        };
        for item in items {
            if reply.add(
                INodeNo(item.ino),
                item.next_offset,
                file_type(item.kind),
                &item.name,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let items = match self.overlay.readdir(ino.0, fh.0, offset) {
            Ok(items) => items,
            Err(e) => return fail!(reply, "readdirplus", e),
        };
        for item in items {
            let dot = item.name == "." || item.name == "..";
            // Every entry but the dot entries counts as a lookup in the kernel, so it is
            // looked up here too; one that vanished since opendir is skipped.
            let (ttl, attr) = if dot {
                self.attr_ttl(|| self.overlay.getattr(item.ino), |a| a.ino)
            } else {
                self.attr_ttl(
                    || self.overlay.lookup(ino.0, &item.name).map(|e| e.attr),
                    |a| a.ino,
                )
            };
            let Ok(attr) = attr else { continue };
            // (one validity for the name and the attributes here)
            let full = reply.add(
                INodeNo(attr.ino),
                item.next_offset,
                &item.name,
                &ttl,
                &file_attr(&attr),
                Generation(0),
            );
            if full {
                if !dot {
                    // Not sent, so the kernel will not count it: undo our reference.
                    self.overlay.forget(attr.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match self.overlay.releasedir(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => fail!(reply, "releasedir", e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.overlay.fsyncdir(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => fail!(reply, "fsyncdir", e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.overlay.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => fail!(reply, "statfs", e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let (name, value) = (name.to_owned(), value.to_vec());
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| c.overlay.setxattr(ino.0, &name, &value, flags),
            |_, res, reply| match res {
                Ok(()) => reply.ok(),
                Err(e) => fail!(reply, "setxattr", e),
            },
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // Without --xattrs, ENOSYS makes the kernel stop sending each xattr request for good
        // (it answers EOPNOTSUPP itself). That matters beyond xattrs: before every write the
        // kernel asks for `security.capability` (to drop file capabilities), one round trip
        // per write that this removes.
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let name = name.to_owned();
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| c.overlay.getxattr(ino.0, &name, size),
            |_, res, reply| match res {
                Ok(r) => reply_xattr(reply, r),
                Err(e) => fail!(reply, "getxattr", e),
            },
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| c.overlay.listxattr(ino.0, size),
            |_, res, reply| match res {
                Ok(r) => reply_xattr(reply, r),
                Err(e) => fail!(reply, "listxattr", e),
            },
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let name = name.to_owned();
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| c.overlay.removexattr(ino.0, &name),
            |_, res, reply| match res {
                Ok(()) => reply.ok(),
                Err(e) => fail!(reply, "removexattr", e),
            },
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // We mount with `default_permissions`, so the kernel checks modes itself and only
        // asks us whether the inode still exists.
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| c.overlay.getattr(ino.0),
            |_, res, reply| match res {
                Ok(_) => reply.ok(),
                Err(e) => fail!(reply, "access", e),
            },
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (entry, opened) = match self.overlay.create(parent.0, name, mode, flags, creds(req)) {
            Ok(r) => r,
            Err(e) => return fail!(reply, "create", e),
        };
        let attr = file_attr(&entry.attr);
        let register = |f: &std::fs::File| {
            reply.open_backing(self.overlay.noatime_backing(f).as_ref().unwrap_or(f))
        };
        // The full TTL even for a handle with write access: the kernel has not mapped it yet,
        // and mapping it marks these attributes stale.
        match self.backing_for(entry.ino, &opened, flags, register) {
            Some(id) => reply.created_passthrough(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(opened.fh),
                FopenFlags::empty(),
                &id,
            ),
            None => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(opened.fh),
                open_flags(),
            ),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Programs probe files with ioctls (isatty's TCGETS, FS_IOC_GETFLAGS); like a plain
        // file on most filesystems, ours support none.
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.overlay.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => fail!(reply, "fallocate", e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.overlay.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => fail!(reply, "lseek", e),
        }
    }
}
