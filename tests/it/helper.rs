//! The mount(8) face of etlfs, through the real `mount(8)` and the real binary installed as its
//! helper (`/sbin/mount.fuse.etlfs`, a link made for the test and removed after it; whatever
//! was there is put back): `mount -t fuse.etlfs`, fstab lines (`mount -T FSTAB MNT`, `mount
//! -a`), the `-o` options, `--background` (the command returns once the mount is ready, and lets
//! go of its output), and who may use the mount (`allow_other`, the default, against
//! `noallow_other`, checked as another uid with `setpriv`).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use crate::common::{self, ETLFS, Mounted, bucket};
use bucket::poll;

/// Where `mount(8)` looks for the helper of type `fuse.etlfs` (only there, not on `$PATH`).
const LINK: &str = "/sbin/mount.fuse.etlfs";
/// Where an existing helper is kept while a test replaces it.
const SAVED: &str = "/sbin/mount.fuse.etlfs.etlfs-test-saved";

/// The helper link to the binary under test, for one test at a time (a lock file in /tmp, also
/// across test binaries), removed when dropped.
struct HelperLink {
    _lock: fs::File,
}

impl HelperLink {
    fn install() -> HelperLink {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/etlfs-test-mount-helper.lock")
            .unwrap();
        let flags = rustix::fs::FlockOperation::NonBlockingLockExclusive;
        assert!(
            poll(600, || rustix::fs::flock(&lock, flags).is_ok()),
            "another test held the mount helper for 10 minutes"
        );
        match fs::symlink_metadata(LINK) {
            // Left by an interrupted test, whose restore did not run: the saved one is the
            // original.
            Ok(_) if Path::new(SAVED).exists() => fs::remove_file(LINK).unwrap(),
            Ok(_) => fs::rename(LINK, SAVED).unwrap(),
            Err(_) => {}
        }
        std::os::unix::fs::symlink(ETLFS, LINK).unwrap();
        HelperLink { _lock: lock }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = fs::remove_file(LINK);
        if Path::new(SAVED).exists() {
            let _ = fs::rename(SAVED, LINK);
        }
    }
}

