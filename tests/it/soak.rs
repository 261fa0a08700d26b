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
    let opts = Opts {
        separate_local: true,
        args: extra.iter().map(|s| s.to_string()).collect(),
        log_filter: Some("info,object_store=warn".into()),
        ..Opts::default()
    };
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
