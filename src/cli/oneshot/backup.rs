//! `etlfs backup`: every local file the bucket lacks or holds stale is uploaded through the
//! mirror's own snapshot upload, under the lease, and the manifest is written at the end (see
//! the parent module for what counts as stale).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use tracing::{debug, info, warn};

use super::{
    Ctx, ItemError, OneshotError, PARALLEL, Progress, SNAPSHOT_TRIES, hash_file, local_err,
    outcome, round, same_attrs,
};
use crate::engine::index::{Index, RemoteFile, Version};
use crate::engine::manifest::{MANIFEST_SETTLE, ManifestWriter};
use crate::engine::mirror::Identity;
use crate::escape::esc;
use crate::os::local::{Stat, is_gone};
use crate::store::upload::{Snapshot, Uploaded, upload_snapshot};

impl Ctx {
    pub(super) async fn backup(&self) -> Result<(), OneshotError> {
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
}

/// How one backed-up file ended.
enum Backed {
    Uploaded(u64),
    Unchanged,
    /// Removed between the walk and the upload: nothing to back up.
    Gone,
}
