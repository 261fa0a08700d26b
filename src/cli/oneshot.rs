//! `etlfs backup`, `etlfs restore` and `etlfs verify`: a directory and its bucket compared and
//! brought in line once, without a mount.
//!
//! These replace the shell scripts Kubecost users run by hand today (kubecost-utilities
//! `etl-backup/*.sh`: `kubectl cp` of the ETL directory, tar, re-upload). They read and write the
//! bucket exactly as a mount does, so the three commands and `etlfs mount` interoperate freely:
//!
//! - **backup** uploads every local file the bucket lacks or holds stale, through the mirror's
//!   own snapshot upload ([`crate::store::upload::upload_snapshot`]): one consistent snapshot per file
//!   with the etlfs metadata (mtime, mode, SHA-256, owner), single PUT up to
//!   [`crate::store::bucket::SINGLE_PUT_MAX`], multipart above. A bucket object is *stale* when its
//!   size, its checksum (local files are hashed) or the metadata a restore would apply (mode,
//!   mtime, owner) differ from the local file. Directories the bucket does not know get a
//!   marker, so empty ones come back. A file that keeps changing while it is read is retried a
//!   few times and then reported, never uploaded torn.
//! - **restore** downloads every bucket file that the directory lacks, through the lazy fetch's
//!   own download ([`crate::engine::fetch::download_verified`]): a temporary file in the state directory,
//!   size and SHA-256 checked, mode, mtime and owner set, fsynced, renamed into place — a
//!   partial or corrupt file never appears. A local file whose mtime is not older than the
//!   bucket's is the newest data and is kept; `--force` replaces it too (only if it differs).
//! - **verify** compares file by file, by checksum of the actual bytes on both sides (the
//!   object is downloaded and hashed, so an object tampered with behind its metadata shows),
//!   and prints every difference, one per line on stdout.
//!
//! At its end, backup writes the bucket's manifest (see `engine/index.rs`): every file the bucket now
//! holds with its metadata, so the next mount over an empty directory needs no HEAD per object.
//! A manifest that cannot be written is logged; the backup itself still succeeded.
//!
//! Bucket listing and metadata come from [`Index::load`], the local tree from
//! [`LocalDir::walk`]; the state directory `.etlfs/` is never looked at as data. Transfers run
//! [`PARALLEL`] at a time on a tokio runtime. On a terminal a progress bar shows the bytes;
//! otherwise a log line every few seconds does. Each command ends with one summary log line
//! (files, bytes, time, failures). Exit codes are main's: 0 when everything is in line, 1 on
//! any failure or (verify) difference, 2 for a bad directory or configuration.
//!
//! What the three share (the opened directory and bucket, the progress, the outcome) is here;
//! each command's own walk has a file of its own below this module (`backup`, `restore`,
//! `verify`).

mod backup;
mod restore;
mod verify;

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::{info, warn};

use crate::cli::{DEFAULT_STATE_DIR, UsageError, check_dir, open_bucket};
use crate::engine::fetch::FetchError;
use crate::engine::index::{Index, RemoteFile};
use crate::escape::esc;
use crate::os::local::{LocalDir, Stat, sha256_of};
use crate::store::bucket::history::is_history_source;
use crate::store::bucket::{Bucket, BucketError};
use crate::store::upload::UploadError;

/// Transfers (uploads, downloads, comparisons) in flight at once: enough to hide the latency of
/// an object store (10-50 ms per request) for Kubecost's many small files, few enough not to
/// trip its rate limits — as many as a mount's downloads.
const PARALLEL: usize = crate::engine::fetch::DEFAULT_CONCURRENCY;
/// Without a terminal, how often a progress line is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// How often backup reads a file that keeps changing under it before reporting it.
const SNAPSHOT_TRIES: u32 = 3;

/// What all three commands are given.
#[derive(Debug, Clone)]
pub struct Target {
    /// The directory (what `mount` would serve).
    pub dir: PathBuf,
    /// object-store.yaml; `None` uses the embedded FILESYSTEM default beside `dir`.
    pub config: Option<PathBuf>,
    /// Joined after the file's own top-level `prefix`, as for `mount`.
    pub prefix: Option<String>,
}

/// Why a one-shot command did not finish clean.
#[derive(Debug, thiserror::Error)]
pub enum OneshotError {
    /// Bad directory or configuration (exit code 2).
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("listing the bucket: {0}")]
    List(#[source] BucketError),
    #[error("taking the lease: {0}")]
    Lease(#[source] BucketError),
    #[error("reaching the bucket: {0}")]
    Reach(#[source] BucketError),
    #[error("scanning {}: {source}", esc(.dir))]
    Scan {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting the I/O runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("{op}: {failures} of {items} paths failed (each is logged above)")]
    Failed {
        op: &'static str,
        failures: u64,
        items: u64,
    },
    #[error("verify: {differences} differences between the directory and the bucket{}",
        if *.failures > 0 { format!(", and {} paths could not be compared", .failures) } else { String::new() })]
    Differences { differences: u64, failures: u64 },
}

