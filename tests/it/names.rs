//! Hostile file names through a real mount on S3 (moto, started by scripts/test.sh): names
//! the bucket can hold (255 bytes, spaces, `%`, `#`, `?`, non-ASCII, a leading dash) are
//! mirrored and restored byte for byte; names it cannot hold (a newline or another ASCII
//! control character, non-UTF-8 bytes, a key over 1024 bytes, the marker name `.etlfs-dir`)
//! work locally, are reported once each (a warning naming the path, `etlfs_skipped_paths_total`)
//! and hold up nothing else. No name can forge a log line: every line of the log starts with a
//! timestamp.
//!
//! Bucket keys and local names holding CR, LF, tab, ESC, C1 controls, a line separator, a bidi
//! override or bytes that are not UTF-8 reach the log, `/status` and a one-shot command's error
//! escaped (on a FILESYSTEM bucket, whose keys are file names, so such keys can be put there).
//!
//! Removing and renaming names the bucket cannot hold works exactly as on the disk underneath
//! (the same operations on a plain directory give the same results and the same tree), in both
//! I/O modes, and the bucket ends up holding exactly the names it can: renamed to an ordinary
//! name, a file or a whole directory is uploaded; renamed from one, its objects go; files only
//! in the bucket are fetched before they move to such a name, so nothing is lost.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::common::{self, bucket};
use bucket::{Target, kubecost_read, kubecost_write, poll, snapshot, target, wait_for};
use common::Opts;
use rustix::fs::{CWD, RenameFlags};

#[test]
fn hostile_names_are_mirrored_or_reported_never_lost_or_forged() {
    let t = target("s3");
    let rt = bucket::rt();
    let store = t.store();
    let long = "n".repeat(255);
    let deep: PathBuf = (0..5).map(|_| "d".repeat(250)).collect();
    let good: Vec<PathBuf> = vec![
        PathBuf::from(&long),
        PathBuf::from("with space %20 #frag ?q=1"),
        PathBuf::from("ünïcødé ✓ 日本"),
        PathBuf::from("-leading-dash"),
        PathBuf::from("dir.etlfs-dir/inside"),
        PathBuf::from("plain"),
    ];
    let bad: Vec<PathBuf> = vec![
        PathBuf::from("two\nlines"),
        PathBuf::from("tab\there"),
        PathBuf::from("fake\n2026-01-01T00:00:00.000000Z ERROR forged log line"),
        PathBuf::from(OsStr::from_bytes(b"latin1-caf\xe9")),
        deep.join("f"),
        PathBuf::from("sub/.etlfs-dir"),
    ];
    let (mut m, _cfg) = bucket::mount_on(&t, "100ms", Opts::default());
    for (i, p) in good.iter().chain(&bad).enumerate() {
        let full = m.mnt.join(p);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        kubecost_write(&full, format!("content {i}").as_bytes())
            .unwrap_or_else(|e| panic!("{p:?}: {e}"));
    }
    // Every good name reaches the bucket under its exact key.
    let want: Vec<String> = good
        .iter()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    let snap = wait_for(&rt, &*store, None, 60, |s| {
        want.iter().all(|k| s.contains_key(k))
    });
    for (i, k) in want.iter().enumerate() {
        assert_eq!(
            snap.get(k).map(Vec::as_slice),
            Some(format!("content {i}").as_bytes()),
            "{k:?} in the bucket; keys: {:?}",
            snap.keys().collect::<Vec<_>>()
        );
    }
    // Each bad one is reported, once, by an escaped name; all stay readable locally.
    assert!(
        poll(30, || m.log().matches("cannot be mirrored").count()
            >= bad.len()),
        "{}",
        m.log()
    );
    for (i, p) in bad.iter().enumerate() {
        let data = kubecost_read(&m.mnt.join(p)).unwrap();
        assert_eq!(data, format!("content {}", good.len() + i).as_bytes());
    }
    let log = m.log();
    for line in log.lines() {
        assert!(
            line.starts_with("20") && line.as_bytes().get(10) == Some(&b'T'),
            "a log line that is not a log record (a name forged it?): {line:?}"
        );
    }
    assert!(!log.contains("forged log line\n"), "{log}");
    assert!(m.stop().success());

    // A new node: every good name restored exactly, nothing else appears.
    let (m2, _cfg2) = bucket::mount_on(&t, "100ms", Opts::default());
    for (i, p) in good.iter().enumerate() {
        assert_eq!(
            kubecost_read(&m2.mnt.join(p)).unwrap_or_else(|e| panic!("{p:?}: {e}")),
            format!("content {i}").as_bytes()
        );
    }
    for p in &bad {
        assert!(!m2.mnt.join(p).exists(), "{p:?} came from nowhere");
    }
}

