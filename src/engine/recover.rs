//! Start-up recovery: what a start does between loading the bucket's listing and serving, so
//! that the index, the local directory and the journal tell one story.
//!
//! The listing may predate removals and renames the mirror had not carried out when etlfs
//! stopped (they are still in the journal), and a crash can leave an intent journaled whose
//! local operation never ran. [`apply_pending_intents`] cancels the latter and applies the
//! former to the index; [`prepare_local_tree`] then makes every directory the bucket implies
//! locally and drops from the index what is local. [`crate::core::Core::open`] runs both.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::engine::events::Intent;
use crate::engine::index::Index;
use crate::engine::journal::{Pending, Source};
use crate::escape::esc;
use crate::os::local::LocalDir;
use crate::os::state::StateDir;

/// Removals and renames the bucket has not followed yet (etlfs was killed, or the bucket was
/// unreachable, before the mirror carried them out) are still in the journal, and the listing
/// still shows the old names. Apply them to the index as the overlay did when they happened,
/// before anything looks at it: otherwise a removed or renamed-away file is listed again
/// (bucket-only, and its download fails once the replay has deleted the object), and a
/// removed directory is created again by [`prepare_local_tree`] and kept for good.
///
/// An intent is journaled *before* its local operation, so a crash can leave one that never
/// ran ([`intent_ran`] tells from the local disk). Those are cancelled here, durably, before
/// the mirror replays the journal: carried out, a rename that never ran would move the objects
/// of bucket-only files below the directory that did not move. The others are applied as
/// they happened, whatever is at their old names now (a file or directory made there since
/// is local, and [`prepare_local_tree`] drops what the listing has at a local path).
pub fn apply_pending_intents(
    index: &Index,
    state: &StateDir,
    local: &LocalDir,
) -> std::io::Result<()> {
    let pending = match crate::engine::journal::pending_in(state) {
        Ok(pending) => pending,
        Err(e) => {
            warn!(error = %e, "cannot read the journal before the mount");
            return Ok(());
        }
    };
    let (ran, never): (Vec<_>, Vec<_>) = (0..pending.len())
        .map(|i| (&pending[i], intent_ran(&pending, i, local)))
        .partition(|(_, ran)| *ran);
    let never: Vec<u64> = never.iter().map(|(p, _)| p.seq).collect();
    if !never.is_empty() {
        info!(
            intents = never.len(),
            "cancelling journaled removals and renames a crash kept from running"
        );
        crate::engine::journal::cancel_in(state, &never)?;
    }
    let ran: Vec<Pending> = ran.into_iter().map(|(p, _)| p.clone()).collect();
    apply_intents(index, &ran, local);
    Ok(())
}

/// Applies `intents` (removals, renames and exchanges made through the mount, that ran) to
/// `index`, a listing that may predate them: see [`apply_pending_intents`].
pub fn apply_intents(index: &Index, intents: &[Pending], local: &LocalDir) {
    let gone = |p: &Path| {
        matches!(local.stat_beneath(p), Err(e)
            if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)))
    };
    let below = |p: &Path, dir: &Path| p != dir && p.starts_with(dir);
    for pending in intents {
        match &pending.intent {
            Intent::Remove { path, dir: false } => {
                index.remove(path);
            }
            Intent::Remove { path, dir: true } => index.remove_dir(path),
            // A bucket-only file (or a directory's bucket-only files) goes on being served under
            // the new name from the old key until the replay moves the objects; a local file
            // that moved is local under its new name, and prepare_local_tree drops the entry.
            Intent::Rename {
                from,
                to,
                source: Some(_),
                ..
            } => index.rename(from, to),
            Intent::Exchange { a, b, .. } => {
                // The moves the mirror makes (see `mirror/`), from the one under way on: the
                // listing shows those before it done.
                let stage = crate::engine::journal::exchange_stage(pending.seq, Path::new(""));
                let moves = [(a.as_path(), stage.as_path()), (b, a), (&stage, b)];
                let done = usize::from(pending.step.saturating_sub(1));
                for (from, to) in &moves[done.min(moves.len())..] {
                    index.rename(from, to);
                }
            }
            // An older journal, which does not say what moved: what is local now decides, path
            // by path. A source that is there stays where it is (it may be a rename that never
            // ran, and applying it would show a directory twice); what is not moves.
            Intent::Rename { from, to, .. } if gone(from) => index.rename(from, to),
            Intent::Rename { dir: false, .. } => {}
            Intent::Rename {
                from,
                to,
                dir: true,
                ..
            } => {
                for (p, _) in index.files() {
                    if below(&p, from) && gone(&p) {
                        index.rename(&p, &crate::engine::index::moved_path(&p, from, to));
                    }
                }
                for d in index.dirs() {
                    if below(&d, from) && gone(&d) {
                        index.remove_dir(&d);
                    }
                }
            }
        }
    }
}

