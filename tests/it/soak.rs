//! The soak (scripts/soak.sh, driver examples/soak.rs) in its short form, and the regressions
//! it found, each reduced to a deterministic test.
//!
//! The servers are started by scripts/test.sh (the soak reuses them; run alone, soak.sh starts
//! its own).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, bucket, servers};
use bucket::{Target, poll, rt, wait_for};
use common::{Mounted, Opts};
use object_store::ObjectStoreExt;
use object_store::path::Path as Key;

/// The soak driver built with the same profile as the etlfs binary under test (`cargo test`
/// builds the examples), or built now if it is not there.
fn driver() -> PathBuf {
    let etlfs = Path::new(common::ETLFS);
    let dir = etlfs.parent().expect("the binary's directory");
    let driver = dir.join("examples/soak");
    if !driver.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--example", "soak"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build --example soak");
        assert!(st.success(), "cargo build --example soak: {st}");
    }
    driver
}

/// `scripts/soak.sh --short`: about 140 s of Kubecost's write pattern, renames and deletes
/// through a real mount while etlfs is SIGKILLed, restarted and stopped cleanly, and the S3
/// front is stopped and paused; then drain, local == model, bucket == local, new node restore.
#[test]
fn soak_short() {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/soak.sh"))
        .arg("--short")
        .env("ETLFS_BIN", common::ETLFS)
        .env("SOAK_DRIVER", driver())
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/soak.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/soak.sh --short failed ({}):\n{text}",
        out.status
    );
    println!("{text}");
}

fn s3_mount(t: &Target, extra: &[&str]) -> (Mounted, tempfile::NamedTempFile) {
    let opts = Opts::default()
        .separate_local()
        .args(extra.iter().copied())
        .log_filter("info,object_store=warn");
    bucket::mount_on(t, "100ms", opts)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".etlfs")
        .collect();
    v.sort();
    v
}

fn keys(snap: &std::collections::BTreeMap<String, Vec<u8>>) -> Vec<&str> {
    snap.keys().map(String::as_str).collect()
}

/// Found by the soak: removals and renames journaled while the bucket was unreachable, then a
/// SIGKILL. The restarted mount listed the removed and renamed-away files again (bucket-only,
/// EIO on open once the journal replay deleted their objects), and created the removed
/// directory again locally, where it stayed, marker and all. Also a renamed directory created
/// again under its old name (as Kubecost does): its old files must not show up in it.
#[test]
fn removals_journaled_in_an_outage_do_not_come_back_after_sigkill() {
    let t = Target::Cloud(servers::s3_isolated());
    let store = t.store();
    let (mut m, _cfg) = s3_mount(&t, &[]);
    fs::create_dir(m.path("d")).unwrap();
    fs::create_dir(m.path("k")).unwrap();
    for f in ["d/f", "g", "a", "k/x"] {
        fs::write(m.path(f), f.as_bytes()).unwrap();
    }
    let rt = rt();
    let before = ["a", "d/.etlfs-dir", "d/f", "g", "k/.etlfs-dir", "k/x"];
    let snap = wait_for(&rt, store.as_ref(), None, 30, |s| keys(s) == before);
    assert_eq!(keys(&snap), before, "{}", m.log());

    t.server().stop();
    fs::remove_file(m.path("g")).unwrap();
    fs::remove_file(m.path("d/f")).unwrap();
    fs::remove_dir(m.path("d")).unwrap();
    fs::rename(m.path("a"), m.path("b")).unwrap();
    fs::rename(m.path("k"), m.path("k2")).unwrap();
    fs::create_dir(m.path("k")).unwrap();
    m.signal(rustix::process::Signal::KILL);
    assert!(m.wait_exit(Duration::from_secs(10)).is_some());
    t.server().start();
    m.respawn();

    let want = ["b", "k", "k2"];
    assert_eq!(names(&m.mnt), want, "through the mount\n{}", m.log());
    assert_eq!(names(&m.local), want, "the local directory\n{}", m.log());
    assert!(names(&m.path("k")).is_empty(), "{}", m.log());
    assert_eq!(names(&m.path("k2")), ["x"], "{}", m.log());
    assert_eq!(fs::read(m.path("b")).unwrap(), b"a");
    let after = ["b", "k/.etlfs-dir", "k2/.etlfs-dir", "k2/x"];
    let snap = wait_for(&rt, store.as_ref(), None, 30, |s| keys(s) == after);
    assert_eq!(keys(&snap), after, "{}", m.log());
    assert!(m.stop().success());
}

