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
            "nel\u{85}2026-01-01T00:00:00.000000Z  INFO etlfs::run: forged",
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
    let opts = Opts {
        args: vec!["--listen".into(), format!("127.0.0.1:{port}")],
        log_filter: Some("info,etlfs=debug,fuser=error,object_store=warn".into()),
        ..Opts::default()
    };
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
            b"cr\r2026-01-01T00:00:00.000000Z  INFO etlfs::run: mounted",
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
    let raw = common::http_get(port, "/status").expect("the status server answers");
    let (_, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let report: serde_json::Value = serde_json::from_str(body).expect("JSON");
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
            "cr\r2026-01-01T00:00:00.000000Z  INFO etlfs::run: mounted",
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
