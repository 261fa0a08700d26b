//! Real FUSE mounts of the `etlfs` binary over temporary directories.
//!
//! Each behaviour test runs twice, in passthrough mode (the default) and in daemon mode
//! (`--no-passthrough`), because the two serve reads, writes and mmap through entirely
//! different kernel paths.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common;
use common::{Mounted, Opts, is_mounted};
use rustix::fs::{FlockOperation, RenameFlags};
use rustix::io::Errno;

fn mount(mode: Mode) -> Mounted {
    Mounted::with(mode.opts())
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Passthrough,
    Daemon,
}

impl Mode {
    fn opts(self) -> Opts {
        match self {
            Mode::Passthrough => Opts::default(),
            Mode::Daemon => Opts::default().arg("--no-passthrough"),
        }
    }
}

/// Generates `<name>_passthrough` and `<name>_daemon` from `fn <name>(mode: Mode)`.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod in_passthrough_mode { $( #[test] fn $name() { super::$name(super::Mode::Passthrough) } )* }
        mod in_daemon_mode { $( #[test] fn $name() { super::$name(super::Mode::Daemon) } )* }
    };
}

both_modes!(
    kubecost_write_pattern,
    temp_file_and_rename_pattern,
    read_write_append_trunc_excl,
    setattr_chmod_chown_truncate_utimens,
    directories_and_readdir,
    rename_variants,
    links_symlinks_fifos,
    xattrs_pass_through_with_the_flag,
    xattrs_refused_by_default,
    fallocate_and_seek_data_hole,
    flock_and_fcntl_locks,
    shared_writable_mmap,
    a_mapped_write_moves_the_times_stat_shows,
    fsync_and_fsyncdir,
    statfs_reports_the_disk_underneath,
    state_dir_is_invisible,
    o_direct_reads_and_writes,
    read_only_mount_refuses_every_change,
    noatime_reads_leave_the_access_time_alone,
    a_running_program_is_never_truncated,
);

/// A program running from the mount cannot be truncated (ETXTBSY), not even by an
/// `O_RDONLY | O_TRUNC` open — which the kernel checks only after the filesystem's open, and
/// which etlfs' open would otherwise carry out first (killing the program with SIGSEGV).
fn a_running_program_is_never_truncated(mode: Mode) {
    let m = mount(mode);
    let p = m.path("sleep");
    fs::copy("/bin/sleep", &p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    let size = fs::metadata(&p).unwrap().len();
    // `spawn` returns once the program has been executed.
    let mut child = std::process::Command::new(&p).arg("60").spawn().unwrap();
    use rustix::fs::OFlags;
    for flags in [OFlags::WRONLY, OFlags::RDWR, OFlags::RDONLY | OFlags::TRUNC] {
        let err = rustix::fs::open(&p, flags, rustix::fs::Mode::empty()).unwrap_err();
        assert_eq!(err, Errno::TXTBSY, "{flags:?}");
    }
    assert_eq!(
        fs::metadata(&p).unwrap().len(),
        size,
        "truncated while running"
    );
    assert!(child.try_wait().unwrap().is_none(), "the program died");
    child.kill().unwrap();
    child.wait().unwrap();
    // Once it has stopped, O_TRUNC works again: as soon as the kernel's RELEASE of the
    // program's file reaches etlfs, which it sends on its own time after the exit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let truncated = loop {
        match fs::OpenOptions::new().write(true).truncate(true).open(&p) {
            Err(e) if errno_of(&e) == libc::ETXTBSY && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => break other,
        }
    };
    truncated.unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Kubecost's exact write pattern (OpenCost `WriteLocked`), then its read pattern.
fn kubecost_write_pattern(mode: Mode) {
    let m = mount(mode);
    let dir = m.path("bingen/allocations/1d");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("1704110400-1704196800");
    for round in 0..3u8 {
        let data = vec![round + 1; 64 * 1024 + usize::from(round) * 100];
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            // Kubecost opens without O_TRUNC and truncates under the lock.
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .unwrap();
        rustix::fs::flock(&f, FlockOperation::LockExclusive).unwrap();
        f.set_len(0).unwrap();
        let mut f = f;
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&data).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        rustix::fs::flock(&f, FlockOperation::Unlock).unwrap();
        drop(f);

        // Reader: open, LOCK_SH, whole read sized from stat.
        let mut r = File::open(&path).unwrap();
        rustix::fs::flock(&r, FlockOperation::LockShared).unwrap();
        let size = r.metadata().unwrap().len() as usize;
        let mut back = Vec::with_capacity(size);
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, data, "round {round}");
    }
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    drop(m);
}

fn temp_file_and_rename_pattern(mode: Mode) {
    let m = mount(mode);
    fs::write(m.path("target"), b"old").unwrap();
    for i in 0..20 {
        let tmp = m.path(&format!(".target.tmp{i}"));
        fs::write(&tmp, format!("version {i}")).unwrap();
        fs::rename(&tmp, m.path("target")).unwrap();
        assert_eq!(
            fs::read_to_string(m.path("target")).unwrap(),
            format!("version {i}")
        );
        assert!(!tmp.exists());
    }
    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["target"]);
}

