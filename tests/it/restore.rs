//! Lazy restore against real object-storage servers on 127.0.0.1 (moto S3, Azurite, fake-gcs
//! behind its adapter) and the FILESYSTEM backend, through real FUSE mounts of the binary: a
//! lost volume comes back file by file on first open, verified, single-flight, never partial;
//! unlink / rename / O_TRUNC of bucket-only files need no download; `--prefetch` brings
//! everything back in the background; hostile bucket keys never escape the directory.
//!
//! The servers are started by scripts/test.sh; each test gets a bucket of its own.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{self, bucket};
use bucket::{
    Target, data, kubecost_read, kubecost_write, poll, rt, snapshot, target, wait_for, wipe,
};
use common::{Mounted, Opts, sha256_hex};
use object_store::path::Path as Key;
use object_store::{Attribute, GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};

/// The daemon's log filter in every test: fetches are logged at debug level.
const LOG: &str = "info,object_store=warn,etlfs::engine::fetch=debug";
/// The message etlfs logs once per completed download.
const FETCHED: &str = "fetched from the bucket";

// ---------------------------------------------------------------------------------------------
// Helpers (the shared ones are in tests/it/common/bucket.rs)
// ---------------------------------------------------------------------------------------------

/// A mount of etlfs on `t` with a 100 ms upload delay, fetches logged. `separate_local`: the
/// directory underneath is `m.local`, visible to the test while mounted.
/// A mount that restores lazily only (`--no-prefetch`, unless `extra` asks for `--prefetch`,
/// the default): these tests watch which files an application's opens download.
fn mount(t: &Target, separate_local: bool, extra: &[&str]) -> (Mounted, tempfile::NamedTempFile) {
    let mut opts = Opts::default().args(extra.iter().copied()).log_filter(LOG);
    if !extra.contains(&"--prefetch") {
        opts = opts.arg("--no-prefetch");
    }
    opts.separate_local = separate_local;
    bucket::mount_on(t, "100ms", opts)
}

/// The paths of the "fetched from the bucket" log lines, in order.
fn fetched(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(FETCHED))
        .map(|l| {
            let rest = l
                .split_once("path=")
                .unwrap_or_else(|| panic!("fetch line without a path: {l}"))
                .1;
            // `path=a b/c bytes=N`: paths may contain spaces.
            rest.rsplit_once(" bytes=")
                .map_or(rest, |(p, _)| p)
                .to_owned()
        })
        .collect()
}

/// Temporary download files left in the state directory underneath.
fn leftover_temps(local: &Path) -> Vec<String> {
    match fs::read_dir(local.join(".etlfs")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect(),
        Err(_) => vec![],
    }
}

/// A file of the test tree.
#[derive(Clone)]
struct Spec {
    rel: String,
    data: Vec<u8>,
    mode: u32,
    mtime: SystemTime,
}

fn spec(rel: &str, data: Vec<u8>, mode: u32, i: u32) -> Spec {
    Spec {
        rel: rel.into(),
        data,
        mode,
        // Distinct, old, with nanoseconds: a restore that keeps only the upload time, or
        // rounds, shows.
        mtime: UNIX_EPOCH + Duration::new(1_704_067_200 + u64::from(i) * 86_400, 123_456_789 + i),
    }
}

/// Writes `files` (Kubecost's way) and `empty_dirs` through a running mount, gives each file
/// its mode and mtime, and waits until the bucket holds every body (and every empty
/// directory's marker) under `prefix`.
fn populate(
    m: &Mounted,
    store: &dyn ObjectStore,
    prefix: &str,
    files: &[Spec],
    empty_dirs: &[&str],
) {
    for d in empty_dirs {
        fs::create_dir_all(m.path(d)).unwrap();
    }
    for f in files {
        let p = m.path(&f.rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        kubecost_write(&p, &f.data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(f.mode)).unwrap();
        fs::File::open(&p).unwrap().set_modified(f.mtime).unwrap();
    }
    let key = |rel: &str| {
        if prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{prefix}/{rel}")
        }
    };
    let rt = rt();
    let want = |s: &BTreeMap<String, Vec<u8>>| {
        files.iter().all(|f| s.get(&key(&f.rel)) == Some(&f.data))
            && empty_dirs
                .iter()
                .all(|d| s.contains_key(&key(&format!("{d}/.etlfs-dir"))))
    };
    let p = (!prefix.is_empty()).then_some(prefix);
    let snap = wait_for(&rt, store, p, 180, want);
    assert!(
        want(&snap),
        "the bucket did not get the tree: {:?}\n{}",
        snap.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>(),
        m.log()
    );
}

/// Puts `files` into the bucket through a first mount (a machine that is then lost): mounts
/// over a fresh directory, writes, waits for the bucket, stops cleanly.
fn seed(t: &Target, prefix: &str, files: &[Spec], empty_dirs: &[&str]) {
    let extra: Vec<&str> = if prefix.is_empty() {
        vec![]
    } else {
        vec!["--prefix", prefix]
    };
    let (mut m, _cfg) = mount(t, false, &extra);
    populate(&m, t.store().as_ref(), prefix, files, empty_dirs);
    let st = m.stop();
    assert!(st.success(), "seeding mount: {st}\n{}", m.log());
}