/// Every line of an etlfs log starts with its timestamp (`2026-...T`): a name that broke a
/// line would start one with something else.
fn assert_no_forged_line(log: &str) {
    assert!(!log.contains('\r'), "a raw CR in the log: {log:?}");
    assert!(!log.contains('\u{1b}'), "a raw ESC in the log: {log:?}");
    for line in log.lines() {
        assert!(
            line.starts_with("20") && line.as_bytes().get(10) == Some(&b'T'),
            "a log line that is not a log record (a name forged it?): {line:?}"
        );
        assert!(
            !line
                .chars()
                .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202e}')),
            "a control character in a log line: {line:?}"
        );
    }
}

/// Bucket keys and local names that could forge a log line or drive a terminal (CR, LF, tab,
/// ESC, a C1 line break or CSI, a line separator, a bidi override, bytes that are not UTF-8)
/// reach the log, `/status` and a one-shot command's error escaped, all through the real
/// binary on a FILESYSTEM bucket (whose keys are file names: any byte but `/` and NUL).
#[test]
fn hostile_keys_and_names_reach_the_log_escaped() {
    let t = target("filesystem");
    let bucket::Target::Filesystem(bucket_dir) = &t else {
        unreachable!()
    };
    // Keys a listing accepts (object_store refuses ASCII controls only): bucket-only files,
    // fetched below, which logs their names at debug.
    let listable = [
        (
            "nel\u{85}2026-01-01T00:00:00.000000Z  INFO etlfs::cli::mount: forged",
            "nel\\u{85}2026-01-01T00",
        ),
        ("csi\u{9b}31mred", "csi\\u{9b}31mred"),
        (
            "ls\u{2028}rlo\u{202e}txt.exe",
            "ls\\u{2028}rlo\\u{202e}txt.exe",
        ),
    ];
    for (i, (key, _)) in listable.iter().enumerate() {
        fs::write(bucket_dir.path().join(key), format!("bucket {i}")).unwrap();
    }
    let port = common::free_port();
    let opts = Opts::default()
        .listen(port)
        .log_filter("info,etlfs=debug,fuser=error,object_store=warn");
    let (mut m, cfg) = bucket::mount_on(&t, "100ms", opts);
    for (i, (key, _)) in listable.iter().enumerate() {
        assert_eq!(
            kubecost_read(&m.mnt.join(key)).unwrap_or_else(|e| panic!("{key:?}: {e}")),
            format!("bucket {i}").as_bytes()
        );
    }
    // Local names no key can hold: each is refused by a warning that names it.
    let local: [(&[u8], &str); 5] = [
        (
            b"cr\r2026-01-01T00:00:00.000000Z  INFO etlfs::cli::mount: mounted",
            "cr\\r2026-01-01T00",
        ),
        (b"esc\x1b[31mred", "esc\\x1b[31mred"),
        (b"nl\nname", "nl\\nname"),
        (b"tab\tname", "tab\\tname"),
        (b"latin\xff", "latin\\xff"),
    ];
    for (name, _) in &local {
        kubecost_write(&m.mnt.join(OsStr::from_bytes(name)), b"local").unwrap();
    }
    let want: Vec<&str> = listable
        .iter()
        .map(|(_, shown)| *shown)
        .chain(local.iter().map(|(_, shown)| *shown))
        .collect();
    assert!(
        poll(60, || {
            let log = m.log();
            want.iter().all(|w| log.contains(w))
        }),
        "not every name is in the log, escaped ({want:?}):\n{}",
        m.log()
    );
    assert_no_forged_line(&m.log());

    // /status keeps the warnings as the log has them.
    let report = common::status(port);
    let messages: Vec<&str> = report["recent_events"]
        .as_array()
        .expect("recent_events")
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    for (_, shown) in &local {
        assert!(
            messages.iter().any(|msg| msg.contains(shown)),
            "{shown} not in /status: {messages:?}"
        );
    }
    for msg in &messages {
        assert!(!msg.chars().any(char::is_control), "/status: {msg:?}");
    }
    assert!(m.stop().success());

    // Keys a listing cannot take (ASCII controls): the mount waits for the bucket and says
    // why, naming the key, escaped.
    let unlistable = [
        (
            "cr\r2026-01-01T00:00:00.000000Z  INFO etlfs::cli::mount: mounted",
            "cr\\r2026-01-01T00",
        ),
        ("esc\x1b[31mred", "esc\\x1b[31mred"),
        ("tab\there", "tab\\there"),
    ];
    for (key, _) in &unlistable {
        fs::write(bucket_dir.path().join(key), b"bad").unwrap();
    }
    let before = m.log().len();
    m.respawn_unmounted();
    let refused = |log: &str| {
        log[before..].lines().any(|l| {
            l.contains("cannot be listed") && unlistable.iter().any(|(_, s)| l.contains(s))
        })
    };
    assert!(
        poll(60, || refused(&m.log())),
        "no escaped listing error:\n{}",
        m.log()
    );
    assert!(!common::is_mounted(&m.mnt), "mounted an incomplete listing");
    assert!(m.stop().success());
    assert_no_forged_line(&m.log());

    // A one-shot command fails on the same listing; its error, causes included, is escaped.
    let out = std::process::Command::new(common::ETLFS)
        .arg("verify")
        .arg("--config")
        .arg(cfg.path())
        .arg(&m.local)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.contains("ERROR")
            && l.contains("listing the bucket")
            && unlistable.iter().any(|(_, s)| l.contains(s))),
        "{stderr}"
    );
    assert_no_forged_line(&stderr);
}

