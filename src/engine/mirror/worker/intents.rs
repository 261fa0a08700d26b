//! The intents' tasks — removals, renames and exchanges the journal recorded before the local
//! change was made — and the reconcile that compares the whole local tree with the bucket at
//! start.
//!
//! Apart from the per-path sync because they work on several paths at once: the loop runs
//! each alone, with no sync task in flight (see the parent module).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tracing::debug;

use super::super::Shared;
use super::super::records::{Identity, Record};
use super::sync::{
    awaiting, delete_object, exists_locally, holds_bucket_only, local_err, move_object,
    remove_file, remove_tree, still_there,
};
use super::{Outcome, SyncError};
use crate::engine::journal::{Intent, Source};
use crate::os::local::is_gone;

pub(super) async fn run_intent(
    shared: &Shared,
    seq: u64,
    intent: &Intent,
) -> Result<Outcome, SyncError> {
    match intent {
        Intent::Remove { path, dir: false } => {
            remove_file(shared, path).await.map(|_| Outcome::Done)
        }
        Intent::Remove { path, dir: true } => remove_tree(shared, path, None, false)
            .await
            .map(|_| Outcome::Done),
        Intent::Rename {
            from,
            to,
            dir: false,
            source,
        } => {
            // Either name may be one the bucket cannot hold: the old one has no object to
            // copy or delete, the new one gets none (and the old object goes all the same).
            let movable = shared.bucket.can_hold(from) && shared.bucket.can_hold(to);
            // A file whose bytes the bucket already has under the old name is copied there.
            let known = shared.records.get(from).filter(|_| movable);
            if let (Some(rec), Ok(st)) = (known, shared.local.stat_beneath(to)) {
                let now = Identity::of(&st);
                let same = !rec.dir
                    && rec.id.ino == now.ino
                    && rec.id.size == now.size
                    && rec.id.mtime_ns == now.mtime_ns;
                if same && st.is_file() && {
                    shared.tombstones.writing(to);
                    shared.bucket.copy(from, to).await.is_ok()
                } {
                    shared.records.set(to, Record { id: now, ..rec });
                    shared.stats.copies.fetch_add(1, Ordering::Relaxed);
                }
            }
            // A file that is only in the bucket was renamed: its object moves. Whatever is at
            // the old name locally now came after the rename (this intent runs before any
            // upload of it), so the object there is still the renamed file's.
            let bucket_only = match source {
                Some(Source::Bucket { .. }) => holds_bucket_only(shared, from),
                Some(Source::Local { .. }) => false,
                // An older journal: a file absent at both names was bucket-only.
                None => !exists_locally(shared, from) && !exists_locally(shared, to),
            };
            if movable && bucket_only {
                move_object(shared, from, to).await?;
            }
            remove_file(shared, from).await?;
            Ok(Outcome::Touch(vec![to.clone()]))
        }
        Intent::Rename {
            from,
            to,
            dir: true,
            source,
        } => {
            // Without a journal that says what moved, or an index that knows the bucket-only
            // files (an offline start, its listing not loaded yet), the local disk decides.
            let guess = source.is_none() || awaiting(shared);
            remove_tree(shared, from, Some(to), guess).await?;
            let mut paths = vec![to.clone()];
            touch_below(shared, to, &mut paths)?;
            Ok(Outcome::Touch(paths))
        }
        Intent::Exchange {
            a, b, a_dir, b_dir, ..
        } => exchange(shared, seq, (a, *a_dir), (b, *b_dir)).await,
    }
}

/// Adds every local path below the directory `dir` to `paths` (nothing if it is gone).
fn touch_below(shared: &Shared, dir: &Path, paths: &mut Vec<PathBuf>) -> Result<(), SyncError> {
    match shared.local.walk_from(dir, shared.skip.as_deref()) {
        Ok(entries) => paths.extend(entries.into_iter().map(|(p, _)| p)),
        // (gone, or no directory now: an exchange with a file)
        Err(e) if is_gone(&e) => {}
        Err(e) => return Err(local_err(dir)(e)),
    }
    Ok(())
}

