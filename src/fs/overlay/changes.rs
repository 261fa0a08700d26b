//! Requests that change the namespace or a file's attributes (renames aside, see
//! [`super::rename`]).
//!
//! Each refuses a read-only mount, and a name of the hidden state directory, before anything
//! else; changes the local directory; and tells the mirror what it must know: a removal is
//! journaled before it runs, a new directory or link and a change of a file's size, mode,
//! owner or times are reported once done. A name that is only in the bucket is removed
//! without a download.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use super::{Attr, Creds, Entry, Ino, Overlay, OverlayError, Result, SetAttr};
use crate::engine::events::Intent;
use crate::os::creds;

impl Overlay {
    pub fn setattr(&self, ino: Ino, fh: Option<u64>, set: SetAttr) -> Result<Attr> {
        let res = self.set_attributes(ino, fh, set);
        // Who may search a directory depends on its mode and owner (also after a failure:
        // some of the changes may have been made).
        self.inodes.search_changed(ino);
        res
    }

    fn set_attributes(&self, ino: Ino, fh: Option<u64>, set: SetAttr) -> Result<Attr> {
        self.writable()?;
        let fd = match self.fd_of(ino) {
            Some((None, _)) if set.size == Some(0) => {
                // Checked before it is emptied (a truncate needs write permission).
                self.check_remote(ino, libc::W_OK)?;
                self.materialize_empty(ino)?
            }
            _ => self.node_fd(ino)?,
        };
        let fd = fd.as_fd();
        if let Some(mode) = set.mode {
            let mode = mode & 0o7777;
            if self.drops_privileges(fd, mode) {
                // What the kernel asks for when someone writes or truncates a set-uid or
                // set-gid file (its `file_remove_privs`), in the writer's name: the writer
                // need not own the file, and the kernel would not check it. Allowed to anyone
                // who may write the file.
                creds::as_daemon(|| self.local.set_mode(fd, mode))
            } else {
                self.local.set_mode(fd, mode)
            }
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
                Some((parent_fd.as_fd(), &*name))
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

    /// Whether changing the mode of the file behind `fd` to `mode` only clears its set-uid
    /// and set-gid bits, for a caller who may write the file: the shape of the kernel's
    /// request when such a file is written or truncated (it sends it whenever etlfs does not
    /// take over `handle_killpriv`, which fuser does not offer).
    fn drops_privileges(&self, fd: std::os::fd::BorrowedFd<'_>, mode: u32) -> bool {
        if creds::current().is_none() {
            return false;
        }
        let Ok(st) = self.local.stat(fd) else {
            return false;
        };
        let now = st.mode & 0o7777;
        st.is_file()
            && now != mode
            && now & !(libc::S_ISUID | libc::S_ISGID) == mode
            && self.local.access(fd, libc::W_OK).is_ok()
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
                // Not on the filesystem: it is asked about the directory alone.
                self.check_entries(&dir_fd, "unlink")?;
                return self.remove_remote(parent, name, p);
            }
        }
        if let (true, Some(p), Some(r)) = (dir, &path, &self.remote) {
            if r.index.has_children(p) {
                // Files only in the bucket are in it, as far as the application can see
                // (once it may remove names there at all).
                self.check_entries(&dir_fd, "rmdir")?;
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

    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.writable()?;
        let fd = self.node_fd(ino)?;
        let res = self
            .local
            .set_xattr(fd.as_fd(), name, value, flags)
            .map_err(OverlayError::local("setxattr"));
        // It may have been an ACL.
        self.inodes.search_changed(ino);
        res
    }

    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        self.writable()?;
        let fd = self.node_fd(ino)?;
        let res = self
            .local
            .remove_xattr(fd.as_fd(), name)
            .map_err(OverlayError::local("removexattr"));
        self.inodes.search_changed(ino);
        res
    }
}
