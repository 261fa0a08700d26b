//! A full local disk: a 4 MiB tmpfs as the served directory (state directory inside, as by
//! default), mirrored to S3 (moto, started by scripts/test.sh). The application gets ENOSPC
//! for what does not fit; etlfs keeps running and answering; the application can still delete
//! and rename on the full disk (the journal keeps space reserved), and when even that runs out
//! — hundreds of renames piled up during a bucket outage — the operation is refused with ENOSPC
//! and nothing half-done is left: after the outage and a restart, the bucket holds exactly the
//! local files, every acknowledged removal and rename carried out, nothing already in the
//! bucket lost.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::common::{self, ETLFS, bucket, servers};
use bucket::{Target, data, kubecost_read, kubecost_write, poll, wait_for};

const ENOSPC: i32 = 28;

/// The file that fills the disk. The journal refuses an intent when its line does not fit in
/// what is left of its last block; the removal of this file must be refused right after a
/// rename was, so its line must be at least as long as any rename's of the test. The lines
/// differ only where a removal has `"path":"<BIG>` and a rename `"from":"sub/r19","to":"sub/r119`.
const BIG: &str = "big-file-that-fills-the-whole-disk";
const _: () = assert!(BIG.len() >= r#"sub/r19","to":"sub/r119"#.len());

/// A small tmpfs, unmounted (lazily, whatever holds it) on drop.
struct SmallDisk {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etl");
        fs::create_dir(&dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs needs root");
        SmallDisk { _tmp: tmp, dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // etlfs first (mounted over the tmpfs), then the tmpfs.
        while Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success())
        {}
    }
}

/// `etlfs mount` over `dir`, run directly (the served directory is a mount of its own).
struct Etlfs {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: PathBuf,
}

impl Etlfs {
    fn start(dir: &Path, cfg: &Path, log: &Path) -> Etlfs {
        let port = common::free_port();
        let child = Command::new(ETLFS)
            .args(["mount", "--upload-delay", "100ms", "--drain-timeout", "30s"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(cfg)
            .arg(dir)
            .env("RUST_LOG", "info")
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let e = Etlfs {
            child,
            port,
            log: log.to_owned(),
            dir: dir.to_owned(),
        };
        assert!(
            poll(30, || common::is_mounted(dir)),
            "etlfs did not mount: {}",
            e.log()
        );
        e
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM: unmount, drain, exit 0.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "etlfs exit {st:?}: {}", self.log());
        assert!(!common::is_mounted(&self.dir));
    }
}

impl Drop for Etlfs {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Writes 64 KiB chunks to `path` until ENOSPC; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(w) => n += w as u64,
            Err(e) => {
                assert_eq!(errno(&e), ENOSPC, "{e}");
                return n;
            }
        }
    }
}

