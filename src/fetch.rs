//! Lazy restore: bring a bucket-only file to the local disk, whole and verified, or not at all.
//!
//! A download goes to a temporary file in the state directory (same filesystem), is checked
//! against the object's size and SHA-256, gets its mode, owner and mtime, is fsynced, and is
//! then renamed into place with `RENAME_NOREPLACE` — so the application never sees a partial or
//! corrupt file, and a local file that appeared meanwhile always wins. A failed or corrupt
//! download is an error (the application gets `EIO`) and leaves nothing behind; the next open
//! tries again.
//!
//! One download per path however many openers wait (single flight: the waiters share one
//! future), at most `concurrency` downloads at once, and bodies are streamed to disk in chunks,
//! never held whole in memory. The first read of a large file waits for the whole download: the
//! checksum can only be verified at the end, and serving bytes before that could show the
//! application data that later turns out corrupt.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::bucket::history::is_history_source;
use crate::bucket::{Bucket, BucketError};
use crate::escape::esc;
use crate::index::{Index, RemoteFile};
use crate::local::{LocalDir, Stat};
use crate::mirror::ChangeSink;
use crate::state::StateDir;
use crate::sys;

/// Why a file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{} is not in the bucket index", esc(.0))]
    NotInBucket(PathBuf),
    #[error("downloading {}: {source}", esc(.path))]
    Bucket {
        path: PathBuf,
        #[source]
        source: Box<BucketError>,
    },
    #[error("{}: downloaded {got} bytes, the bucket listed {want}", esc(.path))]
    WrongSize { path: PathBuf, got: u64, want: u64 },
    // `want` comes from the object's metadata.
    #[error("{}: checksum mismatch (object is corrupt): expected {}, got {got}", esc(.path), esc(.want))]
    Corrupt {
        path: PathBuf,
        want: String,
        got: String,
    },
    #[error("{op} for {}: {source}", esc(.path))]
    Local {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Flight = Shared<BoxFuture<'static, Result<(), Arc<FetchError>>>>;

/// Counters for logs, tests and `/metrics`.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
    pub bytes: AtomicU64,
    /// Duration of each successful download, from the request to the file in place.
    pub latency: crate::counters::Latency,
}

/// The downloader.
pub struct Fetcher {
    bucket: Bucket,
    local: LocalDir,
    state: Arc<StateDir>,
    index: Arc<Index>,
    sink: Arc<dyn ChangeSink>,
    flights: Mutex<HashMap<PathBuf, Flight>>,
    permits: Arc<Semaphore>,
    pub stats: FetchStats,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// `local` must be a descriptor of the served directory opened before the mount.
    pub fn new(
        bucket: Bucket,
        local: LocalDir,
        state: Arc<StateDir>,
        index: Arc<Index>,
        sink: Arc<dyn ChangeSink>,
        concurrency: usize,
    ) -> Arc<Fetcher> {
        Arc::new(Fetcher {
            bucket,
            local,
            state,
            index,
            sink,
            flights: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            stats: FetchStats::default(),
        })
    }

    /// The bucket files are fetched from.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// Makes `path` local: downloads it unless it is local already. Concurrent calls for the
    /// same path share one download.
    pub async fn fetch(self: &Arc<Self>, path: &Path) -> Result<(), Arc<FetchError>> {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(path) {
                Some(f) => f.clone(),
                None => {
                    let (me, p) = (Arc::clone(self), path.to_path_buf());
                    let f = async move {
                        let res = me.download(&p).await.map_err(Arc::new);
                        me.flights
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&p);
                        res
                    }
                    .boxed()
                    .shared();
                    flights.insert(path.to_path_buf(), f.clone());
                    f
                }
            }
        };
        flight.await
    }

    async fn download(&self, path: &Path) -> Result<(), FetchError> {
        let Some(remote) = self.index.file(path) else {
            // Made local (or removed) since the caller looked: nothing to do.
            return if self.local.stat_beneath(path).is_ok() {
                Ok(())
            } else {
                Err(FetchError::NotInBucket(path.to_owned()))
            };
        };
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        if self.local.stat_beneath(path).is_ok() {
            self.index.remove(path);
            return Ok(());
        }
        let started = std::time::Instant::now();
        let res = self.download_to_place(path, &remote).await;
        match &res {
            Ok(bytes) => {
                self.stats.latency.record(started.elapsed());
                self.bucket.health().success();
                self.stats.fetches.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes.fetch_add(*bytes, Ordering::Relaxed);
                tracing::debug!(path = %esc(path), bytes, "fetched from the bucket");
            }
            Err(e) => {
                if matches!(e, FetchError::Bucket { source, .. } if source.is_outage()) {
                    self.bucket.health().failure();
                }
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "fetch failed; the next open tries again");
            }
        }
        res.map(drop)
    }

    async fn download_to_place(&self, path: &Path, remote: &RemoteFile) -> Result<u64, FetchError> {
        let placed = download_verified(
            &self.bucket,
            &self.local,
            &self.state,
            path,
            remote,
            Placement::default(),
        )
        .await?;
        self.index.remove(path);
        // The bucket holds exactly this version under this name (unless it was fetched from the
        // old key of a rename the mirror has not carried out yet): no need to upload it again.
        if let (Some((st, sha)), true) = (placed, remote.source == path) {
            self.sink.fetched(path, &st, &sha);
        }
        Ok(remote.size)
    }
}

