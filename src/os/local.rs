//! The directory underneath the mount: every operation on local files goes through here.
//!
//! `LocalDir` holds an `O_PATH` descriptor of the served directory, opened *before* the FUSE
//! mount covers it, and a descriptor of `/proc/self/fd` for re-opening `O_PATH` descriptors
//! with real access modes. All operations are relative to directory descriptors the overlay
//! already holds, with single-component names (never `..`, never a `/`), so nothing the
//! application asks for can resolve outside the directory. Multi-component paths (used by the
//! mirror and fetcher, which work on bucket keys) are resolved with `openat2(RESOLVE_BENEATH)`.
//!
//! A call made for an application's request (a lookup, an open, a create, a chmod, ...) runs
//! under that application's credentials where etlfs checks permissions (see
//! [`crate::os::creds`]): those methods say so; the rest run as etlfs.
//!
//! Errors are plain `io::Error`s carrying the errno: this is the syscall layer, and the overlay
//! maps them onto its own error type.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::os::sys;

/// Whether an error opening or reading `path` says it is not there (any more): the name is
/// gone, or a directory on its way is not one now. What to do then is the caller's business;
/// these are not failures.
pub fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Hex SHA-256 of a local file's bytes, read with `pread` from its start: the file offset
/// stays where it is, so a read of the same open file afterwards starts where it would have.
/// Blocking: call it off the async threads.
pub fn sha256_of(file: &File) -> io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        match file.read_at(&mut buf, off) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

pub use crate::os::creds::Creds;
use crate::os::creds::{as_caller, as_caller_exactly, as_creator};
pub use crate::os::stat::Stat;

/// `fallocate(2)` on an open file.
pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    sys::fallocate(file.as_fd(), mode, offset, len)
}

/// `lseek(2)` on an open file (`SEEK_DATA`, `SEEK_HOLE`, ...).
pub fn lseek(file: &File, offset: i64, whence: i32) -> io::Result<i64> {
    sys::lseek(file.as_fd(), offset, whence)
}

/// A new time for `set_times`.
#[derive(Debug, Clone, Copy)]
pub enum TimeSet {
    Now,
    At(SystemTime),
}

fn timespec(t: Option<TimeSet>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeSet::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeSet::At(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                }
            }
        },
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    /// The file type bits of the mode (`S_IFMT`).
    pub file_type: u32,
}

/// The served directory, reached only through descriptors opened before the mount.
#[derive(Debug)]
pub struct LocalDir {
    root: OwnedFd,
    proc_fd: OwnedFd,
    root_stat: Stat,
}

