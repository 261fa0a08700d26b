//! The load: one listing and the manifest read at the same time, the manifest's entries
//! applied where they still describe the listed object, and a HEAD for each file it does not
//! vouch for.
//!
//! Apart from the table because it runs once, at start, and builds the table in place (see
//! the parent module for why no second copy of the listing is kept).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use futures::StreamExt;

use super::table::{Known, Stored};
use super::{Index, valid_rel};
use crate::engine::manifest;
use crate::escape::esc;
use crate::store::bucket::{
    Bucket, BucketError, CompactETag, ManifestObject, MetaRead, ObjectInfo,
};

/// Concurrent HEAD requests while loading.
const HEAD_CONCURRENCY: usize = 32;

/// How the manifest served a load, for the log and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Files listed (after refusals).
    pub files: u64,
    /// Files whose metadata came from the manifest.
    pub from_manifest: u64,
    /// Metadata reads (HEADs, or sidecar GETs on FILESYSTEM) made.
    pub heads: u64,
    /// Manifest entries the listing showed to be out of date.
    pub stale: u64,
    /// Manifest entries for objects the listing does not have.
    pub unused: u64,
    /// `None`: no manifest; otherwise whether it was usable, and why not.
    pub manifest: Option<Result<(), String>>,
    /// Directories the bucket implies (by the keys below them) but holds no marker for.
    pub unmarked_dirs: u64,
}

impl LoadReport {
    /// Whether a new manifest would let the next load skip HEADs or read less.
    pub fn manifest_outdated(&self) -> bool {
        self.heads > 0 || self.stale > 0 || self.unused > 0 || matches!(self.manifest, Some(Err(_)))
    }
}

impl Index {
    /// Lists the whole prefix (paginated by `object_store`), reads the manifest at the same
    /// time, and HEADs each file the manifest does not vouch for.
    pub async fn load(bucket: &Bucket) -> Result<Index, BucketError> {
        let started = std::time::Instant::now();
        let mut index = Index::default();
        let mut listing = Listing::default();
        let listed = async {
            let skipped = bucket.list_each(None, |o| listing.add(o, &index)).await;
            (skipped, started.elapsed())
        };
        let ((skipped, listed_in), manifest) = futures::join!(listed, bucket.get_manifest());
        // Keys the listing had to leave out (the bucket logged each): refused as well.
        index.refused.fetch_add(skipped?, Ordering::Relaxed);
        let Listing {
            mut files,
            dirs,
            unmarked,
        } = listing.close(&index);

        let mut report = LoadReport {
            files: files.len() as u64,
            unmarked_dirs: unmarked,
            ..LoadReport::default()
        };
        match manifest {
            Ok(Some(m)) => {
                // Read once to check it whole (some damage shows only at its end), then again
                // to apply it: nothing of a manifest that turns out bad is used.
                let res =
                    manifest::read(&m, |_| ()).map(|_| apply_manifest(&m, &mut files, &mut report));
                if let Err(e) = &res {
                    // Built from serde's words on the manifest's bytes, which are the bucket's.
                    tracing::warn!(error = %esc(e), "the bucket's manifest is unreadable; reading each object's metadata instead");
                }
                report.manifest = Some(res);
            }
            Ok(None) => {
                tracing::info!("no manifest in the bucket; reading each object's metadata")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the bucket's manifest; reading each object's metadata instead");
                report.manifest = Some(Err(e.to_string()));
            }
        }
        report.heads = head_the_rest(bucket, &mut files).await;

        let inner = index.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for d in &dirs {
            inner.link(d, true);
        }
        for path in files.keys() {
            inner.link(path, false);
        }
        // The table built above becomes the index's own, stamped as [`Inner::put`] would.
        for s in files.values_mut() {
            inner.last_stamp += 1;
            s.stamp = inner.last_stamp;
        }
        inner.files = files;
        tracing::info!(
            files = report.files,
            from_manifest = report.from_manifest,
            heads = report.heads,
            stale_manifest_entries = report.stale,
            listed_in = ?listed_in,
            elapsed = ?started.elapsed(),
            "bucket metadata loaded"
        );
        index.report = report;
        Ok(index)
    }
}

