//! The mirror against real object-storage servers on 127.0.0.1 (moto S3, Azurite, fake-gcs
//! behind its adapter) and the FILESYSTEM backend, through real FUSE mounts of the binary.
//!
//! The servers are started by scripts/test.sh; each test gets a bucket of its own.

use std::collections::BTreeMap;
use std::fs::{self};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::common::{self, bucket, servers};
use bucket::{Target, kubecost_write, poll, rt, snapshot, target, wait_for};
use common::{Mounted, Opts};

/// A mount of etlfs mirroring into `t`, with a short upload delay.
fn mount(
    t: &Target,
    extra: &[&str],
    files: Vec<(String, Vec<u8>)>,
) -> (Mounted, tempfile::NamedTempFile) {
    let opts = Opts {
        files,
        ..Opts::default()
            .args(extra.iter().copied())
            .log_filter("info,object_store=warn,etlfs::engine::mirror=debug")
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
    preexisting_files_are_uploaded_at_first_mount,
    a_file_rewritten_without_pause_is_uploaded_within_the_max_delay
);

/// The Kubecost write cycle, rewritten many times while a reader polls the bucket: every body
/// the bucket ever shows is one complete version, and the last one wins.
/// A file rewritten more often than the upload delay is still uploaded while the writes go on,
/// within `--upload-max-delay`, each time a complete version. (The upload delay here is an
/// hour: without the deadline nothing could reach the bucket during the test.)
fn a_file_rewritten_without_pause_is_uploaded_within_the_max_delay(kind: &str) {
    let t = target(kind);
    let store = t.store();
    let (mut m, _cfg) =
        bucket::mount_on(&t, "1h", Opts::default().args(["--upload-max-delay", "2s"]));
    let name = "hot";
    let rt = rt();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    // Rewrite until two versions have reached the bucket (the first may be any round).
    while seen.len() < 2 && Instant::now() < deadline {
        round += 1;
        kubecost_write(&m.path(name), &version(name, round)).unwrap();
        if let Some(body) = snapshot(&rt, store.as_ref(), None).remove(name) {
            let r = (1..=round)
                .find(|r| body == version(name, *r))
                .unwrap_or_else(|| panic!("a torn or unknown body of {} bytes", body.len()));
            if seen.last() != Some(&r) {
                seen.push(r);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        seen.len() >= 2,
        "versions uploaded during {round} rewrites: {seen:?}\n{}",
        m.log()
    );
    assert!(m.stop().success(), "{}", m.log());
}

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
    let snap = wait_for(&rt, store.as_ref(), Some("etl"), 120, want);
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
    let snap = wait_for(&rt, store.as_ref(), None, 120, |s| {
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
    let snap = wait_for(&rt, store.as_ref(), None, 120, |s| {
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
    let snap = wait_for(&rt, store.as_ref(), None, 120, |s| {
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
    let snap = wait_for(&rt, store.as_ref(), Some("etl"), 120, |s| {
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
    let snap = wait_for(&rt, store.as_ref(), None, 120, |s| s.contains_key("d1/a"));
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

/// A SIGTERM drains at once, and the drain deadline holds even when a copy of the mount in
/// another mount namespace (here `unshare -m`) keeps the FUSE session alive after the unmount:
/// etlfs says so, exits after the deadline and a short grace, and every closed file is in the
/// bucket.
#[test]
fn sigterm_drains_at_once_while_a_copy_of_the_mount_lives_elsewhere() {
    let t = target("s3");
    let (mut m, _cfg) = bucket::mount_on(
        &t,
        // Nothing is uploaded before the SIGTERM: the drain has all of it to do.
        "1h",
        Opts::default().args(["--drain-timeout", "3s"]),
    );
    let files: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("d/f{i}"), vec![b'a' + i as u8; 5000]))
        .collect();
    fs::create_dir_all(m.path("d")).unwrap();
    for (name, data) in &files {
        kubecost_write(&m.path(name), data).unwrap();
    }
    // A copy of the mount in a new mount namespace, held by a sleeping process.
    let mut holder = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "120"])
        .spawn()
        .unwrap();
    let ns_of = |pid: u32| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let ours = ns_of(std::process::id());
    let copied = poll(20, || {
        ns_of(holder.id()).is_some_and(|ns| Some(ns) != ours)
            && fs::read_to_string(format!("/proc/{}/comm", holder.id()))
                .is_ok_and(|c| c.trim() == "sleep")
    });
    let started = Instant::now();
    m.signal(rustix::process::Signal::TERM);
    let st = m.wait_exit(Duration::from_secs(20));
    let took = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(copied, "unshare did not start");
    let st = st.unwrap_or_else(|| panic!("etlfs still running 20 s after SIGTERM\n{}", m.log()));
    assert!(st.success(), "{st}\n{}", m.log());
    assert!(
        took <= Duration::from_secs(3 + 5),
        "exit took {took:?} with a 3 s drain timeout\n{}",
        m.log()
    );
    assert!(
        m.log().contains("outlives the unmount") || m.log().contains("leaving the FUSE session"),
        "{}",
        m.log()
    );
    let rt = rt();
    let snap = snapshot(&rt, t.store().as_ref(), None);
    for (name, data) in &files {
        assert_eq!(
            snap.get(name),
            Some(data),
            "{name} not uploaded\n{}",
            m.log()
        );
    }
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

// ---------------------------------------------------------------------------------------------
// Hard links and shared mappings, in both I/O modes: a write reaches the bucket under every
// name of the file, however it was made.

#[derive(Clone, Copy, Debug)]
enum Io {
    Passthrough,
    Daemon,
}

/// Generates one test per backend (FILESYSTEM, S3) and I/O mode from `fn <name>(kind, io)`.
macro_rules! on_filesystem_and_s3_in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod filesystem_passthrough {
            $( #[test] fn $name() { super::$name("filesystem", super::Io::Passthrough) } )*
        }
        mod filesystem_daemon {
            $( #[test] fn $name() { super::$name("filesystem", super::Io::Daemon) } )*
        }
        mod s3_passthrough { $( #[test] fn $name() { super::$name("s3", super::Io::Passthrough) } )* }
        mod s3_daemon { $( #[test] fn $name() { super::$name("s3", super::Io::Daemon) } )* }
    };
}

on_filesystem_and_s3_in_both_modes!(
    a_write_through_one_name_reaches_every_name,
    unlinking_one_name_keeps_the_others_mirrored,
    links_made_before_the_mount_are_mirrored,
    a_random_workload_with_links_is_mirrored_exactly,
    writes_through_a_shared_mapping_are_uploaded,
);

/// A mount mirroring into `t` in I/O mode `io`, its status server on the returned port.
fn mount_in(
    t: &Target,
    io: Io,
    files: Vec<(String, Vec<u8>)>,
) -> (Mounted, tempfile::NamedTempFile, u16) {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut extra = vec!["--listen", listen.as_str()];
    if let Io::Daemon = io {
        extra.push("--no-passthrough");
    }
    let (m, cfg) = mount(t, &extra, files);
    (m, cfg, port)
}

/// Waits (up to 60 s) until the bucket holds `want` (key → bytes) and none of `absent`, then
/// asserts it.
fn expect_objects(t: &Target, m: &Mounted, want: &[(&str, &[u8])], absent: &[&str]) {
    let rt = rt();
    let ok = |s: &BTreeMap<String, Vec<u8>>| {
        want.iter()
            .all(|(k, v)| s.get(*k).map(Vec::as_slice) == Some(*v))
            && absent.iter().all(|k| !s.contains_key(*k))
    };
    let snap = wait_for(&rt, t.store().as_ref(), None, 60, ok);
    for (k, v) in want {
        assert_eq!(
            snap.get(*k)
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            Some(String::from_utf8_lossy(v).into_owned()),
            "{k} in the bucket\n{}",
            m.log()
        );
    }
    for k in absent {
        assert!(
            !snap.contains_key(*k),
            "{k} still in the bucket\n{}",
            m.log()
        );
    }
}

fn append(path: &std::path::Path, data: &[u8]) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data).unwrap();
}

/// Waits until the mirror has nothing pending, then stops the mount: the drain must find
/// nothing left to do, and the bucket must hold exactly the local files.
fn settle_and_stop(t: &Target, m: &mut Mounted, port: u16) {
    let pending = || {
        let r = common::http_get(port, "/status")?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        v["pending"]["changes"].as_u64()
    };
    assert!(
        poll(60, || pending() == Some(0)),
        "the mirror did not settle\n{}",
        m.log()
    );
    let local = local_tree(&m.mnt);
    let rt = rt();
    let snap = wait_for(&rt, t.store().as_ref(), None, 60, |s| *s == local);
    assert_eq!(
        differences(&local, &snap),
        Vec::<String>::new(),
        "mount and bucket differ\n{}",
        m.log()
    );
    assert!(m.stop().success());
    assert!(
        m.log().contains("all changes are in the bucket"),
        "{}",
        m.log()
    );
}

/// What the bucket must hold for the tree at `root`: every file's bytes under its path and a
/// marker per directory.
fn local_tree(root: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/.etlfs-dir"), Vec::new());
                dirs.push(e.path());
            } else {
                out.insert(rel, fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

fn differences(want: &BTreeMap<String, Vec<u8>>, got: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("{k}: missing from the bucket")),
            Some(g) if g != v => out.push(format!("{k}: {} bytes, not {}", g.len(), v.len())),
            Some(_) => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        out.push(format!("{k}: in the bucket only"));
    }
    out
}

/// The issue's first sequence (`echo v1 >a; ln a b; echo v2 >>a`), then writes through the
/// other name and through a link in another directory, a rename of one name and an unlink of
/// the first one.
fn a_write_through_one_name_reaches_every_name(kind: &str, io: Io) {
    let t = target(kind);
    let (mut m, _cfg, port) = mount_in(&t, io, vec![]);
    fs::write(m.path("a"), b"v1\n").unwrap();
    fs::hard_link(m.path("a"), m.path("b")).unwrap();
    expect_objects(&t, &m, &[("a", b"v1\n"), ("b", b"v1\n")], &[]);
    append(&m.path("a"), b"v2\n");
    expect_objects(&t, &m, &[("a", b"v1\nv2\n"), ("b", b"v1\nv2\n")], &[]);
    append(&m.path("b"), b"v3\n");
    let v3: &[u8] = b"v1\nv2\nv3\n";
    expect_objects(&t, &m, &[("a", v3), ("b", v3)], &[]);

    fs::create_dir(m.path("d")).unwrap();
    fs::hard_link(m.path("a"), m.path("d/c")).unwrap();
    append(&m.path("d/c"), b"v4\n");
    let v4: &[u8] = b"v1\nv2\nv3\nv4\n";
    expect_objects(&t, &m, &[("a", v4), ("b", v4), ("d/c", v4)], &[]);

    fs::rename(m.path("b"), m.path("d/b2")).unwrap();
    append(&m.path("a"), b"v5\n");
    let v5: &[u8] = b"v1\nv2\nv3\nv4\nv5\n";
    expect_objects(&t, &m, &[("a", v5), ("d/b2", v5), ("d/c", v5)], &["b"]);

    fs::remove_file(m.path("a")).unwrap();
    append(&m.path("d/c"), b"v6\n");
    let v6: &[u8] = b"v1\nv2\nv3\nv4\nv5\nv6\n";
    expect_objects(&t, &m, &[("d/b2", v6), ("d/c", v6)], &["a", "b"]);
    settle_and_stop(&t, &mut m, port);
}

/// The issue's second sequence (`echo v1 >c; ln c d; rm d; echo v2 >>c`), and the unlink of
/// the first name instead.
fn unlinking_one_name_keeps_the_others_mirrored(kind: &str, io: Io) {
    let t = target(kind);
    let (mut m, _cfg, port) = mount_in(&t, io, vec![]);
    fs::write(m.path("c"), b"v1\n").unwrap();
    fs::hard_link(m.path("c"), m.path("d")).unwrap();
    expect_objects(&t, &m, &[("c", b"v1\n"), ("d", b"v1\n")], &[]);
    fs::remove_file(m.path("d")).unwrap();
    append(&m.path("c"), b"v2\n");
    expect_objects(&t, &m, &[("c", b"v1\nv2\n")], &["d"]);

    fs::hard_link(m.path("c"), m.path("e")).unwrap();
    expect_objects(&t, &m, &[("e", b"v1\nv2\n")], &[]);
    fs::remove_file(m.path("c")).unwrap();
    append(&m.path("e"), b"v3\n");
    expect_objects(&t, &m, &[("e", b"v1\nv2\nv3\n")], &["c", "d"]);
    settle_and_stop(&t, &mut m, port);
}

/// Links made while etlfs was not running: the kernel only ever uses the name written
/// through, and the other names are uploaded all the same.
fn links_made_before_the_mount_are_mirrored(kind: &str, io: Io) {
    let t = target(kind);
    let files = vec![("a".to_string(), b"v1".to_vec())];
    let (mut m, _cfg, port) = mount_in(&t, io, files);
    expect_objects(&t, &m, &[("a", b"v1")], &[]);
    assert!(m.stop().success());
    fs::hard_link(m.local.join("a"), m.local.join("b")).unwrap();
    fs::create_dir(m.local.join("sub")).unwrap();
    fs::hard_link(m.local.join("a"), m.local.join("sub/c")).unwrap();
    m.respawn();
    expect_objects(&t, &m, &[("b", b"v1"), ("sub/c", b"v1")], &[]);
    append(&m.path("a"), b"v2");
    expect_objects(
        &t,
        &m,
        &[("a", b"v1v2"), ("b", b"v1v2"), ("sub/c", b"v1v2")],
        &[],
    );
    settle_and_stop(&t, &mut m, port);
}

/// Creates, rewrites, appends, links (within and across directories), renames (over other
/// files too) and unlinks, drawn at random over a small namespace: afterwards the bucket
/// holds exactly what the mount shows.
fn a_random_workload_with_links_is_mirrored_exactly(kind: &str, io: Io) {
    let t = target(kind);
    let (mut m, _cfg, port) = mount_in(&t, io, vec![]);
    for d in ["x", "y"] {
        fs::create_dir(m.path(d)).unwrap();
    }
    let names: Vec<String> = ["", "x/", "y/"]
        .iter()
        .flat_map(|d| (0..8).map(move |i| format!("{d}n{i}")))
        .collect();
    let mut rng = 0x6c69_6e6b_u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for step in 0..400u64 {
        let (p, q) = (
            m.path(&names[next(names.len())]),
            m.path(&names[next(names.len())]),
        );
        let body = bucket::data(step, 1 + next(3000));
        match (next(6), p.exists()) {
            (_, false) => fs::write(&p, &body).unwrap(),
            (0, true) => fs::write(&p, &body).unwrap(),
            (1, true) => append(&p, &body),
            (2, true) if !q.exists() => fs::hard_link(&p, &q).unwrap(),
            (3, true) => fs::rename(&p, &q).unwrap(),
            (4, true) => fs::remove_file(&p).unwrap(),
            _ => append(&p, &body[..16.min(body.len())]),
        }
        if step % 40 == 39 {
            // Let some uploads run between the steps, so they meet later changes mid-way.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let linked = local_tree(&m.mnt).len();
    assert!(linked > 10, "the workload left too little: {linked}");
    settle_and_stop(&t, &mut m, port);
}

/// A file written through a shared writable mapping (kept past the close of its descriptor)
/// is uploaded with those bytes once the mapping is gone, and `stat` through the mount shows
/// the new modification time.
fn writes_through_a_shared_mapping_are_uploaded(kind: &str, io: Io) {
    let t = target(kind);
    let (mut m, _cfg, port) = mount_in(&t, io, vec![]);
    let p = m.path("mapped");
    fs::write(&p, vec![b'.'; 2 * 4096]).unwrap();
    expect_objects(&t, &m, &[("mapped", &vec![b'.'; 2 * 4096])], &[]);
    let before = fs::metadata(&p).unwrap().modified().unwrap();
    // Times move on at a clock tick: wait until the clock has left the file's mtime behind.
    assert!(poll(10, || SystemTime::now()
        .duration_since(before)
        .is_ok_and(|d| d > Duration::from_millis(50))));
    let script = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
os.fstat(fd)  # as xfs_io does: the attributes are read again after the mmap
os.close(fd)
m[4096:4096+6] = b'MAPPED'
m.close()
"#;
    let st = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
    // (stat first: a read marks the kernel's cached attributes stale)
    assert!(
        fs::metadata(&p).unwrap().modified().unwrap() > before,
        "stat shows the mtime from before the mapped write"
    );
    let mut want = vec![b'.'; 2 * 4096];
    want[4096..4102].copy_from_slice(b"MAPPED");
    assert_eq!(fs::read(&p).unwrap(), want);
    expect_objects(&t, &m, &[("mapped", &want)], &[]);
    settle_and_stop(&t, &mut m, port);
}
