//! Core tests: the overlay on a real temporary directory, without FUSE.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::*;
use crate::engine::events::Intent;

const ME: Creds = Creds { uid: 0, gid: 0 };

fn overlay() -> (tempfile::TempDir, Overlay) {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join(".etlfs")).unwrap();
    let local = LocalDir::open(tmp.path()).unwrap();
    let ov = Overlay::new(
        local,
        Some(Path::new(".etlfs")),
        Arc::new(crate::engine::events::NullSink),
    )
    .unwrap();
    (tmp, ov)
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Records what the mirror hears of writers: `+` for a writer opened, the names given at a
/// writer's release (none unless it was the last).
#[derive(Debug, Default)]
struct Writers(std::sync::Mutex<Vec<String>>);

impl Writers {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl ChangeSink for Writers {
    fn opening_started(&self, _: &Path) {}
    fn opening_done(&self, _: &Path) {}
    fn writer_opened(&self, _: u64) {
        self.0.lock().unwrap().push("+".into());
    }
    fn writer_closed(&self, _: u64, paths: &[PathBuf]) {
        let names: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
        self.0.lock().unwrap().push(format!("-{}", names.join(",")));
    }
    fn changed(&self, _: u64, _: &[PathBuf], _: bool) {}
    fn intent(&self, _: Intent) -> std::io::Result<u64> {
        Ok(0)
    }
    fn finish(&self, _: u64, _: bool) {}
    fn fetched(&self, _: &Path, _: &Stat, _: &str) {}
    fn in_bucket(&self, _: &Path, _: &Stat) -> Option<String> {
        None
    }
}

#[test]
fn create_write_release_round_trip_and_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let writers = Arc::new(Writers::default());
    let ov = Overlay::new(LocalDir::open(tmp.path()).unwrap(), None, writers.clone()).unwrap();
    // A created file is a writer for the mirror until released, whatever its access mode.
    let (entry, opened) = ov.create(ROOT, name("f"), 0o600, libc::O_RDWR, ME).unwrap();
    assert_eq!(writers.take(), ["+"]);
    assert_eq!(ov.write(opened.fh, 0, b"hello").unwrap(), 5);
    assert_eq!(ov.read(opened.fh, 1, 100).unwrap(), b"ello");
    ov.release(opened.fh).unwrap();
    assert_eq!(
        writers.take(),
        ["-f"],
        "the last writer's release names the file"
    );
    assert_eq!(fs::read(tmp.path().join("f")).unwrap(), b"hello");
    // Reading registers no writer; writing does, and the file is due only when the last
    // writer goes.
    let r = ov.open(entry.ino, libc::O_RDONLY).unwrap();
    assert_eq!(writers.take(), Vec::<String>::new());
    let w1 = ov.open(entry.ino, libc::O_WRONLY).unwrap();
    let w2 = ov.open(entry.ino, libc::O_RDWR).unwrap();
    assert_eq!(writers.take(), ["+", "+"]);
    ov.release(w1.fh).unwrap();
    assert_eq!(writers.take(), ["-"], "one writer still open");
    ov.release(w2.fh).unwrap();
    ov.release(r.fh).unwrap();
    assert_eq!(writers.take(), ["-f"]);
    assert_eq!(ov.open_handles(), 0);
}

#[test]
fn node_ids_are_local_inode_numbers() {
    let (tmp, ov) = overlay();
    fs::write(tmp.path().join("a"), b"x").unwrap();
    let e = ov.lookup(ROOT, name("a")).unwrap();
    assert_eq!(e.ino, fs::metadata(tmp.path().join("a")).unwrap().ino());
    assert_eq!(e.attr.ino, e.ino);
    assert_eq!(e.attr.size, 1);
    assert_eq!(e.attr.kind, FileKind::File);
}

#[test]
fn lookups_are_counted_and_forgotten() {
    let (tmp, ov) = overlay();
    fs::write(tmp.path().join("a"), b"x").unwrap();
    let base = ov.known_inodes();
    let e = ov.lookup(ROOT, name("a")).unwrap();
    ov.lookup(ROOT, name("a")).unwrap();
    assert_eq!(ov.known_inodes(), base + 1);
    ov.forget(e.ino, 1);
    assert!(ov.getattr(e.ino).is_ok());
    ov.forget(e.ino, 1);
    assert_eq!(ov.known_inodes(), base);
    assert_eq!(ov.getattr(e.ino).unwrap_err().errno(), libc::ESTALE);
    // The root is never forgotten.
    ov.forget(ROOT, 100);
    assert!(ov.getattr(ROOT).is_ok());
}

