//! Restore with the network off the application's path, through real mounts on every backend:
//! requests that need a download are parked (no FUSE thread waits on the bucket), a stalled
//! bucket leaves local files alone, a killed waiter is answered, opens read their directory
//! ahead newest first, a new node prefetches by default and `/status` shows how far it is.
//!
//! A stall is real: the test's own front of the S3, Azure or GCS server is paused (it accepts
//! connections and answers nothing); on FILESYSTEM the objects are replaced by FIFOs, whose
//! open in the bucket's GET waits for a writer.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{self, bucket, servers};
use bucket::{Target, config_file, data, kubecost_read, poll};
use common::{ETLFS, Mounted, Opts, free_port, status};

crate::on_every_backend!(
    waiting_opens_leave_local_files_alone,
    a_killed_waiter_is_answered_at_once,
    an_open_reads_its_directory_ahead_newest_first,
    a_new_node_prefetches_everything_by_default,
    a_file_removed_or_renamed_while_downloading_stays_so,
);

/// A bucket for one test that can be made to hang.
struct Stallable {
    target: Target,
    /// FILESYSTEM: the objects replaced by FIFOs, and where their bodies wait.
    fifos: Vec<(PathBuf, PathBuf)>,
}

impl Stallable {
    fn new(kind: &str) -> Stallable {
        let target = match kind {
            "s3" => Target::Cloud(servers::s3_isolated()),
            "azure" => Target::Cloud(servers::azure_isolated()),
            "gcs" => Target::Cloud(servers::gcs_isolated()),
            other => bucket::target(other),
        };
        Stallable {
            target,
            fifos: Vec::new(),
        }
    }

    /// From now on a download of any of `rels` hangs (on a server: any request at all).
    fn stall(&mut self, rels: &[String]) {
        match &self.target {
            Target::Cloud(s) => s.pause(),
            Target::Filesystem(dir) => {
                for rel in rels {
                    let obj = dir.path().join(rel);
                    let saved = obj.with_extension("saved-by-test");
                    fs::rename(&obj, &saved).unwrap();
                    let c = CString::new(obj.to_str().unwrap()).unwrap();
                    rustix::fs::mkfifoat(rustix::fs::CWD, c.as_c_str(), 0o644.into()).unwrap();
                    self.fifos.push((obj, saved));
                }
            }
        }
    }

    /// Ends the stall. A server answers what waited; on FILESYSTEM the waiting GETs end with
    /// an empty body (which fails verification) and the objects are back for the next try.
    fn release(&mut self) {
        match &self.target {
            Target::Cloud(s) => s.resume(),
            Target::Filesystem(_) => {
                for (fifo, saved) in self.fifos.drain(..) {
                    // A writer that opens and closes ends every reader waiting in open (no
                    // reader waiting: ENXIO, nothing to end).
                    let _ = fs::OpenOptions::new()
                        .write(true)
                        .custom_flags_nonblock()
                        .open(&fifo);
                    fs::rename(&saved, &fifo).unwrap();
                }
            }
        }
    }
}

impl Drop for Stallable {
    fn drop(&mut self) {
        // FIFOs left behind would hold the mount's GETs (a server's front of its own is
        // removed with it).
        if !self.fifos.is_empty() {
            self.release();
        }
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NONBLOCK)
    }
}

/// `n` files of `len` bytes in `dir` (relative to the bucket root), day `i` old each (the
/// last is the newest): `(relative path, bytes, mtime)`.
fn files(dir: &str, n: u32, len: usize) -> Vec<(String, Vec<u8>, SystemTime)> {
    (0..n)
        .map(|i| {
            (
                format!("{dir}/f{i:03}"),
                data(1000 + u64::from(i), len),
                UNIX_EPOCH + Duration::from_secs(1_750_000_000 + u64::from(i) * 86_400),
            )
        })
        .collect()
}