/// SHA-256 of a file read through a read-only shared `mmap` (Python's mmap: a real mapping,
/// and no unsafe code here).
fn mmap_sha256(path: &Path) -> String {
    let script = r#"
import hashlib, mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
print(hashlib.sha256(m[:]).hexdigest())
m.close()
os.close(fd)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mmap of {path:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn mtime_of(md: &fs::Metadata) -> (i64, i64) {
    (md.mtime(), md.mtime_nsec())
}

fn want_mtime(t: SystemTime) -> (i64, i64) {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
}

// ---------------------------------------------------------------------------------------------
// 1. Lost volume, on every backend
// ---------------------------------------------------------------------------------------------

crate::on_every_backend!(lost_volume_comes_back_lazily_and_whole);

const D1: &str = "bingen/allocations/1d";

/// The Kubecost-like tree of the lost-volume test.
fn lost_volume_tree() -> (Vec<Spec>, Vec<&'static str>) {
    let files = vec![
        spec(
            &format!("{D1}/1704067200-1704153600"),
            data(1, 300_000),
            0o644,
            0,
        ),
        spec(
            &format!("{D1}/1704153600-1704240000"),
            data(2, 100),
            0o640,
            1,
        ),
        spec(
            &format!("{D1}/1704240000-1704326400"),
            data(3, 4 << 20),
            0o644,
            2,
        ),
        // Larger than the 16 MiB single-PUT limit: a multipart upload.
        spec(
            &format!("{D1}/1704326400-1704412800"),
            data(4, 17 * 1024 * 1024 + 12_345),
            0o644,
            3,
        ),
        // Kubecost's own mode.
        spec(&format!("{D1}/private"), data(5, 20_000), 0o600, 4),
        spec("bingen/assets/1h/zero", Vec::new(), 0o644, 5),
        spec("top-level", b"top".to_vec(), 0o755, 6),
    ];
    (files, vec!["bingen/assets/1w", "empty/nested"])
}

/// Mount, write a tree, lose the disk (including the state directory), mount again over the
/// empty directory: every file lists with its size, mode and mtime before a byte is read and
/// before anything is downloaded; each comes back byte-identical on first open (Kubecost's
/// flock + read, and mmap), placed underneath with its mode and mtime; empty directories and
/// the 0-byte file come back too.
fn lost_volume_comes_back_lazily_and_whole(kind: &str) {
    let t = target(kind);
    let store = t.store();
    let (files, empty_dirs) = lost_volume_tree();
    let (mut m, _cfg) = mount(&t, true, &["--prefix", "etl"]);
    populate(&m, store.as_ref(), "etl", &files, &empty_dirs);
    let st = m.stop();
    assert!(st.success(), "{st}\n{}", m.log());

    // The volume is lost: nothing at all is left underneath, not even etlfs' state.
    wipe(&m.local);
    m.respawn();

    // Listing: names, sizes, modes, mtimes, all from the bucket, with nothing downloaded.
    let mut names: Vec<String> = fs::read_dir(m.path(D1))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want_names: Vec<String> = files
        .iter()
        .filter_map(|f| f.rel.strip_prefix(&format!("{D1}/")).map(str::to_owned))
        .collect();
    want_names.sort();
    assert_eq!(names, want_names, "{}", m.log());
    let mut root: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    root.sort();
    assert_eq!(root, ["bingen", "empty", "top-level"], "{}", m.log());
    for f in &files {
        let md = fs::symlink_metadata(m.path(&f.rel))
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", f.rel, m.log()));
        assert!(md.file_type().is_file(), "{}", f.rel);
        assert_eq!(md.len(), f.data.len() as u64, "size of {}", f.rel);
        assert_eq!(md.mode() & 0o7777, f.mode, "mode of {}", f.rel);
        let (secs, nanos) = want_mtime(f.mtime);
        assert_eq!(md.mtime(), secs, "mtime (seconds) of {}", f.rel);
        assert_eq!(md.mtime_nsec(), nanos, "mtime (nanoseconds) of {}", f.rel);
        assert!(
            !m.local.join(&f.rel).exists(),
            "{} was downloaded by a stat or a readdir",
            f.rel
        );
    }
    assert!(fetched(&m.log()).is_empty(), "{}", m.log());

    // Empty directories come back (their markers), and stay empty.
    for d in &empty_dirs {
        let md = fs::symlink_metadata(m.path(d)).unwrap_or_else(|e| panic!("{d}: {e}"));
        assert!(md.is_dir(), "{d}");
        assert_eq!(fs::read_dir(m.path(d)).unwrap().count(), 0, "{d}");
    }

    // mmap as the very first access of a bucket-only file.
    let mapped = &files[0];
    assert!(!m.local.join(&mapped.rel).exists());
    assert_eq!(
        mmap_sha256(&m.path(&mapped.rel)),
        sha256_hex(&mapped.data),
        "mmap of {}\n{}",
        mapped.rel,
        m.log()
    );
    assert!(m.local.join(&mapped.rel).is_file());

    // Kubecost's read of every file: byte-identical; afterwards the file is underneath, whole,
    // with its mode and mtime.
    for f in &files {
        let got = kubecost_read(&m.path(&f.rel))
            .unwrap_or_else(|e| panic!("reading {}: {e}\n{}", f.rel, m.log()));
        assert!(
            got == f.data,
            "{}: {} bytes read, {} written",
            f.rel,
            got.len(),
            f.data.len()
        );
        let under = m.local.join(&f.rel);
        let md = fs::symlink_metadata(&under)
            .unwrap_or_else(|e| panic!("{} not placed underneath after a read: {e}", f.rel));
        assert_eq!(md.len(), f.data.len() as u64, "{}", f.rel);
        assert_eq!(md.mode() & 0o7777, f.mode, "mode underneath of {}", f.rel);
        assert_eq!(
            mtime_of(&md),
            want_mtime(f.mtime),
            "mtime underneath of {}",
            f.rel
        );
        assert!(fs::read(&under).unwrap() == f.data, "{} underneath", f.rel);
        // Through the mount, the attributes are the same after the download.
        let md = fs::symlink_metadata(m.path(&f.rel)).unwrap();
        assert_eq!(
            (md.len(), md.mode() & 0o7777, mtime_of(&md)),
            (f.data.len() as u64, f.mode, want_mtime(f.mtime)),
            "{} after the download",
            f.rel
        );
    }
    // And mmap once more, now from the local copy.
    let big = &files[3];
    assert_eq!(mmap_sha256(&m.path(&big.rel)), sha256_hex(&big.data));

    let mut paths = fetched(&m.log());
    paths.sort();
    let mut want: Vec<String> = files.iter().map(|f| f.rel.clone()).collect();
    want.sort();
    assert_eq!(paths, want, "one download per file\n{}", m.log());
    assert!(leftover_temps(&m.local).is_empty());
    let st = m.stop();
    assert!(st.success(), "{st}\n{}", m.log());
}

// ---------------------------------------------------------------------------------------------
// 2. Single flight
// ---------------------------------------------------------------------------------------------

/// Eight threads open and read the same large bucket-only file at once: all get the right
/// bytes, and the file is downloaded exactly once.
#[test]
fn concurrent_openers_share_one_download() {
    let t = target("s3");
    let rel = "bingen/allocations/1d/big";
    let body = data(42, 17 << 20);
    seed(&t, "", &[spec(rel, body.clone(), 0o600, 0)], &[]);
    let (mut m, _cfg) = mount(&t, true, &[]);
    assert!(!m.local.join(rel).exists());
    let want = sha256_hex(&body);
    let barrier = Arc::new(Barrier::new(8));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (p, b) = (m.path(rel), Arc::clone(&barrier));
            std::thread::spawn(move || {
                b.wait();
                let start = Instant::now();
                let opened = fs::File::open(&p).map(|_| Instant::now());
                let read = kubecost_read(&p).map(|d| sha256_hex(&d));
                (start, opened, read)
            })
        })
        .collect();
    let mut spans = Vec::new();
    for r in readers {
        let (start, opened, got) = r.join().unwrap();
        assert_eq!(
            got.as_deref().ok(),
            Some(want.as_str()),
            "{got:?}\n{}",
            m.log()
        );
        spans.push((start, opened.unwrap()));
    }
    // The openers really waited at the same time: every open started before the first one
    // returned (after the download), so they all raced for the download.
    let first_done = spans.iter().map(|s| s.1).min().unwrap();
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    assert!(
        last_start < first_done,
        "the opens did not overlap: the test proves nothing"
    );
    assert_eq!(fetched(&m.log()), [rel], "{}", m.log());
    assert!(!m.log().contains("fetch failed"), "{}", m.log());
    assert!(fs::read(m.local.join(rel)).unwrap() == body);
    assert!(m.stop().success());
}

