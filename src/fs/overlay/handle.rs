//! Open file and directory handles.
//!
//! A file handle owns a real descriptor of the local file opened with the application's
//! flags. In passthrough mode the kernel does reads and writes itself, but fsync, fallocate,
//! lseek and truncate-by-handle still arrive here and use this descriptor. A directory handle
//! owns a snapshot of the listing taken at `opendir`, so offsets stay stable while the
//! application reads it in several calls.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Ino;

#[derive(Debug)]
pub struct FileHandle {
    pub ino: Ino,
    pub file: Arc<File>,
    pub writable: bool,
    /// Opened by `execve` (see `files::is_exec`).
    pub exec: bool,
}

/// One entry of a directory snapshot.
#[derive(Debug, Clone)]
pub struct DirSnapshotEntry {
    pub name: OsString,
    /// The node id this entry has or would have (see `inode.rs`).
    pub ino: Ino,
    pub kind: super::FileKind,
}

#[derive(Debug)]
pub struct DirHandle {
    pub entries: Arc<Vec<DirSnapshotEntry>>,
    /// A readable descriptor of the directory, for `fsyncdir`.
    pub file: Arc<File>,
}

#[derive(Debug)]
enum Handle {
    File(FileHandle),
    Dir(DirHandle),
}

/// All open handles, by the `fh` number the kernel echoes back.
#[derive(Debug, Default)]
pub struct HandleTable {
    next: AtomicU64,
    handles: Mutex<HashMap<u64, Handle>>,
}

impl HandleTable {
    fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(fh, h);
        fh
    }

    pub fn insert_file(&self, h: FileHandle) -> u64 {
        self.insert(Handle::File(h))
    }

    pub fn insert_dir(&self, h: DirHandle) -> u64 {
        self.insert(Handle::Dir(h))
    }

    /// The file behind a file handle, and whether it was opened for writing.
    pub fn file(&self, fh: u64) -> Option<(Arc<File>, bool)> {
        match self.lock().get(&fh) {
            Some(Handle::File(h)) => Some((Arc::clone(&h.file), h.writable)),
            _ => None,
        }
    }

    /// The inode a file handle was opened on.
    pub fn file_ino(&self, fh: u64) -> Option<Ino> {
        match self.lock().get(&fh) {
            Some(Handle::File(h)) => Some(h.ino),
            _ => None,
        }
    }

    pub fn dir(&self, fh: u64) -> Option<(Arc<Vec<DirSnapshotEntry>>, Arc<File>)> {
        match self.lock().get(&fh) {
            Some(Handle::Dir(h)) => Some((Arc::clone(&h.entries), Arc::clone(&h.file))),
            _ => None,
        }
    }

    pub fn remove_file(&self, fh: u64) -> Option<FileHandle> {
        let mut map = self.lock();
        match map.get(&fh) {
            Some(Handle::File(_)) => match map.remove(&fh) {
                Some(Handle::File(h)) => Some(h),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn remove_dir(&self, fh: u64) -> Option<DirHandle> {
        let mut map = self.lock();
        match map.get(&fh) {
            Some(Handle::Dir(_)) => match map.remove(&fh) {
                Some(Handle::Dir(h)) => Some(h),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The numbers of every open handle: (files, directories).
    pub fn ids(&self) -> (Vec<u64>, Vec<u64>) {
        let map = self.lock();
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        for (fh, h) in map.iter() {
            match h {
                Handle::File(_) => files.push(*fh),
                Handle::Dir(_) => dirs.push(*fh),
            }
        }
        (files, dirs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }
}