/// Puts `files` into the bucket with `etlfs backup` (checksums and metadata as a mount's).
fn seed(t: &Target, files: &[(String, Vec<u8>, SystemTime)]) {
    let src = tempfile::tempdir().unwrap();
    for (rel, bytes, mtime) in files {
        let p = src.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        fs::File::open(&p).unwrap().set_modified(*mtime).unwrap();
    }
    let cfg = config_file(t);
    let out = Command::new(ETLFS)
        .args(["backup", "--config"])
        .arg(cfg.path())
        .arg(src.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etlfs backup: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mount of `t` over an empty directory (a new node) with a status server of its own.
fn mount(t: &Target, args: &[&str]) -> (Mounted, tempfile::NamedTempFile, u16) {
    let port = free_port();
    let (m, cfg) = bucket::mount_on(
        t,
        "100ms",
        Opts::default()
            .listen(port)
            .args(args.iter().copied())
            .separate_local()
            .log_filter("info,etlfs::engine::fetch=debug"),
    );
    (m, cfg, port)
}

/// A mount of `t` serving `dir` (what a previous mount left) with its own status server.
fn mount_over(t: &Target, dir: &Path) -> (Mounted, tempfile::NamedTempFile, u16) {
    let port = free_port();
    let (m, cfg) = bucket::mount_on(
        t,
        "100ms",
        Opts::default()
            .listen(port)
            .local(dir)
            .log_filter("info,etlfs::engine::fetch=debug"),
    );
    (m, cfg, port)
}

/// `/status` of the mount at `port`, as JSON.
fn waiting(port: u16) -> u64 {
    status(port)["restore"]["waiting_requests"]
        .as_u64()
        .unwrap_or(0)
}

/// Runs `f` on a thread and waits at most `secs` for it (the kernel may hang a request: a
/// test never waits on it without a deadline). `None` if it did not finish in time.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

/// With the bucket stalled and 16 applications waiting in opens of bucket-only files, every
/// kind of request on local files is answered; once the bucket is back the 16 opens finish.
fn waiting_opens_leave_local_files_alone(kind: &str) {
    let mut b = Stallable::new(kind);
    let remote = files("bingen/allocations/1d", 16, 20_000);
    seed(&b.target, &remote);
    // Four FUSE threads: before parking, four waiting opens were enough to freeze the mount.
    let (mut m, _cfg, port) = mount(
        &b.target,
        &["--no-prefetch", "--threads", "4", "--fetch-timeout", "0"],
    );
    fs::create_dir_all(m.path("local")).unwrap();
    fs::write(m.path("local/kept"), b"local bytes").unwrap();

    let rels: Vec<String> = remote.iter().map(|f| f.0.clone()).collect();
    b.stall(&rels);
    let readers: Vec<_> = remote
        .iter()
        .map(|(rel, _, _)| {
            let p = m.path(rel);
            thread::spawn(move || fs::read(p))
        })
        .collect();
    assert!(
        poll(30, || waiting(port) == 16),
        "16 opens should wait for their downloads; waiting: {}\n{}",
        waiting(port),
        m.log()
    );

    // Every one of these must answer while the 16 wait (20 s: time enough on a loaded
    // machine; without parking they hang until the bucket answers).
    let mnt = m.mnt.clone();
    let answered = within(20, move || {
        assert_eq!(fs::read(mnt.join("local/kept")).unwrap(), b"local bytes");
        assert!(
            fs::read_dir(mnt.join("bingen/allocations/1d"))
                .unwrap()
                .count()
                >= 16
        );
        assert_eq!(
            fs::metadata(mnt.join("bingen/allocations/1d/f003"))
                .unwrap()
                .len(),
            20_000
        );
        fs::write(mnt.join("local/new"), b"written during the stall").unwrap();
        fs::rename(mnt.join("local/new"), mnt.join("local/renamed")).unwrap();
        fs::create_dir(mnt.join("local/sub")).unwrap();
        fs::read(mnt.join("local/renamed")).unwrap()
    });
    let local_ok = answered.as_deref() == Some(b"written during the stall".as_slice());
    b.release();
    assert!(
        local_ok,
        "local requests hung or failed while opens waited for the bucket\n{}",
        m.log()
    );

    let mut got = Vec::new();
    for r in readers {
        got.push(within(60, move || r.join().unwrap()).expect("a waiting open never ended"));
    }
    match kind {
        // The server answered what waited: every open got its file.
        "s3" | "azure" | "gcs" => {
            for ((_, want, _), res) in remote.iter().zip(got) {
                assert!(res.unwrap() == *want);
            }
        }
        // The FIFOs gave the waiting GETs nothing: EIO, and the next open succeeds.
        _ => {
            for res in got {
                assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EIO));
            }
            for (rel, want, _) in &remote {
                assert!(kubecost_read(&m.path(rel)).unwrap() == *want);
            }
        }
    }
    assert_eq!(waiting(port), 0);
    assert!(m.stop().success(), "{}", m.log());
}

