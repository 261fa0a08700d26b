//! History against real object-storage servers on 127.0.0.1 (moto S3, Azurite, fake-gcs) and
//! the FILESYSTEM backend, through the binary: a directory backed up, then damaged through a
//! mount (rewritten, rewritten and truncated to nothing, deleted, renamed) comes back with
//! `restore --as-of` a moment before the damage byte for byte, with its modes and mtimes, and
//! without the paths created later; `verify --as-of` agrees; the version an empty file replaced
//! is kept, counted, logged and listed first by `etlfs history PATH`; garbage collection removes
//! exactly the versions past retention; the tripwire goes off on mass damage and keeps what
//! the interval would have thinned; a SIGKILL during garbage collection or during a storm of
//! history copies loses nothing inside the retention.
//!
//! The servers are started by scripts/test.sh; each test gets a bucket of its own.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{self, bucket};
use bucket::{config_file, data, kubecost_write, poll, rt, snapshot, target};
use common::{Mounted, Opts, Run, workdir};
use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

crate::on_every_backend!(
    restore_as_of_undoes_rewrites_truncation_deletes_and_renames,
    gc_removes_only_versions_past_retention,
    a_mount_collects_garbage_in_the_background,
    a_point_in_time_mounts_read_only_and_writes_nothing,
    the_tripwire_keeps_the_versions_before_mass_damage,
    a_kill_during_gc_loses_nothing_inside_the_retention,
    a_kill_during_a_rewrite_storm_loses_no_kept_version
);

/// What a one-shot command did.
/// Runs `etlfs CMD --config CFG ARGS...`.
fn etlfs(cmd: &str, cfg: &Path, args: &[&str]) -> Run {
    let mut all: Vec<&OsStr> = vec![cmd.as_ref(), "--config".as_ref(), cfg.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    common::run(all)
}

/// A file: bytes, mode, mtime.
#[derive(Clone, PartialEq, Eq)]
struct Spec {
    data: Vec<u8>,
    mode: u32,
    mtime: SystemTime,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sha = common::sha256_hex(&self.data);
        write!(
            f,
            "{} bytes sha {} mode {:o} mtime {:?}",
            self.data.len(),
            &sha[..12],
            self.mode,
            self.mtime
        )
    }
}

fn spec(i: u32, len: usize, mode: u32) -> Spec {
    Spec {
        data: data(u64::from(i) + 7, len),
        mode,
        // Old and with nanoseconds: a restore that keeps only the upload time shows.
        mtime: UNIX_EPOCH + Duration::new(1_704_067_200 + u64::from(i) * 86_400, 987_654_321 + i),
    }
}

const A: &str = "bingen/allocations/1d/rewritten";
const B: &str = "bingen/allocations/1d/truncated";
const C: &str = "bingen/assets/1d/deleted";
const D: &str = "bingen/assets/1d/renamed";
const E: &str = "bingen/assets/1d/renamed-to";
const TOP: &str = "top";

fn tree() -> BTreeMap<&'static str, Spec> {
    BTreeMap::from([
        (A, spec(0, 200_000, 0o600)),
        (B, spec(1, 5_000, 0o644)),
        (C, spec(2, 3_000, 0o640)),
        (D, spec(3, 0, 0o600)),
        (TOP, spec(4, 1, 0o644)),
    ])
}

fn write_tree(dir: &Path, files: &BTreeMap<&str, Spec>) {
    for (rel, s) in files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &s.data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(s.mode)).unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_times(FileTimes::new().set_modified(s.mtime).set_accessed(s.mtime))
            .unwrap();
    }
}