#[test]
fn full_disk_is_enospc_for_the_application_and_nothing_else() {
    let server = servers::s3_isolated();
    let t = Target::Cloud(server);
    let rt = bucket::rt();
    let store = t.store();
    let cfg = bucket::config_file(&t);
    let disk = SmallDisk::new("4m");
    let logf = disk._tmp.path().join("etlfs.log");
    let mut e = Etlfs::start(&disk.dir, cfg.path(), &logf);
    let d = &disk.dir;

    let keep1 = data(1, 256 * 1024);
    let keep2 = data(2, 256 * 1024);
    kubecost_write(&d.join("keep1"), &keep1).unwrap();
    kubecost_write(&d.join("keep2"), &keep2).unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    for i in 0..20 {
        kubecost_write(&d.join(format!("sub/r{i}")), &data(10 + i, 1000)).unwrap();
    }
    let snap = wait_for(&rt, &*store, None, 30, |s| {
        s.get("keep1") == Some(&keep1) && s.get("keep2") == Some(&keep2) && s.len() >= 22
    });
    assert_eq!(snap.get("keep1"), Some(&keep1), "{}", e.log());

    // Fill the disk: the application gets ENOSPC, etlfs goes on.
    let filled = fill(&d.join(BIG));
    assert!(filled > 0 && filled < 4 << 20, "{filled}");
    let mut i = 0;
    while fs::write(d.join(format!("tiny{i}")), b"x").is_ok() {
        i += 1;
        assert!(i < 100_000, "never full?");
    }
    assert!(e.alive(), "etlfs died on a full disk: {}", e.log());
    assert_eq!(kubecost_read(&d.join("keep1")).unwrap(), keep1);
    assert!(fs::metadata(d.join(BIG)).is_ok());

    // Deleting and renaming still work on the full disk (the journal's reserve).
    fs::remove_file(d.join("keep2")).unwrap();
    fs::rename(d.join("keep1"), d.join("keep1-renamed")).unwrap();

    // A restart (the drain saves the upload records) before the outage: from then on nothing
    // can change the records until the bucket is back, so etlfs writes nothing in the state
    // directory but the journal. (A save of the records in flight when the journal runs out
    // would hand blocks back — its temporary, or the records file it replaces — and let the
    // removal below through.)
    let logged = e.log().len();
    e.stop();
    let log = fs::read_to_string(&logf).unwrap();
    assert!(
        !log[logged..].contains("could not save the upload records"),
        "{log}"
    );
    let mut e = Etlfs::start(d, cfg.path(), &logf);
    // The start's own work (the reconcile, a manifest, a save of the records) ends before the
    // outage: a save of the records during it would hand blocks back.
    assert!(
        poll(120, || common::mirror_idle(e.port)),
        "the restarted mount never went idle: {}",
        e.log()
    );

    // An outage piles intents up in the journal until even its reserve is used: then a
    // rename is refused with ENOSPC, and the file stays where it was.
    let Target::Cloud(server) = &t else {
        unreachable!()
    };
    server.stop();
    let mut renamed = 0;
    let refused = loop {
        let from = d.join(format!("sub/r{}", renamed % 20));
        let to = d.join(format!("sub/r{}", renamed % 20 + 100));
        let (from, to) = if renamed / 20 % 2 == 0 {
            (from, to)
        } else {
            (to, from)
        };
        match fs::rename(&from, &to) {
            Ok(()) => renamed += 1,
            Err(err) => {
                assert_eq!(errno(&err), ENOSPC, "{err}");
                assert!(
                    from.exists() && !to.exists(),
                    "a refused rename did something"
                );
                break true;
            }
        }
        if renamed > 20_000 {
            break false;
        }
    };
    assert!(refused, "20,000 renames never filled the journal");
    assert!(renamed >= 200, "the reserve held only {renamed} intents");
    assert!(e.alive(), "{}", e.log());

    // A removal is an intent too, so with the journal's reserve used up it is refused as
    // well; truncating is not (nothing in the bucket needs to go), and frees the space.
    let err = fs::remove_file(d.join(BIG)).unwrap_err();
    assert_eq!(errno(&err), ENOSPC, "{err}");
    assert!(d.join(BIG).exists());
    fs::OpenOptions::new()
        .write(true)
        .open(d.join(BIG))
        .unwrap()
        .set_len(0)
        .unwrap();
    fs::remove_file(d.join(BIG)).unwrap();

    // End the outage, restart: everything converges.
    server.start();
    kubecost_write(&d.join("after"), b"written after the disk was full").unwrap();
    e.stop();
    assert!(
        !logf.exists()
            || !fs::read_to_string(&logf)
                .unwrap()
                .contains("damaged journal line"),
        "torn journal lines"
    );
    let e = Etlfs::start(d, cfg.path(), &logf);
    let local = local_files(d);
    let matches = |s: &std::collections::BTreeMap<String, Vec<u8>>| {
        let files: std::collections::BTreeMap<_, _> = s
            .iter()
            .filter(|(k, _)| !k.ends_with(".etlfs-dir"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        files == local
    };
    // Thousands of journaled renames are carried out one after the other: on a loaded machine
    // that takes most of a minute, so the deadline is generous.
    let snap = wait_for(&rt, &*store, None, 300, matches);
    let keys: Vec<_> = snap.keys().filter(|k| !k.ends_with(".etlfs-dir")).collect();
    assert!(
        matches(&snap),
        "bucket {keys:?}\nlocal {:?}\n{}",
        local.keys(),
        e.log()
    );
    assert_eq!(
        snap.get("keep1-renamed"),
        Some(&keep1),
        "nothing already in the bucket lost"
    );
    assert!(!snap.contains_key("keep2") && !snap.contains_key("keep1"));
    assert!(!e.log().contains("damaged journal line"), "{}", e.log());
    e.stop();
}

/// Every regular file under `d` (state directory excluded): relative path → bytes.
fn local_files(d: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![d.to_owned()];
    while let Some(dir) = stack.pop() {
        for ent in fs::read_dir(&dir).unwrap() {
            let ent = ent.unwrap();
            let p = ent.path();
            let rel = p.strip_prefix(d).unwrap().to_string_lossy().into_owned();
            if rel == ".etlfs" {
                continue;
            }
            if ent.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}