#[test]
fn state_directory_is_hidden_and_protected() {
    let (tmp, ov) = overlay();
    fs::write(tmp.path().join("a"), b"x").unwrap();
    assert_eq!(
        ov.lookup(ROOT, name(".etlfs")).unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(
        ov.mkdir(ROOT, name(".etlfs"), 0o755, ME)
            .unwrap_err()
            .errno(),
        libc::EACCES
    );
    assert_eq!(
        ov.unlink(ROOT, name(".etlfs")).unwrap_err().errno(),
        libc::EACCES
    );
    assert_eq!(
        ov.rmdir(ROOT, name(".etlfs")).unwrap_err().errno(),
        libc::EACCES
    );
    assert_eq!(
        ov.rename(ROOT, name("a"), ROOT, name(".etlfs"), 0)
            .unwrap_err()
            .errno(),
        libc::EACCES
    );
    let fh = ov.opendir(ROOT).unwrap();
    let names: Vec<_> = ov
        .readdir(ROOT, fh, 0)
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, vec![".", "..", "a"]);
    ov.releasedir(fh).unwrap();
    // Only at the root: a `.etlfs` deeper down is an ordinary name.
    let d = ov.mkdir(ROOT, name("d"), 0o755, ME).unwrap();
    ov.mkdir(d.ino, name(".etlfs"), 0o755, ME).unwrap();
    assert!(tmp.path().join("d/.etlfs").is_dir());
}

#[test]
fn readdir_resumes_at_any_offset() {
    let (tmp, ov) = overlay();
    for i in 0..10 {
        fs::write(tmp.path().join(format!("f{i}")), b"").unwrap();
    }
    let fh = ov.opendir(ROOT).unwrap();
    let all = ov.readdir(ROOT, fh, 0).unwrap();
    assert_eq!(all.len(), 12);
    for (k, item) in all.iter().enumerate() {
        assert_eq!(item.next_offset, k as u64 + 1);
        let rest = ov.readdir(ROOT, fh, item.next_offset).unwrap();
        assert_eq!(rest.len(), 12 - k - 1);
        if let Some(first) = rest.first() {
            assert_eq!(first.name, all[k + 1].name);
        }
    }
    // A snapshot: entries created after opendir do not shift offsets.
    fs::write(tmp.path().join("late"), b"").unwrap();
    assert_eq!(ov.readdir(ROOT, fh, 0).unwrap().len(), 12);
    ov.releasedir(fh).unwrap();
}

