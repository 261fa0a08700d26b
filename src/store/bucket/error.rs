//! Why a bucket operation failed, and which failures retrying cannot fix.
//!
//! Kept apart from the operations so that every caller (the mirror's retries, the fetcher's
//! `degraded` accounting, the lease) reads one classification: permanent, outage, or a key
//! `object_store` cannot list.

use std::path::PathBuf;

use object_store::path::Path as Key;

use crate::escape::{esc, esc_display};

/// Errors of bucket operations.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("{} cannot be stored as a bucket key: {reason}", esc(.path))]
    BadKey { path: PathBuf, reason: &'static str },
    #[error("object {} not found", esc(.key))]
    NotFound { key: String },
    // object_store's message can quote a raw key (one it could not parse in a listing).
    #[error("{op} {}: {}", esc(.key), esc_display(.source))]
    Store {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    // `reason` quotes the object's metadata, or serde's words on a sidecar's bytes.
    #[error("metadata of {}: {}", esc(.key), esc(.reason))]
    BadMetadata { key: String, reason: String },
    /// This process may not write the bucket now (see [`super::Fence`]).
    #[error("writes to the bucket are stopped: {reason}")]
    Fenced { reason: String },
    /// The backend cannot do this kind of request (e.g. a conditional update on FILESYSTEM).
    #[error("{op} {key}: the bucket cannot do this ({source})")]
    Unsupported {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
}

impl BucketError {
    /// Errors that retrying cannot fix for this path: it cannot be a key, or the backend
    /// cannot store a name that long (a FILESYSTEM bucket keeps keys as file names).
    pub fn is_permanent(&self) -> bool {
        match self {
            BucketError::BadKey { .. } => true,
            BucketError::Store { source, .. } => {
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source);
                while let Some(e) = cur {
                    if let Some(io) = e.downcast_ref::<std::io::Error>() {
                        if io.raw_os_error() == Some(libc::ENAMETOOLONG) {
                            return true;
                        }
                    }
                    cur = e.source();
                }
                false
            }
            BucketError::NotFound { .. }
            | BucketError::BadMetadata { .. }
            | BucketError::Fenced { .. }
            | BucketError::Unsupported { .. } => false,
        }
    }

    /// The bucket did not answer, or refused the request (as opposed to a path that can never
    /// be a key, or an object that is simply absent): what counts towards `degraded`.
    pub fn is_outage(&self) -> bool {
        matches!(self, BucketError::Store { .. }) && !self.is_permanent()
    }

    /// A listing that failed because the bucket holds a key `object_store` cannot represent
    /// (an empty, `.` or `..` segment): no retry can fix it, only removing that object.
    pub fn is_unlistable_key(&self) -> bool {
        matches!(self, BucketError::Store { source, .. } if names_a_bad_key(source))
    }

    pub(super) fn store<'a>(
        op: &'static str,
        key: &'a Key,
    ) -> impl FnOnce(object_store::Error) -> BucketError + 'a {
        move |source| match source {
            object_store::Error::NotFound { .. } => BucketError::NotFound {
                key: key.to_string(),
            },
            source @ object_store::Error::NotImplemented { .. } => BucketError::Unsupported {
                op,
                key: key.to_string(),
                source,
            },
            source => BucketError::Store {
                op,
                key: key.to_string(),
                source,
            },
        }
    }
}

pub type Result<T, E = BucketError> = std::result::Result<T, E>;

/// Whether `object_store` failed because the bucket holds a key it cannot represent.
pub(super) fn names_a_bad_key(e: &object_store::Error) -> bool {
    if matches!(e, object_store::Error::InvalidPath { .. }) {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = cur {
        if e.downcast_ref::<object_store::path::Error>().is_some() {
            return true;
        }
        cur = e.source();
    }
    false
}