impl LocalDir {
    /// Opens `path` as the served directory. Must be called before mounting over it.
    pub fn open(path: &Path) -> io::Result<LocalDir> {
        let cpath = sys::cstr(path.as_os_str())?;
        let cwd = sys::at_fdcwd();
        let root = sys::openat(cwd, &cpath, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let root_stat = Stat::from(sys::fstatat(root.as_fd(), sys::EMPTY, libc::AT_EMPTY_PATH)?);
        let proc_fd = sys::openat(cwd, c"/proc/self/fd", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok(LocalDir {
            root,
            proc_fd,
            root_stat,
        })
    }

    /// The `O_PATH` descriptor of the served directory.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// A second `O_PATH` descriptor of the root, for the inode table to own.
    pub fn root_clone(&self) -> io::Result<OwnedFd> {
        self.root.try_clone()
    }

    pub fn root_stat(&self) -> Stat {
        self.root_stat
    }

    /// Looks up one name in `dir` without following a final symlink (as etlfs).
    pub fn lookup(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(OwnedFd, Stat)> {
        let cname = single_component(name)?;
        let fd = sys::openat2(
            dir,
            &cname,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            sys::RESOLVE_BENEATH | sys::RESOLVE_NO_MAGICLINKS,
        )?;
        let st = self.stat(fd.as_fd())?;
        Ok((fd, st))
    }

    /// [`LocalDir::lookup`] for a caller's request: the name is resolved as the caller, so
    /// the filesystem checks its search permission on `dir`.
    pub fn lookup_as_caller(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<(OwnedFd, Stat)> {
        as_caller(|| self.lookup(dir, name))
    }

    /// `access(2)` of the inode behind `fd` for the caller (`R_OK`, `W_OK`, `X_OK`), with its
    /// filesystem ids (`AT_EACCESS`, which are the real ids when the kernel asks for
    /// `access(2)`).
    pub fn access(&self, fd: BorrowedFd<'_>, mask: i32) -> io::Result<()> {
        let name = sys::fd_name(fd);
        as_caller(|| sys::faccessat(self.proc_fd.as_fd(), &name, mask, libc::AT_EACCESS))
    }

    /// Stats a descriptor (`O_PATH` ones included).
    pub fn stat(&self, fd: BorrowedFd<'_>) -> io::Result<Stat> {
        Ok(sys::fstatat(fd, sys::EMPTY, libc::AT_EMPTY_PATH)?.into())
    }

    /// Opens the file behind an `O_PATH` descriptor for I/O with `flags` (`O_RDONLY`,
    /// `O_RDWR`, `O_APPEND`, `O_TRUNC`, ...). `O_CREAT`/`O_EXCL` make no sense here and are
    /// dropped; `O_NOFOLLOW` would refuse the `/proc/self/fd` magic link and is dropped too.
    /// `O_NOATIME` is dropped where the kernel refuses it (see [`noatime_if_allowed`]).
    pub fn reopen(&self, fd: BorrowedFd<'_>, flags: i32) -> io::Result<File> {
        noatime_if_allowed(flags, |flags| self.reopen_exactly(fd, flags))
    }

    /// [`LocalDir::reopen`] without dropping a refused `O_NOATIME`.
    fn reopen_exactly(&self, fd: BorrowedFd<'_>, flags: i32) -> io::Result<File> {
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
        sys::openat(self.proc_fd.as_fd(), &sys::fd_name(fd), flags, 0).map(File::from)
    }

    /// [`LocalDir::reopen`] for a caller's open: the filesystem checks the caller's access.
    /// An `O_NOATIME` (the mount's `noatime`) that the caller may not use, not owning the file,
    /// is etlfs' own wish: the caller's access is checked without it, then etlfs opens with it.
    pub fn open_as_caller(&self, fd: BorrowedFd<'_>, flags: i32) -> io::Result<File> {
        match as_caller(|| self.reopen_exactly(fd, flags)) {
            Err(e) if flags & libc::O_NOATIME != 0 && e.raw_os_error() == Some(libc::EPERM) => {
                let checked = as_caller(|| self.reopen_exactly(fd, flags & !libc::O_NOATIME))?;
                Ok(self.reopen_exactly(fd, flags).unwrap_or(checked))
            }
            other => other,
        }
    }

    /// The file behind `fd`, opened read-only through a private bind mount of it on which
    /// reads never update access times ([`sys::noatime_clone`]). For `noatime` in passthrough
    /// mode: the kernel opens each backing file anew, with the application's own flags, on the
    /// mount of the file it was handed, so our `O_NOATIME` would not reach those reads; the
    /// mount's `noatime` does.
    pub fn noatime_twin(&self, fd: BorrowedFd<'_>) -> io::Result<File> {
        let tree = sys::noatime_clone(fd)?;
        // The open file keeps the detached mount alive once `tree` is closed.
        self.reopen(tree.as_fd(), libc::O_RDONLY)
    }

    /// Creates and opens a regular file as `creds`. Returns the open file and an `O_PATH`
    /// descriptor for the inode table.
    pub fn create(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        flags: i32,
        mode: u32,
        creds: Creds,
    ) -> io::Result<(File, OwnedFd, Stat)> {
        let cname = single_component(name)?;
        let file = as_creator(creds, dir, &cname, || {
            noatime_if_allowed(flags, |flags| {
                sys::openat2(
                    dir,
                    &cname,
                    (flags & !libc::O_NOCTTY) | libc::O_CREAT | libc::O_NOFOLLOW,
                    // openat2 is strict: the file type bits the kernel sends along are refused.
                    mode & 0o7777,
                    sys::RESOLVE_BENEATH | sys::RESOLVE_NO_MAGICLINKS,
                )
            })
        })?;
        let path_fd = sys::openat(
            self.proc_fd.as_fd(),
            &sys::fd_name(file.as_fd()),
            libc::O_PATH,
            0,
        )?;
        let st = self.stat(path_fd.as_fd())?;
        Ok((File::from(file), path_fd, st))
    }

    /// Creates a directory as `creds`.
    pub fn mkdir(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
        creds: Creds,
    ) -> io::Result<(OwnedFd, Stat)> {
        let cname = single_component(name)?;
        as_creator(creds, dir, &cname, || sys::mkdirat(dir, &cname, mode))?;
        self.lookup(dir, name)
    }

    /// Creates a special file (fifo, socket, device) as `creds`.
    pub fn mknod(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        creds: Creds,
    ) -> io::Result<(OwnedFd, Stat)> {
        let cname = single_component(name)?;
        as_creator(creds, dir, &cname, || sys::mknodat(dir, &cname, mode, rdev))?;
        self.lookup(dir, name)
    }

    /// Creates a symlink as `creds`. The target is stored verbatim and never resolved by us.
    pub fn symlink(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        target: &OsStr,
        creds: Creds,
    ) -> io::Result<(OwnedFd, Stat)> {
        let cname = single_component(name)?;
        let ctarget = sys::cstr(target)?;
        as_creator(creds, dir, &cname, || sys::symlinkat(&ctarget, dir, &cname))?;
        self.lookup(dir, name)
    }

    /// Adds a hard link `name` in `dir` to the inode behind `fd`, as the caller. Through
    /// `/proc/self/fd` (`AT_SYMLINK_FOLLOW` follows only that magic link, so a symlink itself
    /// is linked): `AT_EMPTY_PATH` on a descriptor etlfs opened would need
    /// `CAP_DAC_READ_SEARCH`, which a caller does not have.
    pub fn link(&self, fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let (cname, from) = (single_component(name)?, sys::fd_name(fd));
        as_caller(|| {
            sys::linkat(
                self.proc_fd.as_fd(),
                &from,
                dir,
                &cname,
                libc::AT_SYMLINK_FOLLOW,
            )
        })
    }

    pub fn unlink(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let cname = single_component(name)?;
        as_caller(|| sys::unlinkat(dir, &cname, 0))
    }

    pub fn rmdir(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let cname = single_component(name)?;
        as_caller(|| sys::unlinkat(dir, &cname, libc::AT_REMOVEDIR))
    }

    /// `renameat2` with the kernel's flags (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`, ...).
    pub fn rename(
        &self,
        old_dir: BorrowedFd<'_>,
        old_name: &OsStr,
        new_dir: BorrowedFd<'_>,
        new_name: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        let (old, new) = (single_component(old_name)?, single_component(new_name)?);
        as_caller(|| sys::renameat2(old_dir, &old, new_dir, &new, flags))
    }

    pub fn readlink(&self, fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
        sys::readlinkat(fd, sys::EMPTY)
    }

    /// `chmod` of the inode behind `fd` (not for symlinks: Linux has no symlink modes).
    pub fn set_mode(&self, fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
        let name = sys::fd_name(fd);
        as_caller(|| sys::fchmodat(self.proc_fd.as_fd(), &name, mode))
    }

    /// `chown` of the inode behind `fd`; `None` leaves an id unchanged.
    pub fn set_owner(
        &self,
        fd: BorrowedFd<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> io::Result<()> {
        as_caller(|| {
            sys::fchownat(
                fd,
                sys::EMPTY,
                uid.unwrap_or(u32::MAX),
                gid.unwrap_or(u32::MAX),
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    /// Sets access and/or modification time of the inode behind `fd`. Symlinks are reached
    /// through their parent directory and name, since `utimensat` cannot take an `O_PATH`
    /// descriptor of a symlink.
    pub fn set_times(
        &self,
        fd: BorrowedFd<'_>,
        symlink_at: Option<(BorrowedFd<'_>, &OsStr)>,
        atime: Option<TimeSet>,
        mtime: Option<TimeSet>,
    ) -> io::Result<()> {
        let (a, m) = (timespec(atime), timespec(mtime));
        match symlink_at {
            Some((dir, name)) => {
                let name = single_component(name)?;
                as_caller(|| sys::utimensat(dir, &name, a, m, libc::AT_SYMLINK_NOFOLLOW))
            }
            None => {
                let name = sys::fd_name(fd);
                as_caller(|| sys::utimensat(self.proc_fd.as_fd(), &name, a, m, 0))
            }
        }
    }

    /// Truncates (or extends) the file behind an `O_PATH` descriptor, opened for writing as
    /// the caller.
    pub fn truncate(&self, fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
        as_caller(|| self.reopen(fd, libc::O_WRONLY))?.set_len(size)
    }

    /// Lists a directory (without `.` and `..`). With `noatime` the listing leaves the
    /// directory's access time alone: for etlfs' own walks, which are no access by anyone, and
    /// for the application's under `noatime`/`nodiratime`.
    pub fn read_dir(&self, fd: BorrowedFd<'_>, noatime: bool) -> io::Result<Vec<DirEntry>> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | if noatime { libc::O_NOATIME } else { 0 };
        let mut dir = rustix::fs::Dir::new(OwnedFd::from(self.reopen(fd, flags)?))?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let file_type = match entry.file_type() {
                // Some filesystems do not say in the listing: ask the entry itself.
                rustix::fs::FileType::Unknown => {
                    sys::fstatat(dir.fd()?, name, libc::AT_SYMLINK_NOFOLLOW)?.st_mode & libc::S_IFMT
                }
                t => t.as_raw_mode() & libc::S_IFMT,
            };
            out.push(DirEntry {
                name: OsStr::from_bytes(name.to_bytes()).to_owned(),
                ino: entry.ino(),
                file_type,
            });
        }
        Ok(out)
    }

    pub fn statfs(&self, fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
        sys::fstatvfs(fd)
    }

    /// Whether the inode behind `fd` has a POSIX access ACL (read as etlfs). An error other
    /// than "none" counts as one: the answer decides whether a name may be cached for everyone.
    pub fn has_access_acl(&self, fd: BorrowedFd<'_>) -> bool {
        match sys::getxattr(&sys::fd_path(fd), c"system.posix_acl_access", &mut []) {
            Ok(_) => true,
            Err(e) => !matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)),
        }
    }

    /// The extended attribute `name` of the inode behind `fd`, read as the caller (these and
    /// the other xattr calls go through `/proc/self/fd`: the `f*xattr` calls refuse `O_PATH`).
    pub fn get_xattr(&self, fd: BorrowedFd<'_>, name: &OsStr, size: u32) -> io::Result<XattrReply> {
        let (path, cname) = (sys::fd_path(fd), sys::cstr(name)?);
        let mut buf = vec![0u8; size as usize];
        let mut get = || sys::getxattr(&path, &cname, &mut buf);
        let b = name.as_bytes();
        // Only reading `user.*` (read permission) and `trusted.*` (CAP_SYS_ADMIN) depends on
        // who asks; `security.*` and `system.*` can be read by anyone, so the kernel's
        // `security.capability` question before each write costs no switch.
        let n = if b.starts_with(b"trusted.") {
            as_caller_exactly(get)
        } else if b.starts_with(b"user.") {
            as_caller(get)
        } else {
            get()
        }?;
        Ok(xattr_reply(size, n, buf))
    }

    /// The names of the extended attributes, as the caller (`trusted.*` ones only for a
    /// caller with `CAP_SYS_ADMIN`).
    pub fn list_xattr(&self, fd: BorrowedFd<'_>, size: u32) -> io::Result<XattrReply> {
        let path = sys::fd_path(fd);
        let mut buf = vec![0u8; size as usize];
        let n = as_caller_exactly(|| sys::listxattr(&path, &mut buf))?;
        Ok(xattr_reply(size, n, buf))
    }

    /// Sets an extended attribute as the caller (a POSIX ACL included: the filesystem checks
    /// that the caller owns the file, and updates its mode).
    pub fn set_xattr(
        &self,
        fd: BorrowedFd<'_>,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        let (path, cname) = (sys::fd_path(fd), sys::cstr(name)?);
        xattr_as_caller(name, || sys::setxattr(&path, &cname, value, flags))
    }

    pub fn remove_xattr(&self, fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let (path, cname) = (sys::fd_path(fd), sys::cstr(name)?);
        xattr_as_caller(name, || sys::removexattr(&path, &cname))
    }

    /// Opens a relative, multi-component path strictly beneath the served directory: `..`
    /// that would climb out, absolute symlinks and symlinks pointing outside all fail with
    /// `EXDEV`, and magic links are refused. This is how bucket keys reach local files.
    pub fn open_beneath(&self, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
        let cpath = sys::cstr(rel.as_os_str())?;
        sys::openat2(
            self.root.as_fd(),
            &cpath,
            flags,
            mode,
            sys::RESOLVE_BENEATH | sys::RESOLVE_NO_MAGICLINKS,
        )
    }
}

impl LocalDir {
    /// Stats a relative path beneath the served directory without following a final symlink.
    pub fn stat_beneath(&self, rel: &Path) -> io::Result<Stat> {
        let fd = self.open_beneath(rel, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        self.stat(fd.as_fd())
    }

    /// The parent directory of a relative path (opened strictly beneath the root) and the
    /// path's last component.
    pub fn open_parent<'p>(&self, rel: &'p Path) -> io::Result<(OwnedFd, &'p OsStr)> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let fd = if parent.as_os_str().is_empty() {
            self.root.try_clone()?
        } else {
            self.open_beneath(
                parent,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?
        };
        Ok((fd, name))
    }

    /// Creates a directory (parents must exist) with mode 0755 owned like the root, unless
    /// something is there already.
    pub fn mkdir_beneath(&self, rel: &Path) -> io::Result<()> {
        let (parent_fd, name) = self.open_parent(rel)?;
        let cname = single_component(name)?;
        match sys::mkdirat(parent_fd.as_fd(), &cname, 0o755) {
            Ok(()) => sys::fchownat(
                parent_fd.as_fd(),
                &cname,
                self.root_stat.uid,
                self.root_stat.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            ),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes a file given by its relative path (eviction; not an application unlink).
    pub fn unlink_beneath(&self, rel: &Path) -> io::Result<()> {
        let (parent_fd, name) = self.open_parent(rel)?;
        sys::unlinkat(parent_fd.as_fd(), &single_component(name)?, 0)
    }

    /// Opens a regular file beneath the served directory for etlfs' own reads (uploads,
    /// checksums): with `O_NOATIME` where allowed, because such a read is no access by anyone
    /// and must not move the file's access time (under relatime it would, at each upload).
    pub fn open_file_beneath(&self, rel: &Path) -> io::Result<File> {
        noatime_if_allowed(
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOATIME,
            |flags| self.open_beneath(rel, flags, 0).map(File::from),
        )
    }

    /// Every file and directory below the root (root excluded), skipping `skip` and what is
    /// below it. Walks with descriptors, never with paths, so it works while the mount covers
    /// the directory.
    pub fn walk(&self, skip: Option<&Path>) -> io::Result<Vec<(std::path::PathBuf, Stat)>> {
        self.walk_from(Path::new(""), skip)
    }

    /// Like [`LocalDir::walk`], below the directory `start` (relative; `""` is the root).
    pub fn walk_from(
        &self,
        start: &Path,
        skip: Option<&Path>,
    ) -> io::Result<Vec<(std::path::PathBuf, Stat)>> {
        let mut out = Vec::new();
        self.walk_each(start, skip, |rel, st| out.push((rel.to_path_buf(), st)))?;
        Ok(out)
    }

    /// Like [`LocalDir::walk_from`], handing each entry to `each` instead of collecting them
    /// (a count over 100,000 files then needs no table of them).
    pub fn walk_each(
        &self,
        start: &Path,
        skip: Option<&Path>,
        mut each: impl FnMut(&Path, Stat),
    ) -> io::Result<()> {
        let start_fd = if start.as_os_str().is_empty() {
            self.root.try_clone()?
        } else {
            self.open_beneath(
                start,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?
        };
        let mut stack = vec![(start.to_path_buf(), start_fd)];
        while let Some((rel, fd)) = stack.pop() {
            for e in self.read_dir(fd.as_fd(), true)? {
                let child = rel.join(&e.name);
                if Some(child.as_path()) == skip {
                    continue;
                }
                let (cfd, st) = match self.lookup(fd.as_fd(), &e.name) {
                    Ok(x) => x,
                    // Removed while we were walking: nothing to report.
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(err) => return Err(err),
                };
                each(&child, st);
                if st.is_dir() {
                    stack.push((child, cfd));
                }
            }
        }
        Ok(())
    }
}

/// Answer to a getxattr/listxattr call: the size needed, or the bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

/// The reply to a getxattr/listxattr of `size` (0: only the size is asked) that gave `n`.
fn xattr_reply(size: u32, n: usize, mut buf: Vec<u8>) -> XattrReply {
    if size == 0 {
        return XattrReply::Size(n as u32);
    }
    buf.truncate(n);
    XattrReply::Data(buf)
}

/// Runs an xattr change as the caller: with its exact capabilities for the namespaces that
/// depend on `CAP_SYS_ADMIN` (`trusted.*`, `security.*`), with the filesystem ones otherwise.
fn xattr_as_caller<T>(name: &OsStr, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let b = name.as_bytes();
    if b.starts_with(b"trusted.") || b.starts_with(b"security.") {
        as_caller_exactly(op)
    } else {
        as_caller(op)
    }
}

/// Runs `open(flags)`, and if `flags` hold `O_NOATIME` and the kernel refuses it, `open` again
/// without. The kernel allows `O_NOATIME` only to the file's owner or with `CAP_FOWNER`, which
/// etlfs as root has, but not in a user namespace for a file of an unmapped owner; there the
/// read goes on and counts as an access, which is better than no read.
fn noatime_if_allowed<T>(flags: i32, open: impl Fn(i32) -> io::Result<T>) -> io::Result<T> {
    match open(flags) {
        Err(e) if flags & libc::O_NOATIME != 0 && e.raw_os_error() == Some(libc::EPERM) => {
            open(flags & !libc::O_NOATIME)
        }
        other => other,
    }
}

/// A name the kernel hands us must be one path component: not empty, not `.`/`..`, no `/`,
/// no NUL. The kernel already guarantees most of this; we check anyway because a violation
/// would let a name walk out of the directory.
pub fn single_component(name: &OsStr) -> io::Result<std::ffi::CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    sys::cstr(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, LocalDir) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("root/sub")).unwrap();
        std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
        std::fs::write(tmp.path().join("root/sub/inside"), b"inside").unwrap();
        let local = LocalDir::open(&tmp.path().join("root")).unwrap();
        (tmp, local)
    }

    fn errno(r: io::Result<OwnedFd>) -> i32 {
        r.unwrap_err().raw_os_error().unwrap()
    }

    #[test]
    fn open_beneath_refuses_every_way_out() {
        let (tmp, local) = dir();
        let root = tmp.path().join("root");
        std::os::unix::fs::symlink("../secret", root.join("rel_out")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("abs_out")).unwrap();
        std::os::unix::fs::symlink("sub/inside", root.join("ok_link")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();
        for escape in [
            "../secret",
            "sub/../../secret",
            "rel_out",
            "abs_out",
            "/etc/passwd",
            "magic",
        ] {
            assert_eq!(
                errno(local.open_beneath(Path::new(escape), libc::O_RDONLY, 0)),
                libc::EXDEV,
                "{escape}"
            );
        }
        // Inside the tree, `..` and relative symlinks are fine.
        assert!(
            local
                .open_beneath(Path::new("sub/../sub/inside"), libc::O_RDONLY, 0)
                .is_ok()
        );
        let fd = local
            .open_beneath(Path::new("ok_link"), libc::O_RDONLY, 0)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(sys::fd_path(fd.as_fd()).to_str().unwrap()).unwrap(),
            "inside"
        );
    }

    #[test]
    fn single_names_never_resolve_symlinks_or_dots() {
        let (tmp, local) = dir();
        std::os::unix::fs::symlink("/etc", tmp.path().join("root/etc")).unwrap();
        let (_, st) = local.lookup(local.root(), OsStr::new("etc")).unwrap();
        assert!(st.is_symlink(), "lookup must return the symlink itself");
        for bad in ["..", ".", "sub/inside", ""] {
            let e = local.lookup(local.root(), OsStr::new(bad)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn create_as_caller_owns_the_file() {
        let (tmp, local) = dir();
        let root = tmp.path().join("root");
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let creds = Creds {
            uid: 4321,
            gid: 8765,
        };
        let (_, _, st) = local
            .create(
                local.root(),
                OsStr::new("mine"),
                libc::O_WRONLY,
                0o640,
                creds,
            )
            .unwrap();
        assert_eq!((st.uid, st.gid, st.mode & 0o777), (4321, 8765, 0o640));
        // The thread's own ids are back to root afterwards.
        let (_, st) = local
            .mkdir(
                local.root(),
                OsStr::new("d"),
                0o755,
                Creds { uid: 0, gid: 0 },
            )
            .unwrap();
        assert_eq!((st.uid, st.gid), (0, 0));
    }
}
