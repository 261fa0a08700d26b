//! The tasks that bring one path's objects in line with the local file: upload what changed
//! (skipping what the upload records say is in the bucket already), delete what is gone.
//!
//! Apart from the loop because they run outside it, in spawned tasks that only report back;
//! they hold no scheduling state. The intents' tasks (in `intents`) use the removals here.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::debug;

use super::super::Shared;
use super::super::records::{Identity, ObjectVersion, Record};
use super::{Outcome, SyncError};
use crate::escape::esc;
use crate::os::local::{Stat, is_gone};
use crate::store::bucket::BucketError;
use crate::store::upload::{Snapshot, upload_snapshot};

pub(super) fn local_err(path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Local {
        path: path.to_owned(),
        source,
    }
}

/// Makes the bucket hold the current local state of `path` (file or directory).
pub(super) async fn sync(
    shared: &Shared,
    path: &Path,
    urgent: Option<Identity>,
) -> Result<Outcome, SyncError> {
    let st = match shared.local.stat_beneath(path) {
        Ok(st) => st,
        // Removed since: the removal's intent takes care of the bucket.
        Err(e) if is_gone(&e) => {
            shared.links.gone(path);
            return Ok(Outcome::Done);
        }
        Err(e)
            if e.raw_os_error() == Some(libc::EXDEV) || e.raw_os_error() == Some(libc::ELOOP) =>
        {
            debug!(path = %esc(path), "not mirrored: reached through a symlink");
            return Ok(Outcome::Done);
        }
        Err(e) => return Err(local_err(path)(e)),
    };
    if st.is_dir() {
        if shared.records.get(path).is_some_and(|r| r.dir) {
            return Ok(Outcome::Done);
        }
        shared.tombstones.writing(path);
        shared.bucket.put_dir_marker(path).await?;
        shared.bucket.health().success();
        shared.records.set(
            path,
            Record {
                id: Identity::of(&st),
                sha256: String::new(),
                dir: true,
            },
        );
        return Ok(Outcome::Done);
    }
    shared.links.note(path, &st);
    if !st.is_file() {
        return Ok(Outcome::Done); // symlinks, fifos, sockets and devices are not mirrored
    }
    let id = Identity::of(&st);
    if shared
        .records
        .get(path)
        .is_some_and(|r| r.id == id && !r.dir)
    {
        return Ok(Outcome::Done);
    }
    // An open file is published only in the state an fsync vouched for: what was written
    // since is not complete (its last close makes it due again).
    let fsynced = urgent == Some(id);
    if shared.is_busy(st.ino, path) && !fsynced {
        return Ok(Outcome::Done);
    }
    upload(shared, path, &st, fsynced).await
}

/// Uploads a consistent snapshot of a closed file, or nothing.
async fn upload(
    shared: &Shared,
    path: &Path,
    st: &Stat,
    urgent: bool,
) -> Result<Outcome, SyncError> {
    let started = std::time::Instant::now();
    let retry = Outcome::Later(shared.opts.upload_delay.max(Duration::from_millis(50)));
    let file = match shared.local.open_file_beneath(path) {
        Ok(f) => Arc::new(f),
        Err(e) if is_gone(&e) => return Ok(Outcome::Done),
        Err(e) => return Err(local_err(path)(e)),
    };
    let id = Identity::of(st);
    let unchanged = |f: &std::fs::File| -> std::io::Result<bool> {
        let now = crate::os::local::Stat::from_file(f)?;
        Ok(Identity::of(&now) == id && (urgent || !shared.is_busy(now.ino, path)))
    };
    shared.tombstones.writing(path);
    let up = match upload_snapshot(&shared.bucket, &file, path, st, unchanged).await? {
        Snapshot::Uploaded(up) => up,
        Snapshot::Moved => return Ok(retry),
    };
    let object = ObjectVersion {
        e_tag: up.e_tag,
        owner: Some((st.uid, st.gid)),
        until_ns: None,
    };
    let rec = Record {
        id,
        sha256: up.sha256,
        dir: false,
    };
    shared.records.set_with_object(path, rec, Some(object));
    shared.stats.uploads.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .upload_bytes
        .fetch_add(st.size, Ordering::Relaxed);
    shared.stats.upload_latency.record(started.elapsed());
    shared
        .stats
        .last_upload_ms
        .store(crate::counters::now_ms(), Ordering::Relaxed);
    shared.bucket.health().success();
    debug!(path = %esc(path), bytes = st.size, "uploaded");
    Ok(Outcome::Done)
}

pub(super) fn exists_locally(shared: &Shared, path: &Path) -> bool {
    !matches!(shared.local.stat_beneath(path), Err(e) if is_gone(&e))
}

