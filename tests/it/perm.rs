//! Permissions through real mounts, where the filesystem underneath checks every request as
//! its caller (etlfs mounts without `default_permissions` when it runs as root in the initial
//! PID namespace, as these tests do): supplementary groups count and the lack of them refuses,
//! POSIX ACLs are honoured, names the kernel cached do not let anyone past a directory they may
//! not search, `execve` needs execute permission only, and a file that is only in the bucket
//! gets the answer it will get once local — before anything is downloaded or emptied.
//!
//! The callers are made with `setpriv` (util-linux) from numeric ids, so no users need to
//! exist; `setfacl` comes from Debian's `acl` (scripts/test.sh installs both).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Mounted, Opts, bucket};

/// Runs `script` with `sh` in `dir` as `uid`:`gid` with exactly the supplementary `groups`.
fn as_user(uid: u32, gid: u32, groups: &[u32], dir: &Path, script: &str) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.args(["sh", "-c", script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux) must be installed")
}

/// `as_user` that must succeed; returns its stdout.
fn allowed(uid: u32, gid: u32, groups: &[u32], dir: &Path, script: &str) -> String {
    let out = as_user(uid, gid, groups, dir, script);
    assert!(
        out.status.success(),
        "{uid}:{gid} groups {groups:?} was refused `{script}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `as_user` that must fail with "Permission denied".
fn refused(uid: u32, gid: u32, groups: &[u32], dir: &Path, script: &str) {
    let out = as_user(uid, gid, groups, dir, script);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "{uid}:{gid} groups {groups:?} was not refused `{script}`: {} {err}",
        out.status
    );
}

/// `refused`, for a change that reaches the kernel's cache of names a moment after the
/// change returned (etlfs makes the names expire right after its reply, see
/// `fs/fuse/permissions.rs`): polls up to a generous deadline, then it must stay refused.
fn refused_soon(uid: u32, gid: u32, dir: &Path, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while as_user(uid, gid, &[], dir, script).status.success() {
        assert!(
            Instant::now() < deadline,
            "{uid}:{gid} still allowed `{script}` 30 s after the change"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    refused(uid, gid, &[], dir, script);
}

fn setfacl(args: &[&str]) {
    let out = Command::new("setfacl")
        .args(args)
        .output()
        .expect("setfacl (Debian package acl) must be installed");
    assert!(
        out.status.success(),
        "setfacl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_supplementary_group_lets_in_and_outsiders_are_refused() {
    let mut m = Mounted::new();
    let team = m.path("team");
    fs::create_dir(&team).unwrap();
    chown(&team, 0, 6101);
    chmod(&team, 0o2770);
    fs::write(team.join("plan"), b"the plan\n").unwrap();
    chown(&team.join("plan"), 0, 6101);
    chmod(&team.join("plan"), 0o660);
    let mnt = m.mnt.clone();

    // 5101 is in group 6101 only as a supplementary group (its own gid is 5101).
    refused(5101, 5101, &[], &mnt, "cat team/plan");
    refused(5101, 5101, &[6102], &mnt, "ls team");
    assert_eq!(
        allowed(5101, 5101, &[6101], &mnt, "cat team/plan"),
        "the plan\n"
    );
    allowed(5101, 5101, &[6101], &mnt, "echo more >> team/plan");
    allowed(5101, 5101, &[6101], &mnt, "echo new > team/note");
    // access(2) asks etlfs, which asks the filesystem as the caller.
    allowed(5101, 5101, &[6101], &mnt, "test -w team/plan");
    let out = as_user(
        5101,
        5101,
        &[],
        &mnt,
        "test -r /proc/self/status && test -r team/plan",
    );
    assert!(
        !out.status.success(),
        "test -r answered yes for an outsider"
    );
    // The new file is the caller's, with the set-gid directory's group, as natively.
    let note = fs::metadata(m.local.join("team/note")).unwrap();
    assert_eq!((note.uid(), note.gid()), (5101, 6101));
    assert_eq!(
        fs::read_to_string(m.local.join("team/plan")).unwrap(),
        "the plan\nmore\n"
    );
    // An owner gets the owner's bits, even where everyone else may more.
    fs::write(mnt.join("mine"), b"mine\n").unwrap();
    chown(&mnt.join("mine"), 5101, 5101);
    chmod(&mnt.join("mine"), 0o077);
    refused(5101, 5101, &[], &mnt, "cat mine");
    assert_eq!(allowed(5102, 5102, &[], &mnt, "cat mine"), "mine\n");
    chmod(&mnt.join("mine"), 0o600);
    assert_eq!(allowed(5101, 5101, &[], &mnt, "cat mine"), "mine\n");
    allowed(5101, 5101, &[], &mnt, "echo more >> mine");
    refused(5102, 5102, &[], &mnt, "cat mine");
    // Removing needs write permission on the directory: the member may, the outsider not.
    refused(5102, 5102, &[], &mnt, "rm -f team/note");
    allowed(5102, 5102, &[6101], &mnt, "rm team/note");
    assert!(m.stop().success());
}

#[test]
fn names_cached_before_a_change_let_nobody_past_a_directory() {
    let mut m = Mounted::new();
    let mnt = m.mnt.clone();
    fs::create_dir(mnt.join("open")).unwrap();
    fs::create_dir(mnt.join("locked")).unwrap();
    chmod(&mnt.join("locked"), 0o700);
    fs::write(mnt.join("open/doc"), b"doc\n").unwrap();
    fs::write(mnt.join("moved"), b"moved\n").unwrap();
    // The user walks to both files, so the kernel holds their names.
    assert_eq!(allowed(5201, 5201, &[], &mnt, "cat open/doc"), "doc\n");
    assert_eq!(allowed(5201, 5201, &[], &mnt, "cat moved"), "moved\n");
    // The directory closes, a file moves into a closed one: the cached names do not help.
    chmod(&mnt.join("open"), 0o700);
    fs::rename(mnt.join("moved"), mnt.join("locked/moved")).unwrap();
    refused_soon(5201, 5201, &mnt, "cat open/doc");
    refused_soon(5201, 5201, &mnt, "cat locked/moved");
    // Root walks through them (caching nothing for others), then reopens one to everyone.
    assert_eq!(fs::read(mnt.join("locked/moved")).unwrap(), b"moved\n");
    refused(5201, 5201, &[], &mnt, "cat locked/moved");
    chmod(&mnt.join("open"), 0o711);
    assert_eq!(allowed(5201, 5201, &[], &mnt, "cat open/doc"), "doc\n");
    assert!(m.stop().success());
}

#[test]
fn execve_needs_execute_permission_and_not_read_permission() {
    let mut m = Mounted::new();
    let mnt = m.mnt.clone();
    let program = fs::read(which::which("true").unwrap()).unwrap();
    for (name, mode) in [("run-only", 0o711), ("owner-only", 0o744)] {
        fs::write(mnt.join(name), &program).unwrap();
        chmod(&mnt.join(name), mode);
    }
    allowed(5301, 5301, &[], &mnt, "./run-only");
    refused(5301, 5301, &[], &mnt, "cat run-only");
    refused(5301, 5301, &[], &mnt, "./owner-only");
    assert!(m.stop().success());
}

#[test]
fn a_posix_acl_for_a_named_user_is_honoured() {
    // ACLs are extended attributes: setting them through the mount needs --xattrs.
    let mut m = Mounted::with(Opts::default().arg("--xattrs"));
    let mnt = m.mnt.clone();
    fs::create_dir(mnt.join("private")).unwrap();
    chmod(&mnt.join("private"), 0o700);
    fs::write(mnt.join("private/report"), b"figures\n").unwrap();
    chmod(&mnt.join("private/report"), 0o600);
    refused(5401, 5401, &[], &mnt, "cat private/report");

    let report = mnt.join("private/report");
    setfacl(&["-m", "u:5401:x", mnt.join("private").to_str().unwrap()]);
    setfacl(&["-m", "u:5401:r", report.to_str().unwrap()]);
    assert_eq!(
        allowed(5401, 5401, &[], &mnt, "cat private/report"),
        "figures\n"
    );
    refused(5401, 5401, &[], &mnt, "echo no >> private/report");
    refused(5402, 5402, &[], &mnt, "cat private/report");
    // The ACL is on the file underneath, where the filesystem keeps it.
    let acl = Command::new("getfacl")
        .args(["-c", m.local.join("private/report").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&acl.stdout).contains("user:5401:r--"));

    // A default ACL, not the umask, shapes what is created in its directory, as natively.
    fs::create_dir(mnt.join("shared")).unwrap();
    setfacl(&[
        "-d",
        "-m",
        "u::rwx,g::rwx,o::rwx",
        mnt.join("shared").to_str().unwrap(),
    ]);
    allowed(
        0,
        0,
        &[],
        &mnt,
        "umask 077 && touch shared/wide && mkdir shared/sub",
    );
    let mode = |p: &str| fs::metadata(mnt.join(p)).unwrap().mode() & 0o777;
    assert_eq!((mode("shared/wide"), mode("shared/sub")), (0o666, 0o777));
    allowed(0, 0, &[], &mnt, "umask 077 && touch narrow");
    assert_eq!(mode("narrow"), 0o600);
    assert!(m.stop().success());
}

/// Puts `files` (path, bytes) into the bucket of `t` with `etlfs backup`, each owned by
/// `uid`:`gid` with `mode`: the owner and mode a restore gives them back.
fn seed(t: &bucket::Target, files: &[(&str, &[u8])], (uid, gid): (u32, u32), mode: u32) {
    let src = tempfile::tempdir().unwrap();
    for (rel, bytes) in files {
        let p = src.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        chown(&p, uid, gid);
        chmod(&p, mode);
    }
    let cfg = bucket::config_file(t);
    crate::common::run([
        "backup".as_ref(),
        "--config".as_ref(),
        cfg.path().as_os_str(),
        src.path().as_os_str(),
    ])
    .assert_ok("etlfs backup");
}

#[test]
fn a_bucket_only_file_is_checked_before_it_is_downloaded() {
    let t = bucket::target("filesystem");
    let files: [(&str, &[u8]); 2] = [("data/ledger", b"ledger\n"), ("data/keep", b"keep\n")];
    // Owner 5501, group 6501, rw-r-----.
    seed(&t, &files, (5501, 6501), 0o640);
    let (mut m, _cfg) = bucket::mount_on(
        &t,
        "100ms",
        Opts::default().arg("--no-prefetch").separate_local(),
    );
    let mnt = m.mnt.clone();
    let local = |rel: &str| m.local.join(rel);

    // An outsider: refused, also by access(2), and nothing is downloaded for it.
    refused(5502, 5502, &[], &mnt, "cat data/ledger");
    let out = as_user(5502, 5502, &[], &mnt, "test -r data/ledger");
    assert!(
        !out.status.success(),
        "test -r answered yes for an outsider"
    );
    assert!(
        !local("data/ledger").exists(),
        "downloaded for a refused open"
    );
    // A member of the group may read, not write: an O_TRUNC open is refused before the file
    // is emptied.
    allowed(
        5502,
        5502,
        &[6501],
        &mnt,
        "test -r data/keep && ! test -w data/keep",
    );
    refused(5502, 5502, &[6501], &mnt, ": > data/keep");
    assert!(
        !local("data/keep").exists(),
        "made local for a refused truncate"
    );
    assert_eq!(
        allowed(5502, 5502, &[6501], &mnt, "cat data/keep"),
        "keep\n"
    );

    // Once local, the filesystem gives the same answers.
    let st = fs::metadata(local("data/keep")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o777), (5501, 6501, 0o640));
    refused(5502, 5502, &[], &mnt, "cat data/keep");
    refused(5502, 5502, &[6501], &mnt, ": > data/keep");
    assert_eq!(
        allowed(5501, 5501, &[], &mnt, "cat data/ledger"),
        "ledger\n"
    );
    assert!(m.stop().success());
}

/// An etlfs mount whose daemon runs in a PID namespace of its own (`unshare --pid --fork`), as
/// in a container: it cannot identify callers outside it, so the kernel checks. Unmounted when
/// dropped, also on failure.
struct Contained {
    dir: tempfile::TempDir,
    unshare: std::process::Child,
    log: std::path::PathBuf,
}

impl Contained {
    fn start() -> Contained {
        let dir = tempfile::Builder::new()
            .prefix("etlfs")
            .tempdir_in("/tmp")
            .unwrap();
        let mnt = dir.path().join("m");
        fs::create_dir(&mnt).unwrap();
        let log = dir.path().join("etlfs.log");
        let unshare = Command::new("unshare")
            // SIGTERM to unshare reaches etlfs, which stops cleanly.
            .args([
                "--pid",
                "--fork",
                "--kill-child=TERM",
                crate::common::ETLFS,
                "mount",
            ])
            .arg(&mnt)
            .env("RUST_LOG", "info")
            .env("ETLFS_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("unshare (util-linux) must be installed");
        let c = Contained { dir, unshare, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !crate::common::is_mounted(&c.mnt()) {
            assert!(
                Instant::now() < deadline,
                "not mounted after 60 s:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    fn mnt(&self) -> std::path::PathBuf {
        self.dir.path().join("m")
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        // unshare ignores SIGTERM while it waits for its child: etlfs is told directly.
        let id = self.unshare.id();
        let children = fs::read_to_string(format!("/proc/{id}/task/{id}/children"));
        for child in children.unwrap_or_default().split_whitespace() {
            if let Some(pid) = child.parse().ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::common::is_mounted(&self.mnt()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if crate::common::is_mounted(&self.mnt()) {
            let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

#[test]
fn in_a_pid_namespace_of_its_own_the_kernel_checks() {
    let c = Contained::start();
    let mnt = c.mnt();
    let opts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = opts
        .lines()
        .find(|l| l.contains(mnt.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} not in mountinfo", mnt.display()));
    assert!(line.contains("default_permissions"), "{line}");
    assert!(
        c.log().contains("permissions: checked by the kernel"),
        "{}",
        c.log()
    );

    // The kernel checks with all of the caller's groups; the new file is still the caller's.
    let team = mnt.join("team");
    fs::create_dir(&team).unwrap();
    chown(&team, 0, 6601);
    chmod(&team, 0o770);
    refused(5601, 5601, &[], &mnt, "echo x > team/f");
    allowed(5601, 5601, &[6601], &mnt, "echo x > team/f");
    let st = fs::metadata(team.join("f")).unwrap();
    assert_eq!((st.uid(), st.gid()), (5601, 5601));
}
