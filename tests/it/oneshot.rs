//! `etlfs backup`, `etlfs restore` and `etlfs verify` against real object-storage servers on
//! 127.0.0.1 (moto S3, Azurite), through the binary: a directory backed up, wiped and restored
//! comes back byte for byte with its modes, mtimes and empty directories; a second backup of an
//! unchanged directory uploads nothing; restore keeps newer local files unless `--force`;
//! verify exits 0 on a clean state and 1 naming every difference, including an object whose
//! bytes were changed behind its metadata; a bucket written by the one-shot commands is read
//! by a mount and the other way round.
//!
//! The servers are started by scripts/test.sh; each test gets a bucket of its own.

use std::ffi::OsStr;
use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{self, bucket};
use bucket::{config_file, data, kubecost_write, rt, snapshot, target, wipe};
use common::{Opts, Run, workdir};
use object_store::path::Path as Key;
use object_store::{GetOptions, PutOptions, PutPayload};

/// Above the 16 MiB single-PUT limit: sent (and restored) as a multipart upload.
const BIG: usize = 17 * 1024 * 1024 + 123;

/// Runs `etlfs CMD [--config CFG] EXTRA... DIR`.
fn etlfs(cmd: &str, cfg: Option<&Path>, extra: &[&str], dir: &Path) -> Run {
    let mut args: Vec<&OsStr> = vec![cmd.as_ref()];
    if let Some(cfg) = cfg {
        args.extend([OsStr::new("--config"), cfg.as_os_str()]);
    }
    args.extend(extra.iter().map(OsStr::new));
    args.push(dir.as_os_str());
    common::run(args)
}

/// A file of the test tree.
struct Spec {
    rel: &'static str,
    data: Vec<u8>,
    mode: u32,
    mtime: SystemTime,
}

fn spec(rel: &'static str, len: usize, mode: u32, i: u32) -> Spec {
    Spec {
        rel,
        data: data(u64::from(i) + 1, len),
        mode,
        // Distinct, old, with nanoseconds: a restore that keeps only the download time, or
        // rounds, shows.
        mtime: UNIX_EPOCH + Duration::new(1_704_067_200 + u64::from(i) * 86_400, 123_456_789 + i),
    }
}

/// Kubecost-like: nested directories, several sizes (empty, small, > 16 MiB), a 0600 file.
fn tree() -> Vec<Spec> {
    vec![
        spec(
            "bingen/allocations/1d/1704110400-1704196800",
            200_000,
            0o600,
            0,
        ),
        spec(
            "bingen/allocations/1h/1704110400-1704114000",
            5_000,
            0o644,
            1,
        ),
        spec("bingen/assets/1d/1704110400-1704196800", 0, 0o640, 2),
        spec("bingen/assets/1d/big", BIG, 0o644, 3),
        spec("top", 1, 0o600, 4),
    ]
}

const EMPTY_DIRS: [&str; 2] = ["bingen/assets/1w", "empty"];

fn write_file(dir: &Path, s: &Spec) {
    let p = dir.join(s.rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, &s.data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(s.mode)).unwrap();
    set_mtime(&p, s.mtime);
}