/// Whether `path` exists locally as the kind of thing an object there stands for: a directory
/// for a marker, anything else for a file's object. A path re-created as the other kind does
/// not keep a removed object alive: a marker left over a file would make a restore show a
/// directory instead of the file, and a file's object left under a directory would come back
/// as the removed file once the directory goes too. (A stat that fails otherwise counts as
/// there: nothing is deleted on a doubt.)
pub(super) fn still_there(shared: &Shared, path: &Path, marker: bool) -> bool {
    match shared.local.stat_beneath(path) {
        Ok(st) => st.is_dir() == marker,
        Err(e) => !is_gone(&e),
    }
}

/// Deletes the object of a removed file, unless a file exists at the path again. A path that
/// can never be a key has no object.
pub(super) async fn remove_file(shared: &Shared, path: &Path) -> Result<(), SyncError> {
    if !shared.bucket.can_hold(path) || still_there(shared, path, false) {
        return Ok(());
    }
    shared.bucket.delete(path).await?;
    shared.bucket.health().success();
    shared.tombstones.removed(path, false);
    shared.records.remove(path);
    shared.stats.deletes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Deletes every object at or below a removed directory whose local path is absent. For a
/// renamed directory (`moved_to`), the object of a file that is only in the bucket is first
/// copied to its new key, so it moves with the directory (where the new path can be a key: the
/// overlay fetches bucket-only files before they move to a name that cannot). A directory
/// below which nothing can be a key has nothing in the bucket.
///
/// Which objects are a bucket-only file's, the index says (`guess`: a rename from an older
/// journal, or before an offline start's listing is loaded, when only the local disk can
/// tell: an object whose old path is absent and new path is not local). Not the old path being
/// absent otherwise: a file made there since the rename is uploaded after the intent, over an
/// object that still holds the renamed file's bytes.
pub(super) async fn remove_tree(
    shared: &Shared,
    dir: &Path,
    moved_to: Option<&Path>,
    guess: bool,
) -> Result<(), SyncError> {
    if !shared.bucket.can_hold_below(dir) {
        return Ok(());
    }
    let listing = shared.bucket.list(Some(dir)).await?;
    shared.bucket.health().success();
    for obj in listing {
        let there = still_there(shared, &obj.rel, obj.is_dir_marker);
        if there && guess {
            continue;
        }
        if let (Some(to), false) = (moved_to, obj.is_dir_marker) {
            let dest = to.join(obj.rel.strip_prefix(dir).expect("listed below dir"));
            let bucket_only = if guess {
                !exists_locally(shared, &dest)
            } else {
                holds_bucket_only(shared, &obj.rel)
            };
            if bucket_only && shared.bucket.can_hold(&dest) {
                move_object(shared, &obj.rel, &dest).await?;
            }
        }
        if !there {
            delete_object(shared, &obj.rel, obj.is_dir_marker).await?;
        }
    }
    if !exists_locally(shared, dir) {
        shared.tombstones.removed(dir, true);
        shared.records.remove_tree(dir);
    }
    Ok(())
}

/// Deletes a listed object (a file's, or a directory's marker) and forgets its record.
pub(super) async fn delete_object(
    shared: &Shared,
    rel: &Path,
    marker: bool,
) -> Result<(), SyncError> {
    if marker {
        shared.bucket.delete_dir_marker(rel).await?;
    } else {
        shared.bucket.delete(rel).await?;
    }
    shared.records.remove(rel);
    shared.stats.deletes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Whether the object at `key` holds the bytes of a file that is only in the bucket, renamed
/// since (the index serves it from there until the object moves).
pub(super) fn holds_bucket_only(shared: &Shared, key: &Path) -> bool {
    shared.index.as_ref().is_some_and(|i| i.sources(key))
}

/// Whether the index awaits an offline start's listing (it knows no bucket-only file yet).
pub(super) fn awaiting(shared: &Shared) -> bool {
    shared.index.as_ref().is_some_and(|i| i.awaiting())
}

/// Copies a bucket-only file's object to its new key (the old one is deleted by the caller),
/// and tells the index, which serves the file from there from now on. A source already gone
/// means an earlier attempt finished the move.
pub(super) async fn move_object(shared: &Shared, from: &Path, to: &Path) -> Result<(), SyncError> {
    shared.tombstones.writing(to);
    match shared.bucket.copy(from, to).await {
        Ok(()) => shared.stats.copies.fetch_add(1, Ordering::Relaxed),
        Err(BucketError::NotFound { .. }) => 0,
        Err(e) => return Err(e.into()),
    };
    if let Some(index) = &shared.index {
        index.object_moved(from, to);
    }
    Ok(())
}
