//! Thin, safe wrappers over the Linux system calls etlfs needs and `std` does not offer.
//!
//! This is the only module with `unsafe`. Every wrapper takes owned or borrowed file
//! descriptors and `CStr` names, converts the C return convention into `io::Result`, and says
//! in a `// SAFETY:` comment why the call is sound. Nothing here knows about FUSE, the bucket
//! or our inode table: callers in `local.rs` compose these into directory operations.
//!
//! Everything is done relative to directory file descriptors (`*at()` calls). etlfs is mounted
//! *over* the directory it serves, so a path lookup from `/` would re-enter our own mount and
//! could deadlock; only descriptors opened before the mount reach the disk underneath.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// `resolve` flags for [`openat2`]: never leave the starting directory, never follow
/// `/proc/self/fd`-style magic links. Symlinks *inside* the tree are still followed when the
/// caller does not pass `O_NOFOLLOW` (for the last component).
pub const RESOLVE_BENEATH: u64 = 0x08;
/// Refuse any symlink in the path, not only escaping ones.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// Refuse magic links (`/proc/self/fd/N`).
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// Refuse crossing into another mount (e.g. a bind mount under the served directory).
pub const RESOLVE_NO_XDEV: u64 = 0x01;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_ssize(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Converts a file name into a C string, refusing interior NUL bytes (EINVAL).
pub fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The empty path used with `AT_EMPTY_PATH` to operate on a descriptor itself.
pub const EMPTY: &CStr = c"";

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(2)`: open `name` relative to `dir` with the given `resolve` restrictions.
pub fn openat2(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u32 as u64,
        mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
            mode as u64
        } else {
            0
        },
        resolve,
    };
    // SAFETY: `name` is a valid NUL-terminated string, `how` is a properly initialised
    // `struct open_how` that outlives the call and whose size we pass; `dir` is a live fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `openat(2)`. Used to re-open an `O_PATH` descriptor through `/proc/self/fd`, which
/// `openat2(RESOLVE_NO_MAGICLINKS)` would refuse by design.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and `dir` is a live descriptor; mode is passed as the
    // variadic third argument exactly as the C prototype expects.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(2)`; with `name == EMPTY` and `AT_EMPTY_PATH` it stats the descriptor itself
/// (this works on `O_PATH` descriptors too).
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` points to writable memory of the right size, `name` is NUL-terminated.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so the kernel filled the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// `fstatvfs(3)` on any descriptor, `O_PATH` included.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` points to writable memory of the right size.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded, so the struct is initialised.
    Ok(unsafe { st.assume_init() })
}

/// `mkdirat(2)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `dir` is a live descriptor.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `mknodat(2)`.
pub fn mknodat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    rdev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `dir` is a live descriptor.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(2)`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and `dir` is a live descriptor.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `linkat(2)`.
pub fn linkat(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated and both descriptors are live.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `unlinkat(2)`; pass `AT_REMOVEDIR` to remove a directory.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `dir` is a live descriptor.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat2(2)` with `RENAME_NOREPLACE` / `RENAME_EXCHANGE` / `RENAME_WHITEOUT` flags.
pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated and both descriptors are live.
    check(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `readlinkat(2)` into a fresh buffer (`PATH_MAX` is enough on Linux).
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes; `name` is NUL-terminated.
    let n = check_ssize(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `fchownat(2)`; `u32::MAX` (-1) leaves an id unchanged.
pub fn fchownat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: libc::uid_t,
    gid: libc::gid_t,
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `dir` is a live descriptor.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) }).map(drop)
}

/// `fchmodat(2)` (no flags: Linux cannot change a symlink's own mode).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `dir` is a live descriptor.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

/// `utimensat(2)`; each time is `(seconds, nanoseconds)`, or `UTIME_NOW` / `UTIME_OMIT` in the
/// nanosecond field.
pub fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: libc::timespec,
    mtime: libc::timespec,
    flags: libc::c_int,
) -> io::Result<()> {
    let times = [atime, mtime];
    // SAFETY: `times` is an array of two timespecs as required; `name` is NUL-terminated.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), flags) })
        .map(drop)
}

