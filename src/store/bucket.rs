//! The one door to `object_store`: keys, metadata and the few operations etlfs needs.
//!
//! Bucket layout (plain objects, usable without etlfs):
//! - key = `<prefix>/<path relative to the served directory>`; the body is the file's exact
//!   bytes, so `aws s3 cp` & co. restore a file by hand;
//! - every directory has a zero-byte marker object `<dir>/.etlfs-dir`, so empty directories
//!   come back too;
//! - user metadata `etlfs_mtime` (Unix nanoseconds), `etlfs_mode` (octal) and `etlfs_sha256`
//!   (hex) travel with each object. Underscores, not dashes: Azure metadata names must be C#
//!   identifiers. The FILESYSTEM backend stores no metadata, so there it is kept in a small JSON
//!   object under the reserved key prefix `<prefix>/.etlfs/meta/`;
//! - `<prefix>/.etlfs/manifest.v1.jsonl.gz` caches every file's metadata, so a mount can start
//!   from one GET and a listing instead of one HEAD per object (see `engine/index.rs`). It is only a
//!   cache: deleting it costs HEADs, never data.
//!
//! Uploads return the object's e_tag and listings carry it, normalized (quotes and a weak `W/`
//! dropped: Azure quotes it in headers but not in listings), so the two can be compared.
//!
//! Keys are built with `Path::parse`, which keeps them verbatim (what Kubecost and `aws s3`
//! write and read); a relative path that cannot be a key (not UTF-8, empty or dot segments) is
//! refused with a [`BucketError::BadKey`] that names it. `object_store` already retries each
//! request with backoff; callers (the mirror) retry whole operations on top of that.
//!
//! This file holds the types callers see and the [`Bucket`] itself; its operations are split
//! by concern below it: `keys` (path ↔ key), `listing` (the walk), `reads`, `writes`,
//! `reserved` (etlfs' own objects: lease, manifest), `error` and `reply` (what a failed request
//! said, in one line).

pub mod azure_list;
mod error;
// The fault-injecting store is for tests only (the unit tests, and the integration tests
// through the `testing` feature): never in a release build.
#[cfg(any(test, feature = "testing"))]
pub mod fault;
pub mod history;
mod keys;
mod listing;
mod reads;
pub mod reply;
pub mod requests;
mod reserved;
mod writes;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::ObjectStore;

pub use error::{BucketError, Result};
pub use listing::Lister;
pub use reply::Refusal;
pub use writes::Upload;

/// Name of the per-directory marker object.
pub const DIR_MARKER: &str = ".etlfs-dir";
/// S3, GCS and Azure all cap keys at 1024 bytes.
const MAX_KEY_LEN: usize = 1024;
/// Top-level key segment reserved for etlfs' own objects (never a user path).
pub const RESERVED: &str = ".etlfs";
/// The manifest's name under [`RESERVED`]. The format version is part of the name, so an
/// etlfs that writes another format never reads this one as its own (and vice versa).
pub const MANIFEST: &str = "manifest.v1.jsonl.gz";

/// What a restore needs to recreate a file exactly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Lowercase hex SHA-256 of the body.
    pub sha256: String,
    /// Owner (uid, gid), so a restored file is readable by the application that wrote it.
    #[serde(default)]
    pub owner: Option<(u32, u32)>,
}

impl FileMeta {
    pub fn mtime(&self) -> SystemTime {
        if self.mtime_ns >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.mtime_ns as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(self.mtime_ns.unsigned_abs() as u64)
        }
    }
}

/// One object as a listing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Path relative to the served directory (for a marker: the directory itself).
    pub rel: PathBuf,
    pub size: u64,
    pub last_modified: SystemTime,
    pub is_dir_marker: bool,
    /// Normalized e_tag, when the backend lists one (s3s-fs does not).
    pub e_tag: Option<String>,
}

impl ObjectInfo {
    /// For tests: the path, with a `/` after a directory's marker.
    #[cfg(test)]
    pub(crate) fn shown(&self) -> String {
        let slash = if self.is_dir_marker { "/" } else { "" };
        format!("{}{slash}", self.rel.display())
    }
}

/// What reading an object's etlfs metadata also saw, to tell which version it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRead {
    pub meta: Option<FileMeta>,
    /// With user metadata: the object itself as the HEAD saw it (size, normalized e_tag,
    /// last-modified). With a sidecar (FILESYSTEM): only the sidecar's last-modified.
    pub size: Option<u64>,
    pub e_tag: Option<String>,
    pub last_modified: SystemTime,
}

/// The manifest as read: its compressed body and when the bucket says it was written.
#[derive(Debug, Clone)]
pub struct ManifestObject {
    pub body: Bytes,
    pub last_modified: SystemTime,
}

