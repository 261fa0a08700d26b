//! The commands: `etlfs mount` (wiring the layers below into a served mount; [`helper`] is
//! its `mount(8)` face), the one-shot commands that compare a directory with its bucket
//! without mounting, `etlfs status` (the client of a mount's status server), and the shell
//! completions and man pages of them all ([`manual`]) — and what they share: the checks of
//! their inputs, the bucket they name, and the errors that make exit code 2.

pub mod args;
pub mod helper;
pub mod manual;
pub mod mount;
pub mod oneshot;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use crate::escape::esc;
use crate::store::bucket::{Bucket, BucketError};
use crate::store::config;

/// Name of the default state directory, created inside the served directory.
pub const DEFAULT_STATE_DIR: &str = ".etlfs";

/// Invocation errors: reported with exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{what} {}: does not exist", esc(.path))]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} {}: not a directory", esc(.path))]
    NotADirectory { what: &'static str, path: PathBuf },
    #[error("{what} {}: {source}", esc(.path))]
    Inaccessible {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("/dev/fuse: {0} (is the fuse module loaded? in a container, pass --device /dev/fuse)")]
    NoFuseDevice(String),
    #[error(
        "permission denied: {0}; etlfs mount needs root or CAP_SYS_ADMIN (a privileged sidecar)"
    )]
    NoPermission(String),
    #[error("state directory {}: must not be the served directory itself", esc(.state))]
    StateIsRoot { state: PathBuf },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(
        "state directory {}: must be on the same filesystem as the served directory (downloads are renamed into place)",
        esc(.state)
    )]
    StateOnOtherFilesystem { state: PathBuf },
    #[error("{}: has no parent directory to keep the default bucket in; pass --config", esc(.local))]
    NoDefaultBucketPlace { local: PathBuf },
    #[error(transparent)]
    Listen(#[from] crate::ops::status::StatusError),
    #[error("ETLFS_FD_BUDGET=\"{}\": expected a number of descriptors, at least 16", esc(.0))]
    FdBudget(String),
    #[error(transparent)]
    Lease(Box<crate::engine::lease::LeaseError>),
    #[error(transparent)]
    MountOption(#[from] crate::fs::mountopts::UnknownOption),
    #[error("{}: a point-in-time mount (--as-of) needs an empty directory to fetch into", esc(.0))]
    AsOfNotEmpty(PathBuf),
    /// The bucket named by the configuration does not exist (and may not be created).
    #[error(
        "{} does not exist ({}): check its name and endpoint in the bucket configuration{}",
        esc(.target), esc(.reply), esc(.hint)
    )]
    NoBucket {
        target: String,
        reply: String,
        hint: String,
    },
}

/// A request found the bucket missing: it is created where the configuration asks for that
/// (an Azure container with `storage_create_container`, unset or true, as Thanos does), else
/// this is a configuration error that names the bucket and where it was looked for.
pub async fn settle_missing_bucket(bucket: &Bucket, e: &BucketError) -> Result<(), UsageError> {
    let no_bucket = |hint: String| UsageError::NoBucket {
        target: bucket.target().to_owned(),
        reply: e.server_reply().unwrap_or_else(|| e.to_string()),
        hint,
    };
    match bucket.create_missing().await {
        Ok(true) => {
            info!(bucket = %esc(bucket.target()), "created the container (storage_create_container)");
            Ok(())
        }
        Ok(false) if bucket.creatable() => Err(no_bucket(
            ", or let etlfs create it (`storage_create_container: false` forbids that)".into(),
        )),
        Ok(false) => Err(no_bucket(String::new())),
        Err(c) => Err(no_bucket(format!("; creating it failed: {c}"))),
    }
}

/// `path` as an existing directory, canonicalized; a [`UsageError`] naming `what` otherwise.
pub fn check_dir(what: &'static str, path: &Path) -> Result<PathBuf, UsageError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => path
            .canonicalize()
            .map_err(|source| UsageError::Inaccessible {
                what,
                path: path.to_owned(),
                source,
            }),
        Ok(_) => Err(UsageError::NotADirectory {
            what,
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(UsageError::Missing {
            what,
            path: path.to_owned(),
        }),
        Err(source) => Err(UsageError::Inaccessible {
            what,
            path: path.to_owned(),
            source,
        }),
    }
}

/// The bucket named by `--config` and `--prefix`, for `mount` and the one-shot commands alike:
/// the object-store.yaml, or without one the embedded FILESYSTEM default beside `local` (with a
/// warning: it does not survive the loss of the machine). The key prefix is the file's own
/// `prefix` joined with `--prefix`. Logs the one line that describes the bucket.
pub fn open_bucket(
    config: Option<&Path>,
    prefix: Option<&str>,
    local: &Path,
) -> Result<Bucket, UsageError> {
    let bucket_cfg = match config {
        Some(path) => config::load(path)?,
        None => {
            let dir = default_bucket_dir(local)?;
            warn!(
                bucket = %esc(&dir),
                "no --config: using a FILESYSTEM bucket on this machine; it does not survive \
                 the loss of this machine, configure object storage for real durability"
            );
            config::filesystem(&dir)?
        }
    };
    let prefix = [bucket_cfg.prefix.as_str(), prefix.unwrap_or("")].join("/");
    let bucket = Bucket::new(
        Arc::clone(&bucket_cfg.store),
        &prefix,
        bucket_cfg.user_metadata,
        bucket_cfg.extra_metadata.clone(),
    )
    .with_paged_listing(bucket_cfg.paged.clone())
    .with_target(&bucket_cfg.target)
    .creating_missing(bucket_cfg.create_missing);
    info!(bucket = %esc(&bucket_cfg.describe), prefix = %esc(bucket.prefix()), "bucket");
    Ok(bucket)
}

/// Where the embedded default bucket lives: beside the served directory, never inside it.
pub fn default_bucket_dir(local: &Path) -> Result<PathBuf, UsageError> {
    let (Some(parent), Some(name)) = (local.parent(), local.file_name()) else {
        return Err(UsageError::NoDefaultBucketPlace {
            local: local.to_owned(),
        });
    };
    let mut dir_name = std::ffi::OsString::from(".");
    dir_name.push(name);
    dir_name.push(".etlfs-bucket");
    Ok(parent.join(dir_name))
}