/// `fallocate(2)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (to_off(offset)?, to_off(len)?);
    // SAFETY: plain integer arguments on a live descriptor.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// `lseek(2)`, used for `SEEK_DATA` / `SEEK_HOLE`.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: libc::c_int) -> io::Result<i64> {
    // SAFETY: plain integer arguments on a live descriptor.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// `getxattr(2)` on a path (we pass `/proc/self/fd/N` for `O_PATH` descriptors, which the
/// `f*xattr` calls do not accept). With an empty `buf` it returns the size needed.
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length (a zero length only queries the size).
    check_ssize(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// `setxattr(2)` on a path.
pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is readable for its length; both strings are NUL-terminated.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// `listxattr(2)` on a path. With an empty `buf` it returns the size needed.
pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length.
    check_ssize(unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `removexattr(2)` on a path.
pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// Sets this *thread's* filesystem uid (`setfsuid(2)`) and returns the previous one. The
/// filesystem ids are per thread in Linux (the raw system call; glibc does not broadcast it),
/// which is what a multithreaded FUSE session needs. Leaving uid 0 drops the filesystem
/// capabilities (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`, ...) from the effective set, going back
/// raises them again from the permitted set: the kernel's own rule.
pub fn set_fsuid(uid: libc::uid_t) -> libc::uid_t {
    // SAFETY: setfsuid takes a plain integer and returns the previous id; it cannot corrupt
    // memory. (It cannot fail either: a refused change leaves the id as it was.)
    unsafe { libc::syscall(libc::SYS_setfsuid, uid) as libc::uid_t }
}

/// Sets this thread's filesystem gid (`setfsgid(2)`) and returns the previous one.
pub fn set_fsgid(gid: libc::gid_t) -> libc::gid_t {
    // SAFETY: as for `set_fsuid`.
    unsafe { libc::syscall(libc::SYS_setfsgid, gid) as libc::gid_t }
}

/// Sets the umask of the calling thread's filesystem context and returns the previous one
/// (a thread that did [`private_zero_umask`] has a context of its own).
pub fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask takes a plain integer and cannot fail.
    unsafe { libc::umask(mask) }
}

/// `faccessat(2)`. With `AT_EACCESS` it checks with the thread's filesystem ids (which
/// etlfs sets to a caller's), not with the real uid.
pub fn faccessat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::c_int,
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `dir` is a live descriptor.
    check(unsafe { libc::faccessat(dir.as_raw_fd(), name.as_ptr(), mode, flags) }).map(drop)
}

/// Gives the calling thread its own umask of 0, leaving the rest of the process alone.
///
/// The kernel has already applied the *caller's* umask to the modes a FUSE request carries, so
/// files created on its behalf must not be masked again by ours. The umask lives in the
/// filesystem context shared by all threads, so the thread first takes a private copy of it
/// (`unshare(CLONE_FS)`); the runtime's other threads (journal, records, bucket files) keep the
/// normal umask.
pub fn private_zero_umask() -> io::Result<()> {
    // SAFETY: unshare(CLONE_FS) only detaches this thread's cwd/root/umask from the other
    // threads; it takes no pointers.
    check(unsafe { libc::unshare(libc::CLONE_FS) })?;
    // SAFETY: umask cannot fail and takes a plain integer.
    unsafe { libc::umask(0) };
    Ok(())
}

/// Raises the limit on open files as far as allowed: we hold one `O_PATH` descriptor per inode
/// the kernel knows, so a `find` over 100,000 files needs 100,000 of them. With
/// `CAP_SYS_RESOURCE` (a privileged sidecar) the hard limit goes up to `ceiling` (the kernel's
/// `fs.nr_open`) too; otherwise the soft limit rises to the hard one. Returns the soft limit.
pub fn raise_nofile_limit(ceiling: u64) -> io::Result<u64> {
    let mut lim = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: `lim` points to a writable rlimit.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) })?;
    // SAFETY: getrlimit succeeded, so the struct is initialised.
    let mut lim = unsafe { lim.assume_init() };
    if ceiling > lim.rlim_max {
        let wider = libc::rlimit {
            rlim_cur: ceiling,
            rlim_max: ceiling,
        };
        // SAFETY: `wider` is a valid rlimit with soft <= hard; failure (EPERM) is expected
        // without the capability and leaves the limits as they were.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wider) } == 0 {
            return Ok(ceiling);
        }
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit with soft <= hard.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(lim.rlim_cur)
}