fn read_write_append_trunc_excl(mode: Mode) {
    let mut m = mount(mode);
    let p = m.path("f");
    fs::write(&p, b"hello world").unwrap();
    // O_APPEND
    let mut a = OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b"!!").unwrap();
    drop(a);
    assert_eq!(fs::read(&p).unwrap(), b"hello world!!");
    // pwrite in the middle, pread
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(b"W", 6).unwrap();
    let mut buf = [0u8; 5];
    f.read_exact_at(&mut buf, 6).unwrap();
    assert_eq!(&buf, b"World");
    drop(f);
    // O_TRUNC
    let mut t = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(t.metadata().unwrap().len(), 0);
    t.write_all(b"new").unwrap();
    drop(t);
    assert_eq!(fs::read(&p).unwrap(), b"new");
    // O_EXCL
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EEXIST);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("g"))
        .unwrap();
    // A large file crosses many FUSE requests in daemon mode.
    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.path("big"), &big).unwrap();
    assert_eq!(fs::read(m.path("big")).unwrap(), big);
    // The bytes are in the local file underneath after unmounting.
    let local = m.local.clone();
    assert!(m.stop().success());
    assert_eq!(fs::read(local.join("big")).unwrap(), big);
    assert_eq!(fs::read(local.join("f")).unwrap(), b"new");
}

fn setattr_chmod_chown_truncate_utimens(mode: Mode) {
    let m = mount(mode);
    let p = m.path("f");
    fs::write(&p, b"0123456789").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    // truncate by path (no handle) and by handle
    let st = Command::new("truncate")
        .args(["-s", "4"])
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::read(&p).unwrap(), b"0123");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(6).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"0123\0\0");
    // (Before the last change of f's ctime, the set_times below, however long the steps in
    // between take; the slack covers the coarse clock of file times.)
    let before = SystemTime::now() - Duration::from_secs(5);
    // utimens with explicit times
    let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    let f = File::options().write(true).open(&p).unwrap();
    f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
    drop(f);
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.modified().unwrap(), t);
    assert_eq!(md.accessed().unwrap(), t);
    // utimens "now" on a symlink itself
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    let st = rustix::fs::lstat(m.path("l")).unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
    rustix::fs::utimensat(
        rustix::fs::CWD,
        m.path("l"),
        &rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1_600_000_000,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 1_600_000_000,
                tv_nsec: 0,
            },
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    assert_eq!(
        fs::symlink_metadata(m.path("l")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        fs::metadata(&p).unwrap().mtime(),
        1_700_000_000,
        "the target must not change"
    );
    assert!(
        fs::metadata(&p).unwrap().ctime() as u64
            >= before.duration_since(UNIX_EPOCH).unwrap().as_secs()
    );
}

fn directories_and_readdir(mode: Mode) {
    let m = mount(mode);
    fs::create_dir(m.path("d")).unwrap();
    // More entries than fit into one readdir reply.
    let n = 1500;
    for i in 0..n {
        File::create(m.path(&format!("d/file-with-a-longish-name-{i:05}"))).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), n);
    assert_eq!(names[0], "file-with-a-longish-name-00000");
    // d_ino from readdir agrees with st_ino from stat.
    for e in fs::read_dir(m.path("d")).unwrap().take(50) {
        let e = e.unwrap();
        use std::os::unix::fs::DirEntryExt;
        assert_eq!(e.ino(), fs::symlink_metadata(e.path()).unwrap().ino());
    }
    // rmdir of a non-empty directory fails, of an empty one succeeds
    let err = fs::remove_dir(m.path("d")).unwrap_err();
    assert_eq!(errno_of(&err), libc::ENOTEMPTY);
    for i in 0..n {
        fs::remove_file(m.path(&format!("d/file-with-a-longish-name-{i:05}"))).unwrap();
    }
    fs::remove_dir(m.path("d")).unwrap();
    assert!(!m.path("d").exists());
    // nested mkdir -p, and `ls -la` through the mount
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    let out = Command::new("ls").arg("-laR").arg(&m.mnt).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("a/b/c"), "{text}");
}

fn rename_variants(mode: Mode) {
    let mut m = mount(mode);
    fs::write(m.path("a"), b"A").unwrap();
    fs::write(m.path("b"), b"B").unwrap();
    let cwd = rustix::fs::CWD;
    // RENAME_NOREPLACE refuses an existing target
    let e = rustix::fs::renameat_with(cwd, m.path("a"), cwd, m.path("b"), RenameFlags::NOREPLACE)
        .unwrap_err();
    assert_eq!(e, Errno::EXIST);
    // RENAME_EXCHANGE swaps atomically
    rustix::fs::renameat_with(cwd, m.path("a"), cwd, m.path("b"), RenameFlags::EXCHANGE).unwrap();
    assert_eq!(fs::read(m.path("a")).unwrap(), b"B");
    assert_eq!(fs::read(m.path("b")).unwrap(), b"A");
    // a plain rename replaces
    fs::rename(m.path("a"), m.path("b")).unwrap();
    assert_eq!(fs::read(m.path("b")).unwrap(), b"B");
    assert!(!m.path("a").exists());
    // renaming a directory moves what is below it; open files follow
    fs::create_dir_all(m.path("d1/sub")).unwrap();
    fs::write(m.path("d1/sub/f"), b"deep").unwrap();
    let mut held = File::open(m.path("d1/sub/f")).unwrap();
    fs::rename(m.path("d1"), m.path("d2")).unwrap();
    assert_eq!(fs::read(m.path("d2/sub/f")).unwrap(), b"deep");
    let mut s = String::new();
    held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "deep");
    drop(held);
    // NOREPLACE into a free name works
    rustix::fs::renameat_with(
        cwd,
        m.path("d2/sub/f"),
        cwd,
        m.path("moved"),
        RenameFlags::NOREPLACE,
    )
    .unwrap();
    assert_eq!(fs::read(m.path("moved")).unwrap(), b"deep");
    // and the underlying directory agrees
    let local = m.local.clone();
    assert!(m.stop().success());
    assert_eq!(fs::read(local.join("moved")).unwrap(), b"deep");
    assert!(local.join("d2/sub").is_dir());
    assert!(!local.join("d1").exists());
}

