//! Requests that read the namespace: names, attributes, listings, links' targets, xattrs.
//!
//! Where there is a bucket the namespace is the union of the local directory and the index:
//! a name that is not local but in the index is a bucket-only file, with the attributes the
//! index records; a listing shows both, the local entry winning a name both have. Names,
//! attributes and listings of bucket-only files need no download; only what the local file
//! alone holds (its xattrs) does.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::sync::Arc;

use super::handle::{DirHandle, DirSnapshotEntry};
use super::inode;
use super::{
    Attr, DirItem, Entry, FileKind, Ino, Overlay, OverlayError, Result, StatFs, XattrReply,
};

impl Overlay {
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Entry> {
        if self.is_hidden(parent, name) {
            return Err(OverlayError::local("lookup")(
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        let dir = self.dir_fd(parent)?;
        // As the caller: the filesystem checks its search permission on the directory (also
        // for a name only in the bucket, which it then does not find). That permission is all
        // a lookup needs, so where everyone has it etlfs looks up as itself, sparing the
        // switch of credentials (the negative lookup before each create, say).
        let found = if self.open_to_all(parent) == Some(true) {
            self.local.lookup(dir.as_fd(), name)
        } else {
            self.local.lookup_as_caller(dir.as_fd(), name)
        };
        match found {
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
                            attr: self.remote_attr(ino, parent, &f),
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
            let (parent, path) = self
                .inodes
                .with_node(ino, |n| n.parent)
                .zip(self.inodes.path(ino))
                .ok_or(OverlayError::UnknownInode(ino))?;
            if let Some(f) = self.remote_file(&path) {
                return Ok(self.remote_attr(ino, parent, &f));
            }
        }
        let fd = self.node_fd(ino)?;
        let st = self
            .local
            .stat(fd.as_fd())
            .map_err(OverlayError::local("getattr"))?;
        Ok(Attr::from_stat(ino, &st))
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let fd = self.node_fd(ino)?;
        self.local
            .readlink(fd.as_fd())
            .map_err(OverlayError::local("readlink"))
    }

    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        let fd = self.dir_fd(ino)?;
        // As the caller: the filesystem checks its read permission.
        let file = self
            .local
            .open_as_caller(
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
}
