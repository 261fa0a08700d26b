//! Open files: open and create, the I/O served without passthrough, and release.
//!
//! Each handle owns a descriptor of the local file opened with the application's flags. What
//! the mirror needs to hear happens here: a handle with write access registers a writer, and
//! the release of the last writer of a file is the consistent point the mirror uploads. An
//! `O_TRUNC` open or a create is announced before the file is emptied or made, so the mirror
//! never takes that empty file for a finished one.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::access::open_mask;
use super::handle::FileHandle;
use super::{Creds, Entry, Ino, Opened, Overlay, OverlayError, Result};
use crate::escape::esc;
use crate::os::local;

impl Overlay {
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
        let exec = is_exec(flags);
        // A bucket-only file is checked before it is downloaded or emptied.
        let mask = open_mask(flags, exec);
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
                self.check_remote(ino, mask)?;
                self.hydrate(ino)?
            }
            Some(fd) => fd,
            // Bucket-only: O_TRUNC needs no download, anything else fetches the file first.
            None => {
                self.check_remote(ino, mask)?;
                if flags & libc::O_TRUNC != 0 {
                    self.materialize_empty(ino)?
                } else {
                    self.hydrate(ino)?
                }
            }
        };
        let flags = self.local_flags(flags, is_dir);
        let file = if exec {
            // execve needs execute permission, not read permission (a 0711 program runs):
            // the caller's is checked, and etlfs opens the file for the kernel to read.
            self.local
                .access(fd.as_fd(), libc::X_OK)
                .and_then(|()| self.local.reopen(fd.as_fd(), flags))
        } else if flags & libc::O_TRUNC == 0 && self.owner_may(fd.as_fd(), mask) {
            // The filesystem's answer is known (see `owner_may`): no switch of credentials,
            // which a Kubecost cycle would pay at each open.
            self.local.reopen(fd.as_fd(), flags)
        } else {
            self.local.open_as_caller(fd.as_fd(), flags)
        }
        .map_err(OverlayError::local("open"))?;
        Ok(self.register_handle(ino, file, is_writable(flags), exec))
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

    fn register_open(&self, ino: Ino, file: File, writable: bool) -> Opened {
        self.register_handle(ino, file, writable, false)
    }

    fn register_handle(&self, ino: Ino, file: File, writable: bool, exec: bool) -> Opened {
        // (writers are counted by local inode; see `local_ino`)
        if writable {
            let local = local_ino(&file, ino);
            self.writers.opened(local);
            self.sink.writer_opened(local);
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
            let local = local_ino(&h.file, h.ino);
            let last = self.writers.closed(local);
            let paths = if last {
                self.inodes.paths(h.ino)
            } else {
                Vec::new()
            };
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

    /// A file was truncated. With no writer open, that is a writer that opens and closes in one
    /// step; with one, the last writer's release reports it.
    pub(super) fn modified(&self, ino: Ino) {
        let idle = self.inodes.with_node(ino, |_| ()).is_some()
            && !self.writers.is_open(self.local_ino_of(ino));
        if idle {
            self.changed(ino, false);
            self.closed(ino);
        }
    }

    /// The last writer of a file went away and the mirror was told: the consistent point it
    /// uploads from, traced as the moment a change is complete.
    fn closed(&self, ino: Ino) {
        tracing::trace!(ino, path = ?self.inodes.path(ino).as_deref().map(esc), "file closed after a change");
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