fn links_symlinks_fifos(mode: Mode) {
    let m = mount(mode);
    fs::write(m.path("f"), b"x").unwrap();
    fs::hard_link(m.path("f"), m.path("h")).unwrap();
    let (a, b) = (
        fs::metadata(m.path("f")).unwrap(),
        fs::metadata(m.path("h")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    fs::write(m.path("h"), b"through the link").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"through the link");
    fs::remove_file(m.path("f")).unwrap();
    assert_eq!(fs::metadata(m.path("h")).unwrap().nlink(), 1);

    std::os::unix::fs::symlink("h", m.path("s")).unwrap();
    assert_eq!(fs::read_link(m.path("s")).unwrap(), Path::new("h"));
    assert_eq!(fs::read(m.path("s")).unwrap(), b"through the link");
    assert!(
        fs::symlink_metadata(m.path("s"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    rustix::fs::mknodat(
        rustix::fs::CWD,
        m.path("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(m.path("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A fifo through the mount is a real fifo: a writer and a reader meet.
    let fifo = m.path("fifo");
    let writer = std::thread::spawn(move || fs::write(fifo, b"via fifo").unwrap());
    assert_eq!(fs::read(m.path("fifo")).unwrap(), b"via fifo");
    writer.join().unwrap();
}

/// Without `--xattrs` every xattr call fails with EOPNOTSUPP (they would not survive a
/// restore), and writes still work (the kernel no longer asks for `security.capability`).
fn xattrs_refused_by_default(mode: Mode) {
    let mut m = mount(mode);
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..2 {
        // twice: the second answer comes from the kernel, which stopped asking etlfs
        assert_eq!(
            rustix::fs::setxattr(&p, "user.a", b"1", rustix::fs::XattrFlags::empty()).unwrap_err(),
            Errno::OPNOTSUPP
        );
        assert_eq!(
            rustix::fs::getxattr(&p, "user.a", &mut buf).unwrap_err(),
            Errno::OPNOTSUPP
        );
        assert_eq!(
            rustix::fs::listxattr(&p, &mut buf).unwrap_err(),
            Errno::OPNOTSUPP
        );
        assert_eq!(
            rustix::fs::removexattr(&p, "user.a").unwrap_err(),
            Errno::OPNOTSUPP
        );
    }
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"yz").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"xyz");
    let local = m.local.join("f");
    assert!(m.stop().success());
    assert_eq!(
        rustix::fs::listxattr(&local, &mut buf).unwrap(),
        0,
        "nothing was set on the local file"
    );
}

fn xattrs_pass_through_with_the_flag(mode: Mode) {
    let mut m = Mounted::with(mode.opts().arg("--xattrs"));
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    rustix::fs::setxattr(
        &p,
        "user.etlfs.test",
        b"value",
        rustix::fs::XattrFlags::CREATE,
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(&p, "user.etlfs.test", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"value");
    let mut list = [0u8; 256];
    let n = rustix::fs::listxattr(&p, &mut list).unwrap();
    assert!(
        list[..n]
            .split(|b| *b == 0)
            .any(|x| x == b"user.etlfs.test")
    );
    assert_eq!(
        rustix::fs::setxattr(&p, "user.etlfs.test", b"v2", rustix::fs::XattrFlags::CREATE)
            .unwrap_err(),
        Errno::EXIST
    );
    rustix::fs::removexattr(&p, "user.etlfs.test").unwrap();
    assert_eq!(
        rustix::fs::getxattr(&p, "user.etlfs.test", &mut buf).unwrap_err(),
        Errno::NODATA
    );
    // and they are on the local file underneath
    rustix::fs::setxattr(&p, "user.kept", b"1", rustix::fs::XattrFlags::empty()).unwrap();
    let local = m.local.join("f");
    assert!(m.stop().success());
    let n = rustix::fs::getxattr(&local, "user.kept", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"1");
}

fn fallocate_and_seek_data_hole(mode: Mode) {
    let m = mount(mode);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("sparse"))
        .unwrap();
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    assert!(
        f.metadata().unwrap().blocks() >= 2048,
        "fallocate must reserve blocks"
    );
    // make a sparse file: data at 0 and at 4 MiB, hole between
    f.set_len(0).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"tail", 4 << 20).unwrap();
    let data = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)).unwrap();
    assert_eq!(data, 0);
    let hole = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(0)).unwrap();
    assert!(hole > 0 && hole < 4 << 20, "hole at {hole}");
    let data2 = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(hole)).unwrap();
    assert!(data2 <= 4 << 20 && data2 > hole);
    // punch a hole
    rustix::fs::fallocate(
        &f,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        0,
        4096,
    )
    .unwrap();
    let mut buf = [1u8; 4];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0; 4]);
}