/// Found by the soak (in the fix of the test above): an intent is journaled before its local
/// operation, so a crash can leave one that never ran. Applying it at start showed the
/// directory twice: under its name (local) and under the name it was never renamed to
/// (bucket-only). The journal is written by hand here, as such a crash leaves it.
#[test]
fn a_journaled_operation_that_never_ran_changes_nothing() {
    let t = bucket::target("s3");
    let store = t.store();
    let (mut m, _cfg) = s3_mount(&t, &[]);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"f").unwrap();
    fs::write(m.path("g"), b"g").unwrap();
    fs::write(m.path("a"), b"a").unwrap();
    let rt = rt();
    let want = ["a", "d/.etlfs-dir", "d/f", "g"];
    let snap = wait_for(&rt, store.as_ref(), None, 30, |s| keys(s) == want);
    assert_eq!(keys(&snap), want, "{}", m.log());
    assert!(m.stop().success());
    let journal = [
        r#"{"seq":1,"intent":{"op":"rename","from":"d","to":"e","dir":true}}"#,
        r#"{"seq":2,"intent":{"op":"remove","path":"g","dir":false}}"#,
        r#"{"seq":3,"intent":{"op":"rename","from":"a","to":"b","dir":false}}"#,
    ];
    fs::write(
        m.local.join(".etlfs/journal.jsonl"),
        journal.join("\n") + "\n",
    )
    .unwrap();
    m.respawn();
    assert_eq!(names(&m.mnt), ["a", "d", "g"], "{}", m.log());
    assert_eq!(names(&m.path("d")), ["f"], "{}", m.log());
    assert_eq!(names(&m.local), ["a", "d", "g"], "{}", m.log());
    // The drain returns once the mirror has carried out (or dropped) every replayed intent:
    // whatever they were going to do to the bucket is done then.
    assert!(m.stop().success());
    assert!(
        m.log().contains("all changes are in the bucket"),
        "{}",
        m.log()
    );
    assert_eq!(
        keys(&bucket::snapshot(&rt, store.as_ref(), None)),
        want,
        "{}",
        m.log()
    );
}

/// Found by the soak: a file open for writing when SIGTERM came was written and closed while
/// the mount was detached lazily; the kernel ended the connection with the RELEASE still
/// queued, and the drain said "all changes are in the bucket" with the old version there.
#[test]
fn a_file_closed_during_the_lazy_detach_is_uploaded_by_the_drain() {
    for mode in [&["--no-passthrough"][..], &[]] {
        let t = bucket::target("s3");
        let store = t.store();
        let (mut m, _cfg) = s3_mount(&t, mode);
        fs::write(m.path("f"), b"old").unwrap();
        let rt = rt();
        wait_for(&rt, store.as_ref(), None, 30, |s| {
            s.get("f").map(Vec::as_slice) == Some(b"old")
        });
        let mut f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
        f.set_len(0).unwrap();
        m.signal(rustix::process::Signal::TERM);
        // Written and closed once the mount is detached (lazily: `f` keeps etlfs serving).
        assert!(
            poll(60, || !common::is_mounted(&m.mnt)),
            "not detached: {}",
            m.log()
        );
        f.write_all(b"written after SIGTERM").unwrap();
        drop(f);
        let st = m.wait_exit(Duration::from_secs(60)).expect("etlfs exits");
        assert!(st.success(), "{st}\n{}", m.log());
        let snap = bucket::snapshot(&rt, store.as_ref(), None);
        assert_eq!(
            snap.get("f")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            Some("written after SIGTERM".to_owned()),
            "mode {mode:?}\n{}",
            m.log()
        );
    }
}

/// Found by the soak: a directory the bucket listing had at start, removed with rmdir, stayed
/// listed in its parent (lookup ENOENT) and kept the parent from being removed (ENOTEMPTY).
#[test]
fn rmdir_of_a_directory_the_bucket_listed_leaves_no_trace() {
    let t = bucket::target("s3");
    let store = t.store();
    let (mut m, _cfg) = s3_mount(&t, &[]);
    fs::create_dir_all(m.path("a/b")).unwrap();
    let rt = rt();
    wait_for(&rt, store.as_ref(), None, 30, |s| s.len() == 2);
    assert!(m.stop().success());
    m.respawn();
    fs::remove_dir(m.path("a/b")).unwrap();
    assert!(names(&m.path("a")).is_empty(), "{}", m.log());
    fs::remove_dir(m.path("a")).unwrap();
    assert!(names(&m.mnt).is_empty(), "{}", m.log());
    let snap = wait_for(&rt, store.as_ref(), None, 30, |s| s.is_empty());
    assert!(snap.is_empty(), "{:?}\n{}", keys(&snap), m.log());
    assert!(m.stop().success());
}

