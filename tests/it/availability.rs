//! A bucket that is down at start: a node whose local directory was complete at its last clean
//! stop mounts at once and serves its files, taking the lease and the listing once the bucket
//! answers; a node that may be missing files (here: a new node) waits for the listing. Real
//! mounts against the test's own front of the S3 and Azure servers, paused for the outage (it
//! accepts connections and never answers: the worst kind). And a rename journaled during an
//! outage waits for the bucket without keeping a core busy.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::{self, bucket, servers};
use bucket::{Target, kubecost_read, kubecost_write, poll, rt, snapshot};
use common::{Mounted, Opts, free_port, is_mounted, mirror_idle, status};

fn isolated(kind: &str) -> Target {
    Target::Cloud(match kind {
        "s3" => servers::s3_isolated(),
        "azure" => servers::azure_isolated(),
        other => panic!("no isolated {other} server"),
    })
}

/// A mount of `t` with its own status server at `port`. The bucket's responses time out after
/// 2 s of silence (a paused server is then an error quickly, not after minutes).
fn opts(t: &Target, port: u16) -> (Opts, tempfile::NamedTempFile) {
    let yaml = t.server().yaml().replacen(
        "config:\n",
        "config:\n  http_config:\n    response_header_timeout: 2s\n",
        1,
    );
    let mut cfg = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut cfg, yaml.as_bytes()).unwrap();
    let opts = Opts::on(cfg.path())
        .upload_delay("100ms")
        .listen(port)
        .args(["--drain-timeout", "5s"]);
    (opts, cfg)
}

/// Stopped cleanly with everything local, the node restarts during an outage: mounted and
/// readable at once, writes fenced until the bucket is back, then the lease, the listing and
/// the uploads follow by themselves.
fn a_complete_directory_mounts_during_an_outage(kind: &str) {
    let t = isolated(kind);
    let port = free_port();
    let (o, _cfg) = opts(&t, port);
    let mut m = Mounted::with(o);
    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("bingen/allocations/1d/f{i}"),
                vec![b'a' + i as u8; 3000],
            )
        })
        .collect();
    fs::create_dir_all(m.path("bingen/allocations/1d")).unwrap();
    for (rel, data) in &files {
        kubecost_write(&m.path(rel), data).unwrap();
    }
    assert!(poll(60, || mirror_idle(port)), "{}", m.log());
    assert!(m.stop().success(), "{}", m.log());

    t.server().pause();
    let started = Instant::now();
    m.respawn();
    let mounted_in = started.elapsed();
    let readable = files
        .iter()
        .all(|(rel, data)| kubecost_read(&m.path(rel)).is_ok_and(|d| d == *data));
    let s = status(port);
    let ready = common::ready(port);
    // Written while the bucket is down: local at once, uploaded once it is back.
    kubecost_write(&m.path("offline"), b"written during the outage").unwrap();
    t.server().resume();
    assert!(readable, "{}", m.log());
    // Generous for a loaded machine; the outage would have kept it from mounting at all.
    assert!(
        mounted_in < Duration::from_secs(10),
        "mounted after {mounted_in:?}\n{}",
        m.log()
    );
    // Serving, but not writing the bucket: degraded, with the reason; still ready.
    assert_eq!(s["state"], "degraded", "{s}");
    assert!(ready, "{s}");
    assert_eq!(
        s["index"]["listing"], "loading in the background (started offline)",
        "{s}"
    );
    assert!(
        s["bucket"]["writes_stopped"]
            .as_str()
            .is_some_and(|r| r.contains("started offline")),
        "{s}"
    );
    assert!(
        poll(90, || {
            let s = status(port);
            s["index"]["listing"] == "loaded" && s["bucket"]["writes_stopped"].is_null()
        }),
        "{}\n{}",
        status(port),
        m.log()
    );
    assert!(poll(60, || mirror_idle(port)), "{}", m.log());
    let snap = snapshot(&rt(), t.store().as_ref(), None);
    assert_eq!(
        snap.get("offline").map(Vec::as_slice),
        Some(b"written during the outage".as_slice()),
        "{}",
        m.log()
    );
    for (rel, data) in &files {
        assert_eq!(snap.get(rel.as_str()), Some(data));
    }
    assert!(m.stop().success(), "{}", m.log());
}