/// Whether the local operation of the journal's `pending[i]` ran before the crash.
///
/// The kernel holds the parent directories of an `unlink`, `rmdir` or `rename` until etlfs
/// answers it, so an intent that shares one with a later intent had run (and was answered)
/// before that one was journaled, whatever path the renames journaled in between gave that
/// directory; and the mirror only ever starts on intents that ran. Otherwise the local disk
/// tells: a rename ran unless the old name still leads to the inode the intent names (for a
/// bucket-only file: unless the new name still leads to the local file it replaced), an
/// exchange unless both names still lead to theirs. A removal counts as run: if it did not,
/// its path is still there, and the bucket keeps whatever is there. A rename of an older
/// journal says no inode, and counts as run (it is guessed at later).
///
/// The journal's order goes first because an inode number is handed out again (ext4 does so
/// at once): after `mv a/d b/e`, `mv b c`, `rmdir c/e`, a `mkdir a/d` may get the number the
/// rename names, and the disk alone would cancel a rename that ran; the bucket would keep
/// what was under `a/d`, listed at the next start as bucket-only files of the new directory.
/// The removal, in the directory `b` under its new name, says the rename ran.
pub fn intent_ran(pending: &[crate::engine::journal::Pending], i: usize, local: &LocalDir) -> bool {
    let p = &pending[i];
    if p.step > 0 {
        return true;
    }
    let parents = |intent: &Intent| -> Vec<PathBuf> {
        let paths: Vec<&Path> = match intent {
            Intent::Remove { path, .. } => vec![path],
            Intent::Rename { from, to, .. } => vec![from, to],
            Intent::Exchange { a, b, .. } => vec![a, b],
        };
        paths
            .into_iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect()
    };
    // Followed through the renames and exchanges journaled after it: a directory renamed on
    // (or below one renamed on) is the directory the kernel held all the same.
    let mut mine = parents(&p.intent);
    for later in &pending[i + 1..] {
        if parents(&later.intent).iter().any(|d| mine.contains(d)) {
            return true;
        }
        for dir in &mut mine {
            *dir = moved_by(&later.intent, dir);
        }
    }
    let ino_at = |path: &Path| local.stat_beneath(path).ok().map(|st| st.ino);
    match &p.intent {
        Intent::Remove { .. } => true,
        Intent::Rename {
            from,
            source: Some(Source::Local { ino }),
            ..
        } => ino_at(from) != Some(*ino),
        Intent::Rename {
            to,
            source: Some(Source::Bucket {
                replaced: Some(ino),
            }),
            ..
        } => ino_at(to) != Some(*ino),
        Intent::Rename { .. } => true,
        Intent::Exchange {
            a, b, a_ino, b_ino, ..
        } => !(ino_at(a) == Some(*a_ino) && ino_at(b) == Some(*b_ino)),
    }
}

/// Where the local rename or exchange `intent` took what was at `path` (itself or below a
/// name it moved); `path` itself if it moved nothing there.
fn moved_by(intent: &Intent, path: &Path) -> PathBuf {
    use crate::engine::index::moved_path;
    match intent {
        Intent::Rename { from, to, .. } if path.starts_with(from) => moved_path(path, from, to),
        Intent::Exchange { a, b, .. } if path.starts_with(a) => moved_path(path, a, b),
        Intent::Exchange { a, b, .. } if path.starts_with(b) => moved_path(path, b, a),
        _ => path.to_path_buf(),
    }
}

/// The local directory as [`prepare_local_tree`] found it.
pub struct LocalTree {
    /// The local files and their sizes, when asked for (`--max-local-bytes` keeps them in
    /// its cache; otherwise a list of 100,000 files would only add to a start's peak).
    pub files: Vec<(PathBuf, u64)>,
    /// Bytes of the local regular files.
    pub bytes: u64,
    /// Nothing local but the directories the bucket implies (a new node): nothing there can
    /// have changed while etlfs was down. `false` also when the walk failed.
    pub only_bucket_dirs: bool,
}

