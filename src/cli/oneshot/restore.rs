//! `etlfs restore`: every bucket file the directory lacks (or, with `--force`, holds
//! differently) is downloaded through the lazy fetch's own verified download, from the bucket
//! as it is or as it was at `--as-of`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use tracing::{debug, info, warn};

use super::{
    Ctx, ItemError, OneshotError, PARALLEL, Progress, hash_file, local_err, outcome, round,
    same_attrs,
};
use crate::cli::{DEFAULT_STATE_DIR, UsageError};
use crate::engine::fetch::{Placement, download_verified};
use crate::engine::index::RemoteFile;
use crate::escape::esc;
use crate::os::local::is_gone;
use crate::os::state::StateDir;
use crate::os::sys;

impl Ctx {
    pub(super) async fn restore(
        &self,
        force: bool,
        as_of: Option<SystemTime>,
    ) -> Result<(), OneshotError> {
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
}

/// How one restored file ended.
enum Restored {
    Downloaded(u64),
    UpToDate,
    /// The local file is not older than the bucket's (or appeared meanwhile) and stays.
    KeptNewer,
}