/// A path from bytes (`b"caf\xe9"` is not UTF-8).
fn raw(name: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(name))
}

/// One step of a scenario, done alike to the mount and to a plain directory.
#[derive(Debug, Clone)]
enum Op {
    Write(PathBuf, &'static [u8]),
    Mkdir(PathBuf),
    Unlink(PathBuf),
    Rmdir(PathBuf),
    Rename(PathBuf, PathBuf),
    NoReplace(PathBuf, PathBuf),
    Exchange(PathBuf, PathBuf),
}

/// Does `op` under `root`; the errno on failure.
fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let at = |p: &PathBuf| root.join(p);
    let flagged = |a: &PathBuf, b: &PathBuf, flags| {
        rustix::fs::renameat_with(CWD, at(a), CWD, at(b), flags).map_err(std::io::Error::from)
    };
    let res = match op {
        Op::Write(p, data) => fs::write(at(p), data),
        Op::Mkdir(p) => fs::create_dir(at(p)),
        Op::Unlink(p) => fs::remove_file(at(p)),
        Op::Rmdir(p) => fs::remove_dir(at(p)),
        Op::Rename(a, b) => fs::rename(at(a), at(b)),
        Op::NoReplace(a, b) => flagged(a, b, RenameFlags::NOREPLACE),
        Op::Exchange(a, b) => flagged(a, b, RenameFlags::EXCHANGE),
    };
    res.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Does every op on the plain directory `plain` and through the mount `mnt`, and asserts that
/// each gives the same result on both.
fn apply_both(plain: &Path, mnt: &Path, ops: &[Op]) {
    for op in ops {
        let want = apply(plain, op);
        let got = apply(mnt, op);
        assert_eq!(
            got, want,
            "{op:?}: the mount answered otherwise than the disk"
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

/// Every entry below `root` (relative path as bytes) with its contents.
fn tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let p = rel.join(e.file_name());
            let node = if e.file_type().unwrap().is_dir() {
                todo.push(p.clone());
                Node::Dir
            } else {
                Node::File(fs::read(root.join(&p)).unwrap_or_else(|e| panic!("{p:?}: {e}")))
            };
            out.insert(p.as_os_str().as_bytes().to_vec(), node);
        }
    }
    out
}

/// The key etlfs gives `rel` (with the marker suffix for a directory), if it can hold it:
/// UTF-8 without ASCII control characters, not named `.etlfs-dir`, at most 1024 bytes (before
/// the marker suffix).
fn key_of(rel: &[u8], dir: bool) -> Option<String> {
    let s = std::str::from_utf8(rel).ok()?;
    let ok = !s.chars().any(|c| c.is_ascii_control())
        && s.rsplit('/').next() != Some(".etlfs-dir")
        && s.len() <= 1024;
    ok.then(|| {
        if dir {
            format!("{s}/.etlfs-dir")
        } else {
            s.to_owned()
        }
    })
}

/// What the bucket must hold for `tree`: exactly the names it can hold.
fn bucket_of(tree: &BTreeMap<Vec<u8>, Node>) -> BTreeMap<String, Vec<u8>> {
    tree.iter()
        .filter_map(|(p, n)| match n {
            Node::Dir => key_of(p, true).map(|k| (k, Vec::new())),
            Node::File(d) => key_of(p, false).map(|k| (k, d.clone())),
        })
        .collect()
}

/// Waits (generously) until the mirror of the mount listening on `port` is idle and the bucket
/// holds exactly `want`; asserts it does.
fn settle(port: u16, t: &Target, want: &BTreeMap<String, Vec<u8>>, log: impl Fn() -> String) {
    let rt = bucket::rt();
    let store = t.store();
    let mut snap = BTreeMap::new();
    let settled = poll(120, || {
        common::mirror_idle(port) && {
            snap = snapshot(&rt, store.as_ref(), None);
            snap == *want
        }
    });
    // (the 250-byte names of the long path shortened)
    let keys = |m: &BTreeMap<String, Vec<u8>>| {
        let n = "n".repeat(250);
        m.keys().map(|k| k.replace(&n, "n…")).collect::<Vec<_>>()
    };
    assert!(
        settled,
        "the bucket does not hold exactly the names it can:\nwant {:?}\ngot  {:?}\n{}",
        keys(want),
        keys(&snap),
        log()
    );
}

/// Removes and renames between names the bucket cannot hold (not UTF-8, control characters,
/// a key over 1024 bytes, a directory named `.etlfs-dir`) and ordinary ones, through a real
/// mount, compared with the same operations on a plain directory; then the bucket's content.
/// Then, on a new node where every file is only in the bucket, the same kinds of renames of
/// bucket-only files and directories: they are fetched first, so after a restart every byte
/// is still there, and the bucket again holds exactly the names it can.
fn unmirrorable_names_are_removed_and_renamed_as_on_disk(kind: &str, passthrough: bool) {
    let t = target(kind);
    let opts = |port| {
        let opts = Opts::default().listen(port);
        if passthrough {
            opts
        } else {
            opts.arg("--no-passthrough")
        }
    };
    let port = common::free_port();
    let (mut m, _cfg) = bucket::mount_on(&t, "100ms", opts(port));
    let plain = tempfile::tempdir_in("/tmp").unwrap();
    let n = "n".repeat(250);
    let long: PathBuf = std::iter::once("long".to_string())
        .chain(std::iter::repeat_n(n, 5))
        .collect();
    let p = PathBuf::from;
    let mut setup = vec![
        Op::Write(p("keep"), b"K"),
        Op::Write(p("to-raw"), b"A"),
        Op::Write(raw(b"from-raw\xff"), b"N"),
        Op::Write(p("tab\tname"), b"T"),
        Op::Write(p("to-ctl"), b"C"),
        Op::Write(p("to-long"), b"TL"),
        Op::Mkdir(p("tree")),
        Op::Write(p("tree/x"), b"X"),
        Op::Mkdir(p("tree/sub")),
        Op::Write(p("tree/sub/y"), b"Y"),
        Op::Mkdir(raw(b"rtree\xfe")),
        Op::Write(raw(b"rtree\xfe/a"), b"RA"),
        Op::Mkdir(raw(b"rtree\xfe/sub")),
        Op::Write(raw(b"rtree\xfe/sub/b"), b"RB"),
        Op::Mkdir(raw(b"full\xfd")),
        Op::Write(raw(b"full\xfd/f"), b"F"),
        Op::Write(p("ex-utf8"), b"EU"),
        Op::Write(raw(b"ex-raw\xfa"), b"ER"),
        Op::Mkdir(p("exd-utf8")),
        Op::Write(p("exd-utf8/u"), b"DU"),
        Op::Mkdir(raw(b"exd-raw\xf9")),
        Op::Write(raw(b"exd-raw\xf9/r"), b"DR"),
        Op::Write(raw(b"rm-me\xfb"), b"R"),
        Op::Mkdir(raw(b"rmdir-me\xfc")),
    ];
    for depth in 1..=long.components().count() {
        setup.push(Op::Mkdir(long.components().take(depth).collect()));
    }
    setup.push(Op::Write(long.join("f"), b"L"));
    let mut ops = vec![
        Op::Unlink(raw(b"rm-me\xfb")),
        Op::Rmdir(raw(b"rmdir-me\xfc")),
        Op::Rmdir(raw(b"full\xfd")),
        Op::Unlink(raw(b"full\xfd")),
        Op::Unlink(raw(b"full\xfd/f")),
        Op::Rmdir(raw(b"full\xfd")),
        Op::Rename(raw(b"missing\xff"), p("x")),
        Op::Rename(raw(b"from-raw\xff"), p("from-raw")),
        Op::Rename(p("tab\tname"), p("tab-name")),
        Op::Rename(p("to-raw"), raw(b"to-raw\xff")),
        Op::Rename(p("to-ctl"), p("to\nctl")),
        Op::Rename(raw(b"rtree\xfe"), p("rtree")),
        Op::Rename(p("tree"), raw(b"tree\xf8")),
        Op::Rename(raw(b"tree\xf8/x"), p("tree-x")),
        Op::Exchange(p("ex-utf8"), raw(b"ex-raw\xfa")),
        Op::Exchange(p("exd-utf8"), raw(b"exd-raw\xf9")),
        Op::NoReplace(p("keep"), raw(b"ex-raw\xfa")),
        Op::Rename(long.join("f"), p("from-long")),
        Op::Rename(p("to-long"), long.join("g")),
    ];
    if kind != "filesystem" {
        // (a FILESYSTEM bucket cannot hold a directory `.etlfs-dir` beside the marker file of
        // the same name)
        setup.extend([
            Op::Mkdir(p("d")),
            Op::Mkdir(p("d/.etlfs-dir")),
            Op::Write(p("d/.etlfs-dir/x"), b"DX"),
        ]);
        ops.push(Op::Rename(p("d/.etlfs-dir"), p("d/plain")));
    }
    apply_both(plain.path(), &m.mnt, &setup);
    settle(port, &t, &bucket_of(&tree(plain.path())), || m.log());
    apply_both(plain.path(), &m.mnt, &ops);
    let want = tree(plain.path());
    assert_eq!(tree(&m.mnt), want, "the mount's tree is not the disk's");
    settle(port, &t, &bucket_of(&want), || m.log());
    assert!(m.stop().success());

    // A new node: everything it shows is only in the bucket until read.
    let shown: BTreeMap<Vec<u8>, Node> = want
        .iter()
        .filter(|(p, n)| {
            key_of(p, matches!(n, Node::Dir)).is_some()
                || want.keys().any(|q| {
                    q.starts_with(p) && q.get(p.len()) == Some(&b'/') && key_of(q, false).is_some()
                })
        })
        .map(|(p, n)| (p.clone(), n.clone()))
        .collect();
    let plain = tempfile::tempdir_in("/tmp").unwrap();
    for (p, n) in &shown {
        let at = plain.path().join(OsStr::from_bytes(p));
        match n {
            Node::Dir => fs::create_dir_all(at).unwrap(),
            Node::File(d) => fs::write(at, d).unwrap(),
        }
    }
    let port = common::free_port();
    let (mut m, _cfg2) = bucket::mount_on(&t, "100ms", opts(port));
    apply_both(
        plain.path(),
        &m.mnt,
        &[
            Op::Rename(p("rtree"), raw(b"rtree\xf7")),
            Op::Rename(p("from-raw"), raw(b"from-raw\xf6")),
            Op::Rename(p("tab-name"), p("tab\x7fname")),
            Op::Mkdir(raw(b"lazy\xf4")),
            Op::Write(raw(b"lazy\xf4/l"), b"LL"),
            Op::Exchange(p("exd-utf8"), raw(b"lazy\xf4")),
        ],
    );
    let want = tree(plain.path());
    settle(port, &t, &bucket_of(&want), || m.log());
    assert_eq!(tree(&m.mnt), want, "the mount's tree is not the disk's");
    assert!(m.stop().success());
    m.respawn();
    assert_eq!(tree(&m.mnt), want, "after a restart");
    settle(port, &t, &bucket_of(&want), || m.log());
    assert!(m.stop().success());
}

#[test]
fn unmirrorable_names_are_removed_and_renamed_as_on_disk_s3_passthrough() {
    unmirrorable_names_are_removed_and_renamed_as_on_disk("s3", true);
}

#[test]
fn unmirrorable_names_are_removed_and_renamed_as_on_disk_filesystem_daemon() {
    unmirrorable_names_are_removed_and_renamed_as_on_disk("filesystem", false);
}