/// How a finished download takes its place. The default is what the lazy fetch of a mount
/// needs; `etlfs restore` relaxes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement {
    /// Replace a local file at the path (`etlfs restore` over an older file, or `--force`).
    /// Without it a local file that appeared meanwhile wins and the download is dropped: under
    /// a mount that file is the application's newest data.
    pub replace: bool,
    /// Keep our own ownership where we may not give the file away (`etlfs restore` run by an
    /// ordinary user, on files another uid wrote) instead of failing. A mount runs as root,
    /// where a failed chown is a real error.
    pub owner_best_effort: bool,
}

/// Downloads `remote` (the object at `remote.source`) into a temporary file in `state`, checks
/// its size and SHA-256, gives it mode, owner and mtime, fsyncs it and renames it to `path`:
/// whole and verified, or nothing (the temporary is removed on every failure). Returns the
/// placed file's stat and checksum, or `None` if a local file won (see [`Placement::replace`]).
pub async fn download_verified(
    bucket: &Bucket,
    local: &LocalDir,
    state: &StateDir,
    path: &Path,
    remote: &RemoteFile,
    how: Placement,
) -> Result<Option<(Stat, String)>, FetchError> {
    let local_err = |op: &'static str| {
        move |source| FetchError::Local {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let (file, tmp) = state
        .create_temp(0o600)
        .map_err(local_err("creating a temporary file"))?;
    let (file, sha) = match write_verified(bucket, path, remote, file).await {
        Ok(x) => x,
        Err(e) => {
            let _ = state.remove(&tmp);
            return Err(e);
        }
    };
    match place(local, state, path, remote, &file, &tmp, how) {
        Ok(st) => Ok(st.map(|st| (st, sha))),
        Err(e) => {
            let _ = state.remove(&tmp);
            Err(e)
        }
    }
}

/// Streams the object into `file`, checking size and checksum. Returns the file and the hex
/// SHA-256 of what was written.
async fn write_verified(
    bucket: &Bucket,
    path: &Path,
    remote: &RemoteFile,
    file: std::fs::File,
) -> Result<(std::fs::File, String), FetchError> {
    let bucket_err = |source: BucketError| FetchError::Bucket {
        path: path.to_owned(),
        source: Box::new(source),
    };
    let local_err = |op: &'static str| {
        move |source| FetchError::Local {
            op,
            path: path.to_owned(),
            source,
        }
    };
    // The source may also be a kept version (`restore --as-of`), which never moves.
    let mut stream = match bucket.get_stream_source(&remote.source).await {
        // Renamed while bucket-only, and the mirror has moved the object meanwhile.
        Err(BucketError::NotFound { .. })
            if remote.source != path && !is_history_source(&remote.source) =>
        {
            bucket.get_stream(path).await.map_err(bucket_err)?
        }
        other => other.map_err(bucket_err)?,
    };
    let mut out = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(bucket_err)?;
        hasher.update(&chunk);
        got += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(local_err("writing the download"))?;
    }
    out.flush()
        .await
        .map_err(local_err("writing the download"))?;
    if got != remote.size {
        return Err(FetchError::WrongSize {
            path: path.to_owned(),
            got,
            want: remote.size,
        });
    }
    let sha = hex::encode(hasher.finalize());
    if let Some(want) = &remote.sha256 {
        if *want != sha {
            return Err(FetchError::Corrupt {
                path: path.to_owned(),
                want: want.clone(),
                got: sha,
            });
        }
    }
    Ok((out.into_std().await, sha))
}

/// Gives the finished download its attributes and renames it into place. Returns the new
/// file's stat, or `None` if a local file appeared meanwhile and `how` lets it win.
fn place(
    local: &LocalDir,
    state: &StateDir,
    path: &Path,
    remote: &RemoteFile,
    file: &std::fs::File,
    tmp: &std::ffi::CString,
    how: Placement,
) -> Result<Option<Stat>, FetchError> {
    let local_err = |op: &'static str| {
        move |source| FetchError::Local {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let (parent_fd, file_name) = local
        .open_parent(path)
        .map_err(local_err("opening the parent directory"))?;
    let parent = local
        .stat(parent_fd.as_fd())
        .map_err(local_err("stat of the parent"))?;
    let (uid, gid) = remote.restored_owner((parent.uid, parent.gid));
    match sys::fchownat(file.as_fd(), sys::EMPTY, uid, gid, libc::AT_EMPTY_PATH) {
        Ok(()) => {}
        Err(e) if how.owner_best_effort && e.raw_os_error() == Some(libc::EPERM) => {
            tracing::debug!(path = %esc(path), uid, gid, "not allowed to give the file its owner; it stays ours");
        }
        Err(e) => return Err(local_err("chown")(e)),
    }
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
        remote.restored_mode(),
    ))
    .map_err(local_err("chmod"))?;
    file.set_times(
        std::fs::FileTimes::new()
            .set_modified(remote.mtime)
            .set_accessed(remote.mtime),
    )
    .map_err(local_err("setting the mtime"))?;
    file.sync_all().map_err(local_err("fsync"))?;
    let name = sys::cstr(file_name).map_err(local_err("file name"))?;
    let flags = if how.replace {
        0
    } else {
        libc::RENAME_NOREPLACE
    };
    match sys::renameat2(state.fd(), tmp, parent_fd.as_fd(), &name, flags) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) && !how.replace => {
            let _ = state.remove(tmp);
            return Ok(None);
        }
        Err(e) => return Err(local_err("renaming the download into place")(e)),
    }
    // The rename is durable once the directory is synced.
    let dir = local.reopen(parent_fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY);
    if let Ok(d) = dir {
        let _ = d.sync_all();
    }
    Ok(Some(Stat::from_file(file).map_err(local_err("stat"))?))
}
