//! The bucket's manifest (`<prefix>/.etlfs/manifest.v1.jsonl.gz`), through real mounts of the
//! binary against real servers on 127.0.0.1 (moto, Azurite, fake-gcs behind its adapter) and the
//! FILESYSTEM backend: after a mount (or `etlfs backup`) wrote it, a mount over an empty
//! directory shows every file's size, mode and mtime without a single HEAD
//! (`etlfs_index_heads_total` on `/metrics` is 0); an object rewritten after the manifest —
//! other bytes of the same size, or the same bytes with a new mode, which S3 gives the same
//! e_tag — is read again rather than served with the manifest's stale metadata; a damaged
//! manifest costs HEADs, never the mount, and the mount replaces it while it runs.
//!
//! The servers are started by scripts/test.sh; each test gets a bucket of its own.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{self, bucket};
use bucket::{Target, data, kubecost_read, kubecost_write, poll, rt, target, wait_for, wipe};
use common::{Mounted, Opts};
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};

const PREFIX: &str = "etl";
const MANIFEST: &str = "etl/.etlfs/manifest.v1.jsonl.gz";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The value of an unlabelled sample on `/metrics`, once the mount is ready (after a crash the
/// dead mount can look mounted before the new daemon has even started its status server).
fn metric(port: u16, name: &str) -> f64 {
    let ready = poll(30, || common::ready(port));
    assert!(ready, "the mount did not get ready");
    let raw = common::metrics(port);
    raw.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} on /metrics:\n{raw}"))
        .parse()
        .unwrap()
}

/// A mount on `t` under `--prefix etl` with a status server on its own port, the directory
/// underneath kept apart (`m.local`) so the test can wipe it.
fn mount(t: &Target) -> (Mounted, tempfile::NamedTempFile, u16) {
    let port = common::free_port();
    let opts = Opts::default()
        .separate_local()
        .args(["--prefix", PREFIX])
        .listen(port)
        // A killed mount whose volume is then lost leaves a lease no state directory
        // remembers: the next start waits for it to expire (three periods).
        .args(["--lease-period", "1s"])
        .log_filter("info,object_store=warn");
    let (m, cfg) = bucket::mount_on(t, "100ms", opts);
    (m, cfg, port)
}

#[derive(Clone)]
struct Spec {
    rel: String,
    data: Vec<u8>,
    mode: u32,
    mtime: SystemTime,
}

fn tree() -> Vec<Spec> {
    let spec = |rel: &str, len: usize, mode: u32, i: u32| Spec {
        rel: rel.into(),
        data: data(u64::from(i) + 40, len),
        mode,
        // Old, distinct, with nanoseconds: a mount that served the upload time instead, or
        // rounded, would show.
        mtime: UNIX_EPOCH + Duration::new(1_704_067_200 + u64::from(i) * 3_600, 987_654_321 - i),
    };
    vec![
        spec(
            "bingen/allocations/1d/1704067200-1704153600",
            70_000,
            0o644,
            0,
        ),
        spec(
            "bingen/allocations/1d/1704153600-1704240000",
            1_000,
            0o600,
            1,
        ),
        spec("bingen/assets/1h/a", 12, 0o640, 2),
        spec("bingen/assets/1h/b", 12, 0o644, 3),
        spec("bingen/assets/1h/c", 12, 0o644, 4),
        spec("zero", 0, 0o600, 5),
        spec("top level name", 3, 0o755, 6),
    ]
}

fn key(rel: &str) -> String {
    format!("{PREFIX}/{rel}")
}