fn flock_and_fcntl_locks(mode: Mode) {
    let m = mount(mode);
    let p = m.path("locked");
    fs::write(&p, b"x").unwrap();
    // flock: a second open file description conflicts
    let a = File::open(&p).unwrap();
    let b = File::open(&p).unwrap();
    rustix::fs::flock(&a, FlockOperation::LockExclusive).unwrap();
    assert_eq!(
        rustix::fs::flock(&b, FlockOperation::NonBlockingLockShared).unwrap_err(),
        Errno::WOULDBLOCK
    );
    rustix::fs::flock(&a, FlockOperation::Unlock).unwrap();
    rustix::fs::flock(&b, FlockOperation::NonBlockingLockShared).unwrap();
    rustix::fs::flock(&a, FlockOperation::NonBlockingLockShared).unwrap();
    drop((a, b));
    // fcntl (POSIX) locks are per process: another process must be refused.
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    rustix::fs::fcntl_lock(&f, FlockOperation::LockExclusive).unwrap();
    let probe = |path: &Path| {
        Command::new("python3")
            .arg("-c")
            .arg(
                "import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(3)\n",
            )
            .arg(path)
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(
        probe(&p),
        Some(3),
        "a second process must not get the POSIX lock"
    );
    rustix::fs::fcntl_lock(&f, FlockOperation::Unlock).unwrap();
    assert_eq!(probe(&p), Some(0), "after unlock the other process gets it");
}

fn shared_writable_mmap(mode: Mode) {
    let mut m = mount(mode);
    let p = m.path("mapped");
    fs::write(&p, vec![b'.'; 3 * 4096]).unwrap();
    // Python's mmap is a real MAP_SHARED mapping; it keeps this test free of unsafe code.
    let script = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
assert m[:3] == b'...', m[:3]
m[4096:4096+6] = b'MAPPED'
m.flush()
m.close()
os.close(fd)
"#;
    let st = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
    let data = fs::read(&p).unwrap();
    assert_eq!(&data[4096..4102], b"MAPPED");
    let local = m.local.join("mapped");
    assert!(m.stop().success());
    assert_eq!(&fs::read(local).unwrap()[4096..4102], b"MAPPED");
}

/// `xfs_io -f -c "pwrite 0 4k" -c fsync f; stat f; xfs_io -c "mmap 0 4k" -c "mwrite 0 4k" f;
/// stat f`: the second `stat` shows the mtime and ctime the write through the mapping gave
/// the file, as on the disk underneath. In passthrough mode the kernel writes the mapping to
/// the disk itself, so it is etlfs that must not let the kernel keep the old times; while the
/// mapping is still there too. (In daemon mode the times move when the mapping's pages reach
/// etlfs, at the latest when it is unmapped.)
fn a_mapped_write_moves_the_times_stat_shows(mode: Mode) {
    let m = Mounted::with(Opts {
        separate_local: true,
        ..mode.opts()
    });
    let p = m.path("f");
    let mut f = File::create(&p).unwrap();
    f.write_all(&[b'.'; 4096]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let before = fs::metadata(&p).unwrap();
    let times = |md: &fs::Metadata| ((md.mtime(), md.mtime_nsec()), (md.ctime(), md.ctime_nsec()));
    // Times move on at a clock tick: wait until the clock has left the file's times behind.
    let start = before.modified().unwrap();
    while SystemTime::now()
        .duration_since(start)
        .is_ok_and(|d| d < Duration::from_millis(50))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Python's mmap is a real MAP_SHARED mapping (no unsafe code here). The fstat after the
    // mmap is what xfs_io does: the kernel caches what it returns.
    let script = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
os.fstat(fd)
m[0:4096] = b'M' * 4096
st = os.stat(sys.argv[1])
print(st.st_mtime_ns, st.st_ctime_ns)
m.close()
os.close(fd)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = fs::metadata(&p).unwrap();
    assert_eq!(fs::read(&p).unwrap(), vec![b'M'; 4096]);
    assert!(
        times(&after).0 > times(&before).0 && times(&after).1 > times(&before).1,
        "stat after the mapped write: {:?}, before it: {:?}",
        times(&after),
        times(&before)
    );
    let under = fs::metadata(m.local.join("f")).unwrap();
    assert_eq!(
        times(&after),
        times(&under),
        "through the mount vs. underneath"
    );
    if let Mode::Passthrough = mode {
        let during = String::from_utf8(out.stdout).unwrap();
        let mtime_during: i128 = during.split_whitespace().next().unwrap().parse().unwrap();
        let mtime_before =
            i128::from(before.mtime()) * 1_000_000_000 + i128::from(before.mtime_nsec());
        assert!(
            mtime_during > mtime_before,
            "stat while mapped: {during}, before: {mtime_before}"
        );
    }
}

fn fsync_and_fsyncdir(mode: Mode) {
    let m = mount(mode);
    let mut f = File::create(m.path("f")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    let d = File::open(&m.mnt).unwrap();
    d.sync_all().unwrap();
}

fn statfs_reports_the_disk_underneath(mode: Mode) {
    let m = mount(mode);
    let through = rustix::fs::statvfs(&m.mnt).unwrap();
    let parent = rustix::fs::statvfs(m.mnt.parent().unwrap()).unwrap();
    assert_eq!(through.f_blocks, parent.f_blocks);
    assert_eq!(through.f_bsize, parent.f_bsize);
    assert!(through.f_namemax >= 255);
}

fn state_dir_is_invisible(mode: Mode) {
    let mut m = mount(mode);
    fs::write(m.path("visible"), b"x").unwrap();
    let names: Vec<_> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["visible"]);
    assert_eq!(
        errno_of(&fs::metadata(m.path(".etlfs")).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(&fs::create_dir(m.path(".etlfs")).unwrap_err()),
        libc::EACCES
    );
    assert_eq!(
        errno_of(&File::create(m.path(".etlfs")).unwrap_err()),
        libc::EACCES
    );
    assert_eq!(
        errno_of(&fs::rename(m.path("visible"), m.path(".etlfs")).unwrap_err()),
        libc::EACCES
    );
    assert_eq!(
        errno_of(&std::os::unix::fs::symlink("x", m.path(".etlfs")).unwrap_err()),
        libc::EACCES
    );
    let local = m.local.clone();
    assert!(m.stop().success());
    assert!(
        local.join(".etlfs").is_dir(),
        "the state directory exists underneath"
    );
}

/// A buffer of `len` bytes aligned for O_DIRECT (4 KiB is enough for every disk's logical
/// block), inside `store`.
fn aligned(store: &mut Vec<u8>, len: usize) -> &mut [u8] {
    const ALIGN: usize = 4096;
    store.resize(len + ALIGN, 0);
    let off = store.as_ptr().align_offset(ALIGN);
    &mut store[off..off + len]
}

/// O_DIRECT works in both modes (daemon mode answered EINVAL): dd as it was reported, then
/// direct reads and writes through a created and an opened file, with data to check. A
/// direct read bypasses the kernel's cache: it sees a change made underneath after the file
/// was read (and cached) through the mount.
fn o_direct_reads_and_writes(mode: Mode) {
    let m = Mounted::with(Opts {
        separate_local: true,
        ..mode.opts()
    });
    let dd = |args: &[String]| {
        let out = Command::new("dd").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "dd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let g = m.path("g").display().to_string();
    dd(&[
        "if=/dev/zero".into(),
        format!("of={g}"),
        "bs=4096".into(),
        "count=4".into(),
        "oflag=direct".into(),
    ]);
    assert_eq!(fs::read(m.path("g")).unwrap(), vec![0; 4 * 4096]);
    dd(&[
        format!("if={g}"),
        "of=/dev/null".into(),
        "bs=4096".into(),
        "iflag=direct".into(),
    ]);

    let len = 4 * 4096;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut store = Vec::new();
    let buf = aligned(&mut store, len);
    buf.copy_from_slice(&data);
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("d"))
        .unwrap();
    created.write_all_at(buf, 0).unwrap();
    drop(created);
    assert_eq!(
        fs::read(m.local.join("d")).unwrap(),
        data,
        "in the local file"
    );
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("d"))
        .unwrap();
    buf.fill(0);
    opened.read_exact_at(buf, 0).unwrap();
    assert_eq!(*buf, *data);
    buf[..4096].fill(b'w');
    opened.write_all_at(&buf[..4096], 4096).unwrap();
    drop(opened);
    let mut want = data.clone();
    want[4096..8192].fill(b'w');
    assert_eq!(fs::read(m.path("d")).unwrap(), want);

    // Cached through the mount, then changed underneath (same size): a direct read sees it.
    assert_eq!(fs::read(m.path("d")).unwrap(), want);
    OpenOptions::new()
        .write(true)
        .open(m.local.join("d"))
        .unwrap()
        .write_all_at(&[b'u'; 4096], 0)
        .unwrap();
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("d"))
        .unwrap();
    direct.read_exact_at(&mut buf[..4096], 0).unwrap();
    assert_eq!(buf[..4096], [b'u'; 4096]);
}

/// The options of the mount at `mnt`, from /proc/self/mounts.
fn mount_options(mnt: &Path) -> Vec<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(&*mnt.to_string_lossy()))
        .unwrap_or_else(|| panic!("{} is not mounted:\n{mounts}", mnt.display()));
    let opts = line.split(' ').nth(3).unwrap();
    opts.split(',').map(str::to_owned).collect()
}