// ---------------------------------------------------------------------------------------------
// 3. Corrupt objects
// ---------------------------------------------------------------------------------------------

/// An object whose bytes do not match its recorded checksum (same length, etlfs metadata
/// intact) is an EIO, every time, and nothing of it appears underneath; once the bucket holds
/// the right bytes again, the next open succeeds.
#[test]
fn corrupt_object_is_eio_and_leaves_nothing() {
    let t = target("s3");
    let store = t.store();
    let rel = "bingen/allocations/1d/victim";
    let good = data(7, 200_000);
    let other = spec("bingen/allocations/1d/fine", data(8, 5_000), 0o600, 1);
    seed(
        &t,
        "",
        &[spec(rel, good.clone(), 0o600, 0), other.clone()],
        &[],
    );

    let rt = rt();
    let key = Key::parse(rel).unwrap();
    let head = GetOptions {
        head: true,
        ..Default::default()
    };
    let attrs = rt
        .block_on(store.get_opts(&key, head.clone()))
        .unwrap()
        .attributes;
    let sha = Attribute::Metadata("etlfs_sha256".into());
    assert_eq!(
        attrs.get(&sha).map(|v| v.as_ref().to_owned()),
        Some(sha256_hex(&good)),
        "the seeded object carries its checksum"
    );
    let put = |body: Vec<u8>| {
        let opts = PutOptions {
            attributes: attrs.clone(),
            ..Default::default()
        };
        rt.block_on(store.put_opts(&key, PutPayload::from(body), opts))
            .unwrap();
    };
    let mut bad = good.clone();
    for b in &mut bad[100_000..100_016] {
        *b = !*b;
    }
    put(bad);
    // The corrupted object still says it is the good one: size and checksum metadata intact.
    let now = rt.block_on(store.get_opts(&key, head)).unwrap();
    assert_eq!(now.meta.size, good.len() as u64);
    assert_eq!(
        now.attributes.get(&sha).map(|v| v.as_ref().to_owned()),
        Some(sha256_hex(&good))
    );

    let (mut m, _cfg) = mount(&t, true, &[]);
    assert_eq!(fs::metadata(m.path(rel)).unwrap().len(), good.len() as u64);
    for attempt in 1..=2 {
        let err = kubecost_read(&m.path(rel)).expect_err("a corrupt object must not be served");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EIO),
            "attempt {attempt}: {err}\n{}",
            m.log()
        );
        assert!(
            !m.local.join(rel).exists(),
            "attempt {attempt}: something of the corrupt object was placed underneath"
        );
        // The first open reads its neighbour ahead; that download's temporary file is
        // legitimately there until the neighbour lands, so wait for it first.
        assert!(
            poll(30, || m.local.join(&other.rel).exists()),
            "the neighbour read ahead never landed\n{}",
            m.log()
        );
        assert!(
            leftover_temps(&m.local).is_empty(),
            "{:?}",
            leftover_temps(&m.local)
        );
        // Still listed, with the bucket's size: the file is not lost, only unreadable.
        assert_eq!(fs::metadata(m.path(rel)).unwrap().len(), good.len() as u64);
    }
    assert!(m.log().contains("checksum mismatch"), "{}", m.log());
    assert!(!fetched(&m.log()).contains(&rel.to_string()), "{}", m.log());
    // A neighbour is not affected.
    assert!(kubecost_read(&m.path(&other.rel)).unwrap() == other.data);

    put(good.clone());
    let got = kubecost_read(&m.path(rel))
        .unwrap_or_else(|e| panic!("after the repair: {e}\n{}", m.log()));
    assert!(got == good);
    assert!(fs::read(m.local.join(rel)).unwrap() == good);
    assert!(m.stop().success());
}

