//! The state directory (journal, upload records, download temporaries, this node's writer id,
//! and the record of a complete local directory that lets a start skip the bucket), reached by
//! descriptor.
//!
//! By default the state directory lives inside the served directory, which etlfs then mounts
//! over: after the mount its path leads into etlfs itself, where it is hidden. So it is opened
//! once, before the mount, and every file in it is reached relative to that descriptor.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::os::sys;

/// The record of a complete local directory ([`StateDir::complete_files`]).
const COMPLETE: &str = "complete";

/// The state directory.
#[derive(Debug)]
pub struct StateDir {
    fd: OwnedFd,
    path: PathBuf,
    dev: u64,
    next_tmp: AtomicU64,
}

fn name(n: &str) -> CString {
    CString::new(n).expect("state file names contain no NUL")
}

impl StateDir {
    /// Opens an existing directory. Call before mounting over it.
    pub fn open(path: &Path) -> io::Result<StateDir> {
        let fd = sys::openat(
            sys::at_fdcwd(),
            &sys::cstr(path.as_os_str())?,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        let dev = sys::fstatat(fd.as_fd(), sys::EMPTY, libc::AT_EMPTY_PATH)?.st_dev;
        Ok(StateDir {
            fd,
            path: path.to_owned(),
            dev,
            next_tmp: AtomicU64::new(0),
        })
    }

    /// The path, for messages only.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The device the directory is on (files fetched here are renamed into the served tree,
    /// which only works on the same filesystem).
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// Reads a whole file; `NotFound` if it does not exist.
    pub fn read(&self, file: &str) -> io::Result<Vec<u8>> {
        let mut f = self.open_read(file)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Opens a file for reading; `NotFound` if it does not exist.
    pub fn open_read(&self, file: &str) -> io::Result<File> {
        Ok(File::from(sys::openat(
            self.fd(),
            &name(file),
            libc::O_RDONLY,
            0,
        )?))
    }

    /// Opens (creating) a file for appending.
    pub fn open_append(&self, file: &str) -> io::Result<File> {
        Ok(File::from(sys::openat(
            self.fd(),
            &name(file),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
            0o600,
        )?))
    }

    /// Replaces a file atomically (temp file + rename): a crash leaves the old or the new one.
    /// A failed attempt removes its temporary: on a full disk, what it took would otherwise
    /// stay taken from the application and the journal until the next attempt truncates it,
    /// and be handed back for an instant then.
    pub fn write_atomic(&self, file: &str, bytes: &[u8]) -> io::Result<()> {
        self.write_atomic_with(file, |w| w.write_all(bytes))
    }

    /// Like [`StateDir::write_atomic`], the contents written by `write` through a buffer (a
    /// table of 100,000 records is streamed out, never built in memory first).
    pub fn write_atomic_with(
        &self,
        file: &str,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let tmp = name(&format!("{file}.tmp"));
        let f = File::from(sys::openat(
            self.fd(),
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o600,
        )?);
        let mut out = io::BufWriter::with_capacity(64 * 1024, f);
        let res = write(&mut out)
            .and_then(|()| out.flush())
            .and_then(|()| sys::renameat2(self.fd(), &tmp, self.fd(), &name(file), 0));
        if res.is_err() {
            let _ = sys::unlinkat(self.fd(), &tmp, 0);
        }
        res
    }

    /// This state directory's writer id (see `crate::engine::lease`): made once, then read back, so a
    /// restarted etlfs over the same directory is recognised as the lease's own holder.
    pub fn writer_id(&self) -> io::Result<String> {
        const FILE: &str = "writer-id";
        match self.read(FILE) {
            Ok(b) if b.len() == 32 && b.iter().all(u8::is_ascii_hexdigit) => {
                Ok(String::from_utf8(b).expect("hex is ASCII"))
            }
            Ok(_) | Err(_) => {
                let id = new_writer_id()?;
                self.write_atomic(FILE, id.as_bytes())?;
                Ok(id)
            }
        }
    }

    /// The local regular files a clean stop counted when nothing was bucket-only (every file
    /// the bucket held was local): see [`crate::cli::mount`]'s offline start. `None` if the last stop
    /// could not say so (or the record is unreadable).
    pub fn complete_files(&self) -> Option<u64> {
        let b = self.read(COMPLETE).ok()?;
        std::str::from_utf8(&b).ok()?.trim().parse().ok()
    }

    /// Records that the local directory is complete with `files` regular files.
    pub fn set_complete(&self, files: u64) -> io::Result<()> {
        self.write_atomic(COMPLETE, files.to_string().as_bytes())
    }

    /// Forgets that the local directory was complete (files may be bucket-only from now on).
    pub fn clear_complete(&self) {
        let _ = sys::unlinkat(self.fd(), &name(COMPLETE), 0);
    }

    /// Creates a new, uniquely named temporary file for a download. Returns it and its name.
    pub fn create_temp(&self, mode: u32) -> io::Result<(File, CString)> {
        loop {
            let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
            let tmp = name(&format!("fetch-{}-{n}.tmp", std::process::id()));
            match sys::openat(
                self.fd(),
                &tmp,
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                mode,
            ) {
                Ok(fd) => return Ok((File::from(fd), tmp)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes a file (a temporary that is not needed any more).
    pub fn remove(&self, file: &CString) -> io::Result<()> {
        sys::unlinkat(self.fd(), file, 0)
    }

    /// Removes the state file `file`.
    pub fn remove_file(&self, file: &str) -> io::Result<()> {
        sys::unlinkat(self.fd(), &name(file), 0)
    }

    /// Removes leftover download temporaries of earlier runs.
    pub fn clean_temps(&self) {
        let Ok(entries) = std::fs::read_dir(Path::new(
            sys::fd_path(self.fd()).to_str().unwrap_or_default(),
        )) else {
            return;
        };
        for e in entries.flatten() {
            let n = e.file_name();
            let s = n.to_string_lossy();
            if s.starts_with("fetch-") && s.ends_with(".tmp") {
                let _ = sys::unlinkat(self.fd(), &name(&s), 0);
            }
        }
    }
}

/// A new random writer id: what [`StateDir::writer_id`] keeps, and what a process without a
/// state directory of its own (`etlfs backup`) uses for the lease.
pub fn new_writer_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn files_are_reached_through_the_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(tmp.path()).unwrap();
        st.write_atomic("a.json", b"one").unwrap();
        st.write_atomic("a.json", b"two").unwrap();
        assert_eq!(st.read("a.json").unwrap(), b"two");
        let mut f = st.open_append("log").unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(st.read("log").unwrap(), b"x");
        let (_, t) = st.create_temp(0o600).unwrap();
        assert!(tmp.path().join(t.to_str().unwrap()).exists());
        st.clean_temps();
        assert!(!tmp.path().join(t.to_str().unwrap()).exists());
        assert_eq!(
            st.read("missing").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    /// A tmpfs of two pages (8 KiB), unmounted on drop: a full disk for the tests of what
    /// etlfs does when a write does not fit (needs root).
    pub(crate) struct SmallTmpfs {
        _tmp: tempfile::TempDir,
        dir: std::path::PathBuf,
    }

    impl SmallTmpfs {
        pub(crate) fn new() -> SmallTmpfs {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("small");
            std::fs::create_dir(&dir).unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success(), "mounting a tmpfs needs root");
            SmallTmpfs { _tmp: tmp, dir }
        }

        pub(crate) fn path(&self) -> &std::path::Path {
            &self.dir
        }
    }

    impl Drop for SmallTmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.dir).status();
        }
    }

    /// A replacement that does not fit on a full disk fails, keeps the old file, and leaves
    /// nothing behind: the space its temporary took is free again. (A tiny tmpfs: 2 pages.)
    #[test]
    fn a_failed_replacement_gives_its_space_back() {
        let small = crate::os::state::tests::SmallTmpfs::new();
        let dir = small.path().to_owned();
        let st = StateDir::open(&dir).unwrap();
        st.write_atomic("a.json", b"old").unwrap(); // page 1 of 2
        let err = st.write_atomic("a.json", &[b'x'; 3 * 4096]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert_eq!(st.read("a.json").unwrap(), b"old");
        assert!(!dir.join("a.json.tmp").exists(), "the temporary was left");
        // Page 2 is free again.
        std::fs::write(dir.join("other"), [b'y'; 4096]).unwrap();
    }
}