fn with_options(mode: Mode, options: &[&str]) -> Opts {
    options
        .iter()
        .fold(mode.opts(), |opts, o| opts.args(["-o", *o]))
}

/// Every file of the FILESYSTEM bucket beside the served directory `local`, with its bytes,
/// less etlfs' own objects (the lease, the manifest, directory markers).
fn bucket_files(local: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let name = local.file_name().unwrap().to_string_lossy();
    let root = local.with_file_name(format!(".{name}.etlfs-bucket"));
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".etlfs" || rel.ends_with(".etlfs-dir") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// `-o ro`: reads work, the kernel refuses every change with EROFS, and so nothing changes
/// underneath and nothing reaches the bucket but what was there before the mount.
fn read_only_mount_refuses_every_change(mode: Mode) {
    let mut opts = with_options(mode, &["ro"]);
    opts.separate_local = true;
    opts.files = vec![
        ("f".into(), b"kept".to_vec()),
        ("d/g".into(), b"deep".to_vec()),
    ];
    let mut m = Mounted::with(opts);
    assert!(mount_options(&m.mnt).contains(&"ro".to_string()));
    assert_eq!(fs::read(m.path("f")).unwrap(), b"kept");
    assert_eq!(fs::read(m.path("d/g")).unwrap(), b"deep");
    assert_eq!(fs::read_dir(m.path("d")).unwrap().count(), 1);
    let rofs = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(errno_of(&e), libc::EROFS, "{what}: {e}");
    };
    rofs(
        "write",
        OpenOptions::new().write(true).open(m.path("f")).map(drop),
    );
    rofs(
        "append",
        OpenOptions::new().append(true).open(m.path("f")).map(drop),
    );
    rofs("create", File::create(m.path("new")).map(drop));
    rofs("mkdir", fs::create_dir(m.path("nd")));
    rofs("unlink", fs::remove_file(m.path("f")));
    rofs("rmdir", fs::remove_dir(m.path("d")));
    rofs("rename", fs::rename(m.path("f"), m.path("f2")));
    rofs("symlink", std::os::unix::fs::symlink("f", m.path("s")));
    rofs("link", fs::hard_link(m.path("f"), m.path("h")));
    rofs(
        "chmod",
        fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o600)),
    );
    rofs(
        "utimens",
        File::open(m.path("f"))
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
    );
    rofs(
        "mknod",
        rustix::fs::mknodat(
            rustix::fs::CWD,
            m.path("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .map_err(Into::into),
    );
    let local = m.local.clone();
    assert!(m.stop().success(), "{}", m.log());
    assert_eq!(fs::read(local.join("f")).unwrap(), b"kept");
    let mut names: Vec<_> = fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".etlfs", "d", "f"]);
    // The files that were there are uploaded (as by any first mount), nothing else.
    let want = [("d/g", b"deep"), ("f", b"kept")]
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .into();
    assert_eq!(bucket_files(&local), want);
}