// ---------------------------------------------------------------------------------------------
// 4. Operations that need no download
// ---------------------------------------------------------------------------------------------

/// Unlink, rename and open(O_TRUNC) of bucket-only files download nothing; the bucket follows
/// (object deleted, moved, replaced), and the renamed file reads back its original bytes.
#[test]
fn unlink_rename_and_trunc_do_not_download() {
    let t = target("s3");
    let store = t.store();
    let d = "bingen/allocations/1d";
    let (tr, un, rn, rn2) = (
        format!("{d}/trunc"),
        format!("{d}/unlinked"),
        format!("{d}/renamed"),
        format!("{d}/renamed-new"),
    );
    let files = [
        spec(&tr, data(11, 1 << 20), 0o600, 0),
        spec(&un, data(12, 1 << 20), 0o600, 1),
        spec(&rn, data(13, 1 << 20), 0o640, 2),
    ];
    seed(&t, "", &files, &[]);
    let (mut m, _cfg) = mount(&t, true, &[]);
    let not_fetched = |m: &Mounted, p: &str| {
        let log = m.log();
        assert!(
            !fetched(&log).iter().any(|f| f == p),
            "{p} was downloaded\n{log}"
        );
        assert!(!m.local.join(p).exists(), "{p} was placed underneath");
    };

    fs::remove_file(m.path(&un)).unwrap();
    assert!(!m.path(&un).exists());
    not_fetched(&m, &un);

    fs::rename(m.path(&rn), m.path(&rn2)).unwrap();
    assert!(!m.path(&rn).exists());
    let md = fs::metadata(m.path(&rn2)).unwrap();
    assert_eq!((md.len(), md.mode() & 0o7777), (1 << 20, 0o640));
    not_fetched(&m, &rn);
    not_fetched(&m, &rn2);

    let new = b"rewritten with O_TRUNC".to_vec();
    {
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.path(&tr))
            .unwrap();
        f.write_all(&new).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(m.path(d))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["renamed-new", "trunc"]);

    let rt = rt();
    let want = |s: &BTreeMap<String, Vec<u8>>| {
        !s.contains_key(&un)
            && !s.contains_key(&rn)
            && s.get(&rn2) == Some(&files[2].data)
            && s.get(&tr) == Some(&new)
    };
    let snap = wait_for(&rt, store.as_ref(), None, 120, want);
    assert!(
        want(&snap),
        "{:?}\n{}",
        snap.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>(),
        m.log()
    );
    // Moving the object did not download it either.
    not_fetched(&m, &rn2);

    // The renamed file reads back its original bytes (downloaded now, from its new key).
    assert!(kubecost_read(&m.path(&rn2)).unwrap() == files[2].data);
    assert!(kubecost_read(&m.path(&tr)).unwrap() == new);
    assert!(fetched(&m.log()).contains(&rn2), "{}", m.log());

    // Checked last, so that the checks above run even if this one fails:
    // open(O_TRUNC) must not download the old bytes it is about to throw away.
    let log = m.log();
    assert!(
        !fetched(&log).contains(&tr),
        "open(O_WRONLY|O_TRUNC) of a bucket-only file downloaded it\n{log}"
    );
    assert!(m.stop().success());
}