/// Writes `files` through the mount (Kubecost's way, then mode and mtime) and waits until the
/// bucket holds every body.
fn populate(m: &Mounted, store: &dyn ObjectStore, files: &[Spec]) {
    for f in files {
        let p = m.path(&f.rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        kubecost_write(&p, &f.data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(f.mode)).unwrap();
        fs::File::open(&p).unwrap().set_modified(f.mtime).unwrap();
    }
    let rt = rt();
    let want = |s: &std::collections::BTreeMap<String, Vec<u8>>| {
        files.iter().all(|f| s.get(&key(&f.rel)) == Some(&f.data))
    };
    let snap = wait_for(&rt, store, Some(PREFIX), 60, want);
    assert!(want(&snap), "the bucket did not get the tree\n{}", m.log());
}

/// Every file of `files` shows with its size, mode and mtime, and reads back byte for byte
/// (each download is checked against the checksum the index holds).
fn check_served(m: &Mounted, files: &[Spec]) {
    for f in files {
        let md =
            fs::metadata(m.path(&f.rel)).unwrap_or_else(|e| panic!("{}: {e}\n{}", f.rel, m.log()));
        let d = f.mtime.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(md.len(), f.data.len() as u64, "size of {}", f.rel);
        assert_eq!(md.mode() & 0o7777, f.mode, "mode of {}", f.rel);
        assert_eq!(
            (md.mtime(), md.mtime_nsec()),
            (d.as_secs() as i64, i64::from(d.subsec_nanos())),
            "mtime of {}",
            f.rel
        );
    }
    for f in files {
        let got = kubecost_read(&m.path(&f.rel))
            .unwrap_or_else(|e| panic!("reading {}: {e}\n{}", f.rel, m.log()));
        assert!(got == f.data, "content of {}", f.rel);
    }
}

fn manifest_exists(store: &dyn ObjectStore) -> bool {
    rt().block_on(store.head(&Key::from(MANIFEST))).is_ok()
}

/// A mount's life on a new node: mount over an empty directory, then the two load figures.
fn loaded(port: u16) -> (f64, f64) {
    (
        metric(port, "etlfs_index_heads_total"),
        metric(port, "etlfs_index_manifest_files_total"),
    )
}

crate::on_every_backend!(a_new_node_starts_from_the_manifest_without_heads);

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The mirror writes the manifest when it drains; a mount over the empty directory then takes
/// every file's metadata from it: no HEAD at all, and the files show and read back exactly.
fn a_new_node_starts_from_the_manifest_without_heads(kind: &str) {
    let t = target(kind);
    let store = t.store();
    let files = tree();
    let (mut m, _cfg, port) = mount(&t);
    populate(&m, store.as_ref(), &files);
    let st = m.stop();
    assert!(st.success(), "{st}\n{}", m.log());
    assert!(m.log().contains("manifest written"), "{}", m.log());
    assert!(manifest_exists(store.as_ref()));

    wipe(&m.local);
    m.respawn();
    let n = files.len() as f64;
    assert_eq!(loaded(port), (0.0, n), "{}", m.log());
    check_served(&m, &files);
    // Nothing changed in the bucket: the drain has no manifest to write.
    let before = m.log().matches("manifest written").count();
    assert!(m.stop().success());
    let after = m.log().matches("manifest written").count();
    // Fetched files keep what the manifest said about their objects, so a write (there is
    // news: the records) still vouches for every file.
    assert!(after <= before + 1, "{}", m.log());
    wipe(&m.local);
    m.respawn();
    assert_eq!(loaded(port), (0.0, n), "{}", m.log());
}

/// Objects changed behind the manifest are not served with its metadata: another body of the
/// same size (its checksum in the manifest would fail the download), the same body with a new
/// mode and mtime (S3 and GCS give it the same e_tag: only the listed time tells), and a
/// deleted object. Only those are read again.
fn changed_objects_are_read_again(kind: &str) {
    let t = target(kind);
    let store = t.store();
    let files = tree();
    let (mut m, _cfg, port) = mount(&t);
    populate(&m, store.as_ref(), &files);
    assert!(m.stop().success(), "{}", m.log());
    assert!(manifest_exists(store.as_ref()));

    let rt = rt();
    let (a, b, c) = (&files[2], &files[3], &files[4]);
    // Another writer: other bytes of the same size, without etlfs metadata.
    let other = data(999, a.data.len());
    rt.block_on(store.put(&Key::from(key(&a.rel)), PutPayload::from(other.clone())))
        .unwrap();
    // The same bytes with other metadata, as an etlfs upload after a chmod and touch writes it.
    let new_mtime = UNIX_EPOCH + Duration::new(1_800_000_000, 5);
    let mut attrs = Attributes::new();
    for (k, v) in [
        ("etlfs_mtime", "1800000000000000005".to_string()),
        ("etlfs_mode", "600".to_string()),
        ("etlfs_sha256", common::sha256_hex(&b.data)),
        ("etlfs_uid", "0".to_string()),
        ("etlfs_gid", "0".to_string()),
    ] {
        attrs.insert(Attribute::Metadata(k.into()), v.into());
    }
    let opts = PutOptions {
        attributes: attrs,
        ..Default::default()
    };
    rt.block_on(store.put_opts(
        &Key::from(key(&b.rel)),
        PutPayload::from(b.data.clone()),
        opts,
    ))
    .unwrap();
    rt.block_on(store.delete(&Key::from(key(&c.rel)))).unwrap();

    wipe(&m.local);
    m.respawn();
    let n = files.len() as f64;
    assert_eq!(loaded(port), (2.0, n - 3.0), "{}", m.log());
    assert!(m.log().contains("stale_manifest_entries=2"), "{}", m.log());
    let md = fs::metadata(m.path(&a.rel)).unwrap();
    assert_eq!((md.len(), md.mode() & 0o7777), (other.len() as u64, 0o644));
    assert!(
        kubecost_read(&m.path(&a.rel)).unwrap() == other,
        "{}",
        m.log()
    );
    let md = fs::metadata(m.path(&b.rel)).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600, "{}", m.log());
    assert_eq!(md.modified().unwrap(), new_mtime);
    assert!(kubecost_read(&m.path(&b.rel)).unwrap() == b.data);
    assert!(!m.path(&c.rel).exists());
    let unchanged: Vec<Spec> = files
        .iter()
        .filter(|f| ![&a.rel, &b.rel, &c.rel].contains(&&f.rel))
        .cloned()
        .collect();
    check_served(&m, &unchanged);
}