/// `-o noatime`: the mount table says so, and reading through the mount (passthrough: the
/// kernel reads the file underneath itself) leaves the access time underneath alone; so does
/// listing a directory.
fn noatime_reads_leave_the_access_time_alone(mode: Mode) {
    let mut opts = with_options(mode, &["noatime"]);
    opts.separate_local = true;
    let m = Mounted::with(opts);
    assert!(mount_options(&m.mnt).contains(&"noatime".to_string()));
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"read me").unwrap();
    // An access time long past: under relatime a read would move it now.
    let old = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for p in [m.path("d/f"), m.path("d")] {
        File::open(&p)
            .unwrap()
            .set_times(fs::FileTimes::new().set_accessed(old))
            .unwrap();
    }
    for _ in 0..2 {
        assert_eq!(fs::read(m.path("d/f")).unwrap(), b"read me");
        assert_eq!(fs::read_dir(m.path("d")).unwrap().count(), 1);
    }
    let mut buf = [0u8; 4];
    File::open(m.path("d/f"))
        .unwrap()
        .read_exact_at(&mut buf, 2)
        .unwrap();
    for rel in ["d/f", "d"] {
        assert_eq!(
            fs::metadata(m.local.join(rel)).unwrap().accessed().unwrap(),
            old,
            "{rel} underneath"
        );
    }
}

/// etlfs' own reads of the files underneath (the mirror's uploads and checksums) are no access
/// by anyone: the access time of the file underneath stays as the application set it.
#[test]
fn the_mirror_leaves_access_times_alone() {
    let m = Mounted::with(Opts {
        separate_local: true,
        ..Opts::default()
    });
    fs::write(m.path("f"), b"first").unwrap();
    // Long past: under relatime the next read of the file would move it.
    let old = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::open(m.path("f"))
        .unwrap()
        .set_times(fs::FileTimes::new().set_accessed(old))
        .unwrap();
    // A change after the access time was set, so an upload necessarily reads the file after.
    fs::write(m.path("f"), b"second").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while bucket_files(&m.local).get("f").map(Vec::as_slice) != Some(b"second") {
        assert!(
            std::time::Instant::now() < deadline,
            "not uploaded:\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        fs::metadata(m.local.join("f")).unwrap().accessed().unwrap(),
        old
    );
}

#[test]
fn mount_options_reach_the_mount_table() {
    // nosuid and nodev unless asked otherwise.
    let m = Mounted::new();
    let opts = mount_options(&m.mnt);
    for o in ["rw", "nosuid", "nodev", "relatime"] {
        assert!(opts.contains(&o.to_string()), "{o} in {opts:?}");
    }
    drop(m);
    let m = Mounted::with(with_options(
        Mode::Passthrough,
        &[
            "suid,dev",
            "noexec,sync,dirsync,noatime",
            "defaults,nofail,_netdev,x-systemd.automount",
        ],
    ));
    let opts = mount_options(&m.mnt);
    for o in ["nosuid", "nodev", "relatime"] {
        assert!(!opts.contains(&o.to_string()), "no {o} in {opts:?}");
    }
    for o in ["noexec", "sync", "dirsync", "noatime"] {
        assert!(opts.contains(&o.to_string()), "{o} in {opts:?}");
    }
    // sync: writes still work.
    fs::write(m.path("f"), b"synced").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"synced");
}

#[test]
fn an_unknown_mount_option_is_a_usage_error_naming_it() {
    let (st, log) =
        Mounted::refused(Opts::default().args(["-o", "ro,noatime", "-o", "nodev,noatine"]));
    assert_eq!(st.code(), Some(2), "{log}");
    assert!(log.contains("unknown mount option `noatine`"), "{log}");
}

// ---- lifecycle, errors and confinement (mode-independent) ----

#[test]
fn existing_files_keep_size_mode_owner_and_times() {
    let mut m = Mounted::with(Opts {
        separate_local: true,
        files: vec![
            ("a".into(), vec![7; 1000]),
            ("dir/b".into(), b"bee".to_vec()),
        ],
        ..Opts::default()
    });
    // Give the local files distinctive attributes, then compare through the mount.
    let la = m.local.join("a");
    fs::set_permissions(&la, fs::Permissions::from_mode(0o4751)).unwrap();
    std::os::unix::fs::chown(&la, Some(4242), Some(4343)).unwrap();
    let t = UNIX_EPOCH + Duration::new(1_600_000_000, 5);
    File::options()
        .write(true)
        .open(&la)
        .unwrap()
        .set_modified(t)
        .unwrap();
    for rel in ["a", "dir", "dir/b"] {
        let native = fs::symlink_metadata(m.local.join(rel)).unwrap();
        let through = fs::symlink_metadata(m.path(rel)).unwrap();
        assert_eq!(through.len(), native.len(), "{rel} size");
        assert_eq!(through.mode(), native.mode(), "{rel} mode");
        assert_eq!(
            (through.uid(), through.gid()),
            (native.uid(), native.gid()),
            "{rel} owner"
        );
        assert_eq!(
            through.modified().unwrap(),
            native.modified().unwrap(),
            "{rel} mtime"
        );
        assert_eq!(through.nlink(), native.nlink(), "{rel} nlink");
    }
    assert_eq!(fs::read(m.path("dir/b")).unwrap(), b"bee");
    assert!(m.stop().success());
}

