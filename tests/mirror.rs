//! The mirror against real object-storage servers on 127.0.0.1 (moto S3, Azurite, fake-gcs
//! behind its adapter) and the FILESYSTEM backend, through real FUSE mounts of the binary.
//!
//! The servers are started by scripts/test.sh; each test gets a bucket of its own.

#[path = "common/bucket.rs"]
mod bucket;
mod common;
#[path = "common/servers.rs"]
mod servers;

use std::collections::BTreeMap;
use std::fs::{self};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bucket::{Target, kubecost_write, poll, rt, snapshot, target, wait_for};
use common::{Mounted, Opts};

/// A mount of etlfs mirroring into `t`, with a short upload delay.
fn mount(
    t: &Target,
    extra: &[&str],
    files: Vec<(String, Vec<u8>)>,
) -> (Mounted, tempfile::NamedTempFile) {
    let opts = Opts {
        args: extra.iter().map(|s| s.to_string()).collect(),
        files,
        log_filter: Some("info,object_store=warn,etlfs::mirror=debug".into()),
        ..Opts::default()
    };
    bucket::mount_on(t, "200ms", opts)
}

fn version(name: &str, round: u32) -> Vec<u8> {
    // Distinct sizes per round, so a torn mix of two versions is detectable by length too.
    format!("{name}:{round}:")
        .repeat(1000 + round as usize * 7)
        .into_bytes()
}

crate::on_every_backend!(
    kubecost_cycles_land_with_final_bytes_only,
    rename_and_delete_follow,
    preexisting_files_are_uploaded_at_first_mount
);