/// The stamp of a file during [`Index::load`] while it is as the listing gave it (size,
/// last-modified as its mtime, the listed e_tag in its version): nothing has described it yet.
/// Stamps of the finished table start at 1.
const AS_LISTED: u64 = 0;
/// The stamp of a file during [`Index::load`] once the manifest or a HEAD has described it.
const DESCRIBED: u64 = u64::MAX;

/// What a load gathers from the listing: the files as listed and the directories.
#[derive(Default)]
struct Listing {
    files: HashMap<Box<Path>, Stored>,
    dirs: HashSet<PathBuf>,
    /// Of `dirs`, those without a marker.
    unmarked: u64,
}

impl Listing {
    fn add(&mut self, obj: ObjectInfo, index: &Index) {
        if !valid_rel(&obj.rel) {
            index.refuse(&obj.rel, "not a safe relative path");
        } else if obj.is_dir_marker {
            self.dirs.insert(obj.rel);
        } else {
            let mut s = Stored::plain(obj.size, obj.last_modified);
            s.version = Some(Known::at(obj.e_tag.as_deref().map(CompactETag::new), None));
            s.stamp = AS_LISTED;
            self.files.insert(obj.rel.into(), s);
        }
    }

    /// Every parent of a file is a directory, marker or not; a file that is also a directory
    /// is left out.
    fn close(mut self, index: &Index) -> Listing {
        for f in self.files.keys() {
            let mut p = f.parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                if !self.dirs.insert(d.to_path_buf()) {
                    break;
                }
                self.unmarked += 1;
                p = d.parent();
            }
        }
        let dirs = &self.dirs;
        self.files.retain(|f, _| {
            let both = dirs.contains(&**f);
            if both {
                index.refuse(
                    f,
                    "both a file and a directory in the bucket; the directory wins",
                );
            }
            !both
        });
        self
    }
}

/// The e_tag a file as listed was listed with.
fn listed_e_tag(s: &Stored) -> Option<&CompactETag> {
    s.version.as_ref()?.e_tag.as_ref()
}

/// Applies a manifest (already read whole without error) to the files as listed.
fn apply_manifest(
    m: &ManifestObject,
    files: &mut HashMap<Box<Path>, Stored>,
    report: &mut LoadReport,
) {
    let read = manifest::read(m, |e| {
        let Some(s) = files.get_mut(Path::new(&*e.path)) else {
            report.unused += 1;
            return;
        };
        if s.stamp != AS_LISTED {
            // Two entries for one file: each vouches for itself, so the first valid one is as
            // good as any.
            return;
        }
        let Some(until) =
            manifest::vouches(&e, m.last_modified, s.size, s.mtime(), listed_e_tag(s))
        else {
            report.stale += 1;
            return;
        };
        let mut file = match &e.meta {
            Some(f) => Stored::described(e.size, f.mtime_ns, f.mode, &f.sha256, f.owner),
            None => Stored::plain(e.size, s.mtime()),
        };
        let e_tag = e.e_tag.as_deref().map(CompactETag::new);
        file.version = Some(Known::at(
            e_tag.or_else(|| listed_e_tag(s).cloned()),
            Some(until),
        ));
        file.stamp = DESCRIBED;
        *s = file;
        report.from_manifest += 1;
    });
    debug_assert!(read.is_ok(), "a manifest read whole once reads again");
}

/// HEADs every file still as listed (32 at a time) and describes it by what the HEAD says;
/// returns how many were HEADed. A file gone since the listing leaves the table.
async fn head_the_rest(bucket: &Bucket, files: &mut HashMap<Box<Path>, Stored>) -> u64 {
    let todo: Vec<PathBuf> = files
        .iter()
        .filter(|(_, s)| s.stamp == AS_LISTED)
        .map(|(p, _)| p.to_path_buf())
        .collect();
    let heads = todo.len() as u64;
    let sidecars = !bucket.user_metadata();
    let mut reads = futures::stream::iter(todo)
        .map(|path| async move {
            let read = bucket.meta_read(&path).await;
            (path, read)
        })
        .buffer_unordered(HEAD_CONCURRENCY);
    while let Some((path, read)) = reads.next().await {
        let Some(listed) = files.get_mut(path.as_path()) else {
            continue;
        };
        match read {
            Ok(read) => *listed = from_read(listed, read, sidecars),
            Err(BucketError::NotFound { .. }) => {
                files.remove(path.as_path()); // deleted while we listed
                continue;
            }
            Err(e) => {
                tracing::warn!(path = %esc(&path), error = %e, "unreadable object metadata; serving the object with defaults");
                listed.version = None;
            }
        }
        listed.stamp = DESCRIBED;
    }
    heads
}