fn set_mtime(p: &Path, t: SystemTime) {
    File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_times(FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

fn write_tree(dir: &Path, files: &[Spec], empty_dirs: &[&str]) {
    for s in files {
        write_file(dir, s);
    }
    for d in empty_dirs {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
}

/// Bytes, mode and mtime (to the nanosecond) of every file; the empty directories exist.
fn check_tree(dir: &Path, files: &[Spec], empty_dirs: &[&str]) {
    for s in files {
        let p = dir.join(s.rel);
        let got = fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        assert!(got == s.data, "{}: bytes differ", s.rel);
        let md = fs::metadata(&p).unwrap();
        assert_eq!(md.mode() & 0o7777, s.mode, "{}: mode", s.rel);
        assert_eq!(md.modified().unwrap(), s.mtime, "{}: mtime", s.rel);
    }
    for d in empty_dirs {
        let p = dir.join(d);
        assert!(p.is_dir(), "{d}: not restored");
        assert_eq!(fs::read_dir(&p).unwrap().count(), 0, "{d}: not empty");
    }
}

fn round_trip(kind: &str) {
    let t = target(kind);
    let cfg = config_file(&t);
    let cfg = Some(cfg.path());
    let (_tmp, dir) = workdir("etl");
    let files = tree();
    write_tree(&dir, &files, &EMPTY_DIRS);
    let prefix = ["--prefix", "etl"];

    let r = etlfs("backup", cfg, &prefix, &dir);
    r.assert_ok("first backup");
    let s = r.summary("backup");
    assert!(
        s.contains("uploaded=5 ") && s.contains("failures=0"),
        "first backup: {s}"
    );
    // Plain objects under the prefix, a marker for each directory with nothing else in it.
    let keys = snapshot(&rt(), t.store().as_ref(), None);
    for f in &files {
        let key = format!("etl/{}", f.rel);
        assert!(keys.get(&key) == Some(&f.data), "{key} missing or wrong");
    }
    for d in EMPTY_DIRS {
        assert!(
            keys.contains_key(&format!("etl/{d}/.etlfs-dir")),
            "{d}: no marker"
        );
    }

    let r = etlfs("backup", cfg, &prefix, &dir);
    r.assert_ok("second backup");
    let s = r.summary("backup");
    assert!(
        s.contains("uploaded=0 ") && s.contains("unchanged=5 ") && s.contains("dirs_marked=0 "),
        "an unchanged directory must upload nothing: {s}"
    );

    etlfs("verify", cfg, &prefix, &dir).assert_ok("verify after backup");

    wipe(&dir);
    let r = etlfs("restore", cfg, &prefix, &dir);
    r.assert_ok("restore");
    let s = r.summary("restore");
    assert!(s.contains("downloaded=5 "), "restore: {s}");
    check_tree(&dir, &files, &EMPTY_DIRS);
    let leftovers: Vec<_> = fs::read_dir(dir.join(".etlfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");

    let r = etlfs("verify", cfg, &prefix, &dir);
    r.assert_ok("verify after restore");
    assert_eq!(r.stdout, "", "no differences expected");
    // A second restore has nothing to do.
    let r = etlfs("restore", cfg, &prefix, &dir);
    r.assert_ok("second restore");
    assert!(r.summary("restore").contains("downloaded=0 "));
}

#[test]
fn backup_wipe_restore_verify_round_trip_s3() {
    round_trip("s3");
}

#[test]
fn backup_wipe_restore_verify_round_trip_azure() {
    round_trip("azure");
}

#[test]
fn restore_keeps_newer_local_files_unless_forced() {
    let t = target("s3");
    let cfg = config_file(&t);
    let cfg = Some(cfg.path());
    let (_tmp, dir) = workdir("etl");
    let [newer, older] = [
        spec("d/newer", 3_000, 0o600, 0),
        spec("d/older", 3_000, 0o644, 1),
    ];
    write_tree(&dir, std::slice::from_ref(&newer), &[]);
    write_tree(&dir, std::slice::from_ref(&older), &[]);
    etlfs("backup", cfg, &[], &dir).assert_ok("backup");

    // Changed locally since the backup: one later (the newest data), one earlier.
    let local_new = b"written after the backup".to_vec();
    fs::write(dir.join(newer.rel), &local_new).unwrap();
    set_mtime(
        &dir.join(newer.rel),
        newer.mtime + Duration::from_secs(3600),
    );
    fs::write(dir.join(older.rel), b"stale").unwrap();
    set_mtime(
        &dir.join(older.rel),
        older.mtime - Duration::from_secs(3600),
    );

    let r = etlfs("restore", cfg, &[], &dir);
    r.assert_ok("restore");
    assert!(
        r.summary("restore").contains("kept_newer=1 ")
            && r.summary("restore").contains("downloaded=1 "),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(dir.join(newer.rel)).unwrap(), local_new);
    assert!(r.stderr.contains("d/newer"), "the kept file is named");
    check_tree(&dir, std::slice::from_ref(&older), &[]);

    let r = etlfs("restore", cfg, &["--force"], &dir);
    r.assert_ok("restore --force");
    assert!(
        r.summary("restore").contains("downloaded=1 "),
        "{}",
        r.stderr
    );
    check_tree(&dir, std::slice::from_ref(&newer), &[]);
}

#[test]
fn verify_names_every_difference() {
    let t = target("s3");
    let store = t.store();
    let cfg = config_file(&t);
    let cfg = Some(cfg.path());
    let (_tmp, dir) = workdir("etl");
    let files = [
        spec("d/victim", 200_000, 0o600, 0),
        spec("d/fine", 5_000, 0o644, 1),
        spec("gone", 10, 0o644, 2),
    ];
    write_tree(&dir, &files, &[]);
    etlfs("backup", cfg, &[], &dir).assert_ok("backup");
    let r = etlfs("verify", cfg, &[], &dir);
    r.assert_ok("verify of a clean state");
    assert_eq!(r.stdout, "");

    // Different bytes of the same length, the metadata (size, checksum) kept: only reading
    // the bytes shows it.
    let rt = rt();
    let key = Key::parse("d/victim").unwrap();
    let head = GetOptions {
        head: true,
        ..Default::default()
    };
    let attrs = rt.block_on(store.get_opts(&key, head)).unwrap().attributes;
    let mut bad = files[0].data.clone();
    for b in &mut bad[100_000..100_016] {
        *b = !*b;
    }
    let opts = PutOptions {
        attributes: attrs,
        ..Default::default()
    };
    rt.block_on(store.put_opts(&key, PutPayload::from(bad), opts))
        .unwrap();
    let r = etlfs("verify", cfg, &[], &dir);
    assert_eq!(r.code, 1, "a tampered object: {}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert!(r.stdout.starts_with("differs: d/victim ("), "{}", r.stdout);

    fs::write(dir.join("d/new"), b"only here").unwrap();
    fs::remove_file(dir.join("gone")).unwrap();
    fs::create_dir(dir.join("emptydir")).unwrap();
    let r = etlfs("verify", cfg, &[], &dir);
    assert_eq!(r.code, 1);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    assert!(lines.contains(&"only-local: d/new"), "{}", r.stdout);
    assert!(lines.contains(&"only-local: emptydir/"), "{}", r.stdout);
    assert!(lines.contains(&"only-bucket: gone"), "{}", r.stdout);
    assert!(lines.iter().any(|l| l.starts_with("differs: d/victim")));
    assert!(
        r.summary("verify").contains("differences=4"),
        "{}",
        r.stderr
    );
}

/// Objects the one-shot commands write are what a mount reads, and the other way round.
#[test]
fn mount_and_oneshot_commands_share_the_bucket() {
    let t = target("s3");
    let cfg = config_file(&t);
    let (_tmp, dir) = workdir("etl");
    let files = [spec("a/one", 100_000, 0o600, 0), spec("two", 7, 0o644, 1)];
    write_tree(&dir, &files, &[]);
    etlfs("backup", Some(cfg.path()), &["--prefix", "etl"], &dir).assert_ok("backup");

    let opts = Opts::default().args(["--prefix", "etl"]);
    let (mut m, _mcfg) = bucket::mount_on(&t, "100ms", opts);
    for s in &files {
        assert!(
            fs::read(m.path(s.rel)).unwrap() == s.data,
            "{}: through the mount",
            s.rel
        );
        let md = fs::metadata(m.path(s.rel)).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.modified().unwrap()),
            (s.mode, s.mtime),
            "{}",
            s.rel
        );
    }
    kubecost_write(&m.path("a/three"), b"written through the mount").unwrap();
    let st = m.stop();
    assert!(st.success(), "mount: {st}\n{}", m.log());

    let r = etlfs("verify", Some(cfg.path()), &["--prefix", "etl"], &m.local);
    r.assert_ok("verify of the mount's directory");
    assert_eq!(r.stdout, "");
}

#[test]
fn bad_directory_or_config_is_exit_2() {
    let (_tmp, dir) = workdir("etl");
    for cmd in ["backup", "restore", "verify"] {
        let r = etlfs(cmd, None, &[], &dir.join("missing"));
        assert_eq!(r.code, 2, "{cmd}: {}", r.stderr);
        assert!(r.stderr.contains("missing"), "{cmd}: {}", r.stderr);
        let r = etlfs(cmd, Some(&dir.join("nope.yaml")), &[], &dir);
        assert_eq!(r.code, 2, "{cmd}: {}", r.stderr);
        assert!(r.stderr.contains("nope.yaml"), "{cmd}: {}", r.stderr);
    }
}

/// Without --config the embedded FILESYSTEM bucket beside the directory is used, with the
/// same warning as `mount`.
#[test]
fn default_bucket_is_beside_the_directory() {
    let (tmp, dir) = workdir("etl");
    let files = tree();
    write_tree(&dir, &files[..2], &EMPTY_DIRS);
    let r = etlfs("backup", None, &[], &dir);
    r.assert_ok("backup");
    assert!(r.stderr.contains("no --config"), "{}", r.stderr);
    assert!(tmp.path().join(".etl.etlfs-bucket").is_dir());
    wipe(&dir);
    etlfs("restore", None, &[], &dir).assert_ok("restore");
    check_tree(&dir, &files[..2], &EMPTY_DIRS);
    etlfs("verify", None, &[], &dir).assert_ok("verify");
}

/// `backup`, `verify` and `restore --force` read every file to upload or checksum it: no such
/// read moves a file's (or a walked directory's) access time.
#[test]
fn oneshot_reads_leave_access_times_alone() {
    let (_tmp, dir) = workdir("etl");
    fs::create_dir(dir.join("d")).unwrap();
    fs::write(dir.join("d/f"), b"checked, not accessed").unwrap();
    // Long past: under relatime any read would move it now.
    let old = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for p in [dir.join("d/f"), dir.join("d")] {
        File::open(&p)
            .unwrap()
            .set_times(FileTimes::new().set_accessed(old))
            .unwrap();
    }
    etlfs("backup", None, &[], &dir).assert_ok("backup");
    etlfs("verify", None, &[], &dir).assert_ok("verify");
    etlfs("restore", None, &["--force"], &dir).assert_ok("restore --force");
    for rel in ["d/f", "d"] {
        let atime = fs::metadata(dir.join(rel)).unwrap().accessed().unwrap();
        assert_eq!(atime, old, "{rel}");
    }
}

crate::on_every_backend!(the_first_mount_after_a_backup_uploads_nothing);

/// A directory put into the bucket by `etlfs backup` and then mounted in place: the mount finds
/// every file already in the bucket (the backup's manifest vouches for each object, and the
/// bytes match) and uploads none of them again. A file changed before the mount is uploaded.
fn the_first_mount_after_a_backup_uploads_nothing(kind: &str) {
    let t = target(kind);
    let cfg = config_file(&t);
    let (_tmp, dir) = workdir("etl");
    let files = tree();
    write_tree(&dir, &files, &[]);
    etlfs("backup", Some(cfg.path()), &[], &dir).assert_ok("backup");
    // Changed after the backup, same size and mtime: only the checksum can tell.
    let changed = &files[0];
    let mut other = changed.data.clone();
    other[0] ^= 0xff;
    fs::write(dir.join(changed.rel), &other).unwrap();
    set_mtime(&dir.join(changed.rel), changed.mtime);

    let port = common::free_port();
    let opts = Opts::on(cfg.path())
        .listen(port)
        .local(&dir)
        .upload_delay("100ms");
    let mut m = common::Mounted::with(opts);
    assert!(
        bucket::poll(60, || m
            .log()
            .contains("reconciled the directory with the bucket")),
        "{}",
        m.log()
    );
    assert!(
        m.log()
            .contains("reconciled the directory with the bucket to_upload=1"),
        "{}",
        m.log()
    );
    assert!(
        bucket::poll(60, || common::mirror_idle(port)),
        "{}",
        m.log()
    );
    let snap = snapshot(&rt(), t.store().as_ref(), None);
    assert!(snap.get(changed.rel) == Some(&other), "{}", m.log());
    let status = common::status(port);
    assert_eq!(status["uploads"]["done"], 1, "{status}");
    assert!(m.stop().success(), "{}", m.log());
}