/// Found by the soak (seed 172694087: "directory bingen/assets/1h: no marker in the bucket"):
/// a directory renamed away in an outage, etlfs SIGKILLed, and the directory made again under
/// its old name once etlfs was back, in the next outage. At the start the journal's rename
/// ran beside the reconcile: the reconcile had listed the old directory's marker, the rename
/// deleted it, and the reconcile's walk then met the new directory and took it as in the
/// bucket (recorded, so its marker was never written).
///
/// The broken order is made likely by the bucket's shape, not by sleeps: the rename's intent lists
/// the 24 levels below `d` (one request each) before it deletes `d`'s marker, while the reconcile
/// has listed `d`'s level with its second request; the reconcile's listing of `y`'s 300 levels goes
/// on after the marker is gone, and the S3 front is paused (the reconcile frozen, wherever it is)
/// before `d` is made again. `--upload-delay 20s`, and the wait for the reconcile's end before the
/// drain (which uploads at once), keep the new `d` from being uploaded before the reconcile has
/// walked. With the reconcile and the rename at once, `d` has no marker after the drain (the 300
/// levels outlast the test's reaction many times over); kept apart, the reconcile lists before the
/// rename or after it, the marker is there either way, and nothing depends on timing.
#[test]
fn a_directory_made_again_after_a_rename_replayed_at_start_gets_its_marker() {
    let t = Target::Cloud(servers::s3_isolated());
    let store = t.store();
    let opts = Opts::default()
        .separate_local()
        .log_filter("info,object_store=warn");
    let (mut m, _cfg) = bucket::mount_on(&t, "20s", opts);
    let deep = |top: &str, seg: &str, n: usize| {
        let mut p = PathBuf::from(top);
        for _ in 0..n {
            p.push(seg);
        }
        p
    };
    let (below_d, below_y) = (deep("d", "c", 24), deep("y", "a", 300));
    fs::create_dir_all(m.path(&below_d.to_string_lossy())).unwrap();
    fs::create_dir_all(m.path(&below_y.to_string_lossy())).unwrap();
    fs::write(m.path("d/f"), b"f").unwrap();
    // The drain uploads everything at once (it does not wait for the upload delay).
    assert!(m.stop().success(), "{}", m.log());
    m.respawn();

    let rt = rt();
    let marker = Key::from("d/.etlfs-dir");
    let has_marker = |rt: &tokio::runtime::Runtime| match rt.block_on(store.head(&marker)) {
        Ok(_) => Some(true),
        Err(object_store::Error::NotFound { .. }) => Some(false),
        Err(_) => None,
    };
    assert_eq!(has_marker(&rt), Some(true), "{}", m.log());

    t.server().stop();
    fs::rename(m.path("d"), m.path("e")).unwrap();
    m.signal(rustix::process::Signal::KILL);
    assert!(m.wait_exit(Duration::from_secs(10)).is_some());
    t.server().start();
    let start = m.log().len();
    let since_start = |m: &Mounted| m.log().get(start..).unwrap_or_default().to_owned();
    m.respawn();
    // The replayed rename deletes the old marker ...
    assert!(
        poll(120, || has_marker(&rt) == Some(false)),
        "the rename was not carried out\n{}",
        m.log()
    );
    // ... and `d` is made again in an outage, the reconcile (if it still runs) frozen.
    t.server().pause();
    fs::create_dir(m.path("d")).unwrap();
    t.server().resume();
    // The drain would upload `d` at once: first the reconcile has its say.
    assert!(
        poll(120, || since_start(&m)
            .contains("reconciled the directory with the bucket")),
        "{}",
        m.log()
    );
    assert!(m.stop().success(), "{}", m.log());
    assert!(
        since_start(&m).contains("all changes are in the bucket"),
        "{}",
        m.log()
    );
    assert_eq!(has_marker(&rt), Some(true), "no marker for d\n{}", m.log());
    for (key, want) in [("e/.etlfs-dir", true), ("e/f", true), ("d/f", false)] {
        let there = rt.block_on(store.head(&Key::from(key))).is_ok();
        assert_eq!(there, want, "{key}\n{}", m.log());
    }
}

/// Bytes that the peer has not read yet, summed over the established TCP connections to local
/// `port` (the paused front's side of them), and bytes not yet sent on any socket whose peer
/// is `port` (etlfs' side): from /proc/net/tcp.
fn front_queues(port: u16) -> (u64, u64) {
    let text = fs::read_to_string("/proc/net/tcp").unwrap();
    let (mut unread, mut unsent) = (0, 0);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port_of =
            |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
        let (tx, rx) = f[4].split_once(':').unwrap();
        let (tx, rx) = (
            u64::from_str_radix(tx, 16).unwrap(),
            u64::from_str_radix(rx, 16).unwrap(),
        );
        if port_of(f[1]) == port {
            unread += rx;
        } else if port_of(f[2]) == port {
            unsent += tx;
        }
    }
    (unread, unsent)
}