#[test]
fn rename_and_unlink_keep_paths_current() {
    let (tmp, ov) = overlay();
    let d = ov.mkdir(ROOT, name("d"), 0o755, ME).unwrap();
    let (f, o) = ov
        .create(d.ino, name("f"), 0o644, libc::O_WRONLY, ME)
        .unwrap();
    ov.release(o.fh).unwrap();
    assert_eq!(ov.path_of(f.ino).unwrap(), Path::new("d/f"));
    ov.rename(ROOT, name("d"), ROOT, name("e"), 0).unwrap();
    assert_eq!(ov.path_of(f.ino).unwrap(), Path::new("e/f"));
    let (g, o) = ov
        .create(ROOT, name("g"), 0o644, libc::O_WRONLY, ME)
        .unwrap();
    ov.release(o.fh).unwrap();
    ov.rename(d.ino, name("f"), ROOT, name("g"), libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(ov.path_of(f.ino).unwrap(), Path::new("g"));
    assert_eq!(ov.path_of(g.ino).unwrap(), Path::new("e/f"));
    assert_eq!(
        ov.rename(ROOT, name("g"), d.ino, name("f"), libc::RENAME_NOREPLACE)
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    ov.unlink(ROOT, name("g")).unwrap();
    assert_eq!(ov.path_of(f.ino), None);
    assert!(!tmp.path().join("g").exists());
}

/// Records the names the overlay reports for each change.
#[derive(Debug, Default)]
struct Names(std::sync::Mutex<Vec<Vec<PathBuf>>>);

impl Names {
    fn last(&self) -> Vec<PathBuf> {
        let mut v = self.0.lock().unwrap().last().cloned().unwrap_or_default();
        v.sort();
        v
    }
}

impl ChangeSink for Names {
    fn opening_started(&self, _: &Path) {}
    fn opening_done(&self, _: &Path) {}
    fn writer_opened(&self, _: u64) {}
    fn writer_closed(&self, _: u64, paths: &[PathBuf]) {
        self.0.lock().unwrap().push(paths.to_vec());
    }
    fn changed(&self, _: u64, paths: &[PathBuf], _: bool) {
        self.0.lock().unwrap().push(paths.to_vec());
    }
    fn intent(&self, _: Intent) -> std::io::Result<u64> {
        Ok(0)
    }
    fn finish(&self, _: u64, _: bool) {}
    fn fetched(&self, _: &Path, _: &Stat, _: &str) {}
    fn in_bucket(&self, _: &Path, _: &Stat) -> Option<String> {
        None
    }
}

#[test]
fn every_known_name_of_a_hard_linked_file_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let names = Arc::new(Names::default());
    let ov = Overlay::new(LocalDir::open(tmp.path()).unwrap(), None, names.clone()).unwrap();
    let paths = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
    let write = |ino| {
        let o = ov.open(ino, libc::O_WRONLY).unwrap();
        ov.write(o.fh, 0, b"x").unwrap();
        ov.release(o.fh).unwrap();
        names.last()
    };
    let (f, o) = ov
        .create(ROOT, name("a"), 0o644, libc::O_WRONLY, ME)
        .unwrap();
    ov.release(o.fh).unwrap();
    assert_eq!(names.last(), paths(&["a"]));
    let d = ov.mkdir(ROOT, name("d"), 0o755, ME).unwrap();
    // A link reports every name: the new one is a new object, the others changed ctime.
    ov.link(f.ino, d.ino, name("b")).unwrap();
    assert_eq!(names.last(), paths(&["a", "d/b"]));
    ov.link(f.ino, ROOT, name("c")).unwrap();
    assert_eq!(write(f.ino), paths(&["a", "c", "d/b"]));
    // Renaming one name, or its directory, moves just that name.
    ov.rename(ROOT, name("a"), d.ino, name("a2"), 0).unwrap();
    ov.rename(ROOT, name("d"), ROOT, name("e"), 0).unwrap();
    assert_eq!(write(f.ino), paths(&["c", "e/a2", "e/b"]));
    // Unlinking any name, the primary one included, leaves the others.
    assert_eq!(ov.path_of(f.ino).unwrap(), Path::new("c"), "last looked up");
    ov.unlink(ROOT, name("c")).unwrap();
    assert_eq!(write(f.ino), paths(&["e/a2", "e/b"]));
    ov.unlink(d.ino, name("a2")).unwrap();
    assert_eq!(write(f.ino), paths(&["e/b"]));
    // A name replaced by another file's rename is no longer one of this file's.
    ov.link(f.ino, ROOT, name("g")).unwrap();
    let (h, o) = ov
        .create(ROOT, name("h"), 0o644, libc::O_WRONLY, ME)
        .unwrap();
    ov.release(o.fh).unwrap();
    ov.rename(ROOT, name("h"), d.ino, name("b"), 0).unwrap();
    assert_eq!(write(f.ino), paths(&["g"]));
    assert_eq!(write(h.ino), paths(&["e/b"]));
    // Looked up by a name it was not known by (a link made before the mount): known now.
    fs::hard_link(tmp.path().join("g"), tmp.path().join("pre")).unwrap();
    assert_eq!(ov.lookup(ROOT, name("pre")).unwrap().ino, f.ino);
    assert_eq!(write(f.ino), paths(&["g", "pre"]));
    // With one link left, the other names it was known by are stale.
    fs::remove_file(tmp.path().join("g")).unwrap(); // behind etlfs' back (a test only)
    assert_eq!(ov.lookup(ROOT, name("pre")).unwrap().ino, f.ino);
    assert_eq!(write(f.ino), paths(&["pre"]));
    ov.unlink(ROOT, name("pre")).unwrap();
    assert_eq!(write(f.ino), paths(&[]));
}

#[test]
fn names_that_could_escape_are_refused() {
    let (_tmp, ov) = overlay();
    for bad in ["..", ".", "a/b", "/etc", ""] {
        assert_eq!(
            ov.lookup(ROOT, name(bad)).unwrap_err().errno(),
            libc::EINVAL,
            "{bad:?}"
        );
        assert_eq!(
            ov.mkdir(ROOT, name(bad), 0o755, ME).unwrap_err().errno(),
            libc::EINVAL,
            "{bad:?}"
        );
    }
}

#[test]
fn unknown_handles_and_inodes_are_errors_not_panics() {
    let (_tmp, ov) = overlay();
    assert_eq!(ov.read(999, 0, 10).unwrap_err().errno(), libc::EBADF);
    assert_eq!(ov.release(999).unwrap_err().errno(), libc::EBADF);
    assert_eq!(
        ov.open(12345678, libc::O_RDONLY).unwrap_err().errno(),
        libc::ESTALE
    );
    let (f, o) = ov
        .create(ROOT, name("f"), 0o644, libc::O_WRONLY, ME)
        .unwrap();
    ov.release(o.fh).unwrap();
    assert_eq!(
        ov.lookup(f.ino, name("x")).unwrap_err().errno(),
        libc::ENOTDIR
    );
}

/// Past the descriptor budget, idle files are parked and reopened by name on demand: every
/// operation keeps working, renames and unlinks of parked files included, and a parked inode
/// is pinned again before its name goes (so its number cannot be reused while known).
#[test]
fn descriptors_beyond_the_budget_are_parked_and_reopened() {
    let (tmp, ov) = overlay();
    let ov = ov.with_fd_budget(16);
    let d = ov.mkdir(ROOT, name("d"), 0o755, ME).unwrap();
    let mut ids = Vec::new();
    for i in 0..100 {
        let n = format!("f{i:03}");
        fs::write(tmp.path().join("d").join(&n), n.as_bytes()).unwrap();
        ids.push(ov.lookup(d.ino, name(&n)).unwrap().ino);
        assert!(ov.held_descriptors() <= 16, "budget kept");
    }
    assert_eq!(ov.known_inodes(), 1 + 1 + 100, "root, d and the files");
    // Every file, parked or not, still answers by its id.
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(ov.getattr(*id).unwrap().size, 4);
        let h = ov.open(*id, libc::O_RDONLY).unwrap();
        assert_eq!(ov.read(h.fh, 0, 16).unwrap(), format!("f{i:03}").as_bytes());
        ov.release(h.fh).unwrap();
    }
    assert!(ov.held_descriptors() <= 16);
    // A parked file renamed and then written through its old id.
    let first = ids[0];
    ov.rename(d.ino, name("f000"), ROOT, name("moved"), 0)
        .unwrap();
    let h = ov.open(first, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    ov.write(h.fh, 0, b"new").unwrap();
    ov.release(h.fh).unwrap();
    assert_eq!(fs::read(tmp.path().join("moved")).unwrap(), b"new");
    // Unlinking a parked file pins its inode: the id stays valid (like an open-but-deleted
    // file) and no new file can take its number while the kernel knows it.
    let victim = ids[50];
    ov.unlink(d.ino, name("f050")).unwrap();
    assert_eq!(ov.getattr(victim).unwrap().nlink, 0);
    for i in 0..50 {
        let n = format!("new{i}");
        let (e, o) = ov.create(d.ino, name(&n), 0o644, libc::O_RDWR, ME).unwrap();
        ov.release(o.fh).unwrap();
        assert_ne!(e.ino, victim, "inode number reused while still known");
    }
    // A parked file whose name now leads elsewhere is stale, not another file.
    let other = ids[60];
    let p = tmp.path().join("d/f060");
    fs::remove_file(&p).unwrap(); // behind etlfs' back (only possible in a test)
    fs::write(&p, b"impostor").unwrap();
    if fs::metadata(&p).unwrap().ino() != other {
        let e = ov.getattr(other);
        assert!(
            e.is_err() || e.unwrap().size == 4,
            "either stale, or still the pinned original"
        );
    }
}

/// `-o ro`: the kernel refuses changes on a read-only mount before they reach us; the overlay
/// refuses them too, and still serves reads.
#[test]
fn a_read_only_policy_refuses_every_change_and_serves_reads() {
    let (tmp, ov) = overlay();
    fs::write(tmp.path().join("f"), b"kept").unwrap();
    fs::create_dir(tmp.path().join("d")).unwrap();
    let ov = ov.with_policy(Policy {
        read_only: true,
        ..Policy::default()
    });
    let f = ov.lookup(ROOT, name("f")).unwrap().ino;
    let rofs = |r: Result<()>| assert_eq!(r.unwrap_err().errno(), libc::EROFS);
    rofs(
        ov.create(ROOT, name("new"), 0o644, libc::O_RDWR, ME)
            .map(drop),
    );
    rofs(ov.mkdir(ROOT, name("nd"), 0o755, ME).map(drop));
    rofs(
        ov.mknod(ROOT, name("p"), libc::S_IFIFO | 0o644, 0, ME)
            .map(drop),
    );
    rofs(ov.symlink(ROOT, name("s"), Path::new("f"), ME).map(drop));
    rofs(ov.link(f, ROOT, name("h")).map(drop));
    rofs(ov.unlink(ROOT, name("f")));
    rofs(ov.rmdir(ROOT, name("d")));
    rofs(ov.rename(ROOT, name("f"), ROOT, name("g"), 0));
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        rofs(ov.open(f, flags).map(drop));
    }
    let set = SetAttr {
        mode: Some(0o600),
        uid: None,
        gid: None,
        size: None,
        atime: None,
        mtime: None,
    };
    rofs(ov.setattr(f, None, set).map(drop));
    rofs(ov.setxattr(f, name("user.a"), b"1", 0));
    rofs(ov.removexattr(f, name("user.a")));
    let r = ov.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(ov.read(r.fh, 0, 100).unwrap(), b"kept");
    rofs(ov.write(r.fh, 0, b"x").map(drop));
    rofs(ov.fallocate(r.fh, 0, 10, 0));
    ov.release(r.fh).unwrap();
    let mut names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, [".etlfs", "d", "f"].map(std::ffi::OsString::from));
    assert_eq!(fs::read(tmp.path().join("f")).unwrap(), b"kept");
}

