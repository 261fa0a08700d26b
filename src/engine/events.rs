//! Change events: what the filesystem face and the fetcher tell the sync engine about local
//! changes, as one interface ([`ChangeSink`]). The overlay and the fetcher depend on this
//! module, not on the mirror that implements it, so either can be driven and tested with any
//! sink (a recorder, [`NullSink`]).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use crate::engine::journal::Intent;

/// How the overlay (and the fetcher, for downloads) report changes. Implemented by the
/// mirror; tests use recorders.
pub trait ChangeSink: Send + Sync + std::fmt::Debug {
    /// A file is about to be created, or truncated by an `O_TRUNC` open, at `path` (once per
    /// name of it the overlay knows; a writer registers next: [`ChangeSink::writer_opened`]). Until [`ChangeSink::opening_done`] it
    /// is not uploaded even if found meanwhile (by the start's reconcile, or a pending upload):
    /// between the syscall and the writer's registration it is an empty file nobody closed.
    fn opening_started(&self, path: &Path);
    /// The open of `path` ended (its writer is registered, or it failed).
    fn opening_done(&self, path: &Path);
    /// The count of open write handles the overlay keeps and the sink reads: one count for
    /// both, asked for once, when the overlay is made.
    fn write_count(&self) -> Arc<WriteCount> {
        Arc::default()
    }
    /// A handle with write access to the local inode `ino` was opened (and counted).
    fn writer_opened(&self, _ino: u64) {}
    /// A write handle of `ino` was released (and counted); `paths` are the names of it the
    /// overlay knows when it was the last (none once they were all removed; a file with
    /// several links may have others), else empty.
    fn writer_closed(&self, ino: u64, paths: &[PathBuf]);
    /// The local inode `ino`, known by `paths`, changed without a write handle (truncate,
    /// chmod, utimens, mkdir, link), or was fsynced (`urgent`: upload now the state it has
    /// now, even if it is still open).
    fn changed(&self, ino: u64, paths: &[PathBuf], urgent: bool);
    /// Records an intent durably, before the local operation. Returns a token for
    /// [`ChangeSink::finish`].
    fn intent(&self, intent: Intent) -> io::Result<u64>;
    /// The local operation for the intent ran: `ok` queues it for the bucket, otherwise it is
    /// cancelled.
    fn finish(&self, token: u64, ok: bool);
    /// `path` was just downloaded from the bucket as `st` with checksum `sha256`: the bucket
    /// already holds this version.
    fn fetched(&self, path: &Path, st: &crate::os::local::Stat, sha256: &str);
    /// The checksum of `path` if the bucket holds exactly the local version `st` (the file is
    /// clean and may be evicted), `None` otherwise.
    fn in_bucket(&self, path: &Path, st: &crate::os::local::Stat) -> Option<String>;
}

/// A sink that ignores everything (a mount without a bucket, and core tests).
#[derive(Debug, Default)]
pub struct NullSink;

impl ChangeSink for NullSink {
    fn opening_started(&self, _: &Path) {}
    fn opening_done(&self, _: &Path) {}
    fn writer_closed(&self, _: u64, _: &[PathBuf]) {}
    fn changed(&self, _: u64, _: &[PathBuf], _: bool) {}
    fn intent(&self, _: Intent) -> io::Result<u64> {
        Ok(0)
    }
    fn finish(&self, _: u64, _: bool) {}
    fn fetched(&self, _: &Path, _: &crate::os::local::Stat, _: &str) {}
    fn in_bucket(&self, _: &Path, _: &crate::os::local::Stat) -> Option<String> {
        None
    }
}

/// Open write handles per local inode, counted once: the overlay counts them as handles open
/// and close, the mirror reads them (a file open for writing holds no state anybody closed).
#[derive(Debug, Default)]
pub struct WriteCount(Mutex<HashMap<u64, u32>>);

impl WriteCount {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn opened(&self, ino: u64) {
        *self.lock().entry(ino).or_insert(0) += 1;
    }

    /// One write handle of `ino` was released; whether it was the last.
    pub fn closed(&self, ino: u64) -> bool {
        let mut open = self.lock();
        match open.get_mut(&ino) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                open.remove(&ino);
                true
            }
        }
    }

    pub fn is_open(&self, ino: u64) -> bool {
        self.lock().get(&ino).is_some_and(|n| *n > 0)
    }
}