/// The Kubecost write cycle, rewritten many times while a reader polls the bucket: every body
/// the bucket ever shows is one complete version, and the last one wins.
fn kubecost_cycles_land_with_final_bytes_only(kind: &str) {
    let t = target(kind);
    let store = t.store();
    let (mut m, _cfg) = mount(&t, &["--prefix", "etl"], vec![]);
    let dir = m.path("bingen/allocations/1d");
    fs::create_dir_all(&dir).unwrap();
    let names: Vec<String> = (0..4)
        .map(|i| format!("17041{i}0400-17041{i}6800"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (store, stop, names) = (Arc::clone(&store), Arc::clone(&stop), names.clone());
        std::thread::spawn(move || {
            let rt = rt();
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                for (key, body) in snapshot(&rt, store.as_ref(), Some("etl")) {
                    if key.ends_with(".etlfs-dir") {
                        continue;
                    }
                    let name = key.rsplit('/').next().unwrap().to_owned();
                    assert!(names.contains(&name), "unexpected key {key}");
                    let ok = (1..=12).any(|r| body == version(&name, r));
                    assert!(
                        ok,
                        "{key}: the bucket showed a torn or intermediate body of {} bytes",
                        body.len()
                    );
                    seen += 1;
                }
            }
            seen
        })
    };
    for round in 1..=12 {
        for n in &names {
            kubecost_write(&dir.join(n), &version(n, round)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(if round % 4 == 0 { 300 } else { 20 }));
    }
    let rt = rt();
    let want = |s: &BTreeMap<String, Vec<u8>>| {
        names
            .iter()
            .all(|n| s.get(&format!("etl/bingen/allocations/1d/{n}")) == Some(&version(n, 12)))
    };
    let snap = wait_for(&rt, store.as_ref(), Some("etl"), 30, want);
    stop.store(true, Ordering::Relaxed);
    let seen = watcher
        .join()
        .expect("the watcher saw only complete versions");
    assert!(
        want(&snap),
        "final versions missing: {:?}\n{}",
        snap.keys().collect::<Vec<_>>(),
        m.log()
    );
    assert!(seen > 0, "the watcher never saw an object");
    // Directory markers make the tree come back whole.
    for d in [
        "etl/bingen/.etlfs-dir",
        "etl/bingen/allocations/.etlfs-dir",
        "etl/bingen/allocations/1d/.etlfs-dir",
    ] {
        assert!(snap.contains_key(d), "missing marker {d}");
    }
    // Rewrites within the upload delay coalesce: far fewer uploads than the 48 closes.
    let uploads = m.log().matches("uploaded").count();
    assert!(
        uploads < 40,
        "{uploads} uploads for 48 writes:\n{}",
        m.log()
    );
    assert!(m.stop().success());
}

fn rename_and_delete_follow(kind: &str) {
    let t = target(kind);
    let store = t.store();
    let (mut m, _cfg) = mount(&t, &[], vec![]);
    fs::create_dir_all(m.path("dir/sub")).unwrap();
    for (p, d) in [("a", "A"), ("b", "B"), ("dir/c", "C"), ("dir/sub/d", "D")] {
        kubecost_write(&m.path(p), d.as_bytes()).unwrap();
    }
    let rt = rt();
    let snap = wait_for(&rt, store.as_ref(), None, 30, |s| {
        ["a", "b", "dir/c", "dir/sub/d"]
            .iter()
            .all(|k| s.contains_key(*k))
    });
    assert!(
        snap.contains_key("a") && snap.contains_key("dir/c"),
        "{:?}",
        snap.keys()
    );
    fs::rename(m.path("a"), m.path("a2")).unwrap();
    fs::remove_file(m.path("b")).unwrap();
    fs::rename(m.path("dir"), m.path("moved")).unwrap();
    fs::create_dir(m.path("empty")).unwrap();
    let want: Vec<&str> = vec![
        "a2",
        "empty/.etlfs-dir",
        "moved/.etlfs-dir",
        "moved/c",
        "moved/sub/.etlfs-dir",
        "moved/sub/d",
    ];
    let snap = wait_for(&rt, store.as_ref(), None, 30, |s| {
        s.keys().map(String::as_str).collect::<Vec<_>>() == want
    });
    assert_eq!(
        snap.keys().map(String::as_str).collect::<Vec<_>>(),
        want,
        "{}",
        m.log()
    );
    assert_eq!(snap["moved/sub/d"], b"D");
    assert_eq!(snap["a2"], b"A");
    fs::remove_dir(m.path("empty")).unwrap();
    let snap = wait_for(&rt, store.as_ref(), None, 30, |s| {
        !s.contains_key("empty/.etlfs-dir")
    });
    assert!(!snap.contains_key("empty/.etlfs-dir"));
    assert!(m.stop().success());
}

fn preexisting_files_are_uploaded_at_first_mount(kind: &str) {
    let t = target(kind);
    let store = t.store();
    let files = vec![
        ("bingen/assets/1d/100-200".to_string(), b"assets".to_vec()),
        (
            "bingen/allocations/1h/100-200".to_string(),
            vec![9u8; 300_000],
        ),
        ("top".to_string(), b"top".to_vec()),
    ];
    let (mut m, _cfg) = mount(&t, &["--prefix", "etl"], files.clone());
    let rt = rt();
    let snap = wait_for(&rt, store.as_ref(), Some("etl"), 30, |s| {
        files
            .iter()
            .all(|(p, d)| s.get(&format!("etl/{p}")) == Some(d))
    });
    for (p, d) in &files {
        assert_eq!(snap.get(&format!("etl/{p}")), Some(d), "{p}: {}", m.log());
    }
    assert!(m.stop().success());
}

/// Renaming a file back and forth on a FILESYSTEM bucket leaves no staged `name#N` file
/// behind, neither beside the objects nor beside their metadata under `.etlfs/meta`:
/// object_store copies there through a hard-linked `name#N` renamed onto the key, which
/// rename(2) leaves in place when the key already is a link of the same file (as it is after
/// the copies of earlier renames).
#[test]
fn filesystem_renames_back_and_forth_leave_no_staged_files() {
    let t = target("filesystem");
    let Target::Filesystem(dir) = &t else {
        unreachable!()
    };
    let port = common::free_port();
    let (mut m, _cfg) = mount(&t, &["--listen", &format!("127.0.0.1:{port}")], vec![]);
    fs::create_dir(m.path("d1")).unwrap();
    fs::create_dir(m.path("d2")).unwrap();
    kubecost_write(&m.path("d1/a"), b"x").unwrap();
    let rt = rt();
    let store = t.store();
    let snap = wait_for(&rt, store.as_ref(), None, 30, |s| s.contains_key("d1/a"));
    assert!(snap.contains_key("d1/a"), "{}", m.log());
    for _ in 0..30 {
        fs::rename(m.path("d1/a"), m.path("d2/b")).unwrap();
        fs::rename(m.path("d2/b"), m.path("d1/a")).unwrap();
    }
    let settled = |s: &BTreeMap<String, Vec<u8>>| {
        s.get("d1/a").map(Vec::as_slice) == Some(b"x") && !s.contains_key("d2/b")
    };
    assert!(
        poll(120, || common::mirror_idle(port)
            && settled(&snapshot(&rt, store.as_ref(), None))),
        "the mirror did not settle:\n{}",
        m.log()
    );
    let mut staged = Vec::new();
    let mut todo = vec![dir.path().to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else if e.file_name().to_string_lossy().contains('#') {
                staged.push(e.path());
            }
        }
    }
    assert!(staged.is_empty(), "staged files left: {staged:?}");
    assert!(m.stop().success());
}