#[test]
fn in_place_mount_serves_what_was_there() {
    let mut m = Mounted::with(Opts {
        files: vec![("pre/existing".into(), b"before mount".to_vec())],
        ..Opts::default()
    });
    assert_eq!(m.local, m.mnt);
    assert_eq!(fs::read(m.path("pre/existing")).unwrap(), b"before mount");
    fs::write(m.path("pre/new"), b"during mount").unwrap();
    let dir = m.mnt.clone();
    assert!(m.stop().success());
    // After unmounting, the same path shows the raw directory with both files.
    assert_eq!(fs::read(dir.join("pre/existing")).unwrap(), b"before mount");
    assert_eq!(fs::read(dir.join("pre/new")).unwrap(), b"during mount");
}

#[test]
fn sigint_unmounts_and_exits_zero() {
    let mut m = Mounted::new();
    m.signal(rustix::process::Signal::INT);
    let st = m
        .wait_exit(Duration::from_secs(20))
        .expect("etlfs exits on SIGINT");
    assert!(st.success(), "{st}: {}", m.log());
    assert!(!is_mounted(&m.mnt));
}

#[test]
fn startup_log_names_the_io_mode() {
    let m = mount(Mode::Passthrough);
    assert!(m.log().contains("mode=\"passthrough\""), "{}", m.log());
    drop(m);
    let m = mount(Mode::Daemon);
    assert!(m.log().contains("mode=\"daemon\""), "{}", m.log());
}

/// In passthrough mode the kernel reads and writes the backing file itself: etlfs must not
/// see a single READ or WRITE request. In daemon mode it sees them all.
#[test]
fn passthrough_bypasses_the_daemon_and_daemon_mode_does_not() {
    for (mode, expect_daemon_io) in [(Mode::Passthrough, false), (Mode::Daemon, true)] {
        let mut opts = mode.opts();
        opts.log_filter = Some("info,etlfs::fs::fuse=trace".into());
        let m = Mounted::with(opts);
        fs::write(m.path("io"), vec![1u8; 1 << 20]).unwrap();
        let back = fs::read(m.path("io")).unwrap();
        assert_eq!(back.len(), 1 << 20);
        let log = m.log();
        let saw = log.contains("read served by etlfs") || log.contains("write served by etlfs");
        assert_eq!(saw, expect_daemon_io, "{mode:?}:\n{log}");
    }
}

#[test]
fn external_umount_ends_the_process_cleanly() {
    let mut m = Mounted::new();
    let st = Command::new("umount").arg(&m.mnt).status().unwrap();
    assert!(st.success());
    let st = m
        .wait_exit(Duration::from_secs(20))
        .expect("etlfs exits after umount");
    assert!(st.success(), "{st}: {}", m.log());
    assert!(m.log().contains("unmounted from outside"));
}