/// Why one path failed; logged, counted, and the command goes on with the others.
#[derive(Debug, thiserror::Error)]
enum ItemError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{op} {}: {source}", esc(.path))]
    Local {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} kept changing while it was read; run the backup again when it is quiet", esc(.path))]
    Busy { path: PathBuf },
    #[error("{} is a {what} locally, a file in the bucket; left alone", esc(.path))]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("{} is not a directory locally, a directory in the bucket; left alone", esc(.path))]
    NotADir { path: PathBuf },
}

fn local_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ItemError + 'a {
    move |source| ItemError::Local {
        op,
        path: path.to_owned(),
        source,
    }
}

/// `etlfs backup`: uploads what the bucket lacks or holds stale.
///
/// A backup writes the bucket, so it is a writer like a mount: it takes the prefix's lease for
/// its run (refused while a mount holds it; see [`crate::engine::lease`]), unless `ignore_lease`.
pub fn backup(
    target: &Target,
    ignore_lease: bool,
    history: crate::store::bucket::history::Settings,
) -> Result<(), OneshotError> {
    let mut ctx = Ctx::open(target)?;
    ctx.bucket = ctx.bucket.with_history(history);
    if ignore_lease {
        tracing::warn!(
            "--ignore-lease: writing the bucket without the lease; a mount that holds it may overwrite what this backup uploads, and the other way round"
        );
        return ctx.rt.block_on(ctx.backup());
    }
    let holder = crate::engine::lease::Holder {
        writer: crate::os::state::new_writer_id().map_err(OneshotError::Runtime)?,
        serving: ctx.dir.display().to_string(),
        period: BACKUP_LEASE_PERIOD,
    };
    let lease = ctx
        .rt
        .block_on(crate::engine::lease::acquire(&ctx.bucket, holder, false))
        .map_err(|e| match e {
            crate::engine::lease::LeaseError::Bucket(b) => OneshotError::Lease(b),
            e => OneshotError::Usage(UsageError::Lease(Box::new(e))),
        })?;
    let lease = Arc::new(lease);
    let keeper = ctx.rt.spawn(Arc::clone(&lease).keep());
    let res = ctx.rt.block_on(ctx.backup());
    // No renewal may run while the lease is let go.
    keeper.abort();
    let _ = ctx.rt.block_on(keeper);
    ctx.rt.block_on(lease.release());
    res
}

/// How often a backup renews its lease.
const BACKUP_LEASE_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// `etlfs restore`: downloads what the directory lacks; `force` also replaces local files that
/// are newer than the bucket's. With `as_of`, the directory as the bucket held it then (see
/// [`crate::engine::as_of`]): every file that differs from it is replaced, whatever its mtime.
pub fn restore(
    target: &Target,
    force: bool,
    as_of: Option<SystemTime>,
) -> Result<(), OneshotError> {
    let ctx = Ctx::open(target)?;
    ctx.rt.block_on(ctx.restore(force, as_of))
}

/// `etlfs verify`: prints every difference between the directory and the bucket (or the
/// bucket as of a point in time) on stdout.
pub fn verify(target: &Target, as_of: Option<SystemTime>) -> Result<(), OneshotError> {
    let ctx = Ctx::open(target)?;
    ctx.rt.block_on(ctx.verify(as_of))
}