/// The effective uid of this process.
pub fn geteuid() -> libc::uid_t {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// `umount2(2)`; `detach` asks for a lazy unmount (`MNT_DETACH`).
pub fn umount(path: &CStr, detach: bool) -> io::Result<()> {
    let flags = if detach { libc::MNT_DETACH } else { 0 };
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::umount2(path.as_ptr(), flags) }).map(drop)
}

/// The filesystem type `statfs(2)` reports for a FUSE mount (`FUSE_SUPER_MAGIC`).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Whether `path` is the root of a FUSE filesystem that answers: `statfs(2)` on it is a request
/// the daemon serves (after the `INIT` handshake), and reports FUSE's magic number.
pub fn answers_as_fuse(path: &std::path::Path) -> io::Result<bool> {
    let st = rustix::fs::statfs(path)?;
    #[allow(clippy::unnecessary_cast)] // `f_type`'s width differs between architectures
    Ok(st.f_type as i64 == FUSE_SUPER_MAGIC)
}

/// `setsid(2)`: a new session without a controlling terminal, so that a daemon started from
/// a shell or by `mount(8)` is not hung up with it.
pub fn setsid() -> io::Result<()> {
    rustix::process::setsid().map(drop).map_err(Into::into)
}

/// Points standard output and standard error at `fd` (`dup2(2)`), letting go of whatever they
/// were: a daemon must not keep the terminal or the pipe of the command that started it.
pub fn redirect_output(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::stdio::dup2_stdout(fd)?;
    rustix::stdio::dup2_stderr(fd)?;
    Ok(())
}

/// The device and inode of standard error (to recognise the journal's stream, which systemd
/// names in `JOURNAL_STREAM`).
pub fn stderr_identity() -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(rustix::stdio::stderr())?;
    Ok((st.st_dev, st.st_ino))
}

/// Sends SIGTERM to process `pid`.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).map_err(Into::into)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A private, detached bind mount of just the file (or directory) behind `fd`, on which reads
/// never update access times: `open_tree(2)` with `OPEN_TREE_CLONE`, then `mount_setattr(2)`
/// with `MOUNT_ATTR_NOATIME`. It is in no namespace, so nobody else sees it; it goes away
/// with the last descriptor opened through it. Needs `CAP_SYS_ADMIN`, as mounting does.
pub fn noatime_clone(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32;
    // SAFETY: `EMPTY` is a NUL-terminated string that outlives the call, `fd` is a live
    // descriptor; the flags are plain integers.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            flags as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    let attr = MountAttr {
        attr_set: libc::MOUNT_ATTR_NOATIME,
        // The access-time policy is one field: it is cleared before the new one is set.
        attr_clr: libc::MOUNT_ATTR__ATIME,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `tree` is a live descriptor, `EMPTY` is NUL-terminated, `attr` is a properly
    // initialised `struct mount_attr` that outlives the call and whose size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// `access(2)`-style check of a path for the real uid (used for `/dev/fuse`).
pub fn access(path: &CStr, mode: libc::c_int) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::access(path.as_ptr(), mode) }).map(drop)
}

/// The name under `/proc/self/fd` of a descriptor, for re-opening it with new flags.
pub fn fd_name(fd: BorrowedFd<'_>) -> CString {
    CString::new(fd.as_raw_fd().to_string()).expect("digits contain no NUL")
}

/// The full `/proc/self/fd/N` path of a descriptor, for calls that take only a path.
pub fn fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("digits contain no NUL")
}

/// `AT_FDCWD` as a borrowed descriptor, for the few opens done before the mount exists.
pub fn at_fdcwd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel the kernel understands in every *at() call; it is never
    // closed, and `BorrowedFd` only forbids the value -1, which AT_FDCWD (-100) is not.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