/// Before the mount: every directory the bucket implies exists locally (so only files can be
/// bucket-only), and files that are local are not bucket-only.
///
/// The walk looks at one entry at a time, never collecting the tree. A local file leaves the
/// index; what the index knew about its object version is kept for the mirror's records
/// ([`Index::take_departed`]) unless `described` says its record knows that already (see
/// [`crate::engine::mirror::Takeover`]). `keep_files` collects the local files and sizes.
pub fn prepare_local_tree(
    local: &LocalDir,
    index: &Index,
    hidden: Option<&Path>,
    keep_files: bool,
    described: impl Fn(&Path) -> bool,
) -> LocalTree {
    // In order, each parent before what is below it.
    let dirs = index.dirs();
    for dir in &dirs {
        if hidden.is_some_and(|h| dir.starts_with(h)) {
            continue;
        }
        if let Err(e) = local.mkdir_beneath(dir) {
            warn!(dir = %esc(dir), error = %e, "cannot create a directory the bucket has");
        }
    }
    let dirs: HashSet<PathBuf> = dirs.into_iter().collect();
    let mut tree = LocalTree {
        files: Vec::new(),
        bytes: 0,
        only_bucket_dirs: true,
    };
    let walked = local.walk_each(Path::new(""), hidden, |path, st| {
        if !st.is_dir() {
            if described(path) {
                index.forget(path);
            } else {
                index.remove(path);
            }
        }
        if !st.is_dir() || !dirs.contains(path) {
            tree.only_bucket_dirs = false;
        }
        if st.is_file() {
            tree.bytes += st.size;
            if keep_files {
                tree.files.push((path.to_path_buf(), st.size));
            }
        }
    });
    if let Err(e) = walked {
        warn!(error = %e, "cannot scan the local directory");
        tree.only_bucket_dirs = false;
    }
    tree
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::engine::journal::{Journal, Pending};

    fn pending(intents: Vec<Intent>) -> Vec<Pending> {
        intents
            .into_iter()
            .enumerate()
            .map(|(i, intent)| Pending {
                seq: i as u64 + 1,
                intent,
                step: 0,
            })
            .collect()
    }

    fn rename(from: &str, to: &str, ino: u64) -> Intent {
        Intent::Rename {
            from: from.into(),
            to: to.into(),
            dir: true,
            source: Some(Source::Local { ino }),
        }
    }

    /// What the local disk says about intents a crash may have kept from running, and what
    /// the journal's order says.
    #[test]
    fn an_intent_ran_unless_the_disk_says_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in ["p/a", "p/b", "q/c", "r"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("f"), b"x").unwrap();
        let local = LocalDir::open(root).unwrap();
        let ino = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().ino();
        let (a, b, c, f) = (ino("p/a"), ino("p/b"), ino("q/c"), ino("f"));
        let ran = |intents: Vec<Intent>| {
            let p = pending(intents);
            (0..p.len())
                .map(|i| intent_ran(&p, i, &local))
                .collect::<Vec<_>>()
        };
        // p/a still is where the rename would have taken it from: it never ran.
        assert_eq!(ran(vec![rename("p/a", "p/z", a)]), [false]);
        // q/c is no longer at q/x (renamed from there, a new one made since, or gone).
        assert_eq!(ran(vec![rename("q/x", "q/c", c)]), [true]);
        assert_eq!(ran(vec![rename("q/x", "q/y", 12345)]), [true]);
        // Renamed there and back (p/a -> p/z -> p/a): the first ran, since a later intent
        // in the same directory was journaled after it was answered; the second did too.
        assert_eq!(
            ran(vec![rename("p/a", "p/z", a), rename("p/z", "p/a", a)]),
            [true, true]
        );
        // Unrelated directories say nothing about each other.
        assert_eq!(
            ran(vec![rename("p/a", "p/z", a), rename("q/c", "r/c", c)]),
            [false, false]
        );
        // A bucket-only file renamed over the local f: it ran unless f is still there.
        let over_f = |replaced| Intent::Rename {
            from: "g".into(),
            to: "f".into(),
            dir: false,
            source: Some(Source::Bucket { replaced }),
        };
        assert_eq!(ran(vec![over_f(Some(f))]), [false]);
        assert_eq!(ran(vec![over_f(Some(f + 1))]), [true]);
        assert_eq!(ran(vec![over_f(None)]), [true]);
        // An exchange ran unless both names still lead to what they did.
        let exchange = |a_ino, b_ino| Intent::Exchange {
            a: "p/a".into(),
            b: "p/b".into(),
            a_dir: true,
            b_dir: true,
            a_ino,
            b_ino,
        };
        assert_eq!(ran(vec![exchange(a, b)]), [false]);
        assert_eq!(ran(vec![exchange(b, a)]), [true]);
        // The same pair exchanged twice: both ran (the second named what the first had put
        // there), or the second never did.
        assert_eq!(ran(vec![exchange(a, b), exchange(b, a)]), [true, true]);
        assert_eq!(ran(vec![exchange(b, a), exchange(a, b)]), [true, false]);
        // ... and an exchange the mirror started on ran, whatever the disk says now.
        let mut started = pending(vec![exchange(a, b)]);
        started[0].step = 2;
        assert!(intent_ran(&started, 0, &local));
        // Removals, and renames of an older journal, count as run.
        let old = Intent::Rename {
            from: "p/a".into(),
            to: "p/z".into(),
            dir: true,
            source: None,
        };
        let rm = Intent::Remove {
            path: "f".into(),
            dir: false,
        };
        assert_eq!(ran(vec![old, rm]), [true, true]);
    }

    /// A rename whose directory was then moved on with its new parent and removed, a new
    /// directory made at its old name since with the inode number it had (ext4 hands a freed
    /// number out again at once; here the test gives the journal the new directory's number):
    /// the later intents say it ran, followed through the renames and exchanges between.
    #[test]
    fn a_rename_counts_as_run_when_a_later_intent_is_in_its_directory_renamed_on() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // After `mv a/d b/e; mv b c; rmdir c/e; mkdir a/d`, and the same with `c` exchanged
        // with `x` instead of renamed.
        for d in ["a/d", "c", "x"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let local = LocalDir::open(root).unwrap();
        let reused = fs::symlink_metadata(root.join("a/d")).unwrap().ino();
        let ran = |intents: Vec<Intent>| {
            let p = pending(intents);
            (0..p.len())
                .map(|i| intent_ran(&p, i, &local))
                .collect::<Vec<_>>()
        };
        let rmdir = |p: &str| Intent::Remove {
            path: p.into(),
            dir: true,
        };
        let moved = rename("a/d", "b/e", reused);
        assert_eq!(
            ran(vec![moved.clone(), rename("b", "c", 77), rmdir("c/e")]),
            [true, true, true]
        );
        // Below a renamed ancestor: `mv a/d b/s/e; mv b c; rmdir c/s/e`.
        assert_eq!(
            ran(vec![
                rename("a/d", "b/s/e", reused),
                rename("b", "c", 77),
                rmdir("c/s/e")
            ]),
            [true, true, true]
        );
        let exchange = Intent::Exchange {
            a: "b".into(),
            b: "x".into(),
            a_dir: true,
            b_dir: true,
            a_ino: 77,
            b_ino: 78,
        };
        assert_eq!(
            ran(vec![moved.clone(), exchange, rmdir("x/e")]),
            [true, true, true]
        );
        // With no later intent there, the disk decides: `a/d` leads to the inode, so the
        // rename never ran (a removal in a new `b`, made after `b` became `c`, says nothing).
        assert_eq!(
            ran(vec![moved.clone(), rename("b", "c", 77), rmdir("b/e")]),
            [false, true, true]
        );
        assert_eq!(ran(vec![moved, rename("b", "c", 77)]), [false, true]);
    }

    /// Every directory the bucket implies is made locally, however deep: a parent before its
    /// children (made in any other order, a child failed with ENOENT and a new node lacked
    /// directories).
    #[test]
    fn the_buckets_directories_are_made_parents_first() {
        let tmp = tempfile::tempdir().unwrap();
        let local = LocalDir::open(tmp.path()).unwrap();
        let index = Index::default();
        for p in ["a/b/c/d/x", "a/e/y", "f/g/h/i/j/z"] {
            index.insert(
                Path::new(p),
                crate::engine::index::RemoteFile::test_object(p),
            );
        }
        let tree = prepare_local_tree(&local, &index, None, true, |_| false);
        for d in ["a/b/c/d", "a/e", "f/g/h/i/j"] {
            assert!(tmp.path().join(d).is_dir(), "{d}");
        }
        assert!(tree.files.is_empty() && tree.only_bucket_dirs);
        assert_eq!(index.len(), 3);
    }

    /// The files found local leave the index; what it knew about their object versions is
    /// kept for the records unless `described` says a record knows it already (then nothing is
    /// kept: no second table at a start). The tree counts their bytes, and lists them only
    /// when asked.
    #[test]
    fn local_files_leave_the_index_and_keep_only_what_records_lack() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("d")).unwrap();
        for f in ["d/a", "d/b"] {
            fs::write(root.join(f), b"four").unwrap();
        }
        fs::write(root.join("plain"), b"xy").unwrap();
        let version = crate::engine::index::Version {
            e_tag: Some("e".into()),
            until: None,
        };
        let file = crate::engine::index::RemoteFile::test_object;
        let local = LocalDir::open(root).unwrap();
        for keep_files in [false, true] {
            let index = Index::default();
            for p in ["d/a", "d/b", "d/remote"] {
                index.insert_versioned(Path::new(p), file(p), Some(version.clone()));
            }
            index.insert(Path::new("plain"), file("plain"));
            let tree =
                prepare_local_tree(&local, &index, None, keep_files, |p| p == Path::new("d/a"));
            let left: Vec<PathBuf> = index.files().into_iter().map(|(p, _)| p).collect();
            assert_eq!(left, [PathBuf::from("d/remote")]);
            let kept: Vec<PathBuf> = index.drain_departed().map(|(p, _)| p).collect();
            assert_eq!(kept, [PathBuf::from("d/b")]);
            assert_eq!(tree.bytes, 10);
            assert!(!tree.only_bucket_dirs);
            let mut files = tree.files;
            files.sort();
            let want: Vec<(PathBuf, u64)> = if keep_files {
                vec![("d/a".into(), 4), ("d/b".into(), 4), ("plain".into(), 2)]
            } else {
                vec![]
            };
            assert_eq!(files, want);
        }
    }

    /// At a start, an intent that never ran is cancelled for good and left out of the index;
    /// one that ran is applied even though its old name exists again.
    #[test]
    fn pending_intents_that_never_ran_are_cancelled() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in [".etlfs", "p/a", "q", "r/m"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let local = LocalDir::open(root).unwrap();
        let state = StateDir::open(&root.join(".etlfs")).unwrap();
        let index = Index::default();
        let file = crate::engine::index::RemoteFile::test_object;
        for p in ["p/a/x", "q/o/y", "c"] {
            index.insert(Path::new(p), file(p));
        }
        let ino = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().ino();
        let (j, _) = Journal::open(&state).unwrap();
        // Killed before `mv p/a p/b` ran; `mv q/o r/m` ran.
        j.append(rename("p/a", "p/b", ino("p/a"))).unwrap();
        j.append(rename("q/o", "r/m", ino("r/m"))).unwrap();
        // A bucket-only file renamed away, and a local file made at its old name since.
        fs::write(root.join("c"), b"new").unwrap();
        j.append(Intent::Rename {
            from: "c".into(),
            to: "d".into(),
            dir: false,
            source: Some(Source::Bucket { replaced: None }),
        })
        .unwrap();
        drop(j);
        apply_pending_intents(&index, &state, &local).unwrap();
        let left: Vec<Intent> = crate::engine::journal::pending_in(&state)
            .unwrap()
            .into_iter()
            .map(|p| p.intent)
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(matches!(&left[0], Intent::Rename { from, .. } if from == Path::new("q/o")));
        let files: Vec<(PathBuf, PathBuf)> = {
            let mut v: Vec<_> = index
                .files()
                .into_iter()
                .map(|(p, f)| (p, f.source))
                .collect();
            v.sort();
            v
        };
        let p = PathBuf::from;
        assert_eq!(
            files,
            vec![
                (p("d"), p("c")),
                (p("p/a/x"), p("p/a/x")),
                (p("r/m/y"), p("q/o/y"))
            ]
        );
    }
}
