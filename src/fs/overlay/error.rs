//! The overlay's error type and its one errno mapping.
//!
//! Every failure a FUSE request can meet ends up here, and `errno()` is the single place
//! that decides what the application sees. The match is exhaustive on purpose: a new variant
//! must choose its errno explicitly.

use std::ffi::OsString;
use std::io;

use super::Ino;

/// Failures of overlay operations.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A system call on the directory underneath failed; its errno is passed through.
    #[error("{op} failed: {source}")]
    Local {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel named an inode we no longer know (forgotten, or from a previous mount).
    #[error("unknown inode {0}")]
    UnknownInode(Ino),
    /// The kernel named a file handle we never issued or already released.
    #[error("unknown file handle {0}")]
    UnknownHandle(u64),
    /// The name belongs to etlfs' own state directory, which is invisible through the mount.
    #[error("{} is reserved for etlfs' state directory", crate::escape::esc(.0))]
    Reserved(OsString),
    /// A directory operation on something that is not a directory.
    #[error("inode {0} is not a directory")]
    NotADirectory(Ino),
    /// A bucket-only file could not be downloaded (or the download was corrupt).
    #[error(transparent)]
    Fetch(std::sync::Arc<crate::engine::fetch::FetchError>),
    /// The operation needs these bucket-only files local first. Nothing was done: download
    /// them ([`super::Overlay::fetch_needed`]) and run it again. Never reaches an application.
    #[error("{} bucket-only file(s) must be downloaded first, the first {}", .0.len(), crate::escape::esc(.0.first().map(|p| p.as_path()).unwrap_or(std::path::Path::new(""))))]
    NeedsFetch(Vec<std::path::PathBuf>),
    /// The application was killed while its request waited for a download.
    #[error("the application was killed while waiting for a download")]
    Interrupted,
    /// A request waited for a download while the bucket delivered nothing for this long
    /// (`--fetch-timeout`).
    #[error("the bucket delivered nothing for {}s; gave up waiting for the download", .0.as_secs())]
    BucketSilent(std::time::Duration),
    /// A change asked of a read-only mount (`-o ro`).
    #[error("the mount is read-only")]
    ReadOnly,
    /// The caller of a request could not be known, so its permissions cannot be checked.
    #[error(transparent)]
    Caller(crate::os::creds::CallerError),
}

impl OverlayError {
    /// Wraps an `io::Error` from `local.rs`, naming the operation for the log.
    pub fn local(op: &'static str) -> impl FnOnce(io::Error) -> OverlayError {
        move |source| OverlayError::Local { op, source }
    }

    /// The errno the application sees.
    pub fn errno(&self) -> i32 {
        match self {
            OverlayError::Local { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            OverlayError::UnknownInode(_) => libc::ESTALE,
            OverlayError::UnknownHandle(_) => libc::EBADF,
            OverlayError::Reserved(_) => libc::EACCES,
            OverlayError::NotADirectory(_) => libc::ENOTDIR,
            OverlayError::Fetch(_)
            | OverlayError::NeedsFetch(_)
            | OverlayError::BucketSilent(_) => libc::EIO,
            OverlayError::Interrupted => libc::EINTR,
            OverlayError::ReadOnly => libc::EROFS,
            OverlayError::Caller(_) => libc::EACCES,
        }
    }

    /// Whether this is an ordinary outcome an application provokes all the time (a missing
    /// file, an existing name, a permission check) rather than something an operator should
    /// see. Used to pick the log level.
    pub fn is_expected(&self) -> bool {
        matches!(
            self.errno(),
            libc::ENOENT
                | libc::EEXIST
                | libc::ENOTEMPTY
                | libc::EACCES
                | libc::EPERM
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::ENODATA
                | libc::ERANGE
                | libc::EINVAL
                | libc::ENAMETOOLONG
                | libc::ELOOP
                | libc::EXDEV
                | libc::ENXIO
                | libc::EOPNOTSUPP
                | libc::EROFS
        )
    }
}

pub type Result<T, E = OverlayError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_errors_pass_their_errno_through() {
        let e = OverlayError::local("unlink")(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        assert_eq!(e.errno(), libc::ENOTEMPTY);
        assert!(e.is_expected());
        assert_eq!(
            e.to_string(),
            format!(
                "unlink failed: {}",
                io::Error::from_raw_os_error(libc::ENOTEMPTY)
            )
        );
    }

    #[test]
    fn errors_without_errno_become_eio() {
        let e = OverlayError::local("read")(io::Error::other("no errno"));
        assert_eq!(e.errno(), libc::EIO);
        assert!(!e.is_expected());
    }

    #[test]
    fn overlay_errors_map_to_fixed_errnos() {
        assert_eq!(OverlayError::UnknownInode(7).errno(), libc::ESTALE);
        assert_eq!(OverlayError::UnknownHandle(7).errno(), libc::EBADF);
        assert_eq!(
            OverlayError::Reserved(".etlfs".into()).errno(),
            libc::EACCES
        );
        assert_eq!(OverlayError::NotADirectory(7).errno(), libc::ENOTDIR);
        assert_eq!(OverlayError::ReadOnly.errno(), libc::EROFS);
        assert!(OverlayError::ReadOnly.is_expected());
    }
}
