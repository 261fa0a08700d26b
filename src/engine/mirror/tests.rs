//! Mirror tests: the overlay driving a real mirror into an in-memory bucket, no FUSE.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::memory::InMemory;

use super::*;
use crate::fs::overlay::{Overlay, ROOT};
use crate::os::local::{Creds, LocalDir};
use crate::store::bucket::Bucket;

const ME: Creds = Creds { uid: 0, gid: 0 };

struct Env {
    tmp: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    store: Arc<InMemory>,
    mirror: Arc<Mirror>,
    ov: Overlay,
}

impl Env {
    fn new(delay_ms: u64) -> Env {
        Env::with(
            tempfile::tempdir().unwrap(),
            Arc::new(InMemory::new()),
            delay_ms,
        )
    }

    /// Starts a mirror + overlay over an existing directory and bucket (a "restart").
    fn with(tmp: tempfile::TempDir, store: Arc<InMemory>, delay_ms: u64) -> Env {
        let root = tmp.path().join("d");
        fs::create_dir_all(root.join(".etlfs")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let bucket = Bucket::new(store.clone(), "etl", true, vec![]);
        let opts = MirrorOptions {
            upload_delay: Duration::from_millis(delay_ms),
            upload_max_delay: Duration::from_secs(30),
            concurrency: 4,
            nothing_local: false,
        };
        let mirror = Mirror::start(
            bucket,
            LocalDir::open(&root).unwrap(),
            super::Takeover::scan(Arc::new(
                crate::os::state::StateDir::open(&root.join(".etlfs")).unwrap(),
            )),
            Some(".etlfs".into()),
            opts,
            None,
            rt.handle(),
        )
        .unwrap();
        let sink: Arc<dyn ChangeSink> = mirror.clone();
        let ov = Overlay::new(
            LocalDir::open(&root).unwrap(),
            Some(Path::new(".etlfs")),
            sink,
        )
        .unwrap();
        Env {
            tmp,
            rt,
            store,
            mirror,
            ov,
        }
    }

    /// Drains, with a deadline a loaded machine cannot miss (a 19 MB upload hashes slowly in
    /// a debug build on two busy cores).
    fn drain(&self) {
        assert!(
            self.rt
                .block_on(self.mirror.drain(Duration::from_secs(120))),
            "drain timed out"
        );
    }

    fn bucket(&self) -> Bucket {
        Bucket::new(self.store.clone(), "etl", true, vec![])
    }

    fn object(&self, rel: &str) -> Option<Vec<u8>> {
        self.rt
            .block_on(self.bucket().get(Path::new(rel)))
            .ok()
            .map(|b| b.to_vec())
    }

    fn keys(&self) -> Vec<String> {
        listed(&self.rt, &self.bucket())
    }

    /// Kubecost's write: open(O_RDWR|O_CREAT), ftruncate(0), write, close.
    fn kubecost_write(&self, parent: u64, name: impl AsRef<OsStr>, data: &[u8]) -> u64 {
        let name = name.as_ref();
        let (ino, fh) = match self.ov.lookup(parent, name) {
            Ok(e) => (e.ino, self.ov.open(e.ino, libc::O_RDWR).unwrap().fh),
            Err(_) => {
                let (e, o) = self
                    .ov
                    .create(parent, name, 0o600, libc::O_RDWR, ME)
                    .unwrap();
                (e.ino, o.fh)
            }
        };
        self.ov
            .setattr(
                ino,
                Some(fh),
                crate::fs::overlay::SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
            )
            .unwrap();
        self.ov.write(fh, 0, data).unwrap();
        self.ov.release(fh).unwrap();
        ino
    }

    /// Appends to the file of node `ino` by an open of the node itself: what `echo >>` does
    /// through a name whose dentry the kernel still has (no lookup, so the overlay does not
    /// learn which name was used).
    fn append(&self, ino: u64, data: &[u8]) {
        let o = self.ov.open(ino, libc::O_WRONLY).unwrap();
        let size = self.ov.getattr(ino).unwrap().size;
        self.ov.write(o.fh, size, data).unwrap();
        self.ov.release(o.fh).unwrap();
    }

    fn link(&self, ino: u64, parent: u64, name: &str) {
        self.ov.link(ino, parent, OsStr::new(name)).unwrap();
    }

    /// Stops this mount as a crash would (nothing drained) and starts again over the same
    /// directory and bucket.
    fn restart(self) -> Env {
        let (tmp, store) = (self.tmp, self.store.clone());
        drop(self.ov);
        drop(self.mirror);
        self.rt.shutdown_timeout(Duration::from_secs(1));
        Env::with(tmp, store, 0)
    }
}

#[test]
fn a_write_through_one_name_of_a_hard_linked_file_reaches_every_name() {
    let env = Env::new(0);
    let x = env.kubecost_write(ROOT, "a", b"v1\n");
    env.link(x, ROOT, "b");
    let dir = env.ov.mkdir(ROOT, OsStr::new("dir"), 0o755, ME).unwrap();
    env.link(x, dir.ino, "c");
    env.drain();
    assert_eq!(env.keys(), vec!["a", "b", "dir/", "dir/c"]);
    // The kernel looked up "dir/c" last; the write comes through "a" without a lookup.
    env.append(x, b"v2\n");
    env.drain();
    for k in ["a", "b", "dir/c"] {
        assert_eq!(env.object(k).unwrap(), b"v1\nv2\n", "{k}");
    }
    // A truncate without a handle, too.
    env.ov
        .setattr(
            x,
            None,
            crate::fs::overlay::SetAttr {
                size: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    env.drain();
    for k in ["a", "b", "dir/c"] {
        assert_eq!(env.object(k).unwrap(), b"v", "{k}");
    }
}

#[test]
fn unlinking_one_name_of_a_hard_linked_file_leaves_the_others_mirrored() {
    let env = Env::new(0);
    let x = env.kubecost_write(ROOT, "c", b"v1\n");
    env.link(x, ROOT, "d");
    env.drain();
    // "d", the name the kernel looked up last, goes; "c" is written.
    env.ov.unlink(ROOT, OsStr::new("d")).unwrap();
    env.append(x, b"v2\n");
    env.drain();
    assert_eq!(env.keys(), vec!["c"]);
    assert_eq!(env.object("c").unwrap(), b"v1\nv2\n");
    // And the other way round: the first name goes, the new one is written.
    env.link(x, ROOT, "e");
    env.drain();
    env.ov.unlink(ROOT, OsStr::new("c")).unwrap();
    env.append(x, b"v3\n");
    env.drain();
    assert_eq!(env.keys(), vec!["e"]);
    assert_eq!(env.object("e").unwrap(), b"v1\nv2\nv3\n");
    // A rename of one name moves only that name.
    env.link(x, ROOT, "f");
    env.ov
        .rename(ROOT, OsStr::new("e"), ROOT, OsStr::new("g"), 0)
        .unwrap();
    env.append(x, b"v4\n");
    env.drain();
    assert_eq!(env.keys(), vec!["f", "g"]);
    for k in ["f", "g"] {
        assert_eq!(env.object(k).unwrap(), b"v1\nv2\nv3\nv4\n", "{k}");
    }
}

#[test]
fn names_the_kernel_never_used_are_mirrored_too() {
    // Links made before the mount: the kernel will only ever look up "a".
    let env = Env::new(0);
    env.kubecost_write(ROOT, "a", b"v1");
    env.drain();
    let root = env.tmp.path().join("d");
    fs::hard_link(root.join("a"), root.join("b")).unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    fs::hard_link(root.join("a"), root.join("sub/c")).unwrap();
    let env = env.restart();
    env.drain();
    assert_eq!(env.keys(), vec!["a", "b", "sub/", "sub/c"]);
    let x = env.ov.lookup(ROOT, OsStr::new("a")).unwrap().ino;
    env.append(x, b"v2");
    env.drain();
    for k in ["a", "b", "sub/c"] {
        assert_eq!(env.object(k).unwrap(), b"v1v2", "{k}");
    }
    // A link made through the mount, whose node the kernel then forgets: looked up again by
    // one name only, the file still has both (the mirror noted them when it uploaded them).
    let y = env.kubecost_write(ROOT, "p", b"w1");
    env.link(y, ROOT, "q");
    env.drain();
    env.ov.forget(y, 2);
    assert_eq!(env.ov.lookup(ROOT, OsStr::new("p")).unwrap().ino, y);
    env.append(y, b"w2");
    env.drain();
    assert_eq!(env.object("q").unwrap(), b"w1w2");
    // Even with no name of it known to the overlay any more: "p" goes, the file is written
    // through the handle.
    let o = env.ov.open(y, libc::O_WRONLY).unwrap();
    env.ov.unlink(ROOT, OsStr::new("p")).unwrap();
    env.ov.write(o.fh, 4, b"w3").unwrap();
    env.ov.release(o.fh).unwrap();
    env.drain();
    assert_eq!(env.keys(), vec!["a", "b", "q", "sub/", "sub/c"]);
    assert_eq!(env.object("q").unwrap(), b"w1w2w3");
}

#[test]
fn a_truncating_open_through_one_name_keeps_the_others_from_being_uploaded_empty() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new(0);
    env.kubecost_write(ROOT, "a", b"full");
    env.drain();
    let root = env.tmp.path().join("d");
    // A link the overlay never hears of (made before this start).
    fs::hard_link(root.join("a"), root.join("b")).unwrap();
    let env = env.restart();
    env.drain();
    assert_eq!(env.object("b").unwrap(), b"full");
    let root = env.tmp.path().join("d");
    let ino = fs::metadata(root.join("a")).unwrap().ino();
    // An O_TRUNC open through "a", caught between the truncation and the registration of its
    // writer, while "b" is synced for another reason.
    env.mirror.opening_started(Path::new("a"));
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(root.join("a"))
        .unwrap();
    env.mirror.changed(ino, &["b".into()], false);
    env.drain();
    assert_eq!(
        env.object("b").unwrap(),
        b"full",
        "the emptied file went up"
    );
    env.mirror.opening_done(Path::new("a"));
    env.mirror.changed(ino, &["a".into()], false);
    env.drain();
    assert_eq!(env.object("a").unwrap(), b"");
    assert_eq!(env.object("b").unwrap(), b"");
}

#[test]
fn kubecost_cycles_land_with_final_bytes_only() {
    let env = Env::new(50);
    let d = env.ov.mkdir(ROOT, OsStr::new("1d"), 0o755, ME).unwrap();
    for round in 1..=3u8 {
        env.kubecost_write(d.ino, "1704110400-1704196800", &vec![round; 70_000]);
    }
    env.drain();
    assert_eq!(
        env.object("1d/1704110400-1704196800").unwrap(),
        vec![3u8; 70_000]
    );
    assert_eq!(env.keys(), vec!["1d/", "1d/1704110400-1704196800"]);
    // rewrites within the delay coalesce into one upload
    assert_eq!(Stats::get(&env.mirror.stats().uploads), 1);
    let meta = env
        .rt
        .block_on(env.bucket().meta(Path::new("1d/1704110400-1704196800")))
        .unwrap()
        .unwrap();
    assert_eq!(meta.mode, 0o600);
    assert_eq!(meta.sha256.len(), 64);
}

#[test]
fn nothing_is_uploaded_while_a_writer_has_the_file_open() {
    let env = Env::new(0);
    let (e, o) = env
        .ov
        .create(ROOT, OsStr::new("f"), 0o644, libc::O_RDWR, ME)
        .unwrap();
    env.ov.write(o.fh, 0, b"partial").unwrap();
    // A touch by someone else (chmod) does not publish the open file.
    env.ov
        .setattr(
            e.ino,
            None,
            crate::fs::overlay::SetAttr {
                mode: Some(0o640),
                ..Default::default()
            },
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(env.object("f"), None);
    env.ov.write(o.fh, 7, b" and complete").unwrap();
    env.ov.release(o.fh).unwrap();
    env.drain();
    assert_eq!(env.object("f").unwrap(), b"partial and complete");
}

#[test]
fn unlink_and_rename_follow_in_the_bucket() {
    let env = Env::new(0);
    env.kubecost_write(ROOT, "a", b"A");
    env.kubecost_write(ROOT, "b", b"B");
    let dir = env.ov.mkdir(ROOT, OsStr::new("dir"), 0o755, ME).unwrap();
    env.kubecost_write(dir.ino, "inner", b"I");
    env.drain();
    assert_eq!(env.keys(), vec!["a", "b", "dir/", "dir/inner"]);
    env.ov.unlink(ROOT, OsStr::new("a")).unwrap();
    env.ov
        .rename(ROOT, OsStr::new("b"), ROOT, OsStr::new("c"), 0)
        .unwrap();
    env.ov
        .rename(ROOT, OsStr::new("dir"), ROOT, OsStr::new("moved"), 0)
        .unwrap();
    env.drain();
    assert_eq!(env.keys(), vec!["c", "moved/", "moved/inner"]);
    assert_eq!(env.object("c").unwrap(), b"B");
    assert!(
        Stats::get(&env.mirror.stats().copies) >= 1,
        "an unchanged renamed file is copied, not uploaded"
    );
    let d = env.ov.lookup(ROOT, OsStr::new("moved")).unwrap();
    env.ov.unlink(d.ino, OsStr::new("inner")).unwrap();
    env.ov.rmdir(ROOT, OsStr::new("moved")).unwrap();
    env.drain();
    assert_eq!(env.keys(), vec!["c"]);
}

/// A name given as bytes (`b"caf\xe9"`: not UTF-8).
/// The bucket's listing, sorted, a `/` after each directory's marker.
fn listed(rt: &tokio::runtime::Runtime, bucket: &Bucket) -> Vec<String> {
    let mut v: Vec<String> = rt
        .block_on(bucket.list(None))
        .unwrap()
        .iter()
        .map(crate::store::bucket::ObjectInfo::shown)
        .collect();
    v.sort();
    v
}

fn raw(name: &[u8]) -> &OsStr {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(name)
}

/// Names the bucket can never hold (not UTF-8, a control character) are removed and renamed
/// like any other; the bucket ends up holding exactly the names it can: what is renamed from
/// such a name is uploaded (a directory with everything below), what is renamed to one leaves
/// the bucket, and an exchange between the two kinds swaps which is mirrored.
#[test]
fn names_the_bucket_cannot_hold_are_removed_and_renamed() {
    let env = Env::new(0);
    env.kubecost_write(ROOT, "keep", b"K");
    env.kubecost_write(ROOT, "to-raw", b"A");
    env.kubecost_write(ROOT, raw(b"from-raw\xff"), b"N");
    env.kubecost_write(ROOT, "tab\tname", b"T");
    env.kubecost_write(ROOT, "ex-utf8", b"EU");
    env.kubecost_write(ROOT, raw(b"ex-raw\xfa"), b"ER");
    let tree = env.ov.mkdir(ROOT, OsStr::new("tree"), 0o755, ME).unwrap();
    env.kubecost_write(tree.ino, "x", b"X");
    let rtree = env.ov.mkdir(ROOT, raw(b"rtree\xfe"), 0o755, ME).unwrap();
    let sub = env
        .ov
        .mkdir(rtree.ino, OsStr::new("sub"), 0o755, ME)
        .unwrap();
    env.kubecost_write(sub.ino, "y", b"Y");
    env.kubecost_write(ROOT, raw(b"rm-me\xfb"), b"R");
    env.ov.mkdir(ROOT, raw(b"rmdir-me\xfc"), 0o755, ME).unwrap();
    env.drain();
    assert_eq!(
        env.keys(),
        vec!["ex-utf8", "keep", "to-raw", "tree/", "tree/x"]
    );

    env.ov.unlink(ROOT, raw(b"rm-me\xfb")).unwrap();
    env.ov.rmdir(ROOT, raw(b"rmdir-me\xfc")).unwrap();
    let mv = |from: &OsStr, to: &OsStr, flags| env.ov.rename(ROOT, from, ROOT, to, flags);
    mv(raw(b"from-raw\xff"), OsStr::new("from-raw"), 0).unwrap();
    mv(OsStr::new("tab\tname"), OsStr::new("tab-name"), 0).unwrap();
    mv(OsStr::new("to-raw"), raw(b"to-raw\xff"), 0).unwrap();
    mv(raw(b"rtree\xfe"), OsStr::new("rtree"), 0).unwrap();
    mv(OsStr::new("tree"), OsStr::new("tree\nline"), 0).unwrap();
    mv(
        OsStr::new("ex-utf8"),
        raw(b"ex-raw\xfa"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    env.drain();
    assert_eq!(
        env.keys(),
        vec![
            "ex-utf8",
            "from-raw",
            "keep",
            "rtree/",
            "rtree/sub/",
            "rtree/sub/y",
            "tab-name"
        ]
    );
    assert_eq!(env.object("from-raw").unwrap(), b"N");
    assert_eq!(env.object("tab-name").unwrap(), b"T");
    assert_eq!(env.object("ex-utf8").unwrap(), b"ER");
    assert_eq!(env.mirror.shared.journal.pending(), 0);
    assert_eq!(Stats::get(&env.mirror.stats().delete_failures), 0);
}

/// Intents about such names that a crash left in the journal are carried out at the next
/// start, exactly as the ones about ordinary names.
#[test]
fn a_journal_with_names_the_bucket_cannot_hold_replays() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new(0);
    env.kubecost_write(ROOT, "up", b"U");
    let dir = env.ov.mkdir(ROOT, OsStr::new("dir"), 0o755, ME).unwrap();
    env.kubecost_write(dir.ino, "in", b"I");
    env.drain();
    assert_eq!(env.keys(), vec!["dir/", "dir/in", "up"]);
    let (tmp, store) = (env.tmp, env.store.clone());
    drop(env.ov);
    drop(env.mirror);
    env.rt.shutdown_timeout(Duration::from_secs(1));
    // Journaled and done locally, not yet in the bucket: the crash came first.
    let root = tmp.path().join("d");
    let path = |b: &[u8]| std::path::PathBuf::from(OsStr::from_bytes(b));
    let (j, _) = crate::engine::journal::Journal::open(
        &crate::os::state::StateDir::open(&root.join(".etlfs")).unwrap(),
    )
    .unwrap();
    fs::rename(root.join("up"), root.join(path(b"up\xff"))).unwrap();
    fs::rename(root.join("dir"), root.join(path(b"dir\x01"))).unwrap();
    // (created as n\xfe and renamed before it was ever uploaded)
    fs::write(root.join("n-ok"), b"from n").unwrap();
    for (from, to, dir) in [
        (path(b"up"), path(b"up\xff"), false),
        (path(b"dir"), path(b"dir\x01"), true),
        (path(b"n\xfe"), path(b"n-ok"), false),
    ] {
        // (as an etlfs that did not record what moved wrote them: its journal still replays)
        j.append(Intent::Rename {
            from,
            to,
            dir,
            source: None,
        })
        .unwrap();
    }
    drop(j);

    let env = Env::with(tmp, store, 0);
    env.drain();
    assert_eq!(env.keys(), vec!["n-ok"]);
    assert_eq!(env.object("n-ok").unwrap(), b"from n");
    assert_eq!(env.mirror.shared.journal.pending(), 0);
}

#[test]
fn a_path_recreated_after_unlink_is_not_deleted() {
    let env = Env::new(0);
    env.kubecost_write(ROOT, "x", b"old");
    env.drain();
    env.ov.unlink(ROOT, OsStr::new("x")).unwrap();
    env.kubecost_write(ROOT, "x", b"new");
    env.drain();
    assert_eq!(env.object("x").unwrap(), b"new");
}

#[test]
fn restart_uploads_preexisting_and_replays_removals() {
    let env = Env::new(0);
    env.kubecost_write(ROOT, "keep", b"K");
    env.kubecost_write(ROOT, "gone", b"G");
    env.drain();
    let (tmp, store) = (env.tmp, env.store.clone());
    // Simulate a crash after the unlink was journaled and done locally, before the bucket saw
    // it: append the intent by hand and remove the file underneath.
    let state = tmp.path().join("d/.etlfs");
    let (j, _) =
        crate::engine::journal::Journal::open(&crate::os::state::StateDir::open(&state).unwrap())
            .unwrap();
    j.append(Intent::Remove {
        path: "gone".into(),
        dir: false,
    })
    .unwrap();
    drop(j);
    fs::remove_file(tmp.path().join("d/gone")).unwrap();
    // Files that appeared while etlfs was not running (or before it was first mounted).
    fs::create_dir_all(tmp.path().join("d/pre/existing")).unwrap();
    fs::write(tmp.path().join("d/pre/existing/file"), b"P").unwrap();
    fs::write(tmp.path().join("d/keep"), b"K2").unwrap();
    drop(env.ov);
    drop(env.mirror);
    env.rt.shutdown_timeout(Duration::from_secs(1));

    let env = Env::with(tmp, store, 0);
    env.drain();
    assert_eq!(
        env.keys(),
        vec!["keep", "pre/", "pre/existing/", "pre/existing/file"]
    );
    assert_eq!(env.object("keep").unwrap(), b"K2");
    assert_eq!(env.object("pre/existing/file").unwrap(), b"P");
    assert_eq!(env.mirror.shared.journal.pending(), 0);
}

#[test]
fn objects_without_a_local_file_are_never_deleted_by_the_reconcile() {
    let env = Env::new(0);
    env.rt
        .block_on(env.bucket().put_bytes(
            Path::new("only-in-bucket"),
            bytes::Bytes::from_static(b"remote"),
            &crate::store::bucket::FileMeta {
                mtime_ns: 0,
                mode: 0o644,
                sha256: String::new(),
                owner: None,
            },
        ))
        .unwrap();
    let (tmp, store) = (env.tmp, env.store.clone());
    drop(env.ov);
    drop(env.mirror);
    env.rt.shutdown_timeout(Duration::from_secs(1));
    let env = Env::with(tmp, store, 0);
    env.drain();
    assert_eq!(env.object("only-in-bucket").unwrap(), b"remote");
}

#[test]
fn large_files_use_multipart_and_match_byte_for_byte() {
    let env = Env::new(0);
    let data: Vec<u8> = (0..(crate::store::bucket::SINGLE_PUT_MAX as usize + 3_000_000))
        .map(|i| (i % 253) as u8)
        .collect();
    env.kubecost_write(ROOT, "big", &data);
    env.drain();
    assert_eq!(env.object("big").unwrap(), data);
}

/// An exchange of two directories holding bucket-only files (one of each side's has the same
/// name as one of the other's), interrupted at each point of the mirror's work: the next start
/// (the index from the listing and the journal, then the mirror) finishes it, and every file
/// ends up on its side, the bytes swapped exactly once.
#[test]
fn an_exchange_interrupted_anywhere_is_finished_by_the_next_start() {
    use crate::engine::index::Index;
    use crate::engine::journal::Journal;
    use std::os::unix::fs::MetadataExt;
    // (step the crash came in, whether that step's last copy was made)
    for (step, copied) in [(0, false), (1, true), (2, false), (2, true), (3, true)] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("d");
        for d in [".etlfs", "a", "b"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = Arc::new(InMemory::new());
        let bucket = Bucket::new(store.clone(), "etl", true, vec![]);
        let meta = crate::store::bucket::FileMeta {
            mtime_ns: 0,
            mode: 0o644,
            sha256: String::new(),
            owner: None,
        };
        let put = |k: &str, v: &'static [u8]| {
            rt.block_on(bucket.put_bytes(Path::new(k), bytes::Bytes::from_static(v), &meta))
                .unwrap();
        };
        for (k, v) in [
            ("a/x", &b"A"[..]),
            ("a/only", b"O"),
            ("b/x", b"B"),
            ("b/l", b"L"),
        ] {
            put(k, v);
        }
        for d in ["a", "b"] {
            rt.block_on(bucket.put_dir_marker(Path::new(d))).unwrap();
        }
        // b/l is local; the rest is only in the bucket. The exchange ran locally.
        fs::write(root.join("b/l"), b"L").unwrap();
        let ino = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().ino();
        let (a_ino, b_ino) = (ino("a"), ino("b"));
        fs::rename(root.join("a"), root.join("t")).unwrap();
        fs::rename(root.join("b"), root.join("a")).unwrap();
        fs::rename(root.join("t"), root.join("b")).unwrap();
        let state = Arc::new(crate::os::state::StateDir::open(&root.join(".etlfs")).unwrap());
        let (j, _) = Journal::open(&state).unwrap();
        let seq = j
            .append(Intent::Exchange {
                a: "a".into(),
                b: "b".into(),
                a_dir: true,
                b_dir: true,
                a_ino,
                b_ino,
            })
            .unwrap();
        // What the mirror had done in the bucket: the moves before `step`, and maybe the
        // copy of the one under way.
        let stage = crate::engine::journal::exchange_stage(seq, Path::new(""));
        let s = |rel: &str| stage.join(rel).to_str().unwrap().to_owned();
        let moves: [Vec<(String, String)>; 3] = [
            vec![("a/x".into(), s("x")), ("a/only".into(), s("only"))],
            vec![("b/x".into(), "a/x".into())],
            vec![(s("x"), "b/x".into()), (s("only"), "b/only".into())],
        ];
        let copy = |(from, to): &(String, String), delete: bool| {
            rt.block_on(bucket.copy(Path::new(from), Path::new(to)))
                .unwrap();
            if delete {
                rt.block_on(bucket.delete(Path::new(from))).unwrap();
            }
        };
        for m in moves.iter().take(step.max(1) - 1) {
            m.iter().for_each(|mv| copy(mv, true));
        }
        if step > 2 {
            // (the local file's old object, deleted by the second move)
            rt.block_on(bucket.delete(Path::new("b/l"))).unwrap();
        }
        if copied {
            copy(&moves[step - 1][0], false);
        }
        if step > 0 {
            j.advance(seq, step as u8).unwrap();
        }
        drop(j);
        // The start, as `etlfs mount` makes it.
        let index = rt.block_on(Index::load(&bucket)).unwrap();
        let core = crate::core::Core::open(
            bucket.clone(),
            &root,
            state,
            &root.join(".etlfs"),
            index,
            crate::core::CoreOptions {
                hidden: Some(".etlfs".into()),
                mirror: MirrorOptions {
                    upload_delay: Duration::ZERO,
                    upload_max_delay: Duration::from_secs(30),
                    concurrency: 4,
                    nothing_local: false,
                },
                fetch_concurrency: 4,
                policy: Default::default(),
                fd_budget: None,
                max_local_bytes: None,
            },
            rt.handle(),
        )
        .unwrap();
        let (index, mirror) = (Arc::clone(&core.index), Arc::clone(&core.mirror));
        let paths = |i: &Index| {
            let mut v: Vec<_> = i.files().into_iter().map(|(p, _)| p).collect();
            v.sort();
            v
        };
        assert_eq!(
            paths(&index),
            ["a/x", "b/only", "b/x"].map(std::path::PathBuf::from),
            "step {step}"
        );
        assert!(rt.block_on(mirror.drain(Duration::from_secs(60))));
        assert_eq!(
            listed(&rt, &bucket),
            ["a/", "a/l", "a/x", "b/", "b/only", "b/x"],
            "step {step}"
        );
        let get = |k: &str| rt.block_on(bucket.get(Path::new(k))).unwrap().to_vec();
        assert_eq!(
            [get("a/x"), get("b/x"), get("b/only"), get("a/l")],
            [b"B", b"A", b"O", b"L"].map(|v| v.to_vec()),
            "step {step}"
        );
        for p in ["a/x", "b/x", "b/only"] {
            assert_eq!(index.file(Path::new(p)).unwrap().source, Path::new(p));
        }
        assert_eq!(mirror.journal_pending(), 0);
        drop((mirror, core));
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}