/// `RENAME_EXCHANGE` of `a` and `b`. What is local under either is uploaded afresh; what the
/// bucket holds there and is no longer local is deleted; the objects of bucket-only files
/// below them swap sides. A swap cannot be done in place (and a replay from a listing taken
/// half way could not tell which side an object belongs to), so it is three moves, each like
/// a directory rename: `a`'s bucket-only objects to a stage ([`crate::engine::journal::exchange_stage`]),
/// `b`'s to `a`, the stage's to `b`. The journal records which move is under way
/// ([`crate::engine::journal::Journal::advance`], durably, before it starts): a retry, or the replay
/// after a crash (`cli/mount.rs` gives the index the same moves), goes on with that move; each move
/// copies before it deletes, so it can be redone.
async fn exchange(
    shared: &Shared,
    seq: u64,
    (a, a_dir): (&Path, bool),
    (b, b_dir): (&Path, bool),
) -> Result<Outcome, SyncError> {
    let stage = crate::engine::journal::exchange_stage(seq, Path::new(""));
    let moves = [(a, stage.as_path()), (b, a), (stage.as_path(), b)];
    let resumed = shared.journal.step(seq);
    for step in resumed.max(1)..=3u8 {
        if step != resumed {
            shared
                .journal
                .advance(seq, step)
                .map_err(SyncError::Journal)?;
        }
        let (from, to) = moves[usize::from(step - 1)];
        if !shared.bucket.can_hold_below(from) {
            continue;
        }
        let listing = shared.bucket.list(Some(from)).await?;
        shared.bucket.health().success();
        // Where this move's objects end up once the exchange is done.
        let last = if step == 2 { a } else { b };
        for obj in listing {
            // (the stage is etlfs' own: nothing local ever stands for it)
            let there = from != stage && still_there(shared, &obj.rel, obj.is_dir_marker);
            let rel = obj.rel.strip_prefix(from).expect("listed below");
            // Before an offline start's listing is loaded the index knows no bucket-only
            // file, and the local disk decides, as for a rename (see `remove_tree`).
            let bucket_only = holds_bucket_only(shared, &obj.rel)
                || (awaiting(shared) && !there && !exists_locally(shared, &last.join(rel)));
            if !obj.is_dir_marker && bucket_only {
                let dest = to.join(rel);
                if shared.bucket.can_hold(&dest) {
                    move_object(shared, &obj.rel, &dest).await?;
                }
            }
            if !there {
                delete_object(shared, &obj.rel, obj.is_dir_marker).await?;
            }
        }
    }
    // A file that was at either name: its object goes unless a file is there now.
    for (path, dir) in [(a, a_dir), (b, b_dir)] {
        if !dir {
            remove_file(shared, path).await?;
        }
    }
    let mut paths = vec![a.to_path_buf(), b.to_path_buf()];
    touch_below(shared, a, &mut paths)?;
    touch_below(shared, b, &mut paths)?;
    Ok(Outcome::Touch(paths))
}

/// Start-up reconcile: which local files and directories the bucket lacks or holds stale.
///
/// With 100,000 files it runs while the mount serves its first requests (a `find` over all of
/// them builds the overlay's table meanwhile), so the listing is kept only as far as the
/// comparison needs ([`Listed`]: size and marker, no path) and the local walk is looked at
/// entry by entry, never collected.
pub(super) async fn reconcile(shared: &Shared) -> Result<Outcome, SyncError> {
    // (About as many objects as records: the table is made once.)
    let mut in_bucket = Listed::with_capacity(shared.records.len());
    shared
        .bucket
        .list_each(None, |o| {
            in_bucket.insert(&o.rel, (o.size, o.is_dir_marker))
        })
        .await?;
    shared.bucket.health().success();
    let mut touch = Vec::new();
    // Files without an upload record that the index vouched for: compared by checksum below.
    let mut unrecorded = Vec::new();
    let mut vouched =
        std::mem::take(&mut *shared.unrecorded.lock().unwrap_or_else(|e| e.into_inner()));
    // Names of files with several links found in the bucket already: looked at again below.
    let mut linked = Vec::new();
    let each = |path: &Path, st: crate::os::local::Stat| {
        if !(st.is_file() || st.is_dir()) {
            return;
        }
        shared.links.note(path, &st);
        let rec = shared.records.get(path);
        let fresh = match (&rec, in_bucket.get(path)) {
            // A directory needs nothing but its marker in the bucket.
            (_, Some((_, true))) if st.is_dir() => {
                if rec.is_none() {
                    let dir = Record {
                        id: Identity::of(&st),
                        sha256: String::new(),
                        dir: true,
                    };
                    shared.records.set(path, dir);
                }
                true
            }
            (Some(r), Some((size, false))) if st.is_file() => {
                !r.dir && r.id == Identity::of(&st) && size == st.size
            }
            _ => false,
        };
        let candidate = match (&rec, in_bucket.get(path)) {
            (None, Some((size, false))) if st.is_file() && size == st.size => vouched.remove(path),
            _ => None,
        };
        if let Some(d) = candidate {
            unrecorded.push((path.to_path_buf(), Identity::of(&st), d));
        } else if !fresh {
            // Forget a record the bucket no longer backs, so the sync uploads again.
            shared.records.remove(path);
            touch.push(path.to_path_buf());
        } else if st.is_file() && st.nlink > 1 {
            linked.push(path.to_path_buf());
        }
    };
    shared
        .local
        .walk_each(Path::new(""), shared.skip.as_deref(), each)
        .map_err(local_err(Path::new(".")))?;
    // Written by `etlfs backup` or `restore`: the same bytes as the object need no upload.
    let mut adopted = 0;
    for (path, id, departed) in unrecorded {
        let same = match hash_local(&shared.local, &path) {
            Ok(sha) => super::super::publish::adopt_unrecorded(
                &shared.records,
                &path,
                &id,
                &sha,
                &departed,
            ),
            Err(_) => false,
        };
        if same {
            adopted += 1;
        } else {
            touch.push(path);
        }
        // Hashing reads whole files: let the mount's other tasks run in between.
        tokio::task::yield_now().await;
    }
    if adopted > 0 {
        debug!(
            adopted,
            "files already in the bucket (same bytes) recorded without an upload"
        );
    }
    // The mount serves while this runs: a file changed through another name before this name
    // was noted above made nothing due here. Its state now tells.
    for path in linked {
        let moved = shared.local.stat_beneath(&path).is_ok_and(|st| {
            !shared
                .records
                .get(&path)
                .is_some_and(|r| r.id == Identity::of(&st))
        });
        if moved {
            touch.push(path.clone());
        }
    }
    // Records of files neither here nor in the bucket (gone while the mount was down).
    for p in shared.records.paths() {
        if in_bucket.get(&p).is_none() && shared.local.stat_beneath(&p).is_err_and(|e| is_gone(&e))
        {
            shared.records.remove(&p);
        }
    }
    Ok(Outcome::Touch(touch))
}