/// An upload that etlfs had sent when it was SIGKILLed reaches the bucket after the next etlfs
/// carried out the journaled removal of its file (the likely cause of a soak failure: a file
/// moved by a directory rename, removed since, back after a SIGKILL and a restart). The
/// removal left a tombstone, so the start after that removes the object again instead of
/// listing the removed file as a file only in the bucket.
///
/// Deterministic: the first front is paused while it holds the whole PUT (its socket's unread
/// bytes, from /proc/net/tcp), the next etlfs reaches the bucket through a second front, and
/// the first is resumed only once the removal is carried out (the journal is empty). Without
/// the tombstones, `d` lists `f` again after the last restart.
#[test]
fn an_upload_of_a_killed_etlfs_landing_after_the_removal_does_not_bring_the_file_back() {
    let t = Target::Cloud(servers::s3_isolated());
    let store = t.store();
    let (mut m, cfg) = s3_mount(&t, &["--history-retention", "0"]);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/keep"), b"keep").unwrap();
    let rt = rt();
    let before = ["d/.etlfs-dir", "d/keep"];
    let snap = wait_for(&rt, store.as_ref(), None, 120, |s| keys(s) == before);
    assert_eq!(keys(&snap), before, "{}", m.log());

    let port: u16 = t
        .server()
        .host_port()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    t.server().pause();
    let body = vec![b'z'; 4096];
    fs::write(m.path("d/f"), &body).unwrap();
    assert!(
        poll(60, || {
            let (unread, unsent) = front_queues(port);
            unread >= body.len() as u64 + 200 && unsent == 0
        }),
        "the upload never reached the front: {:?}\n{}",
        front_queues(port),
        m.log()
    );
    fs::remove_file(m.path("d/f")).unwrap();
    m.signal(rustix::process::Signal::KILL);
    assert!(m.wait_exit(Duration::from_secs(10)).is_some());

    // The next etlfs talks to the bucket through another front; the first still holds the PUT.
    let other = servers::s3_isolated();
    let yaml = t.yaml().replace(t.server().host_port(), other.host_port());
    fs::write(cfg.path(), yaml).unwrap();
    m.respawn();
    let journal = m.local.join(".etlfs/journal.jsonl");
    assert!(
        poll(120, || fs::metadata(&journal).is_ok_and(|md| md.len() == 0)),
        "the removal was not carried out\n{}",
        m.log()
    );
    t.server().resume();
    // The first etlfs' PUT, held until now, lands after the removal.
    assert!(
        poll(60, || rt.block_on(store.head(&Key::from("d/f"))).is_ok()),
        "the held upload never reached the bucket\n{}",
        m.log()
    );
    assert!(m.stop().success());
    m.respawn();
    assert_eq!(names(&m.path("d")), ["keep"], "{}", m.log());
    let after = ["d/.etlfs-dir", "d/keep"];
    let snap = wait_for(&rt, store.as_ref(), None, 120, |s| keys(s) == after);
    assert_eq!(keys(&snap), after, "{}", m.log());
    assert!(m.stop().success());
}

/// The tombstone of a removal never deletes what etlfs put at that name since: a file only in
/// the bucket renamed onto a name removed just after the start keeps its object (moved there)
/// across the next start. Without the tombstone dropped by the move, that start removes `x`.
#[test]
fn a_file_renamed_onto_a_removed_name_survives_the_next_start() {
    let t = bucket::target("s3");
    let store = t.store();
    let (mut m, _cfg) = s3_mount(&t, &["--no-prefetch"]);
    fs::write(m.path("x"), b"old x").unwrap();
    fs::write(m.path("y"), b"y").unwrap();
    let rt = rt();
    let snap = wait_for(&rt, store.as_ref(), None, 120, |s| keys(s) == ["x", "y"]);
    assert_eq!(keys(&snap), ["x", "y"], "{}", m.log());
    assert!(m.stop().success());
    // Both only in the bucket from now on.
    fs::remove_file(m.local.join("x")).unwrap();
    fs::remove_file(m.local.join("y")).unwrap();
    m.respawn();
    fs::remove_file(m.path("x")).unwrap();
    fs::rename(m.path("y"), m.path("x")).unwrap();
    let moved =
        |s: &std::collections::BTreeMap<String, Vec<u8>>| keys(s) == ["x"] && s["x"] == b"y";
    let snap = wait_for(&rt, store.as_ref(), None, 120, moved);
    assert!(moved(&snap), "{snap:?}\n{}", m.log());
    assert!(m.stop().success());

    m.respawn();
    assert_eq!(names(&m.mnt), ["x"], "{}", m.log());
    assert_eq!(fs::read(m.path("x")).unwrap(), b"y", "{}", m.log());
    // The drain returns once every replayed removal is carried out.
    assert!(m.stop().success());
    let snap = bucket::snapshot(&rt, store.as_ref(), None);
    assert!(moved(&snap), "{snap:?}\n{}", m.log());
}