/// A file as listed and the metadata read for it. The version it is recorded as ends at the
/// *listed* last-modified: if the read saw a later rewrite, that rewrite is newer and the next
/// load reads it again.
fn from_read(listed: &Stored, read: MetaRead, sidecars: bool) -> Stored {
    let (last_modified, listed_e_tag) = (listed.mtime(), listed_e_tag(listed).cloned());
    let until = Some(last_modified);
    if sidecars {
        // The object and its sidecar are two writes (object first): a sidecar older than the
        // object may belong to another version, and a missing one may be about to appear.
        let mut file = match &read.meta {
            Some(m) => Stored::with_meta(listed.size, m),
            None => Stored::plain(listed.size, last_modified),
        };
        if read.meta.is_some() && read.last_modified >= last_modified {
            file.version = Some(Known::at(listed_e_tag, until));
        }
        return file;
    }
    // A HEAD sees the object as one version: its size, e_tag and metadata belong together.
    let size = read.size.unwrap_or(listed.size);
    let mut file = match &read.meta {
        Some(m) => Stored::with_meta(size, m),
        None => Stored::plain(size, last_modified),
    };
    let e_tag = read.e_tag.as_deref().map(CompactETag::new);
    file.version = Some(Known::at(e_tag.or(listed_e_tag), until));
    file
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;
    use crate::engine::index::{RemoteFile, Version};
    use crate::engine::manifest::{ManifestWriter, manifest_until};
    use crate::store::bucket::FileMeta;

    #[tokio::test]
    async fn load_builds_files_dirs_and_metadata() {
        let store = Arc::new(InMemory::new());
        let b = Bucket::new(store.clone(), "etl", true, vec![]);
        let meta = FileMeta {
            mtime_ns: 1_700_000_000_000_000_000,
            mode: 0o600,
            sha256: "ab".repeat(32),
            owner: None,
        };
        b.put_bytes(Path::new("bingen/1d/x"), Bytes::from_static(b"xyz"), &meta)
            .await
            .unwrap();
        b.put_dir_marker(Path::new("empty/dir")).await.unwrap();
        // written by another tool: no metadata
        store
            .put(&"etl/plain".into(), PutPayload::from_static(b"p"))
            .await
            .unwrap();
        // a file that is also a directory prefix
        store
            .put(&"etl/both".into(), PutPayload::from_static(b"f"))
            .await
            .unwrap();
        store
            .put(&"etl/both/inner".into(), PutPayload::from_static(b"i"))
            .await
            .unwrap();
        // outside the prefix
        store
            .put(&"other/x".into(), PutPayload::from_static(b"o"))
            .await
            .unwrap();

        let idx = Index::load(&b).await.unwrap();
        let x = idx.file(Path::new("bingen/1d/x")).unwrap();
        assert_eq!(
            (x.size, x.mode, x.sha256.as_deref()),
            (3, 0o600, Some(&*"ab".repeat(32)))
        );
        assert_eq!(x.mtime, meta.mtime());
        let p = idx.file(Path::new("plain")).unwrap();
        assert_eq!((p.mode, p.sha256.clone()), (0o644, None));
        assert!(idx.file(Path::new("both")).is_none());
        assert!(idx.file(Path::new("both/inner")).is_some());
        assert_eq!(idx.refused(), 1);
        assert_eq!(
            idx.dirs(),
            ["bingen", "bingen/1d", "both", "empty", "empty/dir"]
                .map(PathBuf::from)
                .to_vec()
        );
        let mut root: Vec<_> = idx
            .children(Path::new(""))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        root.sort();
        assert_eq!(root, ["bingen", "both", "empty", "plain"]);
        assert!(idx.has_children(Path::new("empty")));
        assert!(!idx.has_children(Path::new("empty/dir")));
    }

    fn meta(i: u32) -> FileMeta {
        FileMeta {
            mtime_ns: 1_700_000_000_000_000_000 + i128::from(i) * 1_000_000_007,
            mode: 0o600 + (i % 3),
            sha256: format!("{i:064x}"),
            owner: Some((1000 + i, 2000)),
        }
    }

    /// A bucket of `n` files `d{i%7}/f{i}` with etlfs metadata, plus one without.
    async fn seeded(n: u32, user_metadata: bool) -> (Arc<InMemory>, Bucket) {
        let store = Arc::new(InMemory::new());
        let b = Bucket::new(store.clone(), "etl", user_metadata, vec![]);
        for i in 0..n {
            let body = Bytes::from(format!("body {i}"));
            b.put_bytes(&PathBuf::from(format!("d{}/f{i}", i % 7)), body, &meta(i))
                .await
                .unwrap();
        }
        store
            .put(&"etl/plain".into(), PutPayload::from_static(b"p"))
            .await
            .unwrap();
        (store, b)
    }

    /// What the index serves, for comparing two loads.
    fn served(idx: &Index) -> BTreeMap<PathBuf, RemoteFile> {
        idx.files().into_iter().collect()
    }

    async fn write_manifest(b: &Bucket, idx: &Index) {
        let mut w = ManifestWriter::new("test");
        idx.for_each_versioned(|p, f, v| w.add_remote(p, f, v));
        b.put_manifest(w.finish()).await.unwrap();
    }

    #[tokio::test]
    async fn a_manifest_replaces_the_heads_and_serves_the_same() {
        for user_metadata in [true, false] {
            let (_, b) = seeded(50, user_metadata).await;
            let first = Index::load(&b).await.unwrap();
            assert_eq!(first.report().heads, 51);
            assert_eq!(first.report().manifest, None);
            assert!(first.report().manifest_outdated());
            write_manifest(&b, &first).await;

            let second = Index::load(&b).await.unwrap();
            let r = second.report();
            // With sidecars, an object without one may be an upload whose sidecar is still
            // on its way: never vouched for.
            let heads = u64::from(!user_metadata);
            assert_eq!((r.heads, r.from_manifest), (heads, 51 - heads), "{r:?}");
            assert_eq!((r.stale, r.unused), (0, 0), "{r:?}");
            assert_eq!(r.manifest, Some(Ok(())));
            assert_eq!(served(&second), served(&first));
            let f = second.file(Path::new("d3/f10")).unwrap();
            assert_eq!(
                (f.mtime, f.mode, f.sha256.as_deref(), f.owner),
                (
                    meta(10).mtime(),
                    0o601,
                    Some(&*meta(10).sha256),
                    Some((1010, 2000))
                )
            );
            assert_eq!(second.file(Path::new("plain")).unwrap().sha256, None);
            assert_eq!(second.dirs(), first.dirs());
        }
    }

    #[tokio::test]
    async fn entries_the_listing_contradicts_are_read_again() {
        let (store, b) = seeded(20, true).await;
        write_manifest(&b, &Index::load(&b).await.unwrap()).await;
        // After the manifest: an outside writer replaces one object with another of the same
        // size, etlfs re-uploads another with the same bytes but a new mode (on S3 the e_tag
        // would not change, its newer time tells: see the next test), and a third is deleted.
        store
            .put(&"etl/d1/f1".into(), PutPayload::from_static(b"BODY 1"))
            .await
            .unwrap();
        let mut m2 = meta(2);
        m2.mode = 0o640;
        b.put_bytes(Path::new("d2/f2"), Bytes::from("body 2"), &m2)
            .await
            .unwrap();
        b.delete(Path::new("d3/f3")).await.unwrap();

        let idx = Index::load(&b).await.unwrap();
        let r = idx.report();
        assert_eq!((r.heads, r.stale, r.unused), (2, 2, 1), "{r:?}");
        assert_eq!(r.from_manifest, 18);
        assert_eq!(idx.file(Path::new("d1/f1")).unwrap().sha256, None);
        assert_eq!(idx.file(Path::new("d2/f2")).unwrap().mode, 0o640);
        assert!(idx.file(Path::new("d3/f3")).is_none());
    }

    #[tokio::test]
    async fn an_entry_is_only_as_good_as_its_until() {
        let (store, b) = seeded(3, true).await;
        let idx = Index::load(&b).await.unwrap();
        // Written by hand: one entry vouched for until before the object was written, one by
        // the manifest's own (later) time.
        let mut w = ManifestWriter::new("test");
        idx.for_each_versioned(|p, f, v| {
            let until = match p.to_str() {
                Some("d0/f0") => Some(UNIX_EPOCH + Duration::from_secs(1)),
                _ => None,
            };
            let v = Version {
                e_tag: v.e_tag.clone(),
                until,
            };
            w.add_remote(p, f, &v)
        });
        b.put_manifest(w.finish()).await.unwrap();
        drop(store);
        let again = Index::load(&b).await.unwrap();
        let r = again.report();
        assert_eq!((r.heads, r.stale, r.from_manifest), (1, 1, 3), "{r:?}");
    }

    #[tokio::test]
    async fn a_damaged_or_foreign_manifest_only_costs_heads() {
        let (_, b) = seeded(10, true).await;
        let idx = Index::load(&b).await.unwrap();
        let mut w = ManifestWriter::new("test");
        idx.for_each_versioned(|p, f, v| w.add_remote(p, f, v));
        let good = w.finish().to_vec();
        let header_v2 = {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(b"{\"etlfs_manifest\":2}\n{\"end\":0}\n")
                .unwrap();
            gz.finish().unwrap()
        };
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x20;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not gzip", b"{\"etlfs_manifest\":1}".to_vec()),
            ("truncated", good[..good.len() - 12].to_vec()),
            ("a flipped bit", flipped),
            ("another format", header_v2),
            ("empty", vec![]),
        ];
        for (what, body) in cases {
            b.put_manifest(Bytes::from(body)).await.unwrap();
            let again = Index::load(&b).await.unwrap();
            let r = again.report();
            assert_eq!((r.heads, r.from_manifest), (11, 0), "{what}: {r:?}");
            assert!(matches!(r.manifest, Some(Err(_))), "{what}: {r:?}");
            assert_eq!(served(&again), served(&idx), "{what}");
        }
    }

    #[test]
    fn without_listed_e_tags_size_and_time_decide() {
        // What s3s-fs lists: no e_tag, so only size and last-modified can tell.
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let file = |size| RemoteFile {
            size,
            mtime: t0,
            mode: 0o600,
            sha256: Some("ab".repeat(32)),
            owner: Some((1, 2)),
            source: PathBuf::new(),
        };
        let version = |until| Version {
            e_tag: Some("\"e\"".into()),
            until,
        };
        let mut w = ManifestWriter::new("test");
        w.add_remote(Path::new("a"), &file(5), &version(None));
        w.add_remote(Path::new("b"), &file(5), &version(Some(t0)));
        w.add_remote(Path::new("c"), &file(5), &version(None));
        w.add_remote(Path::new("d"), &file(5), &version(None));
        w.add_remote(Path::new("gone"), &file(5), &version(None));
        let m = ManifestObject {
            body: w.finish(),
            last_modified: t0 + Duration::from_secs(10),
        };
        let slot = |rel: &str, size, lm: Duration| ObjectInfo {
            rel: rel.into(),
            size,
            last_modified: t0 + lm,
            is_dir_marker: false,
            e_tag: None,
        };
        let index = Index::default();
        let mut listing = Listing::default();
        for obj in [
            // written before the manifest's second: vouched for
            slot("a", 5, Duration::from_millis(9_999)),
            // listed at exactly the time its entry records
            slot("b", 5, Duration::ZERO),
            // another size
            slot("c", 6, Duration::ZERO),
            // rewritten in the manifest's own second (whole-second listing)
            slot("d", 5, Duration::from_secs(10)),
            // not in the manifest
            slot("e", 5, Duration::ZERO),
        ] {
            listing.add(obj, &index);
        }
        let mut files = listing.close(&index).files;
        let mut report = LoadReport::default();
        assert_eq!(manifest::read(&m, |_| ()), Ok(5));
        apply_manifest(&m, &mut files, &mut report);
        assert_eq!(
            (report.from_manifest, report.stale, report.unused),
            (2, 2, 1)
        );
        let described = |p: &str| files[Path::new(p)].stamp == DESCRIBED;
        let known: Vec<bool> = ["a", "b", "c", "d", "e"].map(described).to_vec();
        assert_eq!(known, [true, true, false, false, false]);
        let a = &files[Path::new("a")];
        assert_eq!(a.remote(Path::new("a")).sha256, Some("ab".repeat(32)));
        assert_eq!(
            a.version.as_ref().unwrap().until(),
            Some(manifest_until(m.last_modified))
        );
    }
}