/// `O_DIRECT` stays with the kernel (our descriptor serves unaligned requests); `O_NOATIME`
/// comes with the `noatime` policy, for files and, with `nodiratime` too, directories.
#[test]
fn local_opens_drop_o_direct_and_take_o_noatime_from_the_policy() {
    let (tmp, ov) = overlay();
    fs::write(tmp.path().join("f"), b"0123456789").unwrap();
    let f = ov.lookup(ROOT, name("f")).unwrap().ino;
    let flags_of = |file: &File| rustix::fs::fcntl_getfl(file).unwrap();
    let o = ov.open(f, libc::O_RDWR | libc::O_DIRECT).unwrap();
    assert!(!flags_of(&o.file).contains(rustix::fs::OFlags::DIRECT));
    assert!(!flags_of(&o.file).contains(rustix::fs::OFlags::NOATIME));
    // An unaligned read and write, as the kernel sends them in daemon mode.
    assert_eq!(ov.write(o.fh, 3, b"abc").unwrap(), 3);
    assert_eq!(ov.read(o.fh, 1, 5).unwrap(), b"12abc");
    ov.release(o.fh).unwrap();
    let (_, c) = ov
        .create(ROOT, name("g"), 0o644, libc::O_RDWR | libc::O_DIRECT, ME)
        .unwrap();
    assert!(!flags_of(&c.file).contains(rustix::fs::OFlags::DIRECT));
    ov.release(c.fh).unwrap();

    let ov = ov.with_policy(Policy {
        noatime_files: true,
        noatime_dirs: true,
        ..Policy::default()
    });
    let o = ov.open(f, libc::O_RDONLY).unwrap();
    assert!(flags_of(&o.file).contains(rustix::fs::OFlags::NOATIME));
    ov.release(o.fh).unwrap();
    let d = ov.opendir(ROOT).unwrap();
    ov.releasedir(d).unwrap();
}

