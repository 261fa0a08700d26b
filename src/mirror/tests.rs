//! Mirror tests: the overlay driving a real mirror into an in-memory bucket, no FUSE.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::memory::InMemory;

use super::*;
use crate::bucket::Bucket;
use crate::local::{Creds, LocalDir};
use crate::overlay::{Overlay, ROOT};

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
            concurrency: 4,
        };
        let mirror = Mirror::start(
            bucket,
            LocalDir::open(&root).unwrap(),
            Arc::new(crate::state::StateDir::open(&root.join(".etlfs")).unwrap()),
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
        let mut v: Vec<String> = self
            .rt
            .block_on(self.bucket().list(None))
            .unwrap()
            .into_iter()
            .map(|o| {
                format!(
                    "{}{}",
                    o.rel.display(),
                    if o.is_dir_marker { "/" } else { "" }
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Kubecost's write: open(O_RDWR|O_CREAT), ftruncate(0), write, close.
    fn kubecost_write(&self, parent: u64, name: &str, data: &[u8]) -> u64 {
        let (ino, fh) = match self.ov.lookup(parent, OsStr::new(name)) {
            Ok(e) => (e.ino, self.ov.open(e.ino, libc::O_RDWR).unwrap().fh),
            Err(_) => {
                let (e, o) = self
                    .ov
                    .create(parent, OsStr::new(name), 0o600, libc::O_RDWR, ME)
                    .unwrap();
                (e.ino, o.fh)
            }
        };
        self.ov
            .setattr(
                ino,
                Some(fh),
                crate::overlay::SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
            )
            .unwrap();
        self.ov.write(fh, 0, data).unwrap();
        self.ov.release(fh).unwrap();
        ino
    }
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
            crate::overlay::SetAttr {
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
        crate::journal::Journal::open(&crate::state::StateDir::open(&state).unwrap()).unwrap();
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
            &crate::bucket::FileMeta {
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
    let data: Vec<u8> = (0..(crate::bucket::SINGLE_PUT_MAX as usize + 3_000_000))
        .map(|i| (i % 253) as u8)
        .collect();
    env.kubecost_write(ROOT, "big", &data);
    env.drain();
    assert_eq!(env.object("big").unwrap(), data);
}
