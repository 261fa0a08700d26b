//! Bounded local disk (`--max-local-bytes`): the local directory as a cache of the bucket.
//!
//! Every local regular file is tracked with its size, least recently used first. When the
//! total passes the limit, the least recently used files that are *clean* — the bucket holds
//! exactly this version, per the mirror's upload records — and not open are evicted: the local
//! copy is deleted and the file becomes bucket-only again, to be fetched transparently on its
//! next open. Dirty files (not yet in the bucket) are never evicted, so the limit is a target:
//! local usage can exceed it while uploads are pending.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::engine::index::moved_path;

/// Sizes of local files in least-recently-used order.
#[derive(Debug)]
pub struct LocalCache {
    max: u64,
    inner: Mutex<Inner>,
    /// The total, where `/metrics` reads it (updated with every change).
    published: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Inner {
    lru: LruCache<PathBuf, u64>,
    total: u64,
}

impl LocalCache {
    pub fn new(max: u64, existing: Vec<(PathBuf, u64)>, published: Arc<AtomicU64>) -> LocalCache {
        let mut inner = Inner {
            lru: LruCache::unbounded(),
            total: 0,
        };
        for (p, size) in existing {
            inner.total += size;
            inner.lru.put(p, size);
        }
        published.store(inner.total, Ordering::Relaxed);
        LocalCache {
            max,
            inner: Mutex::new(inner),
            published,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, inner: &Inner) {
        self.published.store(inner.total, Ordering::Relaxed);
    }

    /// `path` was used and is `size` bytes now.
    pub fn touch(&self, path: &Path, size: u64) {
        let mut inner = self.lock();
        let old = inner.lru.put(path.to_path_buf(), size).unwrap_or(0);
        inner.total = inner.total.saturating_sub(old) + size;
        self.publish(&inner);
    }

    /// `path` was placed by a background download (prefetch, readahead): counted, but the
    /// first to go, as nobody has used it yet.
    pub fn placed_unused(&self, path: &Path, size: u64) {
        let mut inner = self.lock();
        let old = inner.lru.put(path.to_path_buf(), size).unwrap_or(0);
        inner.lru.demote(path);
        inner.total = inner.total.saturating_sub(old) + size;
        self.publish(&inner);
    }

    /// Whether `bytes` more stay within the bound.
    pub fn admits(&self, bytes: u64) -> bool {
        self.total().saturating_add(bytes) <= self.max
    }

    pub fn remove(&self, path: &Path) {
        let mut inner = self.lock();
        if let Some(size) = inner.lru.pop(path) {
            inner.total = inner.total.saturating_sub(size);
            self.publish(&inner);
        }
    }

    /// Everything at or below `from` is now below `to`.
    pub fn rename(&self, from: &Path, to: &Path) {
        let mut inner = self.lock();
        let moved: Vec<(PathBuf, u64)> = inner
            .lru
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, s)| (p.clone(), *s))
            .collect();
        for (p, size) in moved {
            inner.lru.pop(&p);
            let new = moved_path(&p, from, to);
            inner.lru.put(new, size);
        }
    }

    pub fn total(&self) -> u64 {
        self.lock().total
    }

    pub fn over_limit(&self) -> bool {
        self.total() > self.max
    }

    /// Eviction candidates, least recently used first.
    pub fn candidates(&self) -> Vec<PathBuf> {
        self.lock()
            .lru
            .iter()
            .rev()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

impl crate::engine::fetch::LocalBudget for LocalCache {
    fn admits(&self, bytes: u64) -> bool {
        LocalCache::admits(self, bytes)
    }

    fn placed(&self, path: &Path, bytes: u64) {
        self.placed_unused(path, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_sizes_in_lru_order() {
        let c = LocalCache::new(
            100,
            vec![("a".into(), 40), ("b".into(), 30)],
            Default::default(),
        );
        assert_eq!(c.total(), 70);
        c.touch(Path::new("c"), 50);
        assert!(c.over_limit());
        c.touch(Path::new("a"), 10); // a used again and shrunk
        assert_eq!(c.total(), 90);
        assert_eq!(
            c.candidates(),
            vec![PathBuf::from("b"), "c".into(), "a".into()]
        );
        c.rename(Path::new("c"), Path::new("d/c"));
        c.remove(Path::new("b"));
        // A rename counts as a use.
        assert_eq!(c.candidates(), vec![PathBuf::from("a"), "d/c".into()]);
        assert_eq!(c.candidates()[1].as_os_str(), "d/c");
        assert_eq!(c.total(), 60);
    }
}