/// Quotes and a weak-validator prefix dropped: Azure quotes e_tags in headers (what a put
/// returns) but not in listings.
pub fn normalize_e_tag(e: &str) -> String {
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"').to_owned()
}

/// A normalized e_tag as a table of 100,000 files keeps it: the 16 bytes of an MD5 when it is
/// 32 lowercase hex digits (S3's and GCS's for a single-part upload), else the text. Inline,
/// it spares each file a heap allocation of ~50 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompactETag {
    Md5([u8; 16]),
    Text(Box<str>),
}

impl CompactETag {
    pub fn new(e: &str) -> CompactETag {
        let mut md5 = [0u8; 16];
        // Only the canonical lowercase form, so that the text reads back exactly.
        if e.len() == 32
            && !e.bytes().any(|b| b.is_ascii_uppercase())
            && hex::decode_to_slice(e, &mut md5).is_ok()
        {
            return CompactETag::Md5(md5);
        }
        CompactETag::Text(e.into())
    }

    pub fn text(&self) -> String {
        match self {
            CompactETag::Md5(b) => hex::encode(b),
            CompactETag::Text(t) => t.to_string(),
        }
    }
}

/// A checksum: 32 bytes when it is lowercase hex SHA-256 (what etlfs writes), else the text
/// as the object carries it. Inline, for tables of 100,000 files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompactSha {
    Bin([u8; 32]),
    Text(Box<str>),
}

impl CompactSha {
    /// `None` for the empty text (no checksum).
    pub fn new(hex_text: &str) -> Option<CompactSha> {
        if hex_text.is_empty() {
            return None;
        }
        let mut bin = [0u8; 32];
        match hex::decode_to_slice(hex_text, &mut bin) {
            // Only the canonical form, so that the text reads back exactly.
            Ok(()) if hex::encode(bin) == hex_text => Some(CompactSha::Bin(bin)),
            _ => Some(CompactSha::Text(hex_text.into())),
        }
    }

    pub fn text(&self) -> String {
        match self {
            CompactSha::Bin(b) => hex::encode(b),
            CompactSha::Text(t) => t.to_string(),
        }
    }
}