/// An application killed while it waits for a download exits at once (the kernel keeps a
/// killed thread in a FUSE request until it is answered), and the mount stays healthy.
fn a_killed_waiter_is_answered_at_once(kind: &str) {
    let mut b = Stallable::new(kind);
    let remote = files("bingen/assets/1d", 2, 30_000);
    seed(&b.target, &remote);
    let (mut m, _cfg, port) = mount(&b.target, &["--no-prefetch", "--fetch-timeout", "0"]);
    b.stall(&[remote[0].0.clone()]);
    let mut cat = Command::new("cat")
        .arg(m.path(&remote[0].0))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let parked = poll(30, || waiting(port) == 1);
    let pid = rustix::process::Pid::from_raw(cat.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let exited = poll(20, || cat.try_wait().unwrap().is_some());
    b.release();
    if !exited {
        let _ = cat.wait(); // ends with the release
    }
    assert!(
        parked,
        "the open did not wait for its download\n{}",
        m.log()
    );
    assert!(
        exited,
        "the killed cat still hung in open while the bucket was stalled\n{}",
        m.log()
    );
    assert!(poll(30, || waiting(port) == 0), "{}", m.log());
    // The download the killed cat started is over (on FILESYSTEM it failed: the FIFO gave it
    // nothing, and an open joining it would share its EIO); the file is still there to read.
    assert!(
        poll(30, || status(port)["restore"]["downloading"] == 0),
        "{}",
        m.log()
    );
    for (rel, want, _) in &remote {
        assert!(kubecost_read(&m.path(rel)).unwrap() == *want);
    }
    assert!(m.stop().success(), "{}", m.log());
}

/// The paths of the "fetched from the bucket" log lines, in order.
fn fetched(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("fetched from the bucket"))
        .filter_map(|l| {
            let rest = l.split_once("path=")?.1;
            Some(rest.split_once(' ').map_or(rest, |(p, _)| p).to_owned())
        })
        .collect()
}

/// An open of a bucket-only file queues the rest of its directory behind it, newest first;
/// other directories are left alone (no prefetch here).
fn an_open_reads_its_directory_ahead_newest_first(kind: &str) {
    let b = Stallable::new(kind);
    let dir = "bingen/allocations/1d";
    let remote = files(dir, 6, 10_000);
    let elsewhere = files("bingen/other/1d", 2, 1_000);
    seed(&b.target, &[remote.clone(), elsewhere.clone()].concat());
    // One worker: downloads run in queue order, one at a time.
    let (mut m, _cfg, _port) = mount(&b.target, &["--no-prefetch", "--fetch-concurrency", "1"]);
    // The application opens the oldest file.
    assert!(kubecost_read(&m.path(&remote[0].0)).unwrap() == remote[0].1);
    // (The log line of a download follows its rename into place: wait for the lines.)
    let all_fetched = || fetched(&m.log()).len() >= remote.len();
    assert!(
        poll(30, all_fetched),
        "readahead did not bring the directory\n{}",
        m.log()
    );
    let mut want = vec![remote[0].0.clone()];
    want.extend(remote[1..].iter().rev().map(|f| f.0.clone()));
    assert_eq!(fetched(&m.log()), want, "{}", m.log());
    for (rel, bytes, _) in &remote {
        assert!(fs::read(m.local.join(rel)).unwrap() == *bytes);
    }
    for (rel, _, _) in &elsewhere {
        assert!(
            !m.local.join(rel).exists(),
            "{rel} was fetched without being read"
        );
    }
    assert!(m.stop().success(), "{}", m.log());
}