/// Notes, when an intent reaches it, which of the keys it was told to watch the index still
/// serves a bucket-only file from.
#[derive(Debug)]
struct SourcesAtFinish {
    index: Arc<Index>,
    watch: Vec<PathBuf>,
    intents: std::sync::Mutex<Vec<Intent>>,
    seen: std::sync::Mutex<Vec<(Intent, Vec<PathBuf>)>>,
}

impl ChangeSink for SourcesAtFinish {
    fn opening_started(&self, _: &Path) {}
    fn opening_done(&self, _: &Path) {}
    fn writer_opened(&self, _: u64) {}
    fn writer_closed(&self, _: u64, _: &[PathBuf]) {}
    fn changed(&self, _: u64, _: &[PathBuf], _: bool) {}
    fn intent(&self, intent: Intent) -> std::io::Result<u64> {
        let mut intents = self.intents.lock().unwrap();
        intents.push(intent);
        Ok(intents.len() as u64 - 1)
    }
    fn finish(&self, token: u64, ok: bool) {
        let intent = self.intents.lock().unwrap()[token as usize].clone();
        let sources = self
            .watch
            .iter()
            .filter(|k| self.index.sources(k))
            .cloned()
            .collect();
        if ok {
            self.seen.lock().unwrap().push((intent, sources));
        }
    }
    fn fetched(&self, _: &Path, _: &Stat, _: &str) {}
    fn in_bucket(&self, _: &Path, _: &Stat) -> Option<String> {
        None
    }
}

