//! `etlfs verify`: the directory and the bucket compared file by file, by the checksum of the
//! actual bytes on both sides, every difference printed as one line on stdout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{Ctx, ItemError, OneshotError, PARALLEL, Progress, hash_file, local_err, round, short};
use crate::engine::index::RemoteFile;
use crate::escape::esc;
use crate::os::local::Stat;

impl Ctx {
    pub(super) async fn verify(&self, as_of: Option<SystemTime>) -> Result<(), OneshotError> {
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