/// `etlfs history`: the points in time the bucket can be restored to, or the kept versions of
/// one path, on stdout. `dir` only locates the default FILESYSTEM bucket (without a config).
pub fn history(
    config: Option<&Path>,
    prefix: Option<&str>,
    dir: &Path,
    path: Option<&Path>,
) -> Result<(), OneshotError> {
    let bucket = open_bucket(config, prefix, dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OneshotError::Runtime)?;
    rt.block_on(first_contact(&bucket))?;
    let lines = rt.block_on(async {
        match path {
            None => {
                let kept = bucket.kept_versions(None).await?;
                Ok(crate::engine::as_of::summary_lines(&kept))
            }
            Some(p) => {
                let kept = bucket.kept_versions(Some(p)).await?;
                let live = match bucket.head(p).await {
                    Ok(x) => Some(x),
                    Err(BucketError::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                };
                Ok(crate::engine::as_of::path_lines(&bucket, kept, live))
            }
        }
    });
    for line in lines.map_err(OneshotError::List)? {
        println!("{line}");
    }
    Ok(())
}

/// A one-shot command's first request, one small read: a bucket that does not exist is
/// created where the configuration asks for that, or is a configuration error (exit code 2)
/// that names it; a bucket that does not answer, or refuses us, ends the command here with
/// that one reason (exit code 1), before anything else is tried.
async fn first_contact(bucket: &Bucket) -> Result<(), OneshotError> {
    let probe = || bucket.get_reserved(crate::engine::lease::LEASE);
    match probe().await {
        Ok(_) => Ok(()),
        Err(e) if e.refusal() == Some(crate::store::bucket::Refusal::NoBucket) => {
            crate::cli::settle_missing_bucket(bucket, &e).await?;
            probe().await.map(|_| ()).map_err(OneshotError::Reach)
        }
        Err(e) => Err(OneshotError::Reach(e)),
    }
}

/// What a command works with, validated before anything is read or written.
struct Ctx {
    dir: PathBuf,
    local: LocalDir,
    bucket: Bucket,
    rt: tokio::runtime::Runtime,
}

impl Ctx {
    fn open(target: &Target) -> Result<Ctx, OneshotError> {
        let dir = check_dir("directory", &target.dir)?;
        let bucket = open_bucket(target.config.as_deref(), target.prefix.as_deref(), &dir)?;
        let local = LocalDir::open(&dir).map_err(|source| UsageError::Inaccessible {
            what: "directory",
            path: dir.clone(),
            source,
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("etlfs-io")
            .enable_all()
            .build()
            .map_err(OneshotError::Runtime)?;
        rt.block_on(first_contact(&bucket))?;
        Ok(Ctx {
            dir,
            local,
            bucket,
            rt,
        })
    }

    /// Every local file and directory, the state directory left out.
    fn walk(&self) -> Result<Vec<(PathBuf, Stat)>, OneshotError> {
        let mut entries = self
            .local
            .walk(Some(Path::new(DEFAULT_STATE_DIR)))
            .map_err(|source| OneshotError::Scan {
                dir: self.dir.clone(),
                source,
            })?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    async fn index(&self) -> Result<Index, OneshotError> {
        let index = Index::load(&self.bucket)
            .await
            .map_err(OneshotError::List)?;
        if index.refused() > 0 {
            warn!(
                refused = index.refused(),
                "some bucket objects cannot be files here (logged above) and are left out"
            );
        }
        Ok(index)
    }

    /// The files and directories (sorted) of the bucket, now or as of a point in time.
    async fn contents(
        &self,
        index: &Index,
        as_of: Option<SystemTime>,
    ) -> Result<(Vec<(PathBuf, RemoteFile)>, Vec<PathBuf>), OneshotError> {
        let Some(t) = as_of else {
            let mut files = index.files();
            files.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok((files, index.dirs()));
        };
        let pit = crate::engine::as_of::state_at(&self.bucket, index, t)
            .await
            .map_err(OneshotError::List)?;
        info!(
            as_of = %humantime::format_rfc3339_millis(t),
            files = pit.files.len(),
            from_history = pit.files.values().filter(|f| is_history_source(&f.source)).count(),
            "point in time"
        );
        Ok((
            pit.files.into_iter().collect(),
            pit.dirs.into_iter().collect(),
        ))
    }
}

/// Whether the object would restore as this file's size, mtime, mode and (when it records one
/// that a restore applies, see [`RemoteFile::restored_owner`]) owner — everything but the bytes.
fn same_attrs(remote: &RemoteFile, st: &Stat) -> bool {
    remote.size == st.size
        && remote.mtime == st.mtime
        && remote.restored_mode() == st.mode & 0o7777
        && remote.restored_owner((st.uid, st.gid)) == (st.uid, st.gid)
}

/// SHA-256 of a local file, read with `pread` in a blocking task: the file offset stays where
/// it is, so an upload of the same open file afterwards reads from the start.
async fn hash_file(file: Arc<std::fs::File>) -> io::Result<String> {
    tokio::task::spawn_blocking(move || sha256_of(&file))
        .await
        .expect("the hash task does not panic")
}

/// The first 12 hex digits: enough to tell checksums apart in a message.
/// The first 12 characters of a checksum, for a line a person reads. The checksum may come from
/// the bucket (anyone can write one there), so a cut inside a character is no reason to panic.
fn short(sha: &str) -> &str {
    sha.char_indices().nth(12).map_or(sha, |(i, _)| &sha[..i])
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Progress of a command: a bar on a terminal, a log line every [`LOG_EVERY`] otherwise.
struct Progress {
    op: &'static str,
    bar: Option<ProgressBar>,
    files: u64,
    bytes: u64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    last_log: Mutex<Instant>,
}

impl Progress {
    fn new(op: &'static str, files: u64, bytes: u64) -> Progress {
        let bar = io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(op);
            bar.set_message(format!("0/{files} files"));
            bar
        });
        Progress {
            op,
            bar,
            files,
            bytes,
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            last_log: Mutex::new(Instant::now()),
        }
    }

    /// One file done (whatever its outcome).
    fn advance(&self, bytes: u64) {
        let files_done = self.files_done.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes_done = self.bytes_done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
            bar.set_message(format!("{files_done}/{} files", self.files));
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            info!(
                files_done,
                files = self.files,
                bytes_done,
                bytes = self.bytes,
                "{} in progress",
                self.op
            );
        }
    }

    /// Logs without tearing the bar.
    fn warn(&self, log: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(log),
            None => log(),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A run's result: an error that counts the failed items, if any failed.
fn outcome(op: &'static str, failures: u64, items: u64) -> Result<(), OneshotError> {
    match failures {
        0 => Ok(()),
        n => Err(OneshotError::Failed {
            op,
            failures: n,
            items,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_checksum_is_shortened_without_a_panic() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("ééééééééééééé"), "éééééééééééé");
        assert_eq!(short("ab"), "ab");
    }
}