#[test]
fn busy_mount_is_detached_lazily_and_open_files_keep_working() {
    let mut m = Mounted::new();
    fs::write(m.path("held"), b"still readable").unwrap();
    let mut held = File::open(m.path("held")).unwrap();
    m.signal(rustix::process::Signal::TERM);
    // The mount leaves the namespace at once...
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while is_mounted(&m.mnt) {
        assert!(
            std::time::Instant::now() < deadline,
            "busy mount was not detached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...but the open file still works and etlfs keeps serving it...
    let mut s = String::new();
    held.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still readable");
    assert!(
        m.wait_exit(Duration::from_millis(300)).is_none(),
        "etlfs must not exit while files are open"
    );
    assert!(m.log().contains("detaching it lazily"), "{}", m.log());
    // ...until it is closed; then etlfs exits cleanly.
    drop(held);
    let st = m
        .wait_exit(Duration::from_secs(20))
        .expect("etlfs exits once the last file closes");
    assert!(st.success(), "{st}: {}", m.log());
}

fn run_etlfs(args: &[&str]) -> std::process::Output {
    Command::new(common::ETLFS).args(args).output().unwrap()
}

#[test]
fn missing_directory_is_a_usage_error() {
    let out = run_etlfs(&["mount", "/nonexistent/etlfs-test-dir"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/etlfs-test-dir") && err.contains("does not exist"),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let out = run_etlfs(&[
        "mount",
        "--local",
        "/nonexistent/local",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("local directory /nonexistent/local"));
}

#[test]
fn non_directory_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("file");
    fs::write(&f, b"x").unwrap();
    let out = run_etlfs(&["mount", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a directory") && err.contains(f.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn missing_dev_fuse_is_a_usage_error() {
    // A private mount namespace with an empty /dev: no /dev/fuse in there.
    let tmp = tempfile::tempdir().unwrap();
    let script = format!(
        "mount -t tmpfs none /dev && exec {} mount {}",
        common::ETLFS,
        tmp.path().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/fuse"));
}

#[test]
fn no_permission_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(common::ETLFS)
        .arg("mount")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(!is_mounted(&dir));
}

#[test]
fn dotdot_at_the_root_leaves_the_mount_not_the_directory() {
    let m = Mounted::new();
    let parent = fs::metadata(m.mnt.parent().unwrap()).unwrap();
    let via_dotdot = fs::metadata(m.mnt.join("..")).unwrap();
    assert_eq!(
        (via_dotdot.dev(), via_dotdot.ino()),
        (parent.dev(), parent.ino())
    );
}

#[test]
fn symlinks_pointing_outside_are_never_followed_by_etlfs() {
    let m = Mounted::new();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(outside.path(), m.path("escape")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", m.path("up")).unwrap();
    // etlfs shows them as symlinks with the target verbatim...
    assert!(
        fs::symlink_metadata(m.path("escape"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(m.path("up")).unwrap(),
        Path::new("../../../../../../..")
    );
    // ...and refuses to open one as the final component with O_NOFOLLOW.
    let e = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(m.path("escape"))
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::ELOOP);
    // A hard link to a file outside the mount cannot be made (different filesystem).
    let e = fs::hard_link(outside.path().join("secret"), m.path("hl")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EXDEV);
    assert_eq!(fs::read(outside.path().join("secret")).unwrap(), b"outside");
}

/// Renames racing with creates deep in the tree: every file ends up inside the served
/// directory, because etlfs works on directory descriptors, not on paths it re-resolves.
#[test]
fn renames_racing_with_creates_stay_inside() {
    let m = Mounted::with(Opts {
        separate_local: true,
        ..Opts::default()
    });
    fs::create_dir_all(m.path("x/deep")).unwrap();
    fs::create_dir_all(m.path("y")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renamer = {
        let (mnt, stop) = (m.mnt.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut flips = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    mnt.join("x"),
                    rustix::fs::CWD,
                    mnt.join("y"),
                    RenameFlags::EXCHANGE,
                );
                flips += 1;
            }
            flips
        })
    };
    let mut created = 0;
    for i in 0..400 {
        for top in ["x", "y"] {
            if fs::write(m.path(&format!("{top}/deep/f{i}-{top}")), b"1").is_ok() {
                created += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = renamer.join().unwrap();
    assert!(
        flips > 10 && created > 100,
        "flips {flips}, created {created}"
    );
    // Count files underneath: all inside the local directory, none beside it.
    let count = |d: &Path| fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    let underneath = count(&m.local.join("x/deep")) + count(&m.local.join("y/deep"));
    assert_eq!(underneath, created);
    let beside: Vec<_> = fs::read_dir(m.local.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut beside: Vec<_> = beside
        .into_iter()
        .map(|n| n.into_string().unwrap())
        .collect();
    beside.sort();
    // The served directory, the mount point, the daemon's log and the default bucket beside
    // the served directory: nothing else.
    assert_eq!(beside, vec![".l.etlfs-bucket", "etlfs.log", "l", "m"]);
}

#[test]
fn a_bad_bucket_config_is_a_usage_error_naming_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    fs::create_dir(&dir).unwrap();
    let cfg = tmp.path().join("object-store.yaml");
    fs::write(
        &cfg,
        "type: S3\nconfig:\n  bucket: b\n  endpoint: 127.0.0.1:9\n  secret_kye: x\n",
    )
    .unwrap();
    let out = run_etlfs(&[
        "mount",
        "--config",
        cfg.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("object-store.yaml") && err.contains("secret_kye"),
        "{err}"
    );
    assert!(!is_mounted(&dir));
    let out = run_etlfs(&[
        "mount",
        "--config",
        "/nonexistent/os.yaml",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/os.yaml"));
}

/// With fewer descriptors than files the kernel knows (`ETLFS_FD_BUDGET`, as under a low
/// open-file limit), a walk over every file, reads, renames and removals all still work:
/// idle files' descriptors are parked and reopened by name.
#[test]
fn more_known_files_than_descriptors() {
    let files: Vec<(String, Vec<u8>)> = (0..600)
        .map(|i| {
            (
                format!("d{}/f{i:04}", i % 6),
                format!("content {i}").into_bytes(),
            )
        })
        .collect();
    let m = Mounted::with(Opts {
        files: files.clone(),
        env: vec![("ETLFS_FD_BUDGET".into(), "64".into())],
        ..Opts::default()
    });
    for _ in 0..2 {
        for (rel, data) in &files {
            assert_eq!(&fs::read(m.path(rel)).unwrap(), data, "{rel}");
            assert_eq!(fs::metadata(m.path(rel)).unwrap().len(), data.len() as u64);
        }
    }
    // The kernel knows all 600 files (cached dentries), yet etlfs holds about 64 descriptors
    // for them (plus its own: the device, sockets, the state directory, the runtime).
    let held = fs::read_dir(format!("/proc/{}/fd", m.pid()))
        .unwrap()
        .count();
    assert!(held < 64 + 100, "etlfs holds {held} descriptors");
    for (rel, _) in files.iter().take(100) {
        fs::rename(m.path(rel), m.path(&format!("{rel}.renamed"))).unwrap();
    }
    for (rel, _) in files.iter().skip(100).take(100) {
        fs::remove_file(m.path(rel)).unwrap();
    }
    for (i, (rel, data)) in files.iter().enumerate() {
        match i {
            0..100 => assert_eq!(&fs::read(m.path(&format!("{rel}.renamed"))).unwrap(), data),
            100..200 => assert!(!m.path(rel).exists()),
            _ => assert_eq!(&fs::read(m.path(rel)).unwrap(), data),
        }
    }
    let log = m.log();
    assert!(log.contains("budget=64"), "the budget was in effect: {log}");
    assert!(!log.contains("Too many open files"), "{log}");
}

#[test]
fn a_bad_fd_budget_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_etlfs"))
        .args(["mount", "--listen", "127.0.0.1:0"])
        .arg(tmp.path())
        .env("ETLFS_FD_BUDGET", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ETLFS_FD_BUDGET=\"lots\""), "{err}");
}