/// The bucket's listing as the reconcile needs it: each object's size and whether it is a
/// directory marker, under a 128-bit hash of its path instead of the path (the paths were half
/// of what the reconcile held with 100,000 objects). The hash keys are random to the process,
/// so no bucket content can be made to share a path's hash; by chance, two of 100,000 paths
/// share one about once in 10^29. An entry is 24 bytes: the hash as two `u64`s (a `u128`
/// would align the entry to 16, 32 bytes), the marker in the size's top bit.
struct Listed {
    keys: (RandomState, RandomState),
    objects: HashMap<[u64; 2], u64>,
}

/// The size's top bit in [`Listed`]: a directory marker (no object is 2^63 bytes).
const MARKER: u64 = 1 << 63;

impl Listed {
    fn with_capacity(n: usize) -> Listed {
        Listed {
            keys: (RandomState::new(), RandomState::new()),
            objects: HashMap::with_capacity(n),
        }
    }

    fn key(&self, path: &Path) -> [u64; 2] {
        [self.keys.0.hash_one(path), self.keys.1.hash_one(path)]
    }

    fn insert(&mut self, path: &Path, (size, marker): (u64, bool)) {
        let v = if marker { MARKER } else { size & !MARKER };
        self.objects.insert(self.key(path), v);
    }

    /// The listed size of the object at `path`, and whether it is a directory marker.
    fn get(&self, path: &Path) -> Option<(u64, bool)> {
        let v = *self.objects.get(&self.key(path))?;
        Some((v & !MARKER, v & MARKER != 0))
    }
}

/// Hex SHA-256 of the local file at `path`.
fn hash_local(local: &crate::os::local::LocalDir, path: &Path) -> std::io::Result<String> {
    let fd = local.open_beneath(path, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
    crate::os::local::sha256_of(&std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes and markers read back as listed; an entry stays 24 bytes.
    #[test]
    fn listed_keeps_size_and_marker() {
        let mut l = Listed::with_capacity(3);
        l.insert(Path::new("a"), (7, false));
        l.insert(Path::new("d"), (0, true));
        l.insert(Path::new("big"), ((1 << 62) + 5, false));
        assert_eq!(l.get(Path::new("a")), Some((7, false)));
        assert_eq!(l.get(Path::new("d")), Some((0, true)));
        assert_eq!(l.get(Path::new("big")), Some(((1 << 62) + 5, false)));
        assert_eq!(l.get(Path::new("b")), None);
        assert_eq!(std::mem::size_of::<([u64; 2], u64)>(), 24);
    }
}
