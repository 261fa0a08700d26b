//! Eviction under `--max-local-bytes`: the local disk as a bounded cache of the bucket.
//!
//! Every use of a local file is recorded in the [`LocalCache`](super::cache::LocalCache); when
//! local files pass the bound, the least recently used ones the bucket holds exactly (the
//! mirror says which) and nobody has open are deleted locally and become bucket-only again,
//! to be fetched on their next open. An open holds the eviction lock shared, so a file is never
//! evicted while an open of it is under way.

use std::os::fd::AsFd;

use super::{Ino, Overlay};
use crate::engine::index::RemoteFile;
use crate::escape::esc;

impl Overlay {
    /// Records a use of a local file for the LRU, and evicts if the disk is over its bound.
    pub(super) fn used(&self, ino: Ino) {
        let Some(cache) = &self.cache else { return };
        let (Some(path), Some((Some(fd), false))) = (self.inodes.path(ino), self.fd_of(ino)) else {
            return;
        };
        if let Ok(st) = self.local.stat(fd.as_fd()) {
            cache.touch(&path, st.size);
        }
        if cache.over_limit() {
            self.evict();
        }
    }

    /// Evicts least recently used clean, closed files until the disk is within its bound.
    fn evict(&self) {
        let (Some(cache), Some(remote)) = (&self.cache, &self.remote) else {
            return;
        };
        for path in cache.candidates() {
            if !cache.over_limit() {
                break;
            }
            let _exclusive = self.evict_lock.write().unwrap_or_else(|e| e.into_inner());
            let st = match self.local.stat_beneath(&path) {
                Ok(st) if st.is_file() => st,
                _ => {
                    cache.remove(&path);
                    continue;
                }
            };
            if st.nlink > 1 {
                // Removing one name of a file with several frees nothing, and would make the
                // name come back from the bucket as a file of its own, no longer linked.
                continue;
            }
            // Only what the bucket holds exactly, and nothing open.
            let Some(sha256) = self.sink.in_bucket(&path, &st) else {
                continue;
            };
            if !self.inodes.detach_if_idle(st.dev, st.ino) {
                continue;
            }
            remote.index.insert(
                &path,
                RemoteFile {
                    size: st.size,
                    mtime: st.mtime,
                    mode: st.mode & 0o7777,
                    sha256: Some(sha256),
                    owner: Some((st.uid, st.gid)),
                    source: path.clone(),
                },
            );
            match self.local.unlink_beneath(&path) {
                Ok(()) => {
                    cache.remove(&path);
                    self.evictions
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(path = %esc(&path), bytes = st.size, "evicted to the bucket");
                }
                Err(e) => {
                    remote.index.remove(&path);
                    tracing::warn!(path = %esc(&path), error = %e, "eviction failed");
                }
            }
        }
    }
}