/// A bucket outage never fails an application write, and the backlog drains afterwards.
#[test]
fn bucket_outage_never_fails_writes_and_drains_after() {
    let server = servers::s3_isolated();
    let t = Target::Cloud(server);
    let store = t.store();
    let (mut m, _cfg) = mount(&t, &[], vec![]);
    let Target::Cloud(server) = &t else {
        unreachable!()
    };
    server.stop();
    for i in 0..20 {
        kubecost_write(&m.path(&format!("f{i}")), &version("f", i))
            .expect("writes succeed during an outage");
    }
    fs::create_dir(m.path("d")).unwrap();
    fs::rename(m.path("f0"), m.path("d/f0")).unwrap();
    fs::remove_file(m.path("f1")).unwrap();
    // The outage lasts until the mirror has failed and is retrying (the client's own retries
    // take seconds before a failure reaches it).
    assert!(
        poll(120, || m.log().contains("failed; will retry")),
        "no failure during the outage:\n{}",
        m.log()
    );
    server.start();
    let rt = rt();
    let snap = wait_for(&rt, store.as_ref(), None, 60, |s| s.len() == 20);
    let mut want: Vec<String> = (2..20).map(|i| format!("f{i}")).collect();
    want.extend(["d/.etlfs-dir".to_string(), "d/f0".to_string()]);
    want.sort();
    assert_eq!(
        snap.keys().cloned().collect::<Vec<_>>(),
        want,
        "{}",
        m.log()
    );
    assert_eq!(snap["d/f0"], version("f", 0));
    assert!(m.stop().success());
}

/// SIGKILL in the middle of a write storm, restart over the same directory: every file closed
/// before the kill reaches the bucket with its last closed content, and nothing deleted before
/// the kill comes back.
#[test]
fn sigkill_mid_write_storm_loses_nothing_closed() {
    let t = target("s3");
    let store = t.store();
    let (mut m, _cfg) = mount(&t, &[], vec![]);
    let mnt = m.mnt.clone();
    // The storm: rewrite 30 files over and over, delete some; remember what was closed. A
    // file whose operation fails (the mount died under it) is in an unknown state: forget it.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds_done = Arc::new(AtomicU32::new(0));
    let writer = {
        let (mnt, stop, rounds_done) = (mnt.clone(), Arc::clone(&stop), Arc::clone(&rounds_done));
        std::thread::spawn(move || {
            let mut closed: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                for i in 0..30 {
                    let name = format!("f{i:02}");
                    let data = version(&name, round);
                    if kubecost_write(&mnt.join(&name), &data).is_err() {
                        closed.remove(&name);
                        return (closed, round);
                    }
                    closed.insert(name.clone(), Some(data));
                    if round % 3 == 0 && i % 7 == 0 {
                        if fs::remove_file(mnt.join(&name)).is_err() {
                            closed.remove(&name);
                            return (closed, round);
                        }
                        closed.insert(name, None);
                    }
                }
                rounds_done.store(round, Ordering::Relaxed);
            }
            (closed, round)
        })
    };
    // The kill lands in the fourth round or later, however slow the machine is.
    assert!(
        poll(120, || rounds_done.load(Ordering::Relaxed) >= 3),
        "the storm did not get through 3 rounds:\n{}",
        m.log()
    );
    m.signal(rustix::process::Signal::KILL);
    assert!(m.wait_exit(Duration::from_secs(10)).is_some());
    stop.store(true, Ordering::Relaxed);
    let (closed, rounds) = writer.join().unwrap();
    assert!(
        rounds >= 3 && closed.len() >= 20,
        "the storm was too short: {rounds} rounds"
    );

    // The local disk holds what the application last closed: start again over it.
    m.respawn();
    let rt = rt();
    let want = |s: &BTreeMap<String, Vec<u8>>| {
        closed.iter().all(|(name, data)| match data {
            Some(d) => s.get(name) == Some(d),
            None => !s.contains_key(name),
        })
    };
    let snap = wait_for(&rt, store.as_ref(), None, 60, want);
    for (name, data) in &closed {
        match data {
            Some(d) => assert_eq!(snap.get(name), Some(d), "{name} lost\n{}", m.log()),
            None => assert!(
                !snap.contains_key(name),
                "{name} was deleted before the kill but came back\n{}",
                m.log()
            ),
        }
    }
    assert!(m.stop().success());
}

/// The upload records survive a clean stop (the state directory is inside the mounted one, so
/// they are written through a descriptor opened before the mount): a restart uploads nothing
/// that is already in the bucket.
#[test]
fn restart_after_a_clean_stop_uploads_nothing_again() {
    let t = target("filesystem");
    let files = (0..5)
        .map(|i| (format!("d/f{i}"), vec![i as u8; 1000]))
        .collect();
    let (mut m, _cfg) = mount(&t, &[], files);
    let rt = rt();
    wait_for(&rt, t.store().as_ref(), None, 30, |s| s.len() == 6);
    assert!(m.stop().success());
    assert!(
        m.local.join(".etlfs/uploads.json").is_file(),
        "records not saved:\n{}",
        m.log()
    );
    m.respawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !m
        .log()
        .contains("reconciled the directory with the bucket to_upload=0")
    {
        assert!(
            Instant::now() < deadline,
            "the restart re-uploaded files:\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(m.stop().success());
}
