//! Why a bucket operation failed, and which failures retrying cannot fix.
//!
//! Kept apart from the operations so that every caller (the mirror's retries, the fetcher's
//! `degraded` accounting, the lease) reads one classification: permanent, outage, or a key
//! `object_store` cannot list.

use std::path::PathBuf;

use object_store::path::Path as Key;

use super::reply::{self, Refusal};
use crate::escape::{esc, esc_display};

/// Errors of bucket operations.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("{} cannot be stored as a bucket key: {reason}", esc(.path))]
    BadKey { path: PathBuf, reason: &'static str },
    #[error("object {} not found", esc(.key))]
    NotFound { key: String },
    // object_store's message can quote a raw key (one it could not parse in a listing), and
    // the server's body. Said whole here, each cause once (`reply::describe`): not a `source`,
    // so that no one walks the chain again and repeats it.
    #[error("{op} {}: {}", esc(.key), esc_display(reply::describe(.cause)))]
    Store {
        op: &'static str,
        key: String,
        cause: object_store::Error,
    },
    // `reason` quotes the object's metadata, or serde's words on a sidecar's bytes.
    #[error("metadata of {}: {}", esc(.key), esc(.reason))]
    BadMetadata { key: String, reason: String },
    /// This process may not write the bucket now (see [`super::Fence`]).
    #[error("writes to the bucket are stopped: {reason}")]
    Fenced { reason: String },
    /// The backend cannot do this kind of request (e.g. a conditional update on FILESYSTEM).
    #[error("{op} {}: the bucket cannot do this ({})", esc(.key), esc_display(.source))]
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
            BucketError::Store { cause, .. } => {
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(cause);
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
        matches!(self, BucketError::Store { cause, .. } if names_a_bad_key(cause))
    }

    /// What the server answered, boiled down (`HTTP 403 Forbidden: AccessDenied: Access
    /// Denied`), if this failure carries an answer.
    pub fn server_reply(&self) -> Option<String> {
        match self {
            BucketError::Store { cause, .. } => reply::server_reply(cause),
            _ => None,
        }
    }

    /// What the failure says about the bucket as a whole: it does not exist, or it refuses
    /// our credentials or permissions (see [`Refusal`]).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            BucketError::Store { cause, .. } => reply::refusal(cause),
            _ => None,
        }
    }

    pub(super) fn store<'a>(
        op: &'static str,
        key: &'a Key,
    ) -> impl FnOnce(object_store::Error) -> BucketError + 'a {
        move |source| match source {
            // A missing bucket answers 404 as well: that is not an object that is absent.
            ref e if absent(e) => BucketError::NotFound {
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
                cause: source,
            },
        }
    }
}

pub type Result<T, E = BucketError> = std::result::Result<T, E>;

/// Whether `object_store` found no such object (and not: no such bucket, which answers 404 as
/// well).
pub(super) fn absent(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
        && reply::refusal(e) != Some(Refusal::NoBucket)
}

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