/// A new node copies every bucket-only file back by itself; `/status`, `/metrics` and
/// `etlfs status` show how far it is. Under `--max-local-bytes` it stops at the bound (which
/// also holds it mid-way for the test, whatever the machine's speed).
fn a_new_node_prefetches_everything_by_default(kind: &str) {
    let b = Stallable::new(kind);
    let remote = [
        vec![(
            "top".to_string(),
            data(9, 123),
            UNIX_EPOCH + Duration::from_secs(1_760_000_000),
        )],
        files("bingen/allocations/1d", 20, 8_000),
        files("bingen/assets/1h", 5, 50_000),
    ]
    .concat();
    seed(&b.target, &remote);
    let total: u64 = remote.iter().map(|f| f.1.len() as u64).sum();

    // Bounded to 100,000 bytes: `top` and the newest allocations fit, the rest waits.
    let (mut m, _cfg, port) = mount(&b.target, &["--max-local-bytes", "100000"]);
    assert!(
        poll(60, || status(port)["restore"]["prefetch"] == "bounded"),
        "{}\n{}",
        status(port),
        m.log()
    );
    let mid = status(port);
    let r = &mid["restore"];
    let left = r["files_left"].as_u64().unwrap();
    assert!((13..remote.len() as u64).contains(&left), "{mid}");
    let bytes_left = r["bytes_left"].as_u64().unwrap();
    assert!(bytes_left < total && bytes_left >= total - 100_000, "{mid}");
    assert!(mid["local"]["bytes"].as_u64().unwrap() <= 100_000, "{mid}");
    // Newest first: the oldest allocation and every asset are still only in the bucket.
    assert!(m.local.join("top").exists());
    assert!(m.local.join("bingen/allocations/1d/f019").exists());
    assert!(!m.local.join("bingen/allocations/1d/f000").exists());
    assert!(!m.local.join("bingen/assets/1h/f004").exists());
    let metrics = common::metrics(port);
    assert!(
        metrics.contains(&format!("etlfs_restore_bytes_left {bytes_left}")),
        "{metrics}"
    );
    assert!(metrics.contains("etlfs_prefetch_running 0"), "{metrics}");
    let out = Command::new(ETLFS)
        .args(["status", "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("restore:  {left} files"))
            && text.contains("only in the bucket")
            && text.contains("prefetch bounded"),
        "{text}"
    );
    assert!(m.stop().success(), "{}", m.log());

    // Without a bound the same node copies the rest by itself.
    let (mut m2, _cfg2, port2) = mount_over(&b.target, &m.local);
    let done = || {
        let s = status(port2);
        s["restore"]["prefetch"] == "done" && s["restore"]["files_left"] == 0
    };
    assert!(poll(60, done), "{}\n{}", status(port2), m2.log());
    for (rel, want, mtime) in &remote {
        let p = m.local.join(rel);
        assert!(fs::read(&p).unwrap() == *want, "{rel}");
        assert_eq!(
            fs::metadata(&p).unwrap().modified().unwrap(),
            *mtime,
            "{rel}"
        );
    }
    let end = status(port2);
    assert_eq!(end["restore"]["bytes_left"], 0, "{end}");
    assert_eq!(
        end["restore"]["eta_seconds"],
        serde_json::Value::Null,
        "{end}"
    );
    assert!(m2.stop().success(), "{}", m2.log());
}

/// An unlink or rename of a bucket-only file whose download is under way wins: the download,
/// when it lands, does not bring the file back under its old name (the rename's waiting open
/// gets the file under its new one).
fn a_file_removed_or_renamed_while_downloading_stays_so(kind: &str) {
    let mut b = Stallable::new(kind);
    let remote = files("bingen/allocations/1d", 2, 40_000);
    seed(&b.target, &remote);
    let (a, bb) = (&remote[0].0, &remote[1].0);
    let (mut m, _cfg, port) = mount(&b.target, &["--no-prefetch", "--fetch-timeout", "0"]);
    b.stall(&[a.clone(), bb.clone()]);
    // The open of `a` waits; `b` is read ahead behind it.
    let reader = {
        let p = m.path(a);
        thread::spawn(move || fs::read(p))
    };
    let parked = poll(30, || waiting(port) == 1);
    let renamed = format!("{a}-renamed");
    let mnt = m.mnt.clone();
    let (from, to, gone) = (a.clone(), renamed.clone(), bb.clone());
    let changed = within(20, move || {
        fs::rename(mnt.join(&from), mnt.join(&to))?;
        fs::remove_file(mnt.join(&gone))
    });
    b.release();
    assert!(parked, "the open did not wait\n{}", m.log());
    assert!(
        matches!(changed, Some(Ok(()))),
        "rename and unlink of files being downloaded: {changed:?}\n{}",
        m.log()
    );
    let got = within(60, move || reader.join().unwrap()).expect("the waiting open never ended");
    match (kind, got) {
        (_, Ok(bytes)) => assert!(bytes == remote[0].1),
        // The FIFO's empty body failed that download; the file is intact in the bucket.
        ("filesystem", Err(e)) => assert_eq!(e.raw_os_error(), Some(libc::EIO)),
        (_, Err(e)) => panic!("the open of the renamed file failed: {e}\n{}", m.log()),
    }
    assert!(poll(60, || common::mirror_idle(port)), "{}", m.log());
    // Whatever the downloads did when they landed: the old names stay gone.
    assert!(
        !m.local.join(a).exists(),
        "the renamed file came back\n{}",
        m.log()
    );
    assert!(
        !m.local.join(bb).exists(),
        "the removed file came back\n{}",
        m.log()
    );
    let names: Vec<String> = fs::read_dir(m.path("bingen/allocations/1d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["f000-renamed"], "{}", m.log());
    assert!(kubecost_read(&m.path(&renamed)).unwrap() == remote[0].1);
    assert!(m.stop().success(), "{}", m.log());
    let rt = bucket::rt();
    let keys: Vec<String> = bucket::snapshot(&rt, b.target.store().as_ref(), None)
        .into_keys()
        .filter(|k| !k.ends_with(".etlfs-dir"))
        .collect();
    assert_eq!(keys, [renamed], "bucket after the drain");
}
