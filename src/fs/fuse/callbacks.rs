//! The `fuser::Filesystem` callbacks: each unpacks its request, calls one `Overlay` method
//! and replies.
//!
//! A request whose overlay method may need a bucket-only file local first goes through
//! [`serve`](super::Core::serve), which parks it until the download lands (see
//! [`super::park`]); the rest (lookups, creating and removing names, I/O on open handles,
//! directory handles) never need a download and reply at once.
//!
//! A request the filesystem underneath must check (one that resolves, opens, creates, removes
//! or changes a name or file) runs its overlay call as its caller where etlfs checks
//! permissions ([`Core::caller`](super::Core::caller), [`with_caller`]); the others (I/O on
//! open handles, attributes, listings of an opened directory) need no check.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::info;

use super::EtlFs;
use super::passthrough::with_ttl;
use super::reply::{creds, file_attr, fill_dir, reply_xattr, time_set};
use crate::fs::overlay::SetAttr;
use crate::os::creds::{Check, with_caller};

/// The caller of a request, or the reply refusing it (`EACCES`) when it cannot be known.
macro_rules! caller {
    ($self:expr, $req:expr, $reply:expr, $op:literal) => {
        caller!($self, $req, $reply, $op, Check::Plain, None)
    };
    ($self:expr, $req:expr, $reply:expr, $op:literal, $check:expr, $umask:expr) => {
        match $self.caller($req, $check, $umask) {
            Ok(who) => who,
            Err(e) => return fail!($reply, $op, e),
        }
    };
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
        // Where etlfs checks permissions, the umask is applied by the filesystem underneath
        // (as the caller's), so that a directory's default ACL replaces it as natively.
        if self.checks && config.capabilities().contains(InitFlags::FUSE_DONT_MASK) {
            let granted = config.add_capabilities(InitFlags::FUSE_DONT_MASK).is_ok();
            self.dont_mask.store(granted, Ordering::Relaxed);
        }
        if self.checks {
            info!(
                "permissions: checked by the filesystem underneath, each request as its caller \
                 (uid, gid, groups, capabilities), POSIX ACLs included"
            );
        } else {
            info!(
                "permissions: checked by the kernel (default_permissions), as etlfs cannot act \
                 as every caller (not root, or in a PID namespace of its own)"
            );
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

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let who = caller!(self, req, reply, "lookup");
        let got = self.attr_ttl(
            || with_caller(who, || self.overlay.lookup(parent.0, name)),
            |e| e.ino,
        );
        match got {
            (ttl, Ok(e)) => reply.entry_with_ttls(
                &ttl,
                &self.entry_ttl(parent.0),
                &file_attr(&e.attr),
                Generation(0),
            ),
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
        let who = caller!(self, req, reply, "setattr");
        let before = self.open_before(ino);
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| {
                let set = || c.overlay.setattr(ino, fh, set);
                with_ttl(c.attr_ttl(|| with_caller(who.clone(), set), |a| a.ino))
            },
            move |c, res, reply| {
                match res {
                    Ok((ttl, a)) => reply.attr(&ttl, &file_attr(&a)),
                    Err(e) => fail!(reply, "setattr", e),
                }
                c.narrowed(ino, before);
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
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let who = caller!(self, req, reply, "mknod", Check::Plain, Some(umask));
        let mode = self.masked(mode, umask);
        match with_caller(who, || {
            self.overlay.mknod(parent.0, name, mode, rdev, creds(req))
        }) {
            Ok(e) => self.reply_entry(parent.0, &e, reply),
            Err(e) => fail!(reply, "mknod", e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let who = caller!(self, req, reply, "mkdir", Check::Plain, Some(umask));
        let mode = self.masked(mode, umask);
        match with_caller(who, || self.overlay.mkdir(parent.0, name, mode, creds(req))) {
            Ok(e) => self.reply_entry(parent.0, &e, reply),
            Err(e) => fail!(reply, "mkdir", e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let who = caller!(self, req, reply, "unlink");
        match with_caller(who, || self.overlay.unlink(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => fail!(reply, "unlink", e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let who = caller!(self, req, reply, "rmdir");
        match with_caller(who, || self.overlay.rmdir(parent.0, name)) {
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
        let who = caller!(self, req, reply, "symlink");
        match with_caller(who, || {
            self.overlay
                .symlink(parent.0, link_name, target, creds(req))
        }) {
            Ok(e) => self.reply_entry(parent.0, &e, reply),
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
        let who = caller!(self, req, reply, "rename");
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let moved = (name.clone(), newname.clone());
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| {
                with_caller(who.clone(), || {
                    c.overlay
                        .rename(parent.0, &name, newparent.0, &newname, flags.bits())
                })
            },
            move |c, res, reply| {
                let done = res.is_ok();
                match res {
                    Ok(()) => reply.ok(),
                    Err(e) => fail!(reply, "rename", e),
                }
                if done {
                    c.moved_in(newparent.0, &moved.1);
                    if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                        c.moved_in(parent.0, &moved.0);
                    }
                }
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
        let who = caller!(self, req, reply, "link");
        let newname = newname.to_owned();
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| {
                let link = || c.overlay.link(ino.0, newparent.0, &newname);
                with_ttl(c.attr_ttl(|| with_caller(who.clone(), link), |e| e.ino))
            },
            move |c, res, reply| match res {
                Ok((ttl, e)) => reply.entry_with_ttls(
                    &ttl,
                    &c.entry_ttl(newparent.0),
                    &file_attr(&e.attr),
                    Generation(0),
                ),
                Err(e) => fail!(reply, "link", e),
            },
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let who = caller!(self, req, reply, "open");
        let (ino, flags) = (ino.0, flags.0);
        self.serve(
            req.pid(),
            true,
            reply,
            move |c| with_caller(who.clone(), || c.overlay.open(ino, flags)),
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

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let who = caller!(self, req, reply, "opendir");
        match with_caller(who, || self.overlay.opendir(ino.0)) {
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
        reply: ReplyDirectory,
    ) {
        match self.overlay.readdir(ino.0, fh.0, offset) {
            Ok(items) => fill_dir(items, reply),
            Err(e) => fail!(reply, "readdir", e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        match self.overlay.readdir(ino.0, fh.0, offset) {
            Ok(items) => self.fill_dir_plus(ino.0, items, reply),
            Err(e) => fail!(reply, "readdirplus", e),
        }
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
        let who = caller!(self, req, reply, "setxattr");
        let before = self.open_before(ino.0);
        let (name, value) = (name.to_owned(), value.to_vec());
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| {
                with_caller(who.clone(), || {
                    c.overlay.setxattr(ino.0, &name, &value, flags)
                })
            },
            move |c, res, reply| {
                match res {
                    Ok(()) => reply.ok(),
                    Err(e) => fail!(reply, "setxattr", e),
                }
                c.narrowed(ino.0, before);
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
        let who = caller!(self, req, reply, "getxattr");
        let name = name.to_owned();
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| with_caller(who.clone(), || c.overlay.getxattr(ino.0, &name, size)),
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
        let who = caller!(self, req, reply, "listxattr");
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| with_caller(who.clone(), || c.overlay.listxattr(ino.0, size)),
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
        let who = caller!(self, req, reply, "removexattr");
        let before = self.open_before(ino.0);
        let name = name.to_owned();
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| with_caller(who.clone(), || c.overlay.removexattr(ino.0, &name)),
            move |c, res, reply| {
                match res {
                    Ok(()) => reply.ok(),
                    Err(e) => fail!(reply, "removexattr", e),
                }
                c.narrowed(ino.0, before);
            },
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let who = caller!(self, req, reply, "access", Check::Access, None);
        let mask = mask.bits() & (libc::R_OK | libc::W_OK | libc::X_OK);
        self.serve(
            req.pid(),
            false,
            reply,
            move |c| match &who {
                // The filesystem checks, as the caller (a bucket-only file: from its mode).
                Some(_) => with_caller(who.clone(), || c.overlay.access(ino.0, mask)),
                // With `default_permissions` the kernel checked the modes itself and only
                // asks whether the inode still exists.
                None => c.overlay.getattr(ino.0).map(drop),
            },
            |_, res, reply| match res {
                Ok(()) => reply.ok(),
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
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let who = caller!(self, req, reply, "create", Check::Plain, Some(umask));
        let mode = self.masked(mode, umask);
        match with_caller(who, || {
            self.overlay.create(parent.0, name, mode, flags, creds(req))
        }) {
            Ok((entry, opened)) => {
                let ttl = self.entry_ttl(parent.0);
                self.reply_created(&entry, opened, flags, ttl, reply)
            }
            Err(e) => fail!(reply, "create", e),
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