/// Reading a bucket-only file right after renaming it, while the mirror is moving its object
/// from the old key to the new one, returns its bytes (never ENOENT or EIO), and the bucket
/// ends up with the object under its new key (the download must not make the mirror think the
/// new key is already there). Timing-dependent: a broken etlfs fails it often, not always;
/// the next test makes the same race deterministic.
#[test]
fn read_right_after_rename_of_a_bucket_only_file() {
    let t = target("s3");
    let store = t.store();
    let files: Vec<Spec> = (0..24u32)
        .map(|i| {
            spec(
                &format!("d/f{i:02}"),
                data(200 + u64::from(i), 32 << 10),
                0o600,
                i,
            )
        })
        .collect();
    seed(&t, "", &files, &[]);
    let (mut m, _cfg) = mount(&t, true, &[]);
    let new_name = |i: usize| format!("d/g{i:02}");
    let mut failed_reads = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let to = m.path(&new_name(i));
        fs::rename(m.path(&f.rel), &to).unwrap();
        // Stagger: some reads at once, some while the copy or delete may be in flight.
        std::thread::sleep(Duration::from_millis((i as u64 % 3) * 10));
        match kubecost_read(&to) {
            Ok(got) => assert!(got == f.data, "{to:?}"),
            Err(e) => failed_reads.push(format!("{}: {e}", new_name(i))),
        }
    }
    let rt = rt();
    let want = |s: &BTreeMap<String, Vec<u8>>| {
        files
            .iter()
            .enumerate()
            .all(|(i, f)| s.get(&new_name(i)) == Some(&f.data) && !s.contains_key(&f.rel))
    };
    let snap = wait_for(&rt, store.as_ref(), None, 60, want);
    let lost: Vec<String> = (0..files.len())
        .map(new_name)
        .filter(|k| !snap.contains_key(k))
        .collect();
    assert!(
        failed_reads.is_empty() && want(&snap),
        "reads right after a rename that failed: {failed_reads:?}\n\
         renamed files missing from the bucket: {lost:?}\nkeys: {:?}\n{}",
        snap.keys().collect::<Vec<_>>(),
        m.log()
    );
    assert!(m.stop().success());
}

/// The same race made deterministic: while an upload is in flight the mirror holds back the
/// rename's intent, so the renamed file is downloaded (from its old key) before the mirror
/// moves the object. Afterwards the bucket must hold the file under its new key.
#[test]
fn rename_then_read_during_an_upload_keeps_the_object() {
    let t = target("s3");
    let store = t.store();
    let f = spec("d/f", data(300, 64 << 10), 0o600, 0);
    seed(&t, "", std::slice::from_ref(&f), &[]);
    let (mut m, _cfg) = mount(&t, true, &[]);
    // A large upload that takes a while (multipart).
    let big = data(301, 20 << 20);
    kubecost_write(&m.path("big"), &big).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    fs::rename(m.path("d/f"), m.path("d/g")).unwrap();
    let got = kubecost_read(&m.path("d/g"))
        .unwrap_or_else(|e| panic!("reading d/g after the rename: {e}\n{}", m.log()));
    assert!(got == f.data);
    let rt = rt();
    let early = snapshot(&rt, store.as_ref(), Some("d"));
    let want = |s: &BTreeMap<String, Vec<u8>>| {
        s.get("big") == Some(&big) && !s.contains_key("d/f") && s.get("d/g") == Some(&f.data)
    };
    // Once the upload is done and the old key is gone, the move has run: the new key is
    // there or never will be.
    wait_for(&rt, store.as_ref(), None, 120, |s| {
        s.get("big") == Some(&big) && !s.contains_key("d/f")
    });
    let snap = wait_for(&rt, store.as_ref(), None, 120, want);
    assert!(
        want(&snap),
        "keys while the upload was in flight: {:?}\nkeys at the end: {:?}\n{}",
        early.keys().collect::<Vec<_>>(),
        snap.keys().collect::<Vec<_>>(),
        m.log()
    );
    assert!(m.stop().success());
}

// ---------------------------------------------------------------------------------------------
// 5. --prefetch
// ---------------------------------------------------------------------------------------------

fn prefetch_brings_everything_back(kind: &str) {
    let t = target(kind);
    let files: Vec<Spec> = (0..12u32)
        .map(|i| {
            let len = if i == 0 {
                3 << 20
            } else {
                1000 * (i as usize + 1)
            };
            spec(
                &format!("bingen/assets/1d/f{i:02}"),
                data(100 + u64::from(i), len),
                0o600,
                i,
            )
        })
        .chain([spec("zero", vec![], 0o644, 20)])
        .collect();
    seed(&t, "etl", &files, &[]);
    let (mut m, _cfg) = mount(&t, true, &["--prefix", "etl", "--prefetch"]);
    // Nothing is opened through the mount: prefetch alone brings every file underneath.
    let all_there = || {
        files
            .iter()
            .all(|f| fs::read(m.local.join(&f.rel)).is_ok_and(|d| d == f.data))
    };
    assert!(
        poll(20, all_there),
        "prefetch did not bring everything back: missing {:?}\n{}",
        files
            .iter()
            .filter(|f| !m.local.join(&f.rel).exists())
            .map(|f| &f.rel)
            .collect::<Vec<_>>(),
        m.log()
    );
    for f in &files {
        let md = fs::metadata(m.local.join(&f.rel)).unwrap();
        assert_eq!(md.mode() & 0o7777, f.mode, "{}", f.rel);
        assert_eq!(mtime_of(&md), want_mtime(f.mtime), "{}", f.rel);
    }
    assert!(
        poll(30, || m.log().contains("prefetch finished failed=0")),
        "{}",
        m.log()
    );
    assert_eq!(fetched(&m.log()).len(), files.len(), "{}", m.log());
    // Reading now downloads nothing more.
    for f in &files {
        assert!(kubecost_read(&m.path(&f.rel)).unwrap() == f.data);
    }
    assert_eq!(fetched(&m.log()).len(), files.len(), "{}", m.log());
    assert!(m.stop().success());
}