#[test]
fn changed_objects_are_read_again_s3() {
    changed_objects_are_read_again("s3");
}

#[test]
fn changed_objects_are_read_again_azure() {
    changed_objects_are_read_again("azure");
}

#[test]
fn changed_objects_are_read_again_gcs() {
    changed_objects_are_read_again("gcs");
}

/// A damaged manifest costs HEADs, never the mount; the running mount replaces it on its own
/// (no drain needed: the daemon is killed afterwards), and the next new node needs no HEAD.
#[test]
fn a_damaged_manifest_is_read_around_and_replaced() {
    let t = target("s3");
    let store = t.store();
    let files = tree();
    let (mut m, _cfg, port) = mount(&t);
    populate(&m, store.as_ref(), &files);
    assert!(m.stop().success(), "{}", m.log());
    let rt = rt();
    let garbage = PutPayload::from_static(b"\x1f\x8b\x08\x00 not really gzip");
    rt.block_on(store.put(&Key::from(MANIFEST), garbage))
        .unwrap();

    wipe(&m.local);
    m.respawn();
    let n = files.len() as f64;
    assert_eq!(loaded(port), (n, 0.0), "{}", m.log());
    assert!(m.log().contains("manifest is unreadable"), "{}", m.log());
    check_served(&m, &files);
    let replaced = poll(30, || {
        rt.block_on(async {
            let got = store.get(&Key::from(MANIFEST)).await.ok()?;
            got.bytes().await.ok()
        })
        .is_some_and(|b| b.len() > 30)
    });
    assert!(
        replaced,
        "the mount did not replace the manifest\n{}",
        m.log()
    );

    // A crash: no drain, no last manifest write.
    m.signal(rustix::process::Signal::KILL);
    assert!(m.wait_exit(Duration::from_secs(10)).is_some());
    wipe(&m.local);
    m.respawn();
    assert_eq!(loaded(port), (0.0, n), "{}", m.log());
    check_served(&m, &files);
}

/// `etlfs backup` writes the manifest at its end: a mount over an empty directory then needs
/// no HEAD either.
#[test]
fn backup_writes_the_manifest() {
    let t = target("s3");
    let store = t.store();
    let files = tree();
    let dir = tempfile::tempdir().unwrap();
    for f in &files {
        let p = dir.path().join(&f.rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &f.data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(f.mode)).unwrap();
        fs::File::open(&p).unwrap().set_modified(f.mtime).unwrap();
    }
    let cfg = bucket::config_file(&t);
    let out = Command::new(common::ETLFS)
        .args(["backup", "--config"])
        .arg(cfg.path())
        .args(["--prefix", PREFIX])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("manifest written"), "{log}");
    assert!(manifest_exists(store.as_ref()));

    let (m, _cfg, port) = mount(&t);
    assert_eq!(loaded(port), (0.0, files.len() as f64), "{}", m.log());
    check_served(&m, &files);
}
