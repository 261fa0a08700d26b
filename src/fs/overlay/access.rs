//! The permission checks the overlay makes itself, where the filesystem underneath cannot.
//!
//! Where etlfs checks permissions (no `default_permissions`, see [`crate::os::creds`]), every
//! request runs its system calls as the caller and the filesystem underneath decides. Three
//! things it cannot decide alone:
//!
//! - **bucket-only files** are not on it yet. Opening one, or `access(2)`, is decided from the
//!   mode and owner the file will have once local (the download gives it exactly those, and no
//!   ACL: [`creds::permits`]), *before* anything is downloaded or emptied; other requests on
//!   one download it first and then ask the filesystem. Removing or renaming one asks the
//!   filesystem about its directory.
//! - **access(2)** arrives as a request of its own ([`Overlay::access`]).
//! - **names the kernel caches**: with a name cached, the kernel walks through a directory
//!   without asking etlfs, so nobody checks the caller's search permission on it. Names are
//!   therefore cached only in directories every user may search ([`Overlay::open_to_all`]:
//!   all three execute bits, no ACL); the FUSE layer gives names elsewhere no validity, so the
//!   kernel asks again, as the caller, each time.
//!
//! Where the filesystem's answer is known without asking it — a lookup in a directory everyone
//! may search, an open by the file's owner that its owner bits allow ([`Overlay::owner_may`]) —
//! etlfs makes the call itself and spares the switch of credentials.

use std::os::fd::AsFd;

use super::{Ino, Overlay, OverlayError, Result};
use crate::os::creds;

impl Overlay {
    /// Whether every user may search directory `ino` (so the kernel may cache names in it for
    /// everyone): all three execute bits set and no ACL. `None` for a node that is not a
    /// directory (or unknown). Kept until the directory's mode, owner or ACL change.
    pub fn open_to_all(&self, ino: Ino) -> Option<bool> {
        let (is_dir, seen) = self.inodes.search(ino)?;
        if !is_dir {
            return None;
        }
        if let Some(everyone) = seen.everyone {
            return Some(everyone);
        }
        let fd = self.dir_fd(ino).ok()?;
        let st = self.local.stat(fd.as_fd()).ok()?;
        let everyone = st.mode & 0o111 == 0o111 && !self.local.has_access_acl(fd.as_fd());
        self.inodes.searched(ino, seen, everyone);
        Some(everyone)
    }

    /// The names the kernel may have cached in directory `ino` (to expire them when not
    /// everyone may search it any more).
    pub fn names_in(&self, ino: Ino) -> Vec<std::ffi::OsString> {
        self.inodes.names_in(ino)
    }

    /// `access(2)` (and `chdir`) for the current caller: `mask` of `R_OK`, `W_OK`, `X_OK`.
    pub fn access(&self, ino: Ino, mask: i32) -> Result<()> {
        match self.fd_of(ino) {
            Some((Some(fd), _)) => self
                .local
                .access(fd.as_fd(), mask)
                .map_err(OverlayError::local("access")),
            Some((None, _)) => self.check_remote(ino, mask),
            None => Err(OverlayError::UnknownInode(ino)),
        }
    }

    /// Whether the current caller owns the file behind `fd` and its owner bits allow `mask`:
    /// then the filesystem allows it whatever else holds (an ACL's entries apply to others than
    /// the owner; capabilities only add), so an open without `O_TRUNC` (whose truncation would
    /// clear set-uid bits by the caller's capabilities) can be made by etlfs.
    pub(super) fn owner_may(&self, fd: std::os::fd::BorrowedFd<'_>, mask: i32) -> bool {
        let Some(caller) = creds::current() else {
            return false;
        };
        let mask = (mask & (libc::R_OK | libc::W_OK | libc::X_OK)) as u32;
        self.local
            .stat(fd)
            .is_ok_and(|st| st.uid == caller.uid && (st.mode >> 6) & mask == mask)
    }

    /// Refuses (`EACCES`) what the current caller may not do with `mask` to the bucket-only
    /// file `ino`, judged by the mode and owner it will have once local.
    pub(super) fn check_remote(&self, ino: Ino, mask: i32) -> Result<()> {
        let Some(caller) = creds::current() else {
            return Ok(());
        };
        let (parent, path) = self
            .inodes
            .with_node(ino, |n| n.parent)
            .zip(self.inodes.path(ino))
            .ok_or(OverlayError::UnknownInode(ino))?;
        // Local meanwhile: the filesystem checks the open.
        let Some(f) = self.remote_file(&path) else {
            return Ok(());
        };
        let a = self.remote_attr(ino, parent, &f);
        if creds::permits(&caller, u32::from(a.perm), a.uid, a.gid, mask) {
            Ok(())
        } else {
            Err(denied("open"))
        }
    }

    /// Refuses what the current caller may not do to the names in directory `dir` (add or
    /// remove one: write and search permission), asking the filesystem: for names that are
    /// only in the bucket, and before answers that do not depend on the caller (`ENOTEMPTY`,
    /// `EEXIST`) but come after the permission check on a local filesystem.
    pub(super) fn check_entries(&self, dir: &std::os::fd::OwnedFd, op: &'static str) -> Result<()> {
        self.local
            .access(dir.as_fd(), libc::W_OK | libc::X_OK)
            .map_err(OverlayError::local(op))
    }
}

/// The refusal of a permission check.
pub(super) fn denied(op: &'static str) -> OverlayError {
    OverlayError::local(op)(std::io::Error::from_raw_os_error(libc::EACCES))
}

/// The access an open with `flags` needs (`R_OK`, `W_OK`, `X_OK` for `execve`'s).
pub(super) fn open_mask(flags: i32, exec: bool) -> i32 {
    if exec {
        return libc::X_OK;
    }
    let mask = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => libc::R_OK,
        libc::O_WRONLY => libc::W_OK,
        _ => libc::R_OK | libc::W_OK,
    };
    if flags & libc::O_TRUNC != 0 {
        mask | libc::W_OK
    } else {
        mask
    }
}