#[test]
fn prefetch_brings_everything_back_s3() {
    prefetch_brings_everything_back("s3");
}

#[test]
fn prefetch_brings_everything_back_filesystem() {
    prefetch_brings_everything_back("filesystem");
}

// ---------------------------------------------------------------------------------------------
// 6. Hostile bucket content
// ---------------------------------------------------------------------------------------------

/// Nothing beside the served directory but the fixture's own entries, and no `etc` that a
/// `..` key could have made.
fn assert_nothing_outside(m: &Mounted) {
    let outside = m.local.parent().unwrap();
    let mut beside: Vec<String> = fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    beside.sort();
    assert_eq!(beside, ["etlfs.log", "l", "m"], "{outside:?}");
    assert!(!outside.join("etc").exists());
    assert!(!Path::new("/tmp/etc/x").exists());
}

/// Objects under the mount's prefix with odd keys that object_store itself can write: a file
/// that is also a directory prefix, a 900-byte key, spaces and unicode. The mount shows the
/// sane ones, refuses `both` as a file with a log line (the directory wins).
#[test]
fn odd_bucket_keys_are_shown_or_refused() {
    let t = target("s3");
    let store = t.store();
    let rt = rt();
    let long_rel = {
        let seg = "d".repeat(110);
        let mut parts: Vec<String> = (0..8).map(|i| format!("{i}{seg}")).collect();
        parts.push("leaf".into());
        parts.join("/")
    };
    assert_eq!(long_rel.len(), 900);
    let sane: Vec<(String, Vec<u8>)> = vec![
        ("both/inner".into(), b"inner".to_vec()),
        (long_rel.clone(), b"long".to_vec()),
        ("with space/a file.txt".into(), b"spaces".to_vec()),
        ("ünïcødé/文件 ✓".into(), b"unicode".to_vec()),
    ];
    for (rel, body) in &sane {
        let key = Key::parse(format!("etl/{rel}")).unwrap();
        rt.block_on(store.put(&key, PutPayload::from(body.clone())))
            .unwrap();
    }
    // A file that is also a directory prefix: the directory wins.
    rt.block_on(store.put(
        &Key::parse("etl/both").unwrap(),
        PutPayload::from_static(b"f"),
    ))
    .unwrap();
    // A name longer than any local file name (NAME_MAX 255) can never be restored: it must
    // not be listed as an entry that cannot even be looked up.
    let too_long = "n".repeat(300);
    rt.block_on(store.put(
        &Key::parse(format!("etl/{too_long}")).unwrap(),
        PutPayload::from_static(b"x"),
    ))
    .unwrap();

    let (mut m, _cfg) = mount(&t, true, &["--prefix", "etl"]);
    for (rel, body) in &sane {
        let got = fs::read(m.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}\n{}", m.log()));
        assert_eq!(&got, body, "{rel}");
        assert_eq!(
            fs::read(m.local.join(rel)).unwrap(),
            *body,
            "{rel} underneath"
        );
    }
    assert!(fs::symlink_metadata(m.path("both")).unwrap().is_dir());
    for e in fs::read_dir(&m.mnt).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if let Err(err) = fs::symlink_metadata(e.path()) {
            panic!(
                "readdir lists {} ({} bytes), which cannot be looked up: {err}\n{}",
                &name[..name.len().min(40)],
                name.len(),
                m.log()
            );
        }
    }
    let mut root: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    root.sort();
    let long_listed = root.contains(&too_long);
    root.retain(|n| *n != too_long);
    let mut want_root: Vec<String> = vec![
        "both".into(),
        "with space".into(),
        "ünïcødé".into(),
        long_rel.split('/').next().unwrap().to_owned(),
    ];
    want_root.sort();
    assert_eq!(root, want_root, "{}", m.log());
    let log = m.log();
    assert!(
        log.lines()
            .any(|l| l.contains("bucket object not shown") && l.contains("key=both")),
        "{log}"
    );
    assert_nothing_outside(&m);
    // Checked last, so that the checks above run even if this one fails: the over-long name
    // is either refused (not listed), or listed and readable.
    if long_listed {
        let r = fs::read(m.path(&too_long));
        assert!(
            r.as_deref().ok() == Some(&b"x"[..]),
            "a 300-byte name is listed but reading it gives {r:?}\n{}",
            m.log()
        );
    }
    assert!(m.stop().success());
}