/// What [`background_priority`] gives a thread: CPU niceness (weight 335 against 1024 for a
/// nice-0 thread: a quarter of a CPU one busy application thread contends, never starved; nice
/// 10 kept a 256 MiB upload past the bench's 2-minute deadline on a machine loaded by builds).
pub const BACKGROUND_NICE: libc::c_int = 5;
/// ... and its I/O priority: the lowest level of the best-effort class (not the idle class,
/// which a busy disk can starve forever).
pub const BACKGROUND_IOPRIO_LEVEL: libc::c_int = 7;

/// Lowers the calling thread's CPU and I/O priority below the FUSE threads' (which keep the
/// process's), for the work the application does not wait on directly: `SCHED_BATCH` (the
/// scheduler treats it as throughput work and does not let its wake-ups preempt), nice
/// [`BACKGROUND_NICE`], I/O best-effort level [`BACKGROUND_IOPRIO_LEVEL`]. Per thread: Linux
/// keeps both per task. Errors are returned, not fatal: a container may forbid the calls.
pub fn background_priority() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the param struct we pass by reference; pid 0 is the
    // calling thread.
    check(unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) })?;
    // SAFETY: setpriority takes plain integers; who 0 is the calling thread (Linux keeps the
    // nice value per task).
    check(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) })?;
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    let prio =
        (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | libc::c_long::from(BACKGROUND_IOPRIO_LEVEL);
    // SAFETY: ioprio_set takes plain integers (glibc has no wrapper); who 0 with
    // IOPRIO_WHO_PROCESS is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, prio) };
    check(r as libc::c_int)?;
    Ok(())
}

/// Keeps glibc's allocator from holding on to memory the daemon no longer uses. Its defaults
/// suit short programs: one arena per thread (the FUSE threads, the runtime's workers and its
/// blocking pool make dozens, each keeping its freed chunks), and an mmap threshold that grows
/// after a large free, after which the next large buffers come from (and stay in) the heap. A
/// long-running daemon with a burst of work at start (the listing, the walk, the records) is
/// better off with few arenas and large blocks always mapped, so that freeing them returns
/// them to the kernel. Glibc only; other C libraries ignore it.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes allocator parameters; no pointers are involved. Called
        // at start, before other threads allocate.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            // Setting it also turns off the dynamic adjustment.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        }
    }
}

/// Returns free heap memory to the kernel (after a burst of work, like the start of a mount).
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases unused memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether the thread `tid` (in our PID namespace) is being killed: a fatal signal is pending
/// for it, or it is gone. A thread waiting in a FUSE request the filesystem holds cannot die
/// before the request is answered; its pending SIGKILL (which the kernel also puts on every
/// thread of a process a fatal signal kills) shows in `/proc/<tid>/status`. `false` if that
/// cannot be read for another reason (no `/proc`, another PID namespace: `tid` 0).
pub fn being_killed(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => fatal_signal_pending(&status),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Whether a `/proc/<pid>/status` text shows SIGKILL pending (thread-private or shared).
fn fatal_signal_pending(status: &str) -> bool {
    let kill = 1u64 << (libc::SIGKILL - 1);
    status.lines().any(|line| {
        let Some((key, value)) = line.split_once(':') else {
            return false;
        };
        matches!(key, "SigPnd" | "ShdPnd")
            && u64::from_str_radix(value.trim(), 16).is_ok_and(|mask| mask & kill != 0)
    })
}

#[cfg(test)]
mod signal_tests {
    use super::*;

    #[test]
    fn a_pending_sigkill_is_seen_in_either_set() {
        let quiet = "Name:\tcat\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n";
        assert!(!fatal_signal_pending(quiet));
        let shared = "SigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n";
        assert!(fatal_signal_pending(shared));
        let private = "SigPnd:\t0000000000000100\nShdPnd:\t0000000000000002\n";
        assert!(fatal_signal_pending(private));
        // SIGINT pending (bit 2) is not a kill: the application may handle it.
        assert!(!fatal_signal_pending("ShdPnd:\t0000000000000002\n"));
    }

    #[test]
    fn a_live_thread_is_not_being_killed_and_a_gone_one_is() {
        assert!(!being_killed(std::process::id()));
        assert!(!being_killed(0));
        // PIDs above the kernel's maximum never exist.
        assert!(being_killed(u32::MAX - 1));
    }
}