/// A new node (an empty directory) during an outage waits for the listing rather than show an
/// empty directory, and mounts with every file once the bucket answers.
fn a_new_node_waits_for_the_listing(kind: &str) {
    let t = isolated(kind);
    let port = free_port();
    let (o, _cfg) = opts(&t, port);
    let mut m = Mounted::with(o.clone());
    kubecost_write(&m.path("kept"), b"in the bucket").unwrap();
    assert!(poll(60, || mirror_idle(port)), "{}", m.log());
    assert!(m.stop().success(), "{}", m.log());

    // A new node: another (empty) directory, no state.
    t.server().pause();
    let mut fresh = Mounted::start_unmounted(o);
    // Nothing can show it mounting early but the absence of a mount for a while.
    std::thread::sleep(Duration::from_secs(3));
    let early = is_mounted(&fresh.mnt);
    t.server().resume();
    assert!(
        !early,
        "mounted an empty directory during the outage\n{}",
        fresh.log()
    );
    fresh.wait_mounted_for(Duration::from_secs(90));
    assert_eq!(
        kubecost_read(&fresh.path("kept")).unwrap(),
        b"in the bucket"
    );
    assert!(fresh.stop().success(), "{}", fresh.log());
}

/// CPU time etlfs' threads have used: the first field of each `/proc/PID/task/TID/schedstat`
/// (nanoseconds on a CPU).
fn cpu_used(pid: u32) -> Duration {
    let mut ns = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        // (a thread that ended meanwhile has no file any more)
        if let Ok(text) = fs::read_to_string(task.unwrap().path().join("schedstat")) {
            ns += text
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    Duration::from_nanos(ns)
}

/// A rename waiting out an outage keeps every upload waiting (intents go first). A file that
/// became due meanwhile must not keep the mirror's loop busy: its due time, long past, woke the
/// loop again and again, a whole core for as long as the outage lasted.
fn a_rename_waiting_out_an_outage_leaves_the_cpu_idle(kind: &str) {
    let t = isolated(kind);
    let port = free_port();
    let (o, _cfg) = opts(&t, port);
    let mut m = Mounted::with(o);
    kubecost_write(&m.path("a"), b"a").unwrap();
    assert!(poll(60, || mirror_idle(port)), "{}", m.log());
    t.server().stop();
    fs::rename(m.path("a"), m.path("b")).unwrap();
    kubecost_write(&m.path("x"), b"x").unwrap();
    // Failed twice, the rename waits in a backoff, and `x` (100 ms of upload delay) is due.
    assert!(
        poll(60, || status(port)["deletes"]["failed"].as_u64() >= Some(2)),
        "{}\n{}",
        status(port),
        m.log()
    );
    let (since, before) = (Instant::now(), cpu_used(m.pid()));
    // A window to measure in, not a wait for anything.
    std::thread::sleep(Duration::from_secs(5));
    let (used, window) = (cpu_used(m.pid()) - before, since.elapsed());
    assert!(
        used < window / 10,
        "etlfs used {used:?} of CPU in {window:?} of an outage\n{}",
        m.log()
    );
    t.server().start();
    assert!(poll(90, || mirror_idle(port)), "{}", m.log());
    let snap = snapshot(&rt(), t.store().as_ref(), None);
    let keys: Vec<&str> = snap.keys().map(String::as_str).collect();
    assert_eq!(keys, ["b", "x"], "{}", m.log());
    assert!(m.stop().success(), "{}", m.log());
}

mod s3 {
    #[test]
    fn a_complete_directory_mounts_during_an_outage() {
        super::a_complete_directory_mounts_during_an_outage("s3")
    }
    #[test]
    fn a_new_node_waits_for_the_listing() {
        super::a_new_node_waits_for_the_listing("s3")
    }
    #[test]
    fn a_rename_waiting_out_an_outage_leaves_the_cpu_idle() {
        super::a_rename_waiting_out_an_outage_leaves_the_cpu_idle("s3")
    }
}

mod azure {
    #[test]
    fn a_complete_directory_mounts_during_an_outage() {
        super::a_complete_directory_mounts_during_an_outage("azure")
    }
    #[test]
    fn a_new_node_waits_for_the_listing() {
        super::a_new_node_waits_for_the_listing("azure")
    }
}