/// A PUT straight to the storage server (no auth: moto accepts unsigned requests), bypassing
/// every client-side key check: the request line carries `path` exactly as given. Written out
/// by hand because an HTTP client would not: URL parsing removes `.` and `..` segments (also
/// percent-encoded ones) before the request is sent.
fn raw_put(base: &str, path: &str, body: &[u8]) -> (u16, String) {
    let authority = base.strip_prefix("http://").expect("http URL");
    let authority = authority.split('/').next().unwrap();
    let mut conn = TcpStream::connect(authority).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(req.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// One unauthenticated request to `base` + `path` (moto and fake-gcs take them): (status,
/// body).
fn request(base: &str, method: reqwest::Method, path: &str, body: &[u8]) -> (u16, String) {
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap()
        .request(method, format!("{base}{path}"))
        .body(body.to_vec())
        .send()
        .unwrap_or_else(|e| panic!("{base}{path}: {e}"));
    (resp.status().as_u16(), resp.text().unwrap())
}

/// Percent-encodes everything but unreserved characters and `/`.
fn pct(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Writes `key` verbatim into the test bucket of `t` with raw HTTP (object_store refuses to
/// build such keys, which is itself evidence that etlfs never writes them): moto takes
/// unsigned requests, fake-gcs unauthenticated uploads (the name in the query, so no URL
/// normalization can touch it). Returns whether the server's own listing shows the key.
fn put_raw(t: &Target, kind: &str, key: &str) -> bool {
    let bucket = &t.server().bucket;
    match kind {
        "s3" => {
            let server =
                std::env::var("ETLFS_TEST_S3_SERVER").expect("run through scripts/test.sh");
            let (status, resp) = raw_put(&server, &format!("/{bucket}/{}", pct(key)), b"hostile");
            assert_eq!(status, 200, "raw PUT of {key:?}: {resp}");
            let (status, listing) = request(
                &server,
                reqwest::Method::GET,
                &format!("/{bucket}?list-type=2&prefix=etl/&encoding-type=url"),
                b"",
            );
            assert_eq!(status, 200, "{listing}");
            listing.contains(&format!("<Key>{}</Key>", pct(key)))
                || listing.contains(&format!("<Key>{}</Key>", pct(key).replace("%20", "+")))
        }
        "gcs" => {
            let server =
                std::env::var("ETLFS_TEST_GCS_SERVER").expect("run through scripts/test.sh");
            let name = pct(key).replace('/', "%2F");
            let (status, resp) = request(
                &server,
                reqwest::Method::POST,
                &format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}"),
                b"hostile",
            );
            assert_eq!(status, 200, "raw upload of {key:?}: {resp}");
            eprintln!("UPLOAD {}", &resp[..resp.len().min(400)]);
            let (status, listing) = request(
                &server,
                reqwest::Method::GET,
                &format!("/storage/v1/b/{bucket}/o?prefix=etl/"),
                b"",
            );
            assert_eq!(status, 200, "{listing}");
            eprintln!("{listing}");
            let want = serde_json::to_string(key).unwrap();
            listing.contains(&format!("\"name\":{want}"))
                || listing.contains(&format!("\"name\": {want}"))
        }
        "azure" => {
            // Signed by hand (Shared Key) over the raw path: object_store, like any URL
            // library, would normalize the dot segments away before signing.
            let out = Command::new("python3")
                .args(["-c", AZURE_RAW_PUT, bucket, key])
                .output()
                .expect("python3");
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && said.trim() == "201",
                "raw PUT of {key:?}: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Azurite's own listing is signed the same way; the mount's listing is the check.
            true
        }
        other => panic!("no raw writes for {other}"),
    }
}

/// `python3 -c AZURE_RAW_PUT CONTAINER NAME`: puts a block blob named NAME verbatim on the
/// test Azurite (Shared Key over the raw, unnormalized path); prints the HTTP status.
const AZURE_RAW_PUT: &str = r#"
import base64, email.utils, hashlib, hmac, http.client, os, sys, urllib.parse
endpoint = os.environ["ETLFS_TEST_AZURE_SERVER"]
account, key = os.environ["ETLFS_TEST_AZURE_ACCOUNT"], os.environ["ETLFS_TEST_AZURE_KEY"]
container, name = sys.argv[1], sys.argv[2]
u = urllib.parse.urlparse(endpoint)
path = f"{u.path}/{container}/" + urllib.parse.quote(name, safe="/.")
date, version, body = email.utils.formatdate(usegmt=True), "2021-08-06", b"hostile"
headers = f"x-ms-blob-type:BlockBlob\nx-ms-date:{date}\nx-ms-version:{version}"
to_sign = "\n".join(["PUT", "", "", str(len(body))] + [""] * 8 + [headers, f"/{account}{path}"])
mac = hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
conn.putrequest("PUT", path, skip_accept_encoding=True)
for k, v in [("x-ms-date", date), ("x-ms-version", version), ("x-ms-blob-type", "BlockBlob"),
             ("Authorization", f"SharedKey {account}:{base64.b64encode(mac).decode()}"),
             ("Content-Length", str(len(body)))]:
    conn.putheader(k, v)
conn.endheaders(body)
print(conn.getresponse().status)
"#;

/// Keys no local path can be — `..`, `.` and empty segments, ASCII control characters — under
/// the mount's prefix, beside sane ones in the same directories. One such key fails the whole
/// listing page it is on in object_store; etlfs lists around it: the mount comes up at once,
/// every other object is shown and readable, each bad key is named once in the log
/// (escaped), counted on /status and /metrics, and nothing is written outside the directory.
fn hostile_keys_block_nothing(kind: &str) {
    let t = target(kind);
    let store = t.store();
    let rt = rt();
    // Sane objects beside the bad ones, before and after them in listing order (written
    // first: the bucket is made on the first write).
    let good = [
        "etl/a/fine",
        "etl/good/file",
        "etl/good/zz-after",
        "etl/x/fine",
        "etl/zz",
    ];
    for g in good {
        rt.block_on(store.put(
            &Key::parse(g).unwrap(),
            PutPayload::from(g.as_bytes().to_vec()),
        ))
        .unwrap();
    }
    // Directory parts that cannot be paths (everything below is left out), and file names.
    // fake-gcs stores dot and empty segments but lists them cleaned up (`etl//double` as
    // `etl/double`), and an ESC not as itself in its XML listing: on GCS only the tab.
    // Azurite stores control characters but then fails every listing that would show them
    // (HTTP 500): on Azure only the segments.
    let all = [
        "etl/a/../../etc/x",
        "etl//double",
        "etl/x/./y",
        "etl/good/tab\there",
        "etl/good/esc\x1b[31mred",
    ];
    let hostile = match kind {
        "gcs" => &all[3..4],
        "azure" => &all[..3],
        _ => &all[..],
    };
    for bad in hostile {
        assert!(Key::parse(bad).is_err(), "object_store accepted {bad:?}");
        assert!(
            put_raw(&t, kind, bad),
            "{bad:?} not listed verbatim by {kind}"
        );
    }

    let port = common::free_port();
    let HandMount {
        tmp,
        mnt,
        log,
        mut guard,
        ..
    } = HandMount::start(&t, port);
    let text = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        poll(60, || common::is_mounted(&mnt)),
        "did not mount:\n{}",
        text()
    );
    for g in good {
        let rel = g.strip_prefix("etl/").unwrap();
        assert_eq!(
            fs::read(mnt.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}\n{}", text())),
            g.as_bytes()
        );
    }
    // Nothing else is shown: the directories hold exactly their sane entries.
    let names = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(mnt.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("good"), ["file", "zz-after"]);
    assert_eq!(names("x"), ["fine"]);
    assert_eq!(names("a"), ["fine"]);
    assert_eq!(names(""), ["a", "good", "x", "zz"]);

    // Each bad key named once, escaped (what is a directory part is named as such).
    let named = [
        ("etl/a/../", "etl/a/../"),
        ("etl//", "etl//"),
        ("etl/x/./", "etl/x/./"),
        ("etl/good/tab\there", "etl/good/tab\\there"),
        ("etl/good/esc\x1b[31mred", "etl/good/esc\\x1b[31mred"),
    ];
    let log_text = text();
    let mut refused = 0;
    for (raw_key, shown) in named {
        if !hostile.iter().any(|h| h.starts_with(raw_key)) {
            continue;
        }
        refused += 1;
        let lines = log_text
            .lines()
            .filter(|l| l.contains("bucket object not shown") && l.contains(shown))
            .count();
        assert_eq!(lines, 1, "{shown} named {lines} times:\n{log_text}");
    }
    assert!(
        !log_text.contains('\x1b'),
        "a raw control character reached the log"
    );
    let report = common::status(port);
    assert_eq!(report["index"]["refused_keys"], refused, "{report}");
    let metrics = common::metrics(port);
    assert!(
        metrics.contains(&format!("etlfs_bucket_keys_refused {refused}")),
        "{metrics}"
    );
    // The listing pages that failed on them are counted as such.
    let failed_pages: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("etlfs_bucket_requests_total{op=\"list\",outcome=\"invalid_key\"} ")
        })
        .unwrap_or_else(|| panic!("no list/invalid_key counter: {metrics}"))
        .parse()
        .unwrap();
    assert!(failed_pages >= 1.0, "{metrics}");

    // Nothing outside the directory, nothing local but the state.
    let mut beside: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    beside.sort();
    assert_eq!(beside, ["etlfs.log", "l", "m", "object-store.yaml"]);
    assert!(!Path::new("/tmp/etc/x").exists());
    let pid = rustix::process::Pid::from_raw(guard.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(guard.child.wait().unwrap().success(), "{}", text());
}

#[test]
fn hostile_keys_block_nothing_s3() {
    hostile_keys_block_nothing("s3");
}

#[test]
fn hostile_keys_block_nothing_azure() {
    hostile_keys_block_nothing("azure");
}

#[test]
fn hostile_keys_block_nothing_gcs() {
    hostile_keys_block_nothing("gcs");
}

/// etlfs mounted by hand (prefix `etl`, no prefetch, status on `port`) over a new empty
/// directory: in a temp dir of its own, `m` the mount, `l` the local directory, and beside them
/// its config and log, so a test sees anything written outside.
struct HandMount {
    tmp: tempfile::TempDir,
    mnt: std::path::PathBuf,
    log: std::path::PathBuf,
    guard: DaemonGuard,
}

impl HandMount {
    fn start(t: &Target, port: u16) -> HandMount {
        let tmp = tempfile::Builder::new()
            .prefix("etlfs")
            .tempdir_in("/tmp")
            .unwrap();
        let (mnt, local) = (tmp.path().join("m"), tmp.path().join("l"));
        fs::create_dir(&mnt).unwrap();
        fs::create_dir(&local).unwrap();
        let cfg = tmp.path().join("object-store.yaml");
        fs::write(&cfg, t.yaml()).unwrap();
        let log = tmp.path().join("etlfs.log");
        let child = Command::new(common::ETLFS)
            .env("ETLFS_LISTEN", format!("127.0.0.1:{port}"))
            .args(["mount", "--no-prefetch", "--prefix", "etl", "--config"])
            .arg(&cfg)
            .arg("--local")
            .arg(&local)
            .arg(&mnt)
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let guard = DaemonGuard {
            child,
            mnt: mnt.clone(),
        };
        HandMount {
            tmp,
            mnt,
            log,
            guard,
        }
    }
}

/// Stops a daemon started by hand and clears its mount, also when the test fails.
struct DaemonGuard {
    child: std::process::Child,
    mnt: std::path::PathBuf,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if common::is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}
