//! The filesystem both transports serve: a passthrough to a backing directory, with just
//! the operations the create and Kubecost workloads need. Node ids are the backing files'
//! inode numbers (1 is the root); each node remembers its path. Optionally (`passthrough`)
//! opened files are registered as kernel backing files, so reads and writes never reach
//! the server, as etlfs does.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags};

use crate::abi::*;

/// Seconds the kernel may cache entries and attributes (etlfs uses the same).
const TTL_SECS: u64 = 60;

/// What a request asks: the in-header, the fixed per-op struct and what follows it.
pub struct Req<'a> {
    pub h: InHeader,
    pub arg: &'a [u8],
    pub rest: &'a [u8],
}

/// What to answer: nothing (FORGET, INTERRUPT), an errno, or a reply body.
pub enum Reply {
    None,
    Err(i32),
    Ok(Body),
}

struct Open {
    file: File,
    backing_id: Option<i32>,
}

pub struct Fs {
    root: PathBuf,
    root_ino: u64,
    /// The /dev/fuse descriptor, for the passthrough ioctls.
    dev: Option<File>,
    nodes: Mutex<HashMap<u64, PathBuf>>,
    files: Mutex<HashMap<u64, Open>>,
    next_fh: AtomicU64,
    /// Requests served, per opcode.
    pub counts: [AtomicU64; 64],
    /// Of which through the io_uring queues.
    pub via_ring: AtomicU64,
}

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn rerr(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

/// A name argument: bytes up to the NUL.
fn name(b: &[u8]) -> &Path {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Path::new(std::ffi::OsStr::from_bytes(&b[..end]))
}

impl Fs {
    pub fn new(root: PathBuf, dev: Option<File>) -> io::Result<Fs> {
        let root_ino = fs::metadata(&root)?.ino();
        let mut nodes = HashMap::new();
        nodes.insert(1, root.clone());
        Ok(Fs {
            root,
            root_ino,
            dev,
            nodes: Mutex::new(nodes),
            files: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            via_ring: AtomicU64::new(0),
        })
    }

    fn path(&self, nodeid: u64) -> Result<PathBuf, i32> {
        self.nodes
            .lock()
            .unwrap()
            .get(&nodeid)
            .cloned()
            .ok_or(libc::ESTALE)
    }

    fn nodeid(&self, ino: u64) -> u64 {
        if ino == self.root_ino { 1 } else { ino }
    }

    fn attr(&self, b: &mut Body, m: &Metadata) {
        b.u64(self.nodeid(m.ino()))
            .u64(m.size())
            .u64(m.blocks())
            .u64(m.atime() as u64)
            .u64(m.mtime() as u64)
            .u64(m.ctime() as u64)
            .u32(m.atime_nsec() as u32)
            .u32(m.mtime_nsec() as u32)
            .u32(m.ctime_nsec() as u32)
            .u32(m.mode())
            .u32(m.nlink() as u32)
            .u32(m.uid())
            .u32(m.gid())
            .u32(m.rdev() as u32)
            .u32(m.blksize() as u32)
            .u32(0);
    }

    /// `fuse_entry_out` for a path just looked up or made (counts one lookup).
    fn entry(&self, b: &mut Body, path: PathBuf, m: &Metadata) {
        let id = self.nodeid(m.ino());
        self.nodes.lock().unwrap().insert(id, path);
        b.u64(id).u64(0).u64(TTL_SECS).u64(TTL_SECS).u32(0).u32(0);
        self.attr(b, m);
    }

    fn attr_out(&self, m: &Metadata) -> Reply {
        let mut b = Body::default();
        b.u64(TTL_SECS).u32(0).u32(0);
        self.attr(&mut b, m);
        Reply::Ok(b)
    }

    /// Registers `file` as a kernel backing file (FUSE_DEV_IOC_BACKING_OPEN).
    fn backing_open(&self, file: &File) -> Result<Option<i32>, i32> {
        let Some(dev) = &self.dev else {
            return Ok(None);
        };
        crate::sys::backing_open(dev.as_fd(), file.as_raw_fd())
            .map(Some)
            .map_err(errno)
    }

    fn backing_close(&self, id: i32) {
        if let Some(dev) = &self.dev {
            let _ = crate::sys::backing_close(dev.as_fd(), id);
        }
    }

    /// Keeps an opened file and writes its `fuse_open_out`.
    fn opened(&self, b: &mut Body, file: File) -> Result<(), i32> {
        let backing_id = self.backing_open(&file)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let flags = if backing_id.is_some() {
            FOPEN_PASSTHROUGH
        } else {
            0
        };
        b.u64(fh).u32(flags).u32(backing_id.unwrap_or(0) as u32);
        self.files
            .lock()
            .unwrap()
            .insert(fh, Open { file, backing_id });
        Ok(())
    }

    fn file<T>(&self, fh: u64, f: impl FnOnce(&File) -> T) -> Result<T, i32> {
        let files = self.files.lock().unwrap();
        files.get(&fh).map(|o| f(&o.file)).ok_or(libc::EBADF)
    }

    /// Serves one request; both transports call this.
    pub fn dispatch(&self, r: &Req) -> Reply {
        self.counts[(r.h.opcode as usize).min(63)].fetch_add(1, Ordering::Relaxed);
        match self.serve(r) {
            Ok(reply) => reply,
            Err(e) => Reply::Err(e),
        }
    }

    fn serve(&self, r: &Req) -> Result<Reply, i32> {
        let mut b = Body::default();
        match r.h.opcode {
            FUSE_LOOKUP => {
                let p = self.path(r.h.nodeid)?.join(name(r.rest));
                let m = fs::symlink_metadata(&p).map_err(errno)?;
                self.entry(&mut b, p, &m);
            }
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => return Ok(Reply::None),
            FUSE_GETATTR => {
                let m = fs::symlink_metadata(self.path(r.h.nodeid)?).map_err(errno)?;
                return Ok(self.attr_out(&m));
            }
            FUSE_SETATTR => return self.setattr(r),
            FUSE_MKDIR => {
                let p = self.path(r.h.nodeid)?.join(name(r.rest));
                let mode = u32_at(r.arg, 0) & !u32_at(r.arg, 4);
                fs::create_dir(&p).map_err(errno)?;
                fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(errno)?;
                let m = fs::symlink_metadata(&p).map_err(errno)?;
                self.entry(&mut b, p, &m);
            }
            FUSE_UNLINK => {
                fs::remove_file(self.path(r.h.nodeid)?.join(name(r.rest))).map_err(errno)?;
            }
            FUSE_RMDIR => {
                fs::remove_dir(self.path(r.h.nodeid)?.join(name(r.rest))).map_err(errno)?;
            }
            FUSE_CREATE => {
                let p = self.path(r.h.nodeid)?.join(name(r.rest));
                let flags =
                    OFlags::from_bits_retain(u32_at(r.arg, 0)) | OFlags::CREATE | OFlags::CLOEXEC;
                let mode = Mode::from_bits_truncate(u32_at(r.arg, 4) & !u32_at(r.arg, 8));
                let file = File::from(rustix::fs::open(&p, flags, mode).map_err(rerr)?);
                let m = file.metadata().map_err(errno)?;
                self.entry(&mut b, p, &m);
                self.opened(&mut b, file)?;
            }
            FUSE_OPEN => {
                let p = self.path(r.h.nodeid)?;
                let raw =
                    u32_at(r.arg, 0) & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY) as u32;
                let flags = OFlags::from_bits_retain(raw) | OFlags::CLOEXEC;
                let file = File::from(rustix::fs::open(&p, flags, Mode::empty()).map_err(rerr)?);
                self.opened(&mut b, file)?;
            }
            FUSE_WRITE => {
                let (fh, off, size) = (u64_at(r.arg, 0), u64_at(r.arg, 8), u32_at(r.arg, 16));
                let data = r.rest.get(..size as usize).ok_or(libc::EINVAL)?;
                let n = self.file(fh, |f| f.write_at(data, off))?.map_err(errno)?;
                b.u32(n as u32).u32(0);
            }
            FUSE_READ => {
                let (fh, off, size) = (u64_at(r.arg, 0), u64_at(r.arg, 8), u32_at(r.arg, 16));
                b.0.resize(size as usize, 0);
                let n = self
                    .file(fh, |f| f.read_at(&mut b.0, off))?
                    .map_err(errno)?;
                b.0.truncate(n);
            }
            FUSE_FSYNC => {}
            FUSE_RELEASE => {
                let fh = u64_at(r.arg, 0);
                if let Some(o) = self.files.lock().unwrap().remove(&fh)
                    && let Some(id) = o.backing_id
                {
                    self.backing_close(id);
                }
            }
            FUSE_STATFS => {
                let s = rustix::fs::statvfs(&self.root).map_err(rerr)?;
                b.u64(s.f_blocks)
                    .u64(s.f_bfree)
                    .u64(s.f_bavail)
                    .u64(s.f_files)
                    .u64(s.f_ffree);
                b.u32(s.f_bsize as u32)
                    .u32(s.f_namemax as u32)
                    .u32(s.f_frsize as u32)
                    .u32(0);
                b.zeros(24);
            }
            FUSE_OPENDIR => {
                b.u64(0).u32(0).u32(0);
            }
            // An empty listing: enough for the workloads, which never list.
            FUSE_READDIR | FUSE_RELEASEDIR => {}
            FUSE_DESTROY => {}
            // ENOSYS makes the kernel stop sending these for good (FLUSH, GETXATTR, ACCESS...),
            // as etlfs answers FLUSH and, without --xattrs, the xattr requests.
            _ => return Err(libc::ENOSYS),
        }
        Ok(Reply::Ok(b))
    }

    fn setattr(&self, r: &Req) -> Result<Reply, i32> {
        let valid = u32_at(r.arg, 0);
        let fh = u64_at(r.arg, 8);
        let p = self.path(r.h.nodeid)?;
        if valid & FATTR_SIZE != 0 {
            let size = u64_at(r.arg, 16);
            if valid & FATTR_FH != 0 {
                self.file(fh, |f| f.set_len(size))?.map_err(errno)?;
            } else {
                File::options()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(size))
                    .map_err(errno)?;
            }
        }
        if valid & FATTR_MODE != 0 {
            let mode = u32_at(r.arg, 68) & 0o7777;
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(errno)?;
        }
        // Times, owner: not needed by the workloads; the current attributes are answered.
        let m = fs::symlink_metadata(&p).map_err(errno)?;
        Ok(self.attr_out(&m))
    }

    /// The request counts, for the report at exit.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for (op, c) in self.counts.iter().enumerate() {
            let c = c.load(Ordering::Relaxed);
            if c > 0 {
                s.push_str(&format!("{} {c}\n", op_name(op as u32)));
            }
        }
        s.push_str(&format!(
            "via_io_uring {}\n",
            self.via_ring.load(Ordering::Relaxed)
        ));
        s
    }
}