/// The mirror decides from the index which objects are bucket-only files' (and must move,
/// not be deleted), and it may carry an intent out the moment it hears of it: so by then the
/// index must have followed the rename. It used to be updated after, and a rename of a
/// bucket-only file carried out at once deleted its object.
#[test]
fn the_index_follows_a_rename_before_the_mirror_hears_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for d in [".etlfs", "d", "e", "f"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let index = Arc::new(Index::default());
    let remote = crate::engine::index::RemoteFile::test_object;
    for p in ["b", "d/x", "e/y"] {
        index.insert(Path::new(p), remote(p));
    }
    let sink = Arc::new(SourcesAtFinish {
        index: Arc::clone(&index),
        watch: ["b", "d/x", "e/y"].iter().map(PathBuf::from).collect(),
        intents: Default::default(),
        seen: Default::default(),
    });
    let state = Arc::new(crate::os::state::StateDir::open(&root.join(".etlfs")).unwrap());
    let fetcher = crate::engine::fetch::Fetcher::new(
        crate::store::bucket::in_memory("etl"),
        LocalDir::open(root).unwrap(),
        state,
        Arc::clone(&index),
        sink.clone(),
        1,
        rt.handle(),
    );
    let ov = Overlay::new(
        LocalDir::open(root).unwrap(),
        Some(Path::new(".etlfs")),
        sink.clone(),
    )
    .unwrap()
    .with_remote(Remote {
        index: Arc::clone(&index),
        fetcher,
        rt: rt.handle().clone(),
    });
    // (the kernel looks every name up before it renames it)
    for n in ["b", "d", "e", "f"] {
        ov.lookup(ROOT, name(n)).unwrap();
    }
    ov.rename(ROOT, name("b"), ROOT, name("c"), 0).unwrap();
    ov.rename(ROOT, name("d"), ROOT, name("g"), 0).unwrap();
    ov.rename(ROOT, name("e"), ROOT, name("f"), libc::RENAME_EXCHANGE)
        .unwrap();
    let seen = sink.seen.lock().unwrap().clone();
    let kinds: Vec<(&str, Vec<PathBuf>)> = seen
        .iter()
        .map(|(i, s)| {
            let kind = match i {
                Intent::Rename { dir: false, .. } => "rename file",
                Intent::Rename { dir: true, .. } => "rename dir",
                Intent::Exchange { .. } => "exchange",
                Intent::Remove { .. } => "remove",
            };
            (kind, s.clone())
        })
        .collect();
    let p = PathBuf::from;
    assert_eq!(
        kinds,
        vec![
            ("rename file", vec![p("b")]),
            ("rename dir", vec![p("b"), p("d/x")]),
            ("exchange", vec![p("b"), p("d/x"), p("e/y")]),
        ]
    );
    assert_eq!(index.file(Path::new("f/y")).unwrap().source, p("e/y"));
}