/// Whether this process may write the bucket: one writer per prefix (the lease, in
/// `crate::engine::lease`, decides; this is where every write obeys). Shared by every clone of a
/// [`Bucket`]. While fenced, every write (upload, delete, copy, marker, manifest) fails with
/// [`BucketError::Fenced`] before a request is sent; reads go on. Checked per request, so a
/// fence holds from the moment it is raised: nothing is written after it, whatever was queued.
#[derive(Debug, Default)]
pub struct Fence {
    fenced: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Fence {
    /// Stops every write from now on, saying why.
    pub fn raise(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// Lets writes through again.
    pub fn lift(&self) {
        self.fenced.store(false, Ordering::SeqCst);
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Why writes are stopped, if they are.
    pub fn reason(&self) -> Option<String> {
        if !self.fenced.load(Ordering::SeqCst) {
            return None;
        }
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn check(&self) -> Result<()> {
        match self.reason() {
            None => Ok(()),
            Some(reason) => Err(BucketError::Fenced { reason }),
        }
    }
}

/// Which version of an object a conditional write expects (its e_tag, and the backend's
/// version or generation where it has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// How [`Bucket::put_reserved`] may write.
#[derive(Debug, Clone)]
pub enum WriteIf {
    /// Only if no such object exists.
    Absent,
    /// Only if the object is still this version.
    Is(ObjectVersion),
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conditional {
    Written(ObjectVersion),
    /// The condition did not hold: another writer was first.
    Conflict,
}

/// The bucket, with its key prefix.
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// `""` or a prefix without leading/trailing `/`.
    prefix: String,
    user_metadata: bool,
    extra_metadata: Vec<(String, String)>,
    /// Shared by every clone: the mirror and the fetcher report their outcomes here.
    health: Arc<crate::counters::Health>,
    /// Shared by every clone: whether writes are allowed.
    fence: Arc<Fence>,
    /// Versions kept before they are replaced or removed (`None`: history is off).
    history: Option<Arc<history::History>>,
    /// Shared by every clone: what history did, for /metrics.
    history_stats: Arc<history::Stats>,
    /// Shared by every clone: the requests sent, by kind (counted by the store's wrapper).
    requests: Arc<requests::RequestCounts>,
    /// How a listing gets past a key `object_store` cannot represent (`None`: FILESYSTEM,
    /// which cannot).
    paged: Option<Lister>,
    /// Shared by every clone: keys a listing skipped, each logged once.
    skipped: Arc<Mutex<HashSet<String>>>,
    /// What the bucket is and where, for messages (`S3 bucket `b` at https://...`).
    target: Arc<str>,
    /// Whether a missing bucket is created ([`Bucket::create_missing`]).
    create_missing: bool,
}

/// Files up to this size are read into memory and sent with one PUT (atomic everywhere);
/// larger ones are streamed with a multipart upload, which is atomic at completion.
pub const SINGLE_PUT_MAX: u64 = 16 * 1024 * 1024;
/// Multipart chunk size: above S3's 5 MiB minimum, small enough to keep memory flat.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

impl Bucket {
    /// `prefix` is joined from the config's top-level prefix and `--prefix`; surrounding and
    /// doubled slashes are dropped.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        user_metadata: bool,
        extra_metadata: Vec<(String, String)>,
    ) -> Bucket {
        let prefix = prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/");
        let requests = Arc::new(requests::RequestCounts::default());
        Bucket {
            store: Arc::new(requests::CountingStore::new(store, Arc::clone(&requests))),
            prefix,
            user_metadata,
            extra_metadata,
            health: Arc::default(),
            fence: Arc::default(),
            history: None,
            history_stats: Arc::default(),
            requests,
            paged: None,
            skipped: Arc::default(),
            target: Arc::from("the bucket"),
            create_missing: false,
        }
    }

    /// Names the bucket in messages: what it is and where (`S3 bucket `b` at https://...`).
    pub fn with_target(mut self, target: &str) -> Bucket {
        self.target = Arc::from(target);
        self
    }

    /// Lets [`Bucket::create_missing`] create the bucket (Azure's `storage_create_container`).
    pub fn creating_missing(mut self, create: bool) -> Bucket {
        self.create_missing = create;
        self
    }

    /// Whether this kind of bucket can be created by etlfs (an Azure container), whether or
    /// not the configuration lets it.
    pub fn creatable(&self) -> bool {
        matches!(self.paged, Some(Lister::Azure(_)))
    }

    /// What the bucket is and where, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Creates the bucket after a request found it missing, where the configuration asks for
    /// that (an Azure container with `storage_create_container`, as Thanos does at start).
    /// `Ok(false)`: it may not be created here.
    pub async fn create_missing(&self) -> Result<bool> {
        match (&self.paged, self.create_missing) {
            (Some(Lister::Azure(lister)), true) => {
                lister
                    .create_container()
                    .await
                    .map_err(|cause| BucketError::Store {
                        op: "create",
                        key: self.target.to_string(),
                        cause,
                    })?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Records in [`Bucket::health`] an operation that failed with `e`, if the bucket is why
    /// (it did not answer, or refused; not a path that cannot be a key, nor an absent object).
    /// A bucket that refuses us — access denied, or it does not exist — is no passing outage:
    /// nothing goes through until someone fixes the credentials, the permissions or the name.
    /// So its reason is kept for `/status` (which says `degraded` at once), and the first one
    /// of a streak is said as an error, once.
    pub fn failed(&self, e: &BucketError) {
        if !e.is_outage() {
            return;
        }
        let Some(refusal) = e.refusal() else {
            self.health.failure();
            return;
        };
        // For /status: the request and what the server said, without the layers around it.
        let reason = match (e, e.server_reply()) {
            // A listing of the prefix's root has an empty key: no stray space then.
            (BucketError::Store { op, key, .. }, Some(reply)) if key.is_empty() => {
                format!("{op}: {reply}")
            }
            (BucketError::Store { op, key, .. }, Some(reply)) => {
                format!("{op} {}: {reply}", crate::escape::esc(key))
            }
            _ => e.to_string(),
        };
        if !self.health.refused(reason) {
            return;
        }
        match refusal {
            Refusal::Denied => tracing::error!(
                bucket = %crate::escape::esc(&*self.target),
                error = %e,
                "the bucket refuses etlfs' requests (access denied): fix the credentials or the \
                 bucket's permissions. Nothing reaches the bucket until then; etlfs retries"
            ),
            Refusal::NoBucket => tracing::error!(
                bucket = %crate::escape::esc(&*self.target),
                error = %e,
                "the bucket does not exist: fix its name or endpoint in the configuration, or \
                 create it. Nothing reaches the bucket until then; etlfs retries"
            ),
        }
    }

    /// Lets listings get past keys `object_store` cannot represent, through `paged`.
    pub fn with_paged_listing(mut self, paged: Option<Lister>) -> Bucket {
        self.paged = paged;
        self
    }

    /// The requests sent to the bucket so far, by kind.
    pub fn requests(&self) -> &Arc<requests::RequestCounts> {
        &self.requests
    }

    /// Whether writes are allowed ([`Fence`]).
    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    /// The same bucket as another process sees it: its own health and fence (a second writer,
    /// in tests).
    #[cfg(test)]
    pub fn with_own_fence(&self) -> Bucket {
        Bucket {
            health: Arc::default(),
            fence: Arc::default(),
            ..self.clone()
        }
    }

    /// Whether the bucket answers, as the operations made through this bucket saw it.
    pub fn health(&self) -> &Arc<crate::counters::Health> {
        &self.health
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether objects carry their etlfs metadata (else it is in sidecar objects).
    pub fn user_metadata(&self) -> bool {
        self.user_metadata
    }
}

/// A bucket in memory, for the unit tests of the modules above this one (which may not name
/// `object_store` themselves).
#[cfg(test)]
pub fn in_memory(prefix: &str) -> Bucket {
    Bucket::new(
        Arc::new(object_store::memory::InMemory::new()),
        prefix,
        true,
        vec![],
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use object_store::memory::InMemory;

    pub(super) fn bucket(prefix: &str, user_metadata: bool) -> Bucket {
        Bucket::new(Arc::new(InMemory::new()), prefix, user_metadata, vec![])
    }

    #[tokio::test]
    async fn put_list_meta_copy_delete_round_trip() {
        for user_metadata in [true, false] {
            let b = bucket("etl", user_metadata);
            let meta = FileMeta {
                mtime_ns: 1_700_000_000_123_456_789,
                mode: 0o600,
                sha256: "ab".repeat(32),
                owner: Some((1001, 1002)),
            };
            b.put_bytes(Path::new("d/f"), Bytes::from_static(b"hello"), &meta)
                .await
                .unwrap();
            b.put_dir_marker(Path::new("d")).await.unwrap();
            let mut listed = b.list(None).await.unwrap();
            listed.sort_by(|x, y| x.rel.cmp(&y.rel));
            assert_eq!(listed.len(), 2, "{listed:?}");
            assert_eq!(
                (listed[0].rel.as_path(), listed[0].is_dir_marker),
                (Path::new("d"), true)
            );
            assert_eq!(
                (listed[1].rel.as_path(), listed[1].size),
                (Path::new("d/f"), 5)
            );
            assert_eq!(b.meta(Path::new("d/f")).await.unwrap(), Some(meta.clone()));
            b.copy(Path::new("d/f"), Path::new("e")).await.unwrap();
            assert_eq!(
                b.get(Path::new("e")).await.unwrap(),
                Bytes::from_static(b"hello")
            );
            assert_eq!(b.meta(Path::new("e")).await.unwrap(), Some(meta.clone()));
            b.delete(Path::new("d/f")).await.unwrap();
            b.delete(Path::new("d/f")).await.unwrap();
            assert!(matches!(
                b.get(Path::new("d/f")).await,
                Err(BucketError::NotFound { .. })
            ));
            // Gone: no metadata (sidecar mode) or the object itself is not found.
            assert!(matches!(
                b.meta(Path::new("d/f")).await,
                Ok(None) | Err(BucketError::NotFound { .. })
            ));
        }
    }

    #[tokio::test]
    async fn puts_return_the_e_tag_the_listing_shows() {
        let b = bucket("p", true);
        let meta = FileMeta {
            mtime_ns: 0,
            mode: 0o644,
            sha256: String::new(),
            owner: None,
        };
        let small = b
            .put_bytes(Path::new("small"), Bytes::from_static(b"x"), &meta)
            .await
            .unwrap();
        let mut up = b.start_upload(Path::new("big"), &meta).await.unwrap();
        up.write(&vec![1u8; PART_SIZE + 1]).await.unwrap();
        let big = up.finish(&b).await.unwrap();
        let listed: std::collections::HashMap<_, _> = b
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.rel, o.e_tag))
            .collect();
        assert!(small.is_some() && big.is_some());
        assert_eq!(listed[Path::new("small")], small);
        assert_eq!(listed[Path::new("big")], big);
        assert_eq!(b.meta_read(Path::new("small")).await.unwrap().e_tag, small);
    }

    #[test]
    fn e_tags_compare_without_quotes() {
        assert_eq!(normalize_e_tag("\"0x8D9\""), "0x8D9");
        assert_eq!(normalize_e_tag("0x8D9"), "0x8D9");
        assert_eq!(normalize_e_tag("W/\"abc-2\""), "abc-2");
    }

    #[tokio::test]
    async fn the_manifest_is_a_reserved_object() {
        let b = bucket("etl", true);
        assert!(b.get_manifest().await.unwrap().is_none());
        let before = SystemTime::now() - Duration::from_secs(1);
        let at = b.put_manifest(Bytes::from_static(b"m")).await.unwrap();
        assert!(at.is_some_and(|t| t >= before), "{at:?}");
        let got = b.get_manifest().await.unwrap().unwrap();
        assert_eq!((&got.body[..], Some(got.last_modified)), (&b"m"[..], at));
        assert!(b.list(None).await.unwrap().is_empty(), "not a user file");
    }
}
