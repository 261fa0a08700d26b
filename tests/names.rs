//! Hostile file names through a real mount on S3 (moto, started by scripts/test.sh): names
//! the bucket can hold (255 bytes, spaces, `%`, `#`, `?`, non-ASCII, a leading dash) are
//! mirrored and restored byte for byte; names it cannot hold (a newline or another ASCII
//! control character, non-UTF-8 bytes, a key over 1024 bytes, the marker name `.etlfs-dir`)
//! work locally, are reported once each (a warning naming the path, `etlfs_skipped_paths_total`)
//! and hold up nothing else. No name can forge a log line: every line of the log starts with a
//! timestamp.

#[path = "common/bucket.rs"]
mod bucket;
mod common;
#[path = "common/servers.rs"]
mod servers;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use bucket::{kubecost_read, kubecost_write, poll, target, wait_for};
use common::Opts;

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