/// Every regular file below `dir` (its `.etlfs/` state directory left out).
fn read_tree(dir: &Path) -> BTreeMap<String, Spec> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Spec>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_owned();
            if rel == Path::new(".etlfs") {
                continue;
            }
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                walk(root, &e.path(), out);
            } else {
                out.insert(
                    rel.display().to_string(),
                    Spec {
                        data: fs::read(e.path()).unwrap(),
                        mode: md.mode() & 0o7777,
                        mtime: md.modified().unwrap(),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn owned(t: &BTreeMap<&str, Spec>) -> BTreeMap<String, Spec> {
    t.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Keys of the kept versions (bucket root, no prefix).
fn history_keys(store: &dyn ObjectStore) -> Vec<String> {
    rt().block_on(async {
        let metas: Vec<_> = store
            .list(Some(&Key::from(".etlfs/history")))
            .try_collect()
            .await
            .unwrap();
        let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        keys
    })
}

fn restore_as_of_undoes_rewrites_truncation_deletes_and_renames(kind: &str) {
    let t = target(kind);
    let cfg_file = config_file(&t);
    let cfg = cfg_file.path();
    let (_tmp, dir) = workdir("etl");
    let before = tree();
    write_tree(&dir, &before);
    etlfs("backup", cfg, &[dir.to_str().unwrap()]).assert_ok("backup");

    // Object times are whole seconds on most backends: a second on each side of the point in
    // time keeps it strictly between the backup and the damage.
    std::thread::sleep(Duration::from_millis(1100));
    let t0 = SystemTime::now();
    let as_of = humantime::format_rfc3339_millis(t0).to_string();
    std::thread::sleep(Duration::from_millis(1100));

    // The damage, through a mount of the same directory.
    let port = common::free_port();
    let opts = Opts::on(cfg).upload_delay("100ms").listen(port).local(&dir);
    let mut m = Mounted::with(opts);
    let store = t.store();
    let new_a = data(100, 1234);
    let new_b = data(101, 77);
    kubecost_write(&m.path(A), &new_a).unwrap();
    kubecost_write(&m.path(B), &new_b).unwrap();
    let arrived = |key: &str, want: &[u8]| {
        poll(30, || {
            snapshot(&rt(), store.as_ref(), None)
                .get(key)
                .map(Vec::as_slice)
                == Some(want)
        })
    };
    assert!(
        arrived(B, &new_b),
        "rewrite of {B} not uploaded:\n{}",
        m.log()
    );
    // Kubecost killed between ftruncate(0) and its write: an empty file, just after a rewrite
    // (within the interval, which would otherwise thin it away).
    File::options()
        .write(true)
        .open(m.path(B))
        .unwrap()
        .set_len(0)
        .unwrap();
    fs::remove_file(m.path(C)).unwrap();
    fs::rename(m.path(D), m.path(E)).unwrap();
    let damaged = |s: &BTreeMap<String, Vec<u8>>| {
        s.get(A) == Some(&new_a)
            && s.get(B).is_some_and(Vec::is_empty)
            && !s.contains_key(C)
            && !s.contains_key(D)
            && s.contains_key(E)
    };
    assert!(
        poll(30, || damaged(&snapshot(&rt(), store.as_ref(), None))),
        "the damage did not reach the bucket:\n{}",
        m.log()
    );

    // The empty replacement: counted, logged with its path.
    let metrics = common::metrics(port);
    assert!(
        metrics.contains("etlfs_history_empty_replacements_total 1"),
        "{metrics}"
    );
    let kept: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("etlfs_history_versions_kept_total "))
        .expect("the kept-versions counter")
        .parse()
        .unwrap();
    // A (replaced), B (replaced, then replaced by empty), C (deleted), D (renamed away).
    assert!(kept >= 5, "{metrics}");
    m.stop();
    let log = m.log();
    assert!(
        log.lines()
            .any(|l| l.contains("replaced by an empty one") && l.contains(B)),
        "{log}"
    );

    // `etlfs history B`: the version the empty file replaced comes first.
    let h = etlfs("history", cfg, &[B]);
    h.assert_ok("history B");
    let first = h.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("replaced by an empty file") && first.contains(" 77 bytes"),
        "{}",
        h.stdout
    );
    let h = etlfs("history", cfg, &[]);
    h.assert_ok("history");
    assert!(h.stdout.contains("deleted"), "{}", h.stdout);

    // The point in time before the damage, into an empty directory: exactly the tree of then.
    let (_tmp2, out) = workdir("restored");
    let r = etlfs("restore", cfg, &["--as-of", &as_of, out.to_str().unwrap()]);
    r.assert_ok("restore --as-of");
    assert_eq!(read_tree(&out), owned(&before), "{}", r.stderr);
    etlfs("verify", cfg, &["--as-of", &as_of, out.to_str().unwrap()])
        .assert_ok("verify --as-of of the restored tree");
    // The damaged directory is not that point in time; it is the bucket's present.
    let v = etlfs("verify", cfg, &["--as-of", &as_of, dir.to_str().unwrap()]);
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    for p in [A, B, C, E] {
        assert!(v.stdout.contains(p), "{p} not named:\n{}", v.stdout);
    }
    etlfs("verify", cfg, &[dir.to_str().unwrap()]).assert_ok("verify of the present");

    // Restoring over the damaged directory itself rolls it back too (E stays: it is newer).
    let r = etlfs("restore", cfg, &["--as-of", &as_of, dir.to_str().unwrap()]);
    r.assert_ok("restore --as-of over the damage");
    let mut rolled = read_tree(&dir);
    assert!(rolled.remove(E).is_some(), "a later path is left alone");
    assert_eq!(rolled, owned(&before));
}

fn gc_removes_only_versions_past_retention(kind: &str) {
    let t = target(kind);
    let cfg_file = config_file(&t);
    let cfg = cfg_file.path();
    let store = t.store();
    let (_tmp, dir) = workdir("etl");
    let f = dir.join("f");
    let backup = |retention: &str| {
        etlfs(
            "backup",
            cfg,
            &[
                "--history-interval",
                "0s",
                "--history-retention",
                retention,
                dir.to_str().unwrap(),
            ],
        )
    };
    fs::write(&f, b"v1").unwrap();
    backup("1h").assert_ok("backup v1");
    fs::write(&f, b"v2!").unwrap();
    backup("1h").assert_ok("backup v2");
    let first = history_keys(store.as_ref());
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].starts_with(".etlfs/history/f/") && first[0].ends_with(".r"));
    // The first kept version's `until` is the second backup: make it older than 3 s.
    std::thread::sleep(Duration::from_millis(3500));
    fs::write(&f, b"v3!!").unwrap();
    let r = backup("3s");
    r.assert_ok("backup v3");
    let left = history_keys(store.as_ref());
    assert_eq!(left.len(), 1, "{left:?}\n{}", r.stderr);
    assert_ne!(left, first, "the old version went, the new one stayed");
    let body = rt().block_on(async {
        store
            .get(&Key::from(left[0].as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    assert_eq!(&body[..], b"v2!");
    if kind == "filesystem" {
        // Its sidecar went with it, and the new one's stayed.
        let sidecars = rt().block_on(async {
            let metas: Vec<_> = store
                .list(Some(&Key::from(".etlfs/meta/.etlfs/history")))
                .try_collect()
                .await
                .unwrap();
            metas.len()
        });
        assert_eq!(sidecars, 1);
    }
    // History off: nothing more is kept.
    fs::write(&f, b"v4").unwrap();
    backup("0").assert_ok("backup without history");
    assert_eq!(history_keys(store.as_ref()), left);
}

/// The mount's own garbage collection (at start, then every 10 minutes) deletes what is past
/// its retention, and counts it on /metrics.
fn a_mount_collects_garbage_in_the_background(kind: &str) {
    let t = target(kind);
    let cfg_file = config_file(&t);
    let cfg = cfg_file.path();
    let store = t.store();
    let (_tmp, dir) = workdir("etl");
    let f = dir.join("f");
    for body in ["1", "22", "333"] {
        fs::write(&f, body).unwrap();
        etlfs(
            "backup",
            cfg,
            &["--history-interval", "0s", dir.to_str().unwrap()],
        )
        .assert_ok("backup");
    }
    let old = history_keys(store.as_ref());
    assert_eq!(old.len(), 2);
    // Both versions were replaced more than a second ago once the mount starts.
    std::thread::sleep(Duration::from_millis(1100));
    let port = common::free_port();
    let m = Mounted::with(
        Opts::on(cfg)
            .args(["--history-retention", "1s"])
            .listen(port)
            .local(&dir),
    );
    // (A mount that uploads the file again at start keeps a new version: that one stays.)
    let gone = || {
        let now = history_keys(store.as_ref());
        old.iter().all(|k| !now.contains(k))
    };
    assert!(
        poll(30, gone),
        "{:?}\n{}",
        history_keys(store.as_ref()),
        m.log()
    );
    // (Counted once the collection's deletes returned: a moment after the keys are gone.)
    let metrics = || common::metrics(port);
    assert!(
        poll(30, || metrics()
            .contains("etlfs_history_gc_deletions_total 2")),
        "{}",
        metrics()
    );
    // The live file is untouched.
    assert_eq!(
        snapshot(&rt(), store.as_ref(), None)
            .get("f")
            .map(Vec::as_slice),
        Some(&b"333"[..])
    );
}

/// Every key in the bucket (etlfs' own included) with its size.
fn all_keys(store: &dyn ObjectStore) -> BTreeMap<String, u64> {
    rt().block_on(async {
        let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
        metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect()
    })
}

/// `mount --as-of T --read-only` over an empty directory serves the point in time lazily (each
/// file fetched on first open, from its kept version where it changed since), refuses writes,
/// and writes nothing to the bucket.
fn a_point_in_time_mounts_read_only_and_writes_nothing(kind: &str) {
    let t = target(kind);
    let cfg_file = config_file(&t);
    let cfg = cfg_file.path();
    let store = t.store();
    let (_tmp, dir) = workdir("etl");
    let before = tree();
    write_tree(&dir, &before);
    etlfs("backup", cfg, &[dir.to_str().unwrap()]).assert_ok("backup");
    std::thread::sleep(Duration::from_millis(1100));
    let as_of = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(dir.join(A), b"damaged").unwrap();
    fs::write(dir.join(B), b"").unwrap();
    etlfs("backup", cfg, &[dir.to_str().unwrap()]).assert_ok("backup of the damage");
    let keys = all_keys(store.as_ref());

    let mut m = Mounted::with(Opts::on(cfg).args(["--as-of", &as_of, "--read-only"]));
    let mut served = BTreeMap::new();
    for rel in before.keys() {
        let p = m.path(rel);
        let md = fs::metadata(&p).unwrap_or_else(|e| panic!("{rel}: {e}\n{}", m.log()));
        served.insert(
            rel.to_string(),
            Spec {
                data: fs::read(&p).unwrap_or_else(|e| panic!("{rel}: {e}\n{}", m.log())),
                mode: md.mode() & 0o7777,
                mtime: md.modified().unwrap(),
            },
        );
    }
    assert_eq!(served, owned(&before), "{}", m.log());
    let e = fs::write(m.path("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = fs::remove_file(m.path(TOP)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    m.stop();
    assert_eq!(
        all_keys(store.as_ref()),
        keys,
        "the bucket was written:\n{}",
        m.log()
    );
    // No lease either: its renewal would let writes through again.
    assert!(!m.log().contains("holding the lease"), "{}", m.log());

    // A directory with files in it would hide the point in time: refused.
    let (st, log) = Mounted::refused(Opts {
        files: vec![("x".into(), b"x".to_vec())],
        ..Opts::on(cfg).args(["--as-of", &as_of, "--read-only"])
    });
    assert_eq!(st.code(), Some(2), "{log}");
    assert!(log.contains("needs an empty directory"), "{log}");
}

/// The bodies of the kept versions of `rel` (bucket root, no prefix), oldest first.
fn kept_bodies(store: &dyn ObjectStore, rel: &str) -> Vec<Vec<u8>> {
    let dir = format!(".etlfs/history/{rel}/");
    let keys: Vec<String> = history_keys(store)
        .into_iter()
        .filter(|k| k.starts_with(&dir))
        .collect();
    rt().block_on(async {
        let mut out = Vec::new();
        for k in keys {
            let body = store.get(&Key::from(k.as_str())).await.unwrap();
            out.push(body.bytes().await.unwrap().to_vec());
        }
        out
    })
}

/// A /metrics sample's value (0 when absent).
fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// With a low threshold and the default 1 h interval: after a round of rewrites (each path's
/// first replacement is kept) and a second one (thinned away), files truncated to nothing and
/// deleted set the tripwire off — warning, metrics, /status — and from then on even a shrink
/// keeps its version, so the content of just before the damage is kept for every damaged path
/// and a point in time before it restores byte for byte.
fn the_tripwire_keeps_the_versions_before_mass_damage(kind: &str) {
    let t = target(kind);
    let cfg_file = config_file(&t);
    let cfg = cfg_file.path();
    let store = t.store();
    let (_tmp, dir) = workdir("etl");
    let n = 9;
    let name = |i: usize| format!("bingen/f{i}");
    let v0 = |i: usize| data(200 + i as u64, 4_000);
    let v1 = |i: usize| data(300 + i as u64, 4_000);
    let v2 = |i: usize| data(400 + i as u64, 4_000);
    fs::create_dir(dir.join("bingen")).unwrap();
    for i in 0..n {
        fs::write(dir.join(name(i)), v0(i)).unwrap();
    }
    etlfs("backup", cfg, &[dir.to_str().unwrap()]).assert_ok("backup");

    let port = common::free_port();
    let m = Mounted::with(
        Opts::on(cfg)
            .upload_delay("100ms")
            .args(["--history-tripwire", "3"])
            // Long enough that the trip outlasts the test, whatever its pace.
            .args(["--history-tripwire-window", "1h"])
            .listen(port)
            .local(&dir),
    );
    let holds = |want: &dyn Fn(usize) -> Vec<u8>| {
        let snap = snapshot(&rt(), store.as_ref(), None);
        (0..n).all(|i| snap.get(&name(i)) == Some(&want(i)))
    };
    // Two rounds of rewrites of the same size: the first keeps v0 of each, the second is
    // thinned away by the interval.
    for round in [&v1 as &dyn Fn(usize) -> Vec<u8>, &v2] {
        for i in 0..n {
            kubecost_write(&m.path(&name(i)), &round(i)).unwrap();
        }
        assert!(
            poll(60, || holds(round)),
            "a round not uploaded:\n{}",
            m.log()
        );
    }
    for i in 0..n {
        assert_eq!(kept_bodies(store.as_ref(), &name(i)), [v0(i)], "thinned");
    }
    let metrics = common::metrics(port);
    assert_eq!(
        metric(&metrics, "etlfs_history_tripwire_trips_total"),
        0,
        "{metrics}"
    );

    // Whole seconds on most backends: a second on each side of the point in time.
    std::thread::sleep(Duration::from_millis(1100));
    let as_of = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(1100));

    // The damage: three truncated to nothing, three deleted: the tripwire goes off.
    for i in 0..3 {
        File::options()
            .write(true)
            .open(m.path(&name(i)))
            .unwrap()
            .set_len(0)
            .unwrap();
        fs::remove_file(m.path(&name(i + 3))).unwrap();
    }
    let tripped = || {
        common::http_get(port, "/metrics")
            .is_some_and(|m| metric(&m.body, "etlfs_history_corruption_suspected") == 1)
    };
    assert!(
        poll(60, tripped),
        "the tripwire did not go off:\n{}",
        m.log()
    );
    // Then the last three shrink to a tenth: within the interval, kept only thanks to the trip.
    for i in 6..n {
        kubecost_write(&m.path(&name(i)), &v2(i)[..400]).unwrap();
    }
    let damaged = || {
        let snap = snapshot(&rt(), store.as_ref(), None);
        (0..3).all(|i| snap.get(&name(i)).is_some_and(Vec::is_empty))
            && (3..6).all(|i| !snap.contains_key(&name(i)))
            && (6..n).all(|i| snap.get(&name(i)).map(Vec::as_slice) == Some(&v2(i)[..400]))
    };
    assert!(
        poll(60, damaged),
        "the damage did not reach the bucket:\n{}",
        m.log()
    );

    let metrics = common::metrics(port);
    assert!(
        metric(&metrics, "etlfs_history_tripwire_trips_total") >= 1,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "etlfs_history_corruption_suspected"),
        1,
        "{metrics}"
    );
    let status = common::status(port);
    assert!(
        status["history"]["corruption_suspected_since"].is_string(),
        "{status}"
    );
    assert!(
        m.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("possible corruption")),
        "{}",
        m.log()
    );
    // Every damaged path kept the content it had just before the damage.
    for i in 0..n {
        let kept = kept_bodies(store.as_ref(), &name(i));
        assert!(
            kept.contains(&v2(i)),
            "{}: {} kept versions",
            name(i),
            kept.len()
        );
    }
    drop(m);

    let (_tmp2, out) = workdir("restored");
    let r = etlfs("restore", cfg, &["--as-of", &as_of, out.to_str().unwrap()]);
    r.assert_ok("restore --as-of");
    let got: BTreeMap<String, Vec<u8>> = read_tree(&out)
        .into_iter()
        .map(|(k, v)| (k, v.data))
        .collect();
    let want: BTreeMap<String, Vec<u8>> = (0..n).map(|i| (name(i), v2(i))).collect();
    assert_eq!(got, want, "{}", r.stderr);
}

/// Kills the daemon with SIGKILL and waits for it to be gone.
fn kill(m: &mut Mounted) {
    m.signal(rustix::process::Signal::KILL);
    assert!(
        m.wait_exit(Duration::from_secs(30)).is_some(),
        "SIGKILL did not end it"
    );
}

/// Restarts the killed daemon and waits until the new one has mounted: the dead mount the
/// kill left can still pass for a live one (a `stat` of its root may be answered from the
/// kernel's attribute cache), so the fixture's own wait is not enough.
fn restart(m: &mut Mounted) {
    let mounts = |m: &Mounted| m.log().matches("etlfs::cli::mount: mounted").count();
    let before = mounts(m);
    m.respawn();
    assert!(
        poll(60, || mounts(m) > before),
        "the restarted daemon did not mount:\n{}",
        m.log()
    );
}

/// `files` written under `dir` and backed up with every version kept.
fn backup_round(cfg: &Path, dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (rel, body) in files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }
    etlfs(
        "backup",
        cfg,
        &["--history-interval", "0s", dir.to_str().unwrap()],
    )
    .assert_ok("backup");
}

fn round(seed: u64, n: usize) -> BTreeMap<String, Vec<u8>> {
    (0..n)
        .map(|i| (format!("d/f{i}"), data(seed * 100 + i as u64, 1_000 + i)))
        .collect()
}

/// A SIGKILL while the mount collects garbage (hundreds of versions past retention, written
/// into the bucket as a long-gone process would have left them) loses no version inside the
/// retention and no user object, at whatever moment it lands; the restarted mount finishes the
/// collection, and a point in time inside the retention still restores byte for byte.
fn a_kill_during_gc_loses_nothing_inside_the_retention(kind: &str) {
    let t = target(kind);
    let cfg_file = config_file(&t);
    let cfg = cfg_file.path();
    let store = t.store();
    let (_tmp, dir) = workdir("etl");
    let n = 6;
    backup_round(cfg, &dir, &round(1, n));
    backup_round(cfg, &dir, &round(2, n));
    std::thread::sleep(Duration::from_millis(1100));
    let as_of = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(1100));
    backup_round(cfg, &dir, &round(3, n));
    let fresh = history_keys(store.as_ref());
    assert_eq!(fresh.len(), 2 * n, "{fresh:?}");
    // Versions replaced three days ago, past a one-day retention.
    let ago = |d: u64| {
        (SystemTime::now() - Duration::from_secs(d * 86_400))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let old: Vec<String> = (0..300)
        .map(|i| {
            format!(
                ".etlfs/history/old/o{}/{}-{}.r",
                i % 30,
                ago(4) + i,
                ago(3) + i
            )
        })
        .collect();
    rt().block_on(async {
        for k in &old {
            store
                .put(&Key::from(k.as_str()), bytes::Bytes::from("old").into())
                .await
                .unwrap();
        }
    });
    let live = snapshot(&rt(), store.as_ref(), None);

    let opts = Opts::on(cfg)
        .args(["--history-interval", "0s", "--history-retention", "1d"])
        .local(&dir);
    let mut m = Mounted::with(opts);
    // Kill as soon as the collection has begun: wherever it is by then.
    let begun = || history_keys(store.as_ref()).len() < fresh.len() + old.len();
    assert!(poll(60, begun), "no collection:\n{}", m.log());
    kill(&mut m);
    let check = |when: &str, m: &Mounted| {
        let keys = history_keys(store.as_ref());
        let lost: Vec<_> = fresh.iter().filter(|k| !keys.contains(k)).collect();
        assert!(lost.is_empty(), "{when}: lost {lost:?}\n{}", m.log());
        assert_eq!(snapshot(&rt(), store.as_ref(), None), live, "{when}");
    };
    check("after the kill", &m);

    restart(&mut m);
    let done = || {
        let keys = history_keys(store.as_ref());
        old.iter().all(|k| !keys.contains(k))
    };
    assert!(
        poll(60, done),
        "the collection did not finish:\n{}",
        m.log()
    );
    check("after the restart", &m);
    m.stop();

    let (_tmp2, out) = workdir("restored");
    let r = etlfs("restore", cfg, &["--as-of", &as_of, out.to_str().unwrap()]);
    r.assert_ok("restore --as-of");
    let got: BTreeMap<String, Vec<u8>> = read_tree(&out)
        .into_iter()
        .map(|(k, v)| (k, v.data))
        .collect();
    assert_eq!(got, round(2, n), "{}", r.stderr);
}

/// A SIGKILL during a storm of rewrites through a mount that keeps every version (history
/// copies in flight) loses none of the versions kept before it, and after a restart a point in
/// time before the storm restores byte for byte.
fn a_kill_during_a_rewrite_storm_loses_no_kept_version(kind: &str) {
    let t = target(kind);
    let cfg_file = config_file(&t);
    let cfg = cfg_file.path();
    let store = t.store();
    let (_tmp, dir) = workdir("etl");
    let n = 12;
    let before = round(1, n);
    backup_round(cfg, &dir, &before);
    std::thread::sleep(Duration::from_millis(1100));
    let as_of = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(1100));

    let mut m = Mounted::with(
        Opts::on(cfg)
            .upload_delay("50ms")
            .args(["--history-interval", "0s", "--history-retention", "1d"])
            .local(&dir),
    );
    for r in 2..6 {
        for (rel, body) in round(r, n) {
            kubecost_write(&m.path(&rel), &body).unwrap();
        }
    }
    // Kill once copies have begun: wherever they are by then.
    assert!(
        poll(60, || !history_keys(store.as_ref()).is_empty()),
        "nothing kept:\n{}",
        m.log()
    );
    let kept = history_keys(store.as_ref());
    kill(&mut m);

    restart(&mut m);
    let keys = history_keys(store.as_ref());
    let lost: Vec<_> = kept.iter().filter(|k| !keys.contains(k)).collect();
    assert!(lost.is_empty(), "lost {lost:?}\n{}", m.log());
    m.stop();
    let keys = history_keys(store.as_ref());
    let lost: Vec<_> = kept.iter().filter(|k| !keys.contains(k)).collect();
    assert!(lost.is_empty(), "lost {lost:?}\n{}", m.log());

    let (_tmp2, out) = workdir("restored");
    let r = etlfs("restore", cfg, &["--as-of", &as_of, out.to_str().unwrap()]);
    r.assert_ok("restore --as-of");
    let got: BTreeMap<String, Vec<u8>> = read_tree(&out)
        .into_iter()
        .map(|(k, v)| (k, v.data))
        .collect();
    assert_eq!(got, before, "{}", r.stderr);
}
