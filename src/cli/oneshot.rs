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

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::cli::{DEFAULT_STATE_DIR, UsageError, check_dir, open_bucket};
use crate::engine::fetch::{FetchError, Placement, download_verified};
use crate::engine::index::{Index, RemoteFile, Version};
use crate::engine::manifest::{MANIFEST_SETTLE, ManifestWriter};
use crate::engine::mirror::Identity;
use crate::escape::esc;
use crate::os::local::{LocalDir, Stat, is_gone, sha256_of};
use crate::os::state::StateDir;
use crate::os::sys;
use crate::store::bucket::history::is_history_source;
use crate::store::bucket::{Bucket, BucketError};
use crate::store::upload::{Snapshot, UploadError, Uploaded, upload_snapshot};

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
        writer: crate::engine::lease::new_writer_id().map_err(OneshotError::Runtime)?,
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

    async fn backup(&self) -> Result<(), OneshotError> {
        let started = Instant::now();
        let index = self.index().await?;
        let entries = self.walk()?;
        let known_dirs: BTreeSet<PathBuf> = index.dirs().into_iter().collect();
        let new_dirs: Vec<&Path> = entries
            .iter()
            .filter(|(p, st)| st.is_dir() && !known_dirs.contains(p))
            .map(|(p, _)| p.as_path())
            .collect();
        let files: Vec<&(PathBuf, Stat)> = entries.iter().filter(|(_, st)| st.is_file()).collect();
        let skipped = entries
            .iter()
            .filter(|(_, st)| !st.is_file() && !st.is_dir())
            .count();
        let progress = Progress::new(
            "backup",
            files.len() as u64,
            files.iter().map(|(_, st)| st.size).sum(),
        );

        let mut failures = 0u64;
        let markers: Vec<_> = futures::stream::iter(new_dirs.iter())
            .map(|dir| async move { (*dir, self.bucket.put_dir_marker(dir).await) })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut dirs_marked = 0u64;
        for (dir, res) in markers {
            match res {
                Ok(()) => dirs_marked += 1,
                Err(e) => {
                    failures += 1;
                    progress.warn(
                        || warn!(dir = %esc(dir), error = %e, "directory marker not uploaded"),
                    );
                }
            }
        }

        let results: Vec<_> = futures::stream::iter(files.iter())
            .map(|(path, st)| {
                let (index, progress) = (&index, &progress);
                async move {
                    let res = self.backup_file(index, path, st).await;
                    progress.advance(st.size);
                    (path, res)
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        progress.finish();
        let (mut uploaded, mut uploaded_bytes, mut unchanged) = (0u64, 0u64, 0u64);
        for (path, res) in results {
            match res {
                Ok(Backed::Uploaded(bytes)) => {
                    uploaded += 1;
                    uploaded_bytes += bytes;
                    debug!(path = %esc(path), bytes, "uploaded");
                }
                Ok(Backed::Unchanged) => unchanged += 1,
                Ok(Backed::Gone) => debug!(path = %esc(path), "removed while backing up"),
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "not backed up");
                }
            }
        }
        if uploaded > 0 || index.report().manifest_outdated() {
            self.write_manifest(&index, uploaded > 0).await;
        }
        // A backup is the writer while it runs: it also collects history's garbage (bounded).
        if let Err(e) = self
            .bucket
            .gc_history(
                SystemTime::now(),
                crate::store::bucket::history::GC_MAX_DELETES,
            )
            .await
        {
            warn!(error = %e, "history garbage collection failed; the next backup or mount tries again");
        }
        info!(
            files = files.len(),
            uploaded,
            uploaded_bytes,
            unchanged,
            dirs_marked,
            skipped_special = skipped,
            failures,
            elapsed = ?round(started.elapsed()),
            "backup finished"
        );
        outcome("backup", failures, (files.len() + new_dirs.len()) as u64)
    }

    /// Makes the bucket hold `path` as it is now, unless it already does.
    async fn backup_file(
        &self,
        index: &Index,
        path: &Path,
        walked: &Stat,
    ) -> Result<Backed, ItemError> {
        let remote = index.file(path);
        for _ in 0..SNAPSHOT_TRIES {
            let file = match self.local.open_file_beneath(path) {
                Ok(f) => Arc::new(f),
                Err(e) if is_gone(&e) => return Ok(Backed::Gone),
                Err(e) => return Err(local_err("opening", path)(e)),
            };
            // The file as opened, not as walked: it may have changed in between.
            let st = Stat::from_file(&file).map_err(local_err("stat of", path))?;
            if !st.is_file() {
                return Err(ItemError::NotAFile {
                    path: path.to_owned(),
                    what: "special file",
                });
            }
            let id = Identity::of(&st);
            let still = |f: &std::fs::File| -> std::io::Result<bool> {
                Ok(Identity::of(&Stat::from_file(f)?) == id)
            };
            if let Some(r) = remote.as_ref().filter(|r| same_attrs(r, &st)) {
                // Same size and the metadata a restore applies: the checksum decides.
                if let Some(want) = &r.sha256 {
                    let sha = hash_file(Arc::clone(&file))
                        .await
                        .map_err(local_err("reading", path))?;
                    if sha == *want && still(&file).map_err(local_err("stat of", path))? {
                        return Ok(Backed::Unchanged);
                    }
                }
            }
            match upload_snapshot(&self.bucket, &file, path, &st, still).await? {
                Snapshot::Uploaded(Uploaded { sha256, e_tag }) => {
                    // What the bucket holds now, for the manifest written at the end.
                    let remote = RemoteFile {
                        size: st.size,
                        mtime: st.mtime,
                        mode: st.mode & 0o7777,
                        sha256: Some(sha256),
                        owner: Some((st.uid, st.gid)),
                        source: path.to_owned(),
                    };
                    let version = Version { e_tag, until: None };
                    index.insert_versioned(path, remote, Some(version));
                    return Ok(Backed::Uploaded(st.size));
                }
                Snapshot::Moved => {
                    debug!(path = %esc(path), walked_size = walked.size, "changed while being read; reading it again");
                }
            }
        }
        Err(ItemError::Busy {
            path: path.to_owned(),
        })
    }

    /// Replaces the bucket's manifest with what `index` knows (after a backup: every file the
    /// bucket holds). `fresh`: it carries uploads of this run, vouched for by the manifest's
    /// own time, which must not be older than they are.
    async fn write_manifest(&self, index: &Index, fresh: bool) {
        let mut w = ManifestWriter::new("backup");
        index.for_each_versioned(|path, file, version| w.add_remote(path, file, version));
        let files = w.files();
        let body = w.finish();
        if fresh {
            tokio::time::sleep(MANIFEST_SETTLE).await;
        }
        match self.bucket.put_manifest(body).await {
            Ok(_) => info!(files, "manifest written"),
            Err(e) => {
                warn!(error = %e, "could not write the manifest; the next mount reads each object's metadata instead")
            }
        }
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

    async fn restore(&self, force: bool, as_of: Option<SystemTime>) -> Result<(), OneshotError> {
        let started = Instant::now();
        let index = self.index().await?;
        let (files, dirs) = self.contents(&index, as_of).await?;
        // Rolling back is the point of --as-of: newer local files are what it undoes.
        let force = force || as_of.is_some();
        if as_of.is_some() {
            let at_t: BTreeSet<&Path> = files
                .iter()
                .map(|(p, _)| p.as_path())
                .chain(dirs.iter().map(PathBuf::as_path))
                .collect();
            let extra = self
                .walk()?
                .into_iter()
                .filter(|(p, _)| !at_t.contains(p.as_path()))
                .count();
            if extra > 0 {
                warn!(
                    extra,
                    "local paths that did not exist at that point in time are left alone; restore into an empty directory for an exact copy"
                );
            }
        }
        let state_path = self.dir.join(DEFAULT_STATE_DIR);
        let state_err = |source| UsageError::Inaccessible {
            what: "state directory",
            path: state_path.clone(),
            source,
        };
        std::fs::create_dir_all(&state_path).map_err(state_err)?;
        // Downloads are renamed into place from here, so it lives inside the directory (same
        // filesystem) like a mount's.
        let state = StateDir::open(&state_path).map_err(state_err)?;
        state.clean_temps();

        let mut failures = 0u64;
        let mut dirs_created = 0u64;
        // Sorted: parents before their children.
        for dir in &dirs {
            let res = match self.local.stat_beneath(dir) {
                Ok(st) if st.is_dir() => continue,
                Ok(_) => Err(ItemError::NotADir { path: dir.clone() }),
                Err(e) if is_gone(&e) => self
                    .local
                    .mkdir_beneath(dir)
                    .map_err(local_err("creating the directory", dir)),
                Err(e) => Err(local_err("stat of", dir)(e)),
            };
            match res {
                Ok(()) => dirs_created += 1,
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "directory not restored");
                }
            }
        }

        let progress = Progress::new(
            "restore",
            files.len() as u64,
            files.iter().map(|(_, f)| f.size).sum(),
        );
        // An ordinary user may not give files away; root restores ownership exactly.
        let how = Placement {
            replace: false,
            owner_best_effort: sys::geteuid() != 0,
        };
        let results: Vec<_> = futures::stream::iter(files.iter())
            .map(|(path, remote)| {
                let (state, progress) = (&state, &progress);
                async move {
                    let res = self.restore_file(state, path, remote, force, how).await;
                    progress.advance(remote.size);
                    if let Ok(Restored::KeptNewer) = res {
                        progress.warn(|| info!(path = %esc(path), "kept the local file: it is not older than the bucket's (--force replaces it)"));
                    }
                    (path, res)
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        progress.finish();
        let (mut downloaded, mut downloaded_bytes, mut up_to_date, mut kept_newer) =
            (0u64, 0u64, 0u64, 0u64);
        for (path, res) in results {
            match res {
                Ok(Restored::Downloaded(bytes)) => {
                    downloaded += 1;
                    downloaded_bytes += bytes;
                    debug!(path = %esc(path), bytes, "downloaded");
                }
                Ok(Restored::UpToDate) => up_to_date += 1,
                Ok(Restored::KeptNewer) => kept_newer += 1,
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "not restored");
                }
            }
        }
        info!(
            files = files.len(),
            downloaded,
            downloaded_bytes,
            up_to_date,
            kept_newer,
            dirs_created,
            failures,
            elapsed = ?round(started.elapsed()),
            "restore finished"
        );
        outcome("restore", failures, (files.len() + dirs.len()) as u64)
    }

    /// Brings one bucket file to the directory, unless the local one is as good or newer.
    async fn restore_file(
        &self,
        state: &StateDir,
        path: &Path,
        remote: &RemoteFile,
        force: bool,
        mut how: Placement,
    ) -> Result<Restored, ItemError> {
        match self.local.stat_beneath(path) {
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(local_err("stat of", path)(e)),
            Ok(st) if !st.is_file() => {
                return Err(ItemError::NotAFile {
                    path: path.to_owned(),
                    what: if st.is_dir() {
                        "directory"
                    } else {
                        "special file"
                    },
                });
            }
            Ok(st) => {
                // Without --force, equal size, mtime and mode count as the same file (the
                // quick check rsync makes); --force looks at the bytes.
                if same_attrs(remote, &st) {
                    let same = match (&remote.sha256, force) {
                        (_, false) | (None, true) => true,
                        (Some(want), true) => {
                            let file = self
                                .local
                                .open_file_beneath(path)
                                .map_err(local_err("opening", path))?;
                            hash_file(Arc::new(file))
                                .await
                                .map_err(local_err("reading", path))?
                                == *want
                        }
                    };
                    if same {
                        return Ok(Restored::UpToDate);
                    }
                }
                if st.mtime >= remote.mtime && !force {
                    return Ok(Restored::KeptNewer);
                }
                how.replace = true;
            }
        }
        match download_verified(&self.bucket, &self.local, state, path, remote, how).await? {
            Some(_) => Ok(Restored::Downloaded(remote.size)),
            // A local file appeared meanwhile: it is newer than anything we know.
            None => Ok(Restored::KeptNewer),
        }
    }

    async fn verify(&self, as_of: Option<SystemTime>) -> Result<(), OneshotError> {
        let started = Instant::now();
        let index = self.index().await?;
        let (files, dirs) = self.contents(&index, as_of).await?;
        let entries = self.walk()?;
        let local: BTreeMap<&Path, &Stat> =
            entries.iter().map(|(p, st)| (p.as_path(), st)).collect();
        let remote_files: BTreeMap<PathBuf, RemoteFile> = files.into_iter().collect();
        let remote_dirs: BTreeSet<PathBuf> = dirs.into_iter().collect();

        let mut diffs: Vec<(PathBuf, Difference)> = Vec::new();
        let mut both = Vec::new();
        for (path, st) in &local {
            let p = path.to_path_buf();
            if st.is_dir() {
                if remote_files.contains_key(&p) {
                    diffs.push((
                        p,
                        Difference::Differs("a directory here, a file in the bucket".into()),
                    ));
                } else if !remote_dirs.contains(&p) {
                    diffs.push((p, Difference::OnlyLocal { dir: true }));
                }
            } else if let Some(remote) = remote_files.get(&p) {
                if st.is_file() {
                    both.push((p, **st, remote.clone()));
                } else {
                    diffs.push((
                        p,
                        Difference::Differs("not a regular file here, a file in the bucket".into()),
                    ));
                }
            } else if remote_dirs.contains(&p) {
                diffs.push((
                    p,
                    Difference::Differs("a file here, a directory in the bucket".into()),
                ));
            } else if st.is_file() {
                diffs.push((p, Difference::OnlyLocal { dir: false }));
            }
            // Symlinks, fifos and devices are never in the bucket: not a difference.
        }
        for p in remote_files.keys() {
            if !local.contains_key(p.as_path()) {
                diffs.push((p.clone(), Difference::OnlyBucket { dir: false }));
            }
        }
        for p in &remote_dirs {
            if !local.contains_key(p.as_path()) {
                diffs.push((p.clone(), Difference::OnlyBucket { dir: true }));
            }
        }

        let progress = Progress::new(
            "verify",
            both.len() as u64,
            both.iter().map(|(_, st, _)| st.size).sum(),
        );
        let results: Vec<_> = futures::stream::iter(both.iter())
            .map(|(path, st, remote)| {
                let progress = &progress;
                async move {
                    let res = self.compare(path, st, remote).await;
                    progress.advance(st.size);
                    (path, res)
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        progress.finish();
        let mut failures = 0u64;
        let mut bytes_compared = 0u64;
        for (path, res) in results {
            match res {
                Ok(None) => bytes_compared += 2 * local[path.as_path()].size,
                Ok(Some(detail)) => diffs.push((path.clone(), Difference::Differs(detail))),
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "could not compare");
                }
            }
        }
        diffs.sort();
        for (path, diff) in &diffs {
            println!("{}", diff.line(path));
        }
        let differences = diffs.len() as u64;
        info!(
            local_files = local.values().filter(|st| st.is_file()).count(),
            bucket_files = remote_files.len(),
            compared = both.len(),
            bytes_compared,
            differences,
            failures,
            elapsed = ?round(started.elapsed()),
            "verify finished"
        );
        if differences > 0 {
            Err(OneshotError::Differences {
                differences,
                failures,
            })
        } else if failures > 0 {
            Err(OneshotError::Failed {
                op: "verify",
                failures,
                items: both.len() as u64,
            })
        } else {
            Ok(())
        }
    }

    /// Compares the local file and the object byte for byte (by checksum). `None`: the same.
    async fn compare(
        &self,
        path: &Path,
        st: &Stat,
        remote: &RemoteFile,
    ) -> Result<Option<String>, ItemError> {
        if st.size != remote.size {
            return Ok(Some(format!(
                "size: {} bytes here, {} in the bucket",
                st.size, remote.size
            )));
        }
        let file = self
            .local
            .open_file_beneath(path)
            .map_err(local_err("opening", path))?;
        let (here, there) =
            futures::join!(hash_file(Arc::new(file)), self.hash_object(&remote.source));
        let here = here.map_err(local_err("reading", path))?;
        let there = there?;
        let recorded = remote.sha256.as_deref();
        Ok(if here != there {
            let note = match recorded {
                Some(r) if r != there && r == here => {
                    "; the object does not match its own recorded checksum: it was changed behind etlfs or is corrupt"
                }
                _ => "",
            };
            Some(format!(
                "checksum: {} here, {} in the bucket{note}",
                short(&here),
                short(&there)
            ))
        } else if recorded.is_some_and(|r| r != there) {
            Some(format!(
                "the object's recorded checksum {} does not match its bytes {}",
                // Recorded in the object's metadata: the bucket's text.
                esc(short(recorded.unwrap_or_default())),
                short(&there)
            ))
        } else {
            None
        })
    }

    /// SHA-256 of the object's bytes (a file's, or a kept version's), streamed.
    async fn hash_object(&self, source: &Path) -> Result<String, ItemError> {
        let mut stream = self.bucket.get_stream_source(source).await?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk?);
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

/// One difference `verify` prints.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Difference {
    OnlyLocal {
        dir: bool,
    },
    OnlyBucket {
        dir: bool,
    },
    /// Both sides have the path, with other contents (the detail says how).
    Differs(String),
}

impl Difference {
    /// `only-local: PATH`, `only-bucket: PATH` (a directory with a trailing `/`) or
    /// `differs: PATH (DETAIL)`: the kind first, so `grep`/`cut -d:` can sort them out.
    fn line(&self, path: &Path) -> String {
        let slash = |dir: bool| if dir { "/" } else { "" };
        match self {
            Difference::OnlyLocal { dir } => {
                format!("only-local: {}{}", esc(path), slash(*dir))
            }
            Difference::OnlyBucket { dir } => {
                format!("only-bucket: {}{}", esc(path), slash(*dir))
            }
            Difference::Differs(detail) => format!("differs: {} ({detail})", esc(path)),
        }
    }
}

/// How one backed-up file ended.
enum Backed {
    Uploaded(u64),
    Unchanged,
    /// Removed between the walk and the upload: nothing to back up.
    Gone,
}

/// How one restored file ended.
enum Restored {
    Downloaded(u64),
    UpToDate,
    /// The local file is not older than the bucket's (or appeared meanwhile) and stays.
    KeptNewer,
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
