//! Keeps the bucket's manifest (see `engine/manifest.rs`) describing what the mirror knows, so the next
//! mount over an empty directory starts from one GET instead of one HEAD per object.
//!
//! What goes in: every bucket-only file of the index whose object version the load established,
//! and every upload record whose object version is known (the e_tag its put returned, or the
//! one the index knew for a fetched file). A path in both is written once, from the index.
//! Records older than this knowledge, and files the index knew when they became local, are
//! matched up at start (same checksum, size, mtime and mode): the record then takes over the
//! version the load established for that object.
//!
//! When: never more than once per [`EVERY`], and only when the records or the index changed
//! since the last write (or the load found the manifest missing, out of date or unreadable);
//! and once more at the end of a drain (SIGTERM), whatever the interval. A write holds the
//! records lock and the index read lock while it encodes (compressed, nothing copied), then
//! waits [`MANIFEST_SETTLE`] before the PUT: the bucket stamps the manifest in whole seconds, and a
//! record without its own `until` is vouched for by that stamp, which must not be older than
//! the upload. After the PUT a HEAD reads the stamp back and the records carried for the first
//! time keep it (as [`manifest_until`]) for their `until`, so a later manifest never vouches for
//! them with a later time.
//!
//! Failures are logged and retried at the next interval; the manifest is only a cache, so
//! nothing else waits for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Shared;
use super::records::{ObjectVersion, Records};
use crate::engine::index::{Departed, Index, Version};
use crate::engine::manifest::{EntryMeta, MANIFEST_SETTLE, ManifestWriter, manifest_until};
use crate::os::{from_ns, ns};

/// At most one manifest write per this while things change.
pub const EVERY: Duration = Duration::from_secs(60);
/// How often the writer looks for news.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Records a local file that no upload of ours wrote (`etlfs backup`, `etlfs restore`) as
/// uploaded, with the object version the index knew, if its identity `id` and its bytes'
/// checksum `sha256` are the object's (size, mtime, mode and checksum). Returns whether it did.
pub(crate) fn adopt_unrecorded(
    records: &Records,
    path: &Path,
    id: &crate::engine::mirror::records::Identity,
    sha256: &str,
    departed: &Departed,
) -> bool {
    let f = &departed.file;
    if f.sha256.as_deref() != Some(sha256)
        || f.size != id.size
        || ns(f.mtime) != id.mtime_ns
        || f.mode != id.mode
    {
        return false;
    }
    let rec = crate::engine::mirror::records::Record {
        id: *id,
        sha256: sha256.to_owned(),
        dir: false,
    };
    let object = ObjectVersion {
        e_tag: departed.version.e_tag.clone(),
        owner: f.owner,
        until_ns: departed.version.until.map(ns),
    };
    records.set_with_object(path, rec, Some(object));
    true
}

/// Gives the record of `path` the object version the index knew, if the record describes that
/// very object (same checksum, size, mtime and mode). Returns whether it did.
pub(crate) fn adopt(records: &Records, path: &Path, departed: Departed) -> bool {
    let Some(rec) = records.get(path) else {
        return false;
    };
    let f = &departed.file;
    let same = !rec.dir
        && f.sha256.as_deref() == Some(rec.sha256.as_str())
        && rec.id.size == f.size
        && rec.id.mtime_ns == ns(f.mtime)
        && rec.id.mode == f.mode;
    if !same {
        return false;
    }
    let object = ObjectVersion {
        e_tag: departed.version.e_tag,
        owner: f.owner,
        until_ns: departed.version.until.map(ns),
    };
    records.adopt(path, &rec, object)
}

#[derive(Debug)]
struct State {
    /// (records, index) generations the last successful write saw; `None`: write soon.
    written: Option<(u64, u64)>,
    last_attempt: Option<Instant>,
}

/// The mirror's manifest writer.
#[derive(Debug)]
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

impl Publisher {
    /// Takes over what the index knew about files that became local, and decides whether the
    /// manifest the load saw needs replacing at once.
    pub fn new(shared: Arc<Shared>) -> Publisher {
        let mut outdated = true;
        if let Some(index) = &shared.index {
            let (mut n, mut adopted) = (0, 0);
            let mut unrecorded = shared.unrecorded.lock().unwrap_or_else(|e| e.into_inner());
            for (p, d) in index.drain_departed() {
                n += 1;
                if shared.records.get(&p).is_none() {
                    // No upload of ours: the reconcile compares the bytes.
                    unrecorded.insert(p, d);
                } else {
                    adopted += usize::from(adopt(&shared.records, &p, d));
                }
            }
            drop(unrecorded);
            if adopted > 0 {
                debug!(
                    adopted,
                    of = n,
                    "upload records took over the versions the index knew"
                );
            }
            outdated = index.report().manifest_outdated();
        }
        let written = (!outdated).then(|| generations(&shared));
        Publisher {
            shared,
            state: Mutex::new(State {
                written,
                last_attempt: None,
            }),
        }
    }

    /// Writes a manifest now and then while the mount runs.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            self.write(false).await;
        }
    }

    /// Writes the manifest if anything changed since the last write — `now`: whatever the
    /// interval (the end of a drain).
    pub async fn write(&self, now: bool) {
        let mut state = self.state.lock().await;
        let gens = generations(&self.shared);
        if state.written == Some(gens) {
            return;
        }
        if !now && state.last_attempt.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        state.last_attempt = Some(Instant::now());
        let Some(index) = &self.shared.index else {
            return;
        };
        // Files that became local since the last write: keep what the index knew. One without
        // a record yet is being placed by a download, which takes its entry itself.
        let records = &self.shared.records;
        for (p, d) in index.drain_departed_if(|p| records.get(p).is_some()) {
            adopt(records, &p, d);
        }
        let gens = generations(&self.shared);
        let (body, files, carried) = encode(&self.shared.records, index);
        if !carried.is_empty() {
            tokio::time::sleep(MANIFEST_SETTLE).await;
        }
        match self.shared.bucket.put_manifest(body).await {
            Ok(stamp) => {
                state.written = Some(gens);
                match stamp {
                    Some(t) => self
                        .shared
                        .records
                        .published(&carried, ns(manifest_until(t))),
                    None => debug!("manifest written, but its time could not be read back"),
                }
                info!(files, "manifest written");
            }
            Err(e) => warn!(error = %e, retry_in = ?EVERY, "could not write the manifest"),
        }
    }
}

fn generations(shared: &Shared) -> (u64, u64) {
    let index = shared.index.as_ref().map_or(0, |i| i.generation());
    (shared.records.generation(), index)
}

/// Encodes the index's versioned files and the records with a known object version (paths the
/// index has win). Returns the manifest, its number of files, and the records carried without
/// an `until` of their own (path, e_tag).
fn encode(records: &Records, index: &Index) -> (bytes::Bytes, u64, Vec<(PathBuf, Option<String>)>) {
    let mut w = ManifestWriter::new("mount");
    index.for_each_versioned(|path, file, version| w.add_remote(path, file, version));
    let mut carried = Vec::new();
    records.for_each_with_object(|path, id, sha256, object| {
        if index.is_versioned(path) {
            return;
        }
        let version = Version {
            e_tag: object.e_tag.clone(),
            until: object.until_ns.map(from_ns),
        };
        let meta = EntryMeta {
            mtime_ns: id.mtime_ns,
            mode: id.mode,
            sha256,
            owner: object.owner,
        };
        w.add(path, id.size, &version, Some(meta));
        if object.until_ns.is_none() {
            carried.push((path.to_owned(), object.e_tag.clone()));
        }
    });
    let files = w.files();
    (w.finish(), files, carried)
}