/// A mount point and the object-store.yaml of a FILESYSTEM bucket, for a mount made by
/// `mount(8)`; unmounts and stops its daemon when dropped, also after a failure.
struct Fixture {
    tmp: tempfile::TempDir,
    target: bucket::Target,
    mnt: PathBuf,
    cfg: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("etlfs-helper")
            .tempdir_in("/tmp")
            .unwrap();
        let target = bucket::target("filesystem");
        let mnt = tmp.path().join("m");
        fs::create_dir(&mnt).unwrap();
        let cfg = tmp.path().join("object-store.yaml");
        fs::write(&cfg, target.yaml()).unwrap();
        Fixture {
            tmp,
            target,
            mnt,
            cfg,
        }
    }

    /// The fields of each /proc/self/mountinfo line for our mount point: (mount options,
    /// source, super options).
    fn mounts(&self) -> Vec<(String, String, String)> {
        let want = self.mnt.to_string_lossy();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let sep = f.iter().position(|x| *x == "-")?;
                (f[4] == want).then(|| (f[5].into(), f[sep + 2].into(), f[sep + 3].into()))
            })
            .collect()
    }

    /// The processes serving this mount point: helpers (`mount.fuse.etlfs ... MNT ...`) by
    /// their command line.
    fn daemons(&self) -> Vec<u32> {
        let mnt = self.mnt.as_os_str();
        let mut out = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&OsStr> = cmdline
                .split(|b| *b == 0)
                .map(std::os::unix::ffi::OsStrExt::from_bytes)
                .collect();
            let helper = args
                .first()
                .and_then(|a| Path::new(a).file_name())
                .is_some_and(|n| n == "mount.fuse.etlfs");
            if helper && args.contains(&mnt) {
                out.push(pid);
            }
        }
        out
    }

    /// Waits up to 60 s for every daemon of the mount point to exit.
    fn wait_daemons_gone(&self) {
        assert!(
            poll(60, || self.daemons().is_empty()),
            "the daemon did not exit: {:?}",
            self.daemons()
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if common::is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        for pid in self.daemons() {
            let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if !poll(10, || self.daemons().is_empty()) {
            for pid in self.daemons() {
                let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Runs `mount ARGS` (or another command) to its end and reads its output to the end, within
/// `secs`: a helper that returned but left a daemon holding the output pipe fails this.
fn run(program: &str, args: &[&OsStr], secs: u64) -> (ExitStatus, String) {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => {
            let Output { status, stderr, .. } = out.unwrap();
            (status, String::from_utf8_lossy(&stderr).into_owned())
        }
        Err(_) => {
            let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            panic!("`{program} {args:?}` did not finish (or did not close its output) in {secs} s");
        }
    }
}

fn mount(args: &[&OsStr]) -> (ExitStatus, String) {
    run("mount", args, 120)
}

fn umount(mnt: &Path) {
    let (st, err) = run("umount", &[mnt.as_os_str()], 60);
    assert!(st.success(), "umount: {err}");
}

/// `sh -c script` as uid and gid 65534 (nobody), without supplementary groups.
fn as_nobody(script: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("setpriv (util-linux) runs")
}

#[test]
fn mount_t_fuse_etlfs_returns_once_ready_and_the_daemon_mirrors() {
    let _link = HelperLink::install();
    let f = Fixture::new();
    let port = common::free_port();
    let opts =
        format!("prefix=etl,upload_delay=100ms,listen=127.0.0.1:{port},_netdev,nofail,noatime");
    let (st, err) = mount(&[
        "-t".as_ref(),
        "fuse.etlfs".as_ref(),
        f.cfg.as_os_str(),
        f.mnt.as_os_str(),
        "-o".as_ref(),
        opts.as_ref(),
    ]);
    assert!(st.success(), "mount failed ({st}):\n{err}");
    // Ready when mount(8) returns: mounted, answering, the status server says so.
    assert!(common::is_mounted(&f.mnt), "{err}");
    assert!(common::ready(port), "{err}");
    let mounts = f.mounts();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let (options, source, super_options) = &mounts[0];
    assert_eq!(
        source,
        &f.cfg.display().to_string(),
        "the fsname is the source"
    );
    for o in ["nosuid", "nodev", "noatime"] {
        assert!(options.split(',').any(|x| x == o), "{o} in {options}");
    }
    assert!(super_options.contains("allow_other"), "{super_options}");

    // The daemon: its own session, and no longer on mount's output.
    let daemons = f.daemons();
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    let pid = daemons[0];
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let session: u32 = after_name.split(' ').nth(3).unwrap().parse().unwrap();
    assert_eq!(session, pid, "the daemon leads a session of its own");
    for fd in [0, 1, 2] {
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }

    bucket::kubecost_write(&f.mnt.join("hello.txt"), b"through mount(8)").unwrap();
    let rt = bucket::rt();
    let store = f.target.store();
    let snap = bucket::wait_for(&rt, &*store, Some("etl"), 60, |s| {
        s.get("etl/hello.txt").map(Vec::as_slice) == Some(b"through mount(8)".as_slice())
    });
    assert!(snap.contains_key("etl/hello.txt"), "{snap:?}");

    umount(&f.mnt);
    f.wait_daemons_gone();
    assert!(!common::is_mounted(&f.mnt));
}

#[test]
fn an_fstab_line_mounts_once_and_noallow_other_keeps_other_users_out() {
    let _link = HelperLink::install();
    let f = Fixture::new();
    let port = common::free_port();
    let log = f.tmp.path().join("etlfs.log");
    let fstab = f.tmp.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# etlfs over a test directory\n{} {} fuse.etlfs prefix=etl,listen=127.0.0.1:{port},\
             noallow_other,log_file={},x-systemd.requires=network-online.target,_netdev 0 0\n",
            f.cfg.display(),
            f.mnt.display(),
            log.display()
        ),
    )
    .unwrap();
    let (st, err) = mount(&["-T".as_ref(), fstab.as_os_str(), f.mnt.as_os_str()]);
    assert!(st.success(), "mount -T failed ({st}):\n{err}");
    assert!(common::ready(port), "{err}");
    let mounts = f.mounts();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert!(!mounts[0].2.contains("allow_other"), "{mounts:?}");
    // Root serves itself; nobody else gets in.
    fs::write(f.mnt.join("root.txt"), b"x").unwrap();
    let denied = as_nobody(&format!("cat {}/root.txt", f.mnt.display()));
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "{denied:?}"
    );

    // mount -a finds the line mounted (by its source, the fsname; it would mount it again,
    // and fail, otherwise); mounting it again by hand is refused.
    let (st, err) = mount(&["-a".as_ref(), "-T".as_ref(), fstab.as_os_str()]);
    assert!(st.success(), "mount -a ({st}):\n{err}");
    let (st, err) = mount(&["-T".as_ref(), fstab.as_os_str(), f.mnt.as_os_str()]);
    assert!(!st.success(), "mounted twice:\n{err}");
    assert!(err.contains("already mounted"), "{err}");
    assert_eq!(f.mounts().len(), 1, "{:?}", f.mounts());

    umount(&f.mnt);
    f.wait_daemons_gone();
    // After the mount was ready, the log went on in the log file.
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("stopped cleanly"), "{text}");
}

