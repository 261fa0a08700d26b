//! Between the overlay's plain types and fuser's: attributes, file types, credentials, times,
//! and the replies that carry several results (directory listings, xattrs).

use fuser::{
    FileAttr, FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyXattr, Request, TimeOrNow,
};

use super::{Core, TTL};
use crate::fs::overlay::{Attr, Creds, DirItem, Entry, FileKind, Ino, TimeSet, XattrReply};

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

pub(super) fn file_attr(a: &Attr) -> FileAttr {
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

pub(super) fn creds(req: &Request) -> Creds {
    Creds {
        uid: req.uid(),
        gid: req.gid(),
    }
}

pub(super) fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    })
}

pub(super) fn reply_xattr(reply: ReplyXattr, r: XattrReply) {
    match r {
        XattrReply::Size(n) => reply.size(n),
        XattrReply::Data(d) => reply.data(&d),
    }
}

/// Fills a `readdir` reply with `items` until it is full.
pub(super) fn fill_dir(items: Vec<DirItem>, mut reply: ReplyDirectory) {
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

impl Core {
    /// Replies with an entry just made in directory `parent` (mknod, mkdir, symlink).
    pub(super) fn reply_entry(&self, parent: Ino, e: &Entry, reply: ReplyEntry) {
        let ttl = self.entry_ttl(parent);
        reply.entry_with_ttls(&TTL, &ttl, &file_attr(&e.attr), Generation(0));
    }

    /// The mode of a creating request as the overlay gets it: the kernel's, whose umask the
    /// filesystem underneath applies (as the caller's) where the kernel left it unmasked;
    /// otherwise with the umask applied (a second time does nothing).
    pub(super) fn masked(&self, mode: u32, umask: u32) -> u32 {
        if self.unmasked() { mode } else { mode & !umask }
    }

    /// Fills a `readdirplus` reply of directory `dir` with `items` and their attributes until
    /// it is full.
    pub(super) fn fill_dir_plus(
        &self,
        dir: Ino,
        items: Vec<DirItem>,
        mut reply: ReplyDirectoryPlus,
    ) {
        for item in items {
            let dot = item.name == "." || item.name == "..";
            // Every entry but the dot entries counts as a lookup in the kernel, so it is
            // looked up here too; one that vanished since opendir is skipped.
            let (ttl, attr) = if dot {
                self.attr_ttl(|| self.overlay.getattr(item.ino), |a| a.ino)
            } else {
                self.attr_ttl(
                    || self.overlay.lookup(dir, &item.name).map(|e| e.attr),
                    |a| a.ino,
                )
            };
            let Ok(attr) = attr else { continue };
            // (one validity for the name and the attributes here; no caching of names where
            // not everyone may search, see `entry_ttl`)
            let ttl = ttl.min(self.entry_ttl(dir));
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
}
