//! One verified download: an object into a temporary file, checked, then renamed into place.
//!
//! The temporary file is in the state directory (same filesystem as the served directory), is
//! checked against the object's size and SHA-256, gets its mode, owner and mtime, is fsynced,
//! and is then renamed into place — with `RENAME_NOREPLACE` unless told otherwise — so nobody
//! ever sees a partial or corrupt file. Shared by a mount's downloads and `etlfs restore`.

use std::os::fd::AsFd;
use std::path::Path;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::FetchError;
use crate::engine::index::RemoteFile;
use crate::escape::esc;
use crate::os::local::{LocalDir, Stat};
use crate::os::state::StateDir;
use crate::os::sys;
use crate::store::bucket::{Bucket, BucketError};

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
    download_verified_with(bucket, local, state, path, remote, how, &|_| {}, None).await
}

/// The last step of a mount's download, made atomic with the overlay's changes to bucket-only
/// names: under `lock`, the file is renamed into place only if `still_wanted` (the index still
/// has it at that path: it was not removed or renamed meanwhile), and `placed` runs before the
/// lock is let go (the index forgets the path). Without it a download that finished after an
/// unlink or rename of its file would bring the file back under its old name.
pub struct Gate<'a> {
    pub lock: &'a std::sync::Mutex<()>,
    pub still_wanted: &'a (dyn Fn() -> bool + Sync),
    /// Called with the placed file's stat and checksum.
    pub placed: &'a (dyn Fn(&Stat, &str) + Sync),
}

/// [`download_verified`], calling `received` with the size of every chunk of the body as it
/// arrives (a mount tells a stalled bucket from a slow one by it), and placing through `gate`.
/// `None` also if the gate found the file no longer wanted.
#[allow(clippy::too_many_arguments)]
pub async fn download_verified_with(
    bucket: &Bucket,
    local: &LocalDir,
    state: &StateDir,
    path: &Path,
    remote: &RemoteFile,
    how: Placement,
    received: &(dyn Fn(u64) + Sync),
    gate: Option<Gate<'_>>,
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
    let (file, sha) = match write_verified(bucket, path, remote, file, received).await {
        Ok(x) => x,
        Err(e) => {
            let _ = state.remove(&tmp);
            return Err(e);
        }
    };
    match place(local, state, path, remote, &file, &tmp, &sha, how, gate).await {
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
    received: &(dyn Fn(u64) + Sync),
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
    // The source may also be a kept version (`restore --as-of`), which never moves. (An object
    // the mirror moved meanwhile is not found: the caller asks the index where it is now. Not
    // at `path` for sure: an exchange moves it through a stage, and whatever is at `path`
    // then is another file's.)
    let mut stream = bucket
        .get_stream_source(&remote.source)
        .await
        .map_err(bucket_err)?;
    let mut out = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(bucket_err)?;
        received(chunk.len() as u64);
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
#[allow(clippy::too_many_arguments)]
async fn place(
    local: &LocalDir,
    state: &StateDir,
    path: &Path,
    remote: &RemoteFile,
    file: &std::fs::File,
    tmp: &std::ffi::CString,
    sha: &str,
    how: Placement,
    gate: Option<Gate<'_>>,
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
    let own = file.try_clone().map_err(local_err("fsync"))?;
    sync_off_thread(own).await.map_err(local_err("fsync"))?;
    let name = sys::cstr(file_name).map_err(local_err("file name"))?;
    let flags = if how.replace {
        0
    } else {
        libc::RENAME_NOREPLACE
    };
    {
        let _guard = gate
            .as_ref()
            .map(|g| g.lock.lock().unwrap_or_else(|e| e.into_inner()));
        if gate.as_ref().is_some_and(|g| !(g.still_wanted)()) {
            let _ = state.remove(tmp);
            return Ok(None);
        }
        match sys::renameat2(state.fd(), tmp, parent_fd.as_fd(), &name, flags) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && !how.replace => {
                let _ = state.remove(tmp);
                return Ok(None);
            }
            Err(e) => return Err(local_err("renaming the download into place")(e)),
        }
        if let Some(g) = &gate {
            let st = Stat::from_file(file).map_err(local_err("stat"))?;
            (g.placed)(&st, sha);
        }
    }
    // The rename is durable once the directory is synced.
    let dir = local.reopen(parent_fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY);
    if let Ok(d) = dir {
        let _ = sync_off_thread(d).await;
    }
    Ok(Some(Stat::from_file(file).map_err(local_err("stat"))?))
}

/// `fsync` on the blocking pool: a sync can take a while on a busy disk, and on a runtime
/// thread it would hold up every other download running there (16 to 32 at once).
async fn sync_off_thread(file: std::fs::File) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(std::io::Error::other)?
}