#[test]
fn bad_options_and_a_bad_source_are_refused_by_name_and_nothing_stays() {
    let _link = HelperLink::install();
    let f = Fixture::new();
    let cases: [(&OsStr, &str, &str); 4] = [
        (
            f.cfg.as_os_str(),
            "rw,prefix=etl,noatine",
            "unknown mount option `noatine`",
        ),
        (f.cfg.as_os_str(), "upload_delay", "upload_delay=VALUE"),
        (
            f.cfg.as_os_str(),
            "config=/etc/other.yaml",
            "`config=/etc/other.yaml`",
        ),
        // Caught by the daemon before the mount: its message reaches mount(8)'s caller.
        (
            "/nonexistent/object-store.yaml".as_ref(),
            "prefix=etl",
            "/nonexistent/object-store.yaml",
        ),
    ];
    for (source, opts, want) in cases {
        let (st, err) = mount(&[
            "-t".as_ref(),
            "fuse.etlfs".as_ref(),
            source,
            f.mnt.as_os_str(),
            "-o".as_ref(),
            opts.as_ref(),
        ]);
        assert!(!st.success(), "-o {opts} mounted:\n{err}");
        assert!(
            err.contains(want),
            "-o {opts}: expected {want:?} in:\n{err}"
        );
        assert!(!common::is_mounted(&f.mnt), "-o {opts}");
        assert!(f.daemons().is_empty(), "-o {opts}: a daemon stayed");
    }
}

#[test]
fn the_fuse3_form_is_refused_with_the_way_to_install_the_helper() {
    // fuse3's mount.fuse runs `etlfs SRC MNT -o OPTS` (adding suid,dev) without the link.
    let (st, err) = run(
        ETLFS,
        &[
            "/etc/etlfs/object-store.yaml".as_ref(),
            "/var/configs/db/etl".as_ref(),
            "-o".as_ref(),
            "rw,dev,suid".as_ref(),
        ],
        30,
    );
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("ln -s "), "{err}");
    assert!(err.contains("/sbin/mount.fuse.etlfs"), "{err}");
}

#[test]
fn allow_other_is_the_default_so_another_uid_can_write() {
    // Kubecost's cost-model writes as its own uid while etlfs mounts as root.
    let m = Mounted::new();
    let shared = m.path("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let out = as_nobody(&format!("echo hi > {}/by-nobody", shared.display()));
    assert!(out.status.success(), "{out:?}");
    let meta = fs::metadata(shared.join("by-nobody")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
    assert!(
        common::is_mounted(&m.mnt)
            && fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .any(|l| l.contains(&*m.mnt.to_string_lossy()) && l.contains("allow_other"))
    );
}

#[test]
fn background_reports_a_failed_start_with_its_exit_code() {
    // `etlfs mount --background` directly: a bad invocation is reported by the daemon, and its
    // exit code (2) is the command's.
    let (tmp, dir) = common::workdir("m");
    let (st, err) = run(
        ETLFS,
        &[
            "mount".as_ref(),
            "--background".as_ref(),
            "--listen=127.0.0.1:0".as_ref(),
            "-o".as_ref(),
            "ro,bogus".as_ref(),
            dir.as_os_str(),
        ],
        60,
    );
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("`bogus`"), "{err}");
    let missing = tmp.path().join("missing");
    let (st, err) = run(
        ETLFS,
        &[
            "mount".as_ref(),
            "--background".as_ref(),
            "--listen=127.0.0.1:0".as_ref(),
            missing.as_os_str(),
        ],
        60,
    );
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(!common::is_mounted(&dir));
}
