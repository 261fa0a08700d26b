//! Which version of each file the bucket holds, so a restart knows what to upload again.
//!
//! After every successful upload the mirror records the identity of the local file it read
//! (inode, size, mtime, ctime) and the content checksum. At start, a file whose identity no
//! longer matches its record — or that has no record — is uploaded again. `ctime` is the key:
//! applications cannot set it, and every write, truncate, chmod or rename moves it.
//!
//! The records live in memory and are written to `uploads.json` in the state directory
//! (temp file + rename, so a crash leaves the old or the new file, never a torn one). They
//! need no fsync: a lost record only means one more upload of the same bytes.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::local::Stat;
use crate::state::StateDir;

/// The local file an upload was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub mode: u32,
}

fn ns(t: std::time::SystemTime) -> i128 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

impl Identity {
    pub fn of(st: &Stat) -> Identity {
        Identity {
            ino: st.ino,
            size: st.size,
            mtime_ns: ns(st.mtime),
            ctime_ns: ns(st.ctime),
            mode: st.mode & 0o7777,
        }
    }
}

/// One path's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: Identity,
    /// Hex SHA-256 of what was uploaded (empty for a directory marker).
    pub sha256: String,
    pub dir: bool,
}

pub const FILE_NAME: &str = "uploads.json";

/// The record table.
#[derive(Debug)]
pub struct Records {
    state: Arc<StateDir>,
    map: Mutex<HashMap<PathBuf, Record>>,
    dirty: AtomicBool,
}

impl Records {
    pub fn load(state: Arc<StateDir>) -> io::Result<Records> {
        let path = state.path().join(FILE_NAME);
        let map = match state.read(FILE_NAME) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // A damaged record file costs re-uploads, never data: start over.
                tracing::warn!(file = %path.display(), error = %e, "upload records unreadable; every file will be checked against the bucket");
                HashMap::new()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Records {
            state,
            map: Mutex::new(map),
            dirty: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Record>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, path: &Path) -> Option<Record> {
        self.lock().get(path).cloned()
    }

    pub fn set(&self, path: &Path, rec: Record) {
        self.lock().insert(path.to_owned(), rec);
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub fn remove(&self, path: &Path) {
        if self.lock().remove(path).is_some() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Removes every record at or below `dir`.
    pub fn remove_tree(&self, dir: &Path) {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|p, _| !p.starts_with(dir));
        if map.len() != before {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Paths with a record (for pruning at start).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Writes the table if it changed since the last save.
    pub fn save(&self) -> io::Result<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&*self.lock()).map_err(io::Error::other)?;
        let res = self.state.write_atomic(FILE_NAME, &bytes);
        if res.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ino: u64) -> Record {
        Record {
            id: Identity {
                ino,
                size: 1,
                mtime_ns: 2,
                ctime_ns: 3,
                mode: 0o644,
            },
            sha256: "x".into(),
            dir: false,
        }
    }

    #[test]
    fn records_persist_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::load(Arc::new(StateDir::open(dir.path()).unwrap())).unwrap();
        r.set(Path::new("a/b"), rec(1));
        r.set(Path::new("a/c"), rec(2));
        r.set(Path::new("d"), rec(3));
        r.save().unwrap();
        let r = Records::load(Arc::new(StateDir::open(dir.path()).unwrap())).unwrap();
        assert_eq!(r.get(Path::new("a/b")), Some(rec(1)));
        r.remove_tree(Path::new("a"));
        assert_eq!(r.paths(), vec![PathBuf::from("d")]);
        r.save().unwrap();
        assert_eq!(
            Records::load(Arc::new(StateDir::open(dir.path()).unwrap()))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_damaged_file_means_start_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        assert!(
            Records::load(Arc::new(StateDir::open(dir.path()).unwrap()))
                .unwrap()
                .is_empty()
        );
    }
}
