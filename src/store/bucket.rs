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

pub mod azure_list;
// The fault-injecting store is for tests only (the unit tests, and the integration tests
// through the `testing` feature): never in a release build.
#[cfg(any(test, feature = "testing"))]
pub mod fault;
pub mod history;
pub mod requests;

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as Key;
use object_store::{
    Attribute, AttributeValue, Attributes, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};

use crate::escape::{esc, esc_display};

/// Name of the per-directory marker object.
pub const DIR_MARKER: &str = ".etlfs-dir";
/// S3, GCS and Azure all cap keys at 1024 bytes.
const MAX_KEY_LEN: usize = 1024;
/// Top-level key segment reserved for etlfs' own objects (never a user path).
pub const RESERVED: &str = ".etlfs";
/// The manifest's name under [`RESERVED`]. The format version is part of the name, so an
/// etlfs that writes another format never reads this one as its own (and vice versa).
pub const MANIFEST: &str = "manifest.v1.jsonl.gz";

/// Errors of bucket operations.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("{} cannot be stored as a bucket key: {reason}", esc(.path))]
    BadKey { path: PathBuf, reason: &'static str },
    #[error("object {} not found", esc(.key))]
    NotFound { key: String },
    // object_store's message can quote a raw key (one it could not parse in a listing).
    #[error("{op} {}: {}", esc(.key), esc_display(.source))]
    Store {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    // `reason` quotes the object's metadata, or serde's words on a sidecar's bytes.
    #[error("metadata of {}: {}", esc(.key), esc(.reason))]
    BadMetadata { key: String, reason: String },
    /// This process may not write the bucket now (see [`Fence`]).
    #[error("writes to the bucket are stopped: {reason}")]
    Fenced { reason: String },
    /// The backend cannot do this kind of request (e.g. a conditional update on FILESYSTEM).
    #[error("{op} {key}: the bucket cannot do this ({source})")]
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
            BucketError::Store { source, .. } => {
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source);
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
        matches!(self, BucketError::Store { source, .. } if names_a_bad_key(source))
    }

    fn store<'a>(
        op: &'static str,
        key: &'a Key,
    ) -> impl FnOnce(object_store::Error) -> BucketError + 'a {
        move |source| match source {
            object_store::Error::NotFound { .. } => BucketError::NotFound {
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
                source,
            },
        }
    }
}

pub type Result<T, E = BucketError> = std::result::Result<T, E>;

/// Whether `object_store` failed because the bucket holds a key it cannot represent.
fn names_a_bad_key(e: &object_store::Error) -> bool {
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
}

/// Directory listings in flight at once while walking the bucket.
const LIST_CONCURRENCY: usize = 16;
/// A directory with more subdirectories than this is listed flat below it (see
/// [`Bucket::list`]): past this many, one request per subdirectory costs more than the pages of
/// a flat listing.
const FLAT_FANOUT: usize = 256;

/// How a listing gets past a key `object_store` cannot represent.
#[derive(Clone)]
pub enum Lister {
    /// The store listed with a page size and a start (S3, GCS).
    Paged(Arc<dyn PaginatedListStore>),
    /// Azure's List Blobs read raw (Azure has no start that every server honours).
    Azure(Arc<azure_list::AzureLister>),
}

impl std::fmt::Debug for Lister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lister::Paged(_) => "Lister::Paged",
            Lister::Azure(_) => "Lister::Azure",
        })
    }
}

/// What one listing request of a walk found.
struct Step {
    objects: Vec<object_store::ObjectMeta>,
    /// What is left to walk below it.
    next: Vec<Walk>,
    /// Keys left out because `object_store` cannot represent them (raw, full keys; ending in
    /// `/` for a directory part).
    skipped: Vec<String>,
}

impl Step {
    fn objects(objects: Vec<object_store::ObjectMeta>) -> Step {
        Step {
            objects,
            next: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

/// The smallest listing start after `key` — and, for a directory part (ending in `/`), after
/// every key below it: start-after compares UTF-8 bytes, and no key below it goes past the
/// highest code point.
fn past(key: &str) -> String {
    if key.ends_with('/') {
        format!("{key}\u{10FFFF}")
    } else {
        key.to_owned()
    }
}

/// The raw key an `object_store` error about an unparsable key names.
fn bad_key_of(e: &object_store::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<object_store::path::Error>() {
            use object_store::path::Error as P;
            return match p {
                P::EmptySegment { path } | P::BadSegment { path, .. } => Some(path.clone()),
                P::NonUnicode { path, .. } => Some(path.clone()),
                _ => None,
            };
        }
        cur = e.source();
    }
    None
}

/// What is left to list while walking the bucket.
enum Walk {
    /// One directory level (`None`: the bucket's root): its objects and subdirectories.
    Level(Option<Key>),
    /// Everything deeper than that level, flat.
    Below(Option<Key>),
}

impl Walk {
    /// What is left below the level `prefix` once it is listed, with its subdirectories
    /// `dirs`: each of them, or one flat listing below it when there are more than
    /// [`FLAT_FANOUT`].
    fn after_level(prefix: Option<Key>, dirs: Vec<Key>) -> Vec<Walk> {
        if dirs.len() > FLAT_FANOUT {
            vec![Walk::Below(prefix)]
        } else {
            dirs.into_iter().map(|d| Walk::Level(Some(d))).collect()
        }
    }
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

    fn join(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// The key of a relative path. Refuses anything that could not come back as the same path.
    pub fn key(&self, rel: &Path) -> Result<Key> {
        let key = self.key_below(rel)?;
        if rel.file_name().is_some_and(|n| n == DIR_MARKER) {
            // Its key would read back as the marker of the directory it is in.
            return Err(BucketError::BadKey {
                path: rel.to_owned(),
                reason: "the name .etlfs-dir is reserved for etlfs' directory markers",
            });
        }
        Ok(key)
    }

    /// Whether `rel` can be a key: a path refused here is never in the bucket, so there is
    /// nothing to delete, move or copy for it.
    pub fn can_hold(&self, rel: &Path) -> bool {
        self.key(rel).is_ok()
    }

    /// Whether anything at or below the directory `dir` can be a key. Every rule of
    /// [`Bucket::key`] that refuses a path refuses everything below it too (a name that is
    /// not UTF-8 or holds a control character, `.`, `..`, the reserved top level, a key too
    /// long), except the marker name: a directory named `.etlfs-dir` has no marker, but what
    /// it holds is mirrored.
    pub fn can_hold_below(&self, dir: &Path) -> bool {
        self.key_below(dir).is_ok()
    }

    /// The key of `rel` by every rule of [`Bucket::key`] but the marker name: as a file's key,
    /// or the prefix of every key below the directory `rel`.
    fn key_below(&self, rel: &Path) -> Result<Key> {
        let bad = |reason| BucketError::BadKey {
            path: rel.to_owned(),
            reason,
        };
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(s) => {
                    parts.push(s.to_str().ok_or_else(|| bad("not valid UTF-8"))?)
                }
                Component::CurDir | Component::ParentDir => return Err(bad("contains . or ..")),
                Component::RootDir | Component::Prefix(_) => return Err(bad("absolute path")),
            }
        }
        if parts.is_empty() {
            return Err(bad("empty path"));
        }
        if parts[0] == RESERVED {
            return Err(bad("the top-level name .etlfs is reserved for etlfs"));
        }
        if parts
            .iter()
            .any(|p| p.chars().any(|c| c.is_ascii_control()))
        {
            // (object_store refuses them in keys: newlines, tabs, NUL, DEL, ...)
            return Err(bad("contains an ASCII control character"));
        }
        let key =
            Key::parse(self.join(&parts.join("/"))).map_err(|_| bad("not a valid object key"))?;
        if key.as_ref().len() > MAX_KEY_LEN {
            return Err(bad(
                "the key would be longer than the 1024 bytes object stores allow",
            ));
        }
        Ok(key)
    }

    fn marker_key(&self, dir: &Path) -> Result<Key> {
        let k = self.key(dir)?;
        Ok(Key::parse(format!("{k}/{DIR_MARKER}")).expect("a valid key plus a valid segment"))
    }

    fn meta_key(&self, rel: &Path) -> Result<Key> {
        let k = self.key(rel)?;
        let rel_key = k
            .as_ref()
            .strip_prefix(&format!("{}/", self.prefix))
            .unwrap_or(k.as_ref());
        Ok(Key::parse(self.join(&format!("{RESERVED}/meta/{rel_key}"))).expect("valid segments"))
    }

    /// The relative path of a key under our prefix, or `None` for keys that are not user
    /// files (reserved objects, keys outside the prefix). Markers map to their directory.
    pub fn rel_of(&self, key: &Key) -> Option<(PathBuf, bool)> {
        let s = key.as_ref();
        let rel = if self.prefix.is_empty() {
            s
        } else {
            s.strip_prefix(&self.prefix)?.strip_prefix('/')?
        };
        if rel.is_empty() || rel == RESERVED || rel.starts_with(&format!("{RESERVED}/")) {
            return None;
        }
        match rel.strip_suffix(DIR_MARKER) {
            Some("") => None,
            Some(dir) if dir.ends_with('/') => Some((PathBuf::from(&dir[..dir.len() - 1]), true)),
            _ => Some((PathBuf::from(rel), false)),
        }
    }

    fn attributes(&self, meta: &FileMeta) -> Attributes {
        let mut attrs = Attributes::new();
        if !self.user_metadata {
            return attrs;
        }
        for (k, v) in &self.extra_metadata {
            attrs.insert(
                Attribute::Metadata(k.clone().into()),
                AttributeValue::from(v.clone()),
            );
        }
        attrs.insert(
            Attribute::Metadata("etlfs_mtime".into()),
            meta.mtime_ns.to_string().into(),
        );
        attrs.insert(
            Attribute::Metadata("etlfs_mode".into()),
            format!("{:o}", meta.mode).into(),
        );
        attrs.insert(
            Attribute::Metadata("etlfs_sha256".into()),
            meta.sha256.clone().into(),
        );
        if let Some((uid, gid)) = meta.owner {
            attrs.insert(
                Attribute::Metadata("etlfs_uid".into()),
                uid.to_string().into(),
            );
            attrs.insert(
                Attribute::Metadata("etlfs_gid".into()),
                gid.to_string().into(),
            );
        }
        attrs
    }

    /// Where the FILESYSTEM backend keeps the metadata that cannot ride on the object.
    async fn put_sidecar(&self, rel: &Path, meta: &FileMeta) -> Result<()> {
        if self.user_metadata {
            return Ok(());
        }
        self.fence.check()?;
        let key = self.meta_key(rel)?;
        let body = serde_json::to_vec(meta).expect("FileMeta serializes");
        self.store
            .put(&key, PutPayload::from(body))
            .await
            .map_err(BucketError::store("put", &key))?;
        Ok(())
    }

    /// Uploads a whole small file in one atomic PUT. Returns the object's normalized e_tag.
    pub async fn put_bytes(
        &self,
        rel: &Path,
        body: Bytes,
        meta: &FileMeta,
    ) -> Result<Option<String>> {
        let key = self.key(rel)?;
        self.fence.check()?;
        let new_size = Some(body.len() as u64);
        self.keep_before(rel, history::Change::Replace { new_size })
            .await?;
        let opts = PutOptions {
            attributes: self.attributes(meta),
            ..Default::default()
        };
        let res = self
            .store
            .put_opts(&key, PutPayload::from(body), opts)
            .await
            .map_err(BucketError::store("put", &key))?;
        self.put_sidecar(rel, meta).await?;
        Ok(res.e_tag.as_deref().map(normalize_e_tag))
    }

    /// Starts a streamed (multipart) upload; nothing is visible until [`Upload::finish`].
    pub async fn start_upload(&self, rel: &Path, meta: &FileMeta) -> Result<Upload> {
        self.fence.check()?;
        let key = self.key(rel)?;
        let opts = PutMultipartOptions {
            attributes: self.attributes(meta),
            ..Default::default()
        };
        let inner = self
            .store
            .put_multipart_opts(&key, opts)
            .await
            .map_err(BucketError::store("start upload", &key))?;
        Ok(Upload {
            writer: WriteMultipart::new_with_chunk_size(inner, PART_SIZE),
            key,
            rel: rel.to_owned(),
            meta: meta.clone(),
            written: 0,
        })
    }

    /// Deletes a file's object (and its sidecar metadata). A missing object is not an error.
    pub async fn delete(&self, rel: &Path) -> Result<()> {
        let key = self.key(rel)?;
        self.keep_before(rel, history::Change::Delete).await?;
        self.delete_key(&key).await?;
        if !self.user_metadata {
            self.delete_key(&self.meta_key(rel)?).await?;
        }
        Ok(())
    }

    async fn delete_key(&self, key: &Key) -> Result<()> {
        self.fence.check()?;
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(BucketError::store("delete", key)(e)),
        }
    }

    /// Server-side copy of a file's object (and sidecar) to another path. A destination that
    /// exists is replaced (its version kept first, see [`history`]).
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.fence.check()?;
        let (fk, tk) = (self.key(from)?, self.key(to)?);
        self.keep_before(to, history::Change::Replace { new_size: None })
            .await?;
        self.copy_key(&fk, &tk).await?;
        if !self.user_metadata {
            let (fm, tm) = (self.meta_key(from)?, self.meta_key(to)?);
            self.copy_key(&fm, &tm).await?;
        }
        Ok(())
    }

    /// Copies one object, unless `to` already is `from`.
    ///
    /// FILESYSTEM (the one backend without user metadata) would copy by hard-linking `from`:
    /// `to` would then share `from`'s file, and with it its modification time — the object's
    /// last-modified, which says when a version came to exist (`restore --as-of` would show a
    /// renamed file under its new name since before the rename), and a later copy between two
    /// links of one file leaves a staged `to#N` behind. So on FILESYSTEM the bytes are
    /// streamed into a new object, as a server-side copy makes one on the other backends.
    async fn copy_key(&self, from: &Key, to: &Key) -> Result<()> {
        if from == to {
            return Ok(());
        }
        if self.user_metadata {
            return self
                .store
                .copy(from, to)
                .await
                .map_err(BucketError::store("copy", from));
        }
        let body = self
            .store
            .get(from)
            .await
            .map_err(BucketError::store("copy", from))?;
        let upload = self
            .store
            .put_multipart(to)
            .await
            .map_err(BucketError::store("copy", to))?;
        let mut writer = WriteMultipart::new(upload);
        let mut stream = body.into_stream();
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            match chunk {
                Ok(bytes) => writer.write(&bytes),
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(BucketError::store("copy", from)(e));
                }
            }
        }
        writer
            .finish()
            .await
            .map(drop)
            .map_err(BucketError::store("copy", to))
    }

    /// Creates the marker object of a directory.
    pub async fn put_dir_marker(&self, dir: &Path) -> Result<()> {
        self.fence.check()?;
        let key = self.marker_key(dir)?;
        self.store
            .put(&key, PutPayload::new())
            .await
            .map_err(BucketError::store("put", &key))?;
        Ok(())
    }

    pub async fn delete_dir_marker(&self, dir: &Path) -> Result<()> {
        self.delete_key(&self.marker_key(dir)?).await
    }

    /// Every user object below `dir` (the whole bucket prefix for `None`), markers included.
    /// Keys that are not user paths are skipped, and etlfs' reserved `.etlfs/` is not even
    /// listed. A `dir` below which nothing can be a key ([`Bucket::can_hold_below`]) is
    /// refused with [`BucketError::BadKey`].
    ///
    /// The tree is walked one directory per request, [`LIST_CONCURRENCY`] at a time, rather
    /// than in one flat paginated listing: a flat listing is a chain of requests, each waiting
    /// for the previous page's continuation (100 round trips for 100,000 objects, and on
    /// servers such as s3s-fs every page rescans the whole bucket), while directories list side
    /// by side. A directory with more than [`FLAT_FANOUT`] subdirectories is listed flat below
    /// it instead, so a tree of many tiny directories costs at most about twice the pages of a
    /// flat listing, never one request per directory.
    ///
    /// A key `object_store` cannot represent (an empty, `.` or `..` segment, an ASCII control
    /// character) fails the whole page it is on. Such a level is then listed again around it
    /// ([`Bucket::with_paged_listing`]): on S3 and GCS with pages halved until the bad key
    /// stands alone, then listed past; on Azure read raw ([`azure_list`]). The key (or, for a
    /// bad directory part, everything below it) is left out and logged once, escaped; the
    /// number left out is what [`Bucket::list_each`] returns. On FILESYSTEM the listing fails,
    /// naming the key.
    pub async fn list(&self, dir: Option<&Path>) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        self.list_each(dir, |o| out.push(o)).await?;
        Ok(out)
    }

    /// [`Bucket::list`], handing each object to `each` as its page arrives rather than
    /// collecting them (a comparison with 100,000 objects then needs no list of them).
    /// Returns how many keys were left out because they cannot be listed.
    pub async fn list_each(
        &self,
        dir: Option<&Path>,
        mut each: impl FnMut(ObjectInfo),
    ) -> Result<u64> {
        let root = match dir {
            Some(d) => Some(self.key_below(d)?),
            None if self.prefix.is_empty() => None,
            None => Some(Key::parse(&self.prefix).expect("normalized prefix")),
        };
        let shown = root.as_ref().map(|k| k.to_string()).unwrap_or_default();
        let err = |source| BucketError::Store {
            op: "list",
            key: shown.clone(),
            source,
        };
        let mut todo = vec![Walk::Level(root)];
        let mut inflight = futures::stream::FuturesUnordered::new();
        let mut skipped = 0;
        loop {
            while inflight.len() < LIST_CONCURRENCY {
                let Some(step) = todo.pop() else { break };
                inflight.push(self.list_step(step));
            }
            let Some(res) = futures::StreamExt::next(&mut inflight).await else {
                break;
            };
            let step = res.map_err(err)?;
            step.objects
                .into_iter()
                .filter_map(|m| self.info(m))
                .for_each(&mut each);
            todo.extend(step.next);
            skipped += step.skipped.len() as u64;
            self.note_skipped(step.skipped);
        }
        Ok(skipped)
    }

    /// Logs each key a listing left out, once per process.
    fn note_skipped(&self, keys: Vec<String>) {
        let mut seen = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            let below = if key.ends_with('/') {
                " (a directory part: everything below it)"
            } else {
                ""
            };
            if seen.insert(key.clone()) {
                tracing::warn!(
                    key = %esc(&key),
                    "bucket object not shown: its key cannot be a path (an empty, `.` or `..` \
                     segment, or an ASCII control character){below}; rename or remove it"
                );
            }
        }
    }

    /// One request of [`Bucket::list`]: the objects it found, and what is left to walk.
    async fn list_step(&self, step: Walk) -> object_store::Result<Step> {
        match step {
            Walk::Level(prefix) => {
                let res = match self.store.list_with_delimiter(prefix.as_ref()).await {
                    Ok(res) => res,
                    Err(e) if names_a_bad_key(&e) => {
                        match &self.paged {
                            Some(Lister::Paged(paged)) => {
                                return self.list_around_bad_keys(&**paged, prefix, true).await;
                            }
                            Some(Lister::Azure(raw)) => {
                                return self.list_raw(raw, prefix, true).await;
                            }
                            None => {}
                        }
                        // A flat listing of the subtree fails too, but names the whole key
                        // rather than the directory part (which says less).
                        let all = self.store.list(prefix.as_ref()).try_collect().await?;
                        return Ok(Step::objects(all));
                    }
                    Err(e) => return Err(e),
                };
                let dirs: Vec<Key> = res
                    .common_prefixes
                    .into_iter()
                    .filter(|d| !self.is_reserved_dir(d))
                    .collect();
                let next = Walk::after_level(prefix, dirs);
                Ok(Step {
                    objects: res.objects,
                    next,
                    skipped: Vec::new(),
                })
            }
            Walk::Below(prefix) => {
                // The level itself was listed already: keep what is deeper.
                let depth = prefix.as_ref().map_or(0, |p| p.parts().count()) + 1;
                let mut step = match self.store.list(prefix.as_ref()).try_collect().await {
                    Ok(all) => Step::objects(all),
                    Err(e) if names_a_bad_key(&e) => match &self.paged {
                        Some(Lister::Paged(paged)) => {
                            self.list_around_bad_keys(&**paged, prefix, false).await?
                        }
                        Some(Lister::Azure(raw)) => self.list_raw(raw, prefix, false).await?,
                        None => return Err(e),
                    },
                    Err(e) => return Err(e),
                };
                step.objects.retain(|m| m.location.parts().count() > depth);
                Ok(step)
            }
        }
    }

    /// Lists `prefix` (one level with `by_level`, else everything below it) through Azure's
    /// raw listing, leaving out the names that cannot be keys.
    async fn list_raw(
        &self,
        raw: &azure_list::AzureLister,
        prefix: Option<Key>,
        by_level: bool,
    ) -> object_store::Result<Step> {
        let raw_prefix = prefix.as_ref().map(|p| format!("{p}/"));
        let mut step = Step::objects(Vec::new());
        let mut dirs = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = raw
                .page(raw_prefix.as_deref(), by_level, marker.as_deref())
                .await?;
            for b in page.blobs {
                match Key::parse(&b.name) {
                    Ok(location) => step.objects.push(object_store::ObjectMeta {
                        location,
                        last_modified: b.last_modified,
                        size: b.size,
                        e_tag: b.e_tag,
                        version: None,
                    }),
                    Err(_) => step.skipped.push(b.name),
                }
            }
            for p in page.prefixes {
                match Key::parse(&p) {
                    Ok(d) if !self.is_reserved_dir(&d) => dirs.push(d),
                    Ok(_) => {}
                    Err(_) => step.skipped.push(p),
                }
            }
            match page.next {
                Some(m) if marker.as_deref() != Some(&m) => marker = Some(m),
                _ => break,
            }
        }
        step.next = Walk::after_level(prefix, dirs);
        Ok(step)
    }

    /// Lists `prefix` (one level with `by_level`, else everything below it) page by page,
    /// getting past keys `object_store` cannot parse: a page that fails on one is asked for
    /// again at half the size from the same start, until the bad key is alone on its page; it
    /// is then left out, and the listing goes on after it (after everything below it, for a
    /// bad directory part). Costs about twenty requests per bad key; none when there is none,
    /// as this is only called once a listing failed on one.
    async fn list_around_bad_keys(
        &self,
        paged: &dyn PaginatedListStore,
        prefix: Option<Key>,
        by_level: bool,
    ) -> object_store::Result<Step> {
        const PAGE: usize = 1000;
        let raw_prefix = prefix.as_ref().map(|p| format!("{p}/"));
        let mut step = Step::objects(Vec::new());
        let mut dirs = Vec::new();
        let mut offset: Option<String> = None;
        let mut page = PAGE;
        // The last failure on a key object_store cannot parse.
        let mut last_bad: Option<object_store::Error> = None;
        loop {
            let opts = PaginatedListOptions {
                offset: offset.clone(),
                delimiter: by_level.then_some("/".into()),
                max_keys: Some(page),
                ..Default::default()
            };
            let res = match paged.list_paginated(raw_prefix.as_deref(), opts).await {
                Ok(res) => res,
                Err(e) if names_a_bad_key(&e) && page > 1 => {
                    page /= 2;
                    last_bad = Some(e);
                    continue;
                }
                Err(e) => match bad_key_of(&e) {
                    Some(key) if names_a_bad_key(&e) => {
                        let next = past(&key);
                        if offset.as_ref().is_some_and(|o| *o >= next) {
                            return Err(e); // no way forward: never loop
                        }
                        step.skipped.push(key);
                        offset = Some(next);
                        page = PAGE;
                        last_bad = Some(e);
                        continue;
                    }
                    _ => return Err(e),
                },
            };
            let mut last: Option<String> = None;
            for d in res.result.common_prefixes {
                let next = past(&format!("{d}/"));
                last = last.max(Some(next));
                if !self.is_reserved_dir(&d) {
                    dirs.push(d);
                }
            }
            for o in res.result.objects {
                last = last.max(Some(o.location.to_string()));
                step.objects.push(o);
            }
            if res.page_token.is_none() {
                break;
            }
            match last {
                Some(l) if offset.as_ref().is_none_or(|o| l > *o) => offset = Some(l),
                // A page that moved nothing forward: the store did not start where asked
                // (Azurite ignores `startFrom`). Never loop, and never pass off what was
                // listed as the whole level: fail on the key that could not be got past.
                _ => match last_bad {
                    Some(e) => return Err(e),
                    None => break,
                },
            }
            page = (page * 2).min(PAGE);
        }
        step.next = Walk::after_level(prefix, dirs);
        Ok(step)
    }

    /// Whether `dir` (a listed common prefix) is etlfs' reserved namespace at the top.
    fn is_reserved_dir(&self, dir: &Key) -> bool {
        let s = dir.as_ref();
        let rel = if self.prefix.is_empty() {
            Some(s)
        } else {
            s.strip_prefix(&self.prefix)
                .and_then(|r| r.strip_prefix('/'))
        };
        rel == Some(RESERVED)
    }

    fn info(&self, m: object_store::ObjectMeta) -> Option<ObjectInfo> {
        let (rel, is_dir_marker) = self.rel_of(&m.location)?;
        Some(ObjectInfo {
            rel,
            size: m.size,
            last_modified: SystemTime::from(m.last_modified),
            is_dir_marker,
            e_tag: m.e_tag.as_deref().map(normalize_e_tag),
        })
    }

    /// The object's size and last-modified.
    pub async fn head(&self, rel: &Path) -> Result<(u64, SystemTime)> {
        let key = self.key(rel)?;
        let m = self
            .store
            .head(&key)
            .await
            .map_err(BucketError::store("head", &key))?;
        Ok((m.size, SystemTime::from(m.last_modified)))
    }

    /// The object's bytes.
    pub async fn get(&self, rel: &Path) -> Result<Bytes> {
        let key = self.key(rel)?;
        let res = self
            .store
            .get(&key)
            .await
            .map_err(BucketError::store("get", &key))?;
        res.bytes().await.map_err(BucketError::store("get", &key))
    }

    /// The object's bytes as a stream of chunks (large objects never sit in memory whole).
    pub async fn get_stream(
        &self,
        rel: &Path,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        self.get_stream_key(self.key(rel)?).await
    }

    async fn get_stream_key(
        &self,
        key: Key,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        let res = self
            .store
            .get(&key)
            .await
            .map_err(BucketError::store("get", &key))?;
        let shown = key.to_string();
        Ok(Box::pin(futures::StreamExt::map(
            res.into_stream(),
            move |r| {
                r.map_err(|source| BucketError::Store {
                    op: "get",
                    key: shown.clone(),
                    source,
                })
            },
        )))
    }

    /// The etlfs metadata of an object, if it carries any.
    pub async fn meta(&self, rel: &Path) -> Result<Option<FileMeta>> {
        Ok(self.meta_read(rel).await?.meta)
    }

    /// The etlfs metadata of an object, and which version of it (or of its sidecar) was read.
    pub async fn meta_read(&self, rel: &Path) -> Result<MetaRead> {
        let key = self.key(rel)?;
        let sidecar = if self.user_metadata {
            key.clone()
        } else {
            self.meta_key(rel)?
        };
        self.meta_read_at(&key, sidecar).await
    }

    /// [`Bucket::meta_read`] of the object at `key`, whose sidecar (FILESYSTEM) is `sidecar`.
    async fn meta_read_at(&self, key: &Key, sidecar: Key) -> Result<MetaRead> {
        if !self.user_metadata {
            let key = sidecar;
            return match self.store.get(&key).await {
                Ok(r) => {
                    let last_modified = SystemTime::from(r.meta.last_modified);
                    let body = r.bytes().await.map_err(BucketError::store("get", &key))?;
                    let meta =
                        serde_json::from_slice(&body).map_err(|e| BucketError::BadMetadata {
                            key: key.to_string(),
                            reason: e.to_string(),
                        })?;
                    Ok(MetaRead {
                        meta: Some(meta),
                        size: None,
                        e_tag: None,
                        last_modified,
                    })
                }
                Err(object_store::Error::NotFound { .. }) => Ok(MetaRead {
                    meta: None,
                    size: None,
                    e_tag: None,
                    last_modified: UNIX_EPOCH,
                }),
                Err(e) => Err(BucketError::store("get", &key)(e)),
            };
        }
        let opts = object_store::GetOptions {
            head: true,
            ..Default::default()
        };
        let res = self
            .store
            .get_opts(key, opts)
            .await
            .map_err(BucketError::store("head", key))?;
        let seen = |meta| MetaRead {
            meta,
            size: Some(res.meta.size),
            e_tag: res.meta.e_tag.as_deref().map(normalize_e_tag),
            last_modified: SystemTime::from(res.meta.last_modified),
        };
        let get = |name: &'static str| {
            res.attributes
                .get(&Attribute::Metadata(name.into()))
                .map(|v| v.as_ref().to_owned())
        };
        let (Some(mtime), Some(mode), Some(sha256)) =
            (get("etlfs_mtime"), get("etlfs_mode"), get("etlfs_sha256"))
        else {
            return Ok(seen(None));
        };
        let bad = |reason: String| BucketError::BadMetadata {
            key: key.to_string(),
            reason,
        };
        let meta = FileMeta {
            mtime_ns: mtime
                .parse()
                .map_err(|e| bad(format!("etlfs_mtime \"{mtime}\": {e}")))?,
            mode: u32::from_str_radix(&mode, 8)
                .map_err(|e| bad(format!("etlfs_mode \"{mode}\": {e}")))?,
            sha256,
            owner: match (get("etlfs_uid"), get("etlfs_gid")) {
                (Some(u), Some(g)) => u.parse().ok().zip(g.parse().ok()),
                _ => None,
            },
        };
        Ok(seen(Some(meta)))
    }

    fn reserved_key(&self, name: &str) -> Key {
        Key::parse(self.join(&format!("{RESERVED}/{name}"))).expect("valid segments")
    }

    /// The key of etlfs' own object `name` under the reserved prefix, for messages.
    pub fn reserved_key_name(&self, name: &str) -> String {
        self.reserved_key(name).to_string()
    }

    /// etlfs' own object `name` (under the reserved prefix) and its version, if it exists.
    pub async fn get_reserved(&self, name: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
        let key = self.reserved_key(name);
        let res = match self.store.get(&key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(BucketError::store("get", &key)(e)),
        };
        let version = ObjectVersion {
            e_tag: res.meta.e_tag.clone(),
            version: res.meta.version.clone(),
        };
        let body = res.bytes().await.map_err(BucketError::store("get", &key))?;
        Ok(Some((body, version)))
    }

    /// Writes etlfs' own object `name` only if `cond` holds, with the backend's conditional
    /// requests (S3 `If-None-Match`/`If-Match`, GCS generation match, Azure `If-Match`). Not
    /// fenced: this is how the lease itself is kept. A backend that cannot do the request
    /// (FILESYSTEM has no conditional update) answers [`BucketError::Unsupported`].
    pub async fn put_reserved(
        &self,
        name: &str,
        body: Bytes,
        cond: WriteIf,
    ) -> Result<Conditional> {
        let key = self.reserved_key(name);
        let mode = match cond {
            WriteIf::Absent => PutMode::Create,
            WriteIf::Is(v) => PutMode::Update(UpdateVersion {
                e_tag: v.e_tag,
                version: v.version,
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&key, PutPayload::from(body), opts)
            .await
        {
            Ok(r) => Ok(Conditional::Written(ObjectVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Conditional::Conflict),
            Err(e) => Err(BucketError::store("conditional put", &key)(e)),
        }
    }

    /// Overwrites etlfs' own object `name` unconditionally (only where the backend cannot do
    /// a conditional update: the caller checked the version just before). Not fenced.
    pub async fn overwrite_reserved(&self, name: &str, body: Bytes) -> Result<ObjectVersion> {
        let key = self.reserved_key(name);
        let r = self
            .store
            .put(&key, PutPayload::from(body))
            .await
            .map_err(BucketError::store("put", &key))?;
        Ok(ObjectVersion {
            e_tag: r.e_tag,
            version: r.version,
        })
    }

    /// Deletes etlfs' own object `name`. Not fenced. A missing object is not an error.
    pub async fn delete_reserved(&self, name: &str) -> Result<()> {
        let key = self.reserved_key(name);
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(BucketError::store("delete", &key)(e)),
        }
    }

    fn manifest_key(&self) -> Key {
        Key::parse(self.join(&format!("{RESERVED}/{MANIFEST}"))).expect("valid segments")
    }

    /// The manifest, if there is one.
    pub async fn get_manifest(&self) -> Result<Option<ManifestObject>> {
        let key = self.manifest_key();
        let res = match self.store.get(&key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(BucketError::store("get", &key)(e)),
        };
        let last_modified = SystemTime::from(res.meta.last_modified);
        let body = res.bytes().await.map_err(BucketError::store("get", &key))?;
        Ok(Some(ManifestObject {
            body,
            last_modified,
        }))
    }

    /// Replaces the manifest (one atomic PUT) and returns when the bucket says it was written
    /// — read back with a HEAD, because a PUT answers no time — or `None` if the HEAD found
    /// another version already (a concurrent writer) or failed.
    pub async fn put_manifest(&self, body: Bytes) -> Result<Option<SystemTime>> {
        self.fence.check()?;
        let key = self.manifest_key();
        let put = self
            .store
            .put(&key, PutPayload::from(body))
            .await
            .map_err(BucketError::store("put", &key))?;
        let Ok(head) = self.store.head(&key).await else {
            return Ok(None);
        };
        let same = match (&put.e_tag, &head.e_tag) {
            (Some(a), Some(b)) => normalize_e_tag(a) == normalize_e_tag(b),
            _ => false,
        };
        Ok(same.then(|| SystemTime::from(head.last_modified)))
    }
}

/// A streamed upload in progress. Dropping it without `finish` leaves nothing visible; call
/// [`Upload::abort`] to also free the parts on the server.
pub struct Upload {
    writer: WriteMultipart,
    key: Key,
    rel: PathBuf,
    meta: FileMeta,
    /// Bytes queued so far: the size of the object `finish` makes.
    written: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload").field("key", &self.key).finish()
    }
}

impl Upload {
    /// Queues bytes; waits when too many parts are in flight, to keep memory bounded.
    pub async fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.writer
            .wait_for_capacity(4)
            .await
            .map_err(BucketError::store("upload", &self.key))?;
        self.writer.write(buf);
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Completes the upload: the object appears atomically. Returns its normalized e_tag.
    pub async fn finish(self, bucket: &Bucket) -> Result<Option<String>> {
        // Completion is what makes the object visible: a fence raised during the upload holds.
        bucket.fence.check()?;
        let new_size = Some(self.written);
        bucket
            .keep_before(&self.rel, history::Change::Replace { new_size })
            .await?;
        let res = self
            .writer
            .finish()
            .await
            .map_err(BucketError::store("complete upload", &self.key))?;
        bucket.put_sidecar(&self.rel, &self.meta).await?;
        Ok(res.e_tag.as_deref().map(normalize_e_tag))
    }

    pub async fn abort(self) -> Result<()> {
        self.writer
            .abort()
            .await
            .map_err(BucketError::store("abort upload", &self.key))
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
    use super::*;
    use object_store::memory::InMemory;

    fn bucket(prefix: &str, user_metadata: bool) -> Bucket {
        Bucket::new(Arc::new(InMemory::new()), prefix, user_metadata, vec![])
    }

    #[test]
    fn keys_are_prefix_plus_relative_path_verbatim() {
        let b = bucket("/etl//", true);
        assert_eq!(
            b.key(Path::new("bingen/allocations/1d/1704110400-1704196800"))
                .unwrap()
                .as_ref(),
            "etl/bingen/allocations/1d/1704110400-1704196800"
        );
        assert_eq!(
            b.key(Path::new("a b/c[1]~*.x")).unwrap().as_ref(),
            "etl/a b/c[1]~*.x"
        );
        assert_eq!(bucket("", true).key(Path::new("x")).unwrap().as_ref(), "x");
    }

    #[test]
    fn keys_that_could_not_map_back_are_refused() {
        let b = bucket("p", true);
        use std::os::unix::ffi::OsStrExt;
        for bad in ["", "../x", "a/../b", "/abs", ".etlfs/x", ".etlfs"] {
            let e = b.key(Path::new(bad)).unwrap_err();
            assert!(matches!(e, BucketError::BadKey { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains(&esc(bad).to_string()), "{e}");
        }
        let not_utf8 = Path::new(std::ffi::OsStr::from_bytes(b"a\xff"));
        assert!(b.key(not_utf8).unwrap_err().to_string().contains("UTF-8"));
        // `.etlfs` deeper down is an ordinary name.
        assert!(b.key(Path::new("d/.etlfs")).is_ok());
    }

    #[test]
    fn what_cannot_be_a_key_has_nothing_below_it_but_for_the_marker_name() {
        use std::os::unix::ffi::OsStrExt;
        let b = bucket("p", true);
        let raw = |s: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(s));
        for bad in [
            raw(b"caf\xe9"),
            raw(b"d\xff/x"),
            "tab\there".into(),
            "nl\n/x".into(),
            ".etlfs".into(),
            "a/../b".into(),
            PathBuf::from("x".repeat(1030)),
        ] {
            assert!(!b.can_hold(&bad), "{bad:?}");
            assert!(!b.can_hold_below(&bad), "{bad:?}");
            assert!(!b.can_hold(&bad.join("below")), "{bad:?}");
        }
        // A directory named like the marker has none, but what it holds is mirrored.
        assert!(!b.can_hold(Path::new("d/.etlfs-dir")));
        assert!(b.can_hold_below(Path::new("d/.etlfs-dir")));
        assert!(b.can_hold(Path::new("d/.etlfs-dir/x")));
        assert!(b.can_hold(Path::new("d/x")) && b.can_hold_below(Path::new("d")));
    }

    /// LocalFileSystem copies through a hard-linked `to#N` renamed onto `to`; when `to` is a
    /// link of `from` already, that rename is a no-op and `to#N` stayed behind (renames back
    /// and forth piled them up). Such a copy is skipped: no staged file is left, and the bytes
    /// and metadata are where they belong.
    #[tokio::test]
    async fn filesystem_copies_back_and_forth_leave_no_staged_files() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let b = Bucket::new(store, "etl", false, vec![]);
        let meta = FileMeta {
            mtime_ns: 1,
            mode: 0o644,
            sha256: "cd".repeat(32),
            owner: None,
        };
        let (a, z) = (Path::new("d1/a"), Path::new("d2/b"));
        b.put_bytes(a, Bytes::from_static(b"x"), &meta)
            .await
            .unwrap();
        for _ in 0..5 {
            b.copy(a, z).await.unwrap();
            b.copy(z, a).await.unwrap();
            b.copy(a, a).await.unwrap();
        }
        b.delete(z).await.unwrap();
        b.copy(a, z).await.unwrap();
        b.delete(a).await.unwrap();
        b.copy(z, a).await.unwrap();
        let mut left = Vec::new();
        let mut todo = vec![dir.path().to_owned()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    todo.push(e.path());
                } else {
                    left.push(e.path().strip_prefix(dir.path()).unwrap().to_owned());
                }
            }
        }
        left.sort();
        let want: Vec<PathBuf> = [
            "etl/.etlfs/meta/d1/a",
            "etl/.etlfs/meta/d2/b",
            "etl/d1/a",
            "etl/d2/b",
        ]
        .map(PathBuf::from)
        .to_vec();
        assert_eq!(left, want);
        for p in [a, z] {
            assert_eq!(b.get(p).await.unwrap(), Bytes::from_static(b"x"));
            assert_eq!(b.meta(p).await.unwrap(), Some(meta.clone()));
        }
    }

    #[test]
    fn rel_of_inverts_key_and_skips_foreign_keys() {
        let b = bucket("etl", true);
        let k = b.key(Path::new("a/b")).unwrap();
        assert_eq!(b.rel_of(&k), Some((PathBuf::from("a/b"), false)));
        assert_eq!(
            b.rel_of(&b.marker_key(Path::new("a")).unwrap()),
            Some((PathBuf::from("a"), true))
        );
        assert_eq!(b.rel_of(&Key::parse("other/x").unwrap()), None);
        assert_eq!(b.rel_of(&Key::parse("etlx/x").unwrap()), None);
        assert_eq!(b.rel_of(&Key::parse("etl/.etlfs/meta/x").unwrap()), None);
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
    async fn multipart_is_invisible_until_finished() {
        let b = bucket("", true);
        let meta = FileMeta {
            mtime_ns: 0,
            mode: 0o644,
            sha256: String::new(),
            owner: None,
        };
        let mut up = b.start_upload(Path::new("big"), &meta).await.unwrap();
        up.write(&vec![7u8; PART_SIZE + 10]).await.unwrap();
        assert!(b.list(None).await.unwrap().is_empty());
        up.finish(&b).await.unwrap();
        assert_eq!(b.get(Path::new("big")).await.unwrap().len(), PART_SIZE + 10);
        let mut up = b.start_upload(Path::new("aborted"), &meta).await.unwrap();
        up.write(b"x").await.unwrap();
        up.abort().await.unwrap();
        assert_eq!(b.list(None).await.unwrap().len(), 1);
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

    #[tokio::test]
    async fn the_walk_lists_what_a_flat_listing_would() {
        let store = Arc::new(InMemory::new());
        let b = Bucket::new(store.clone(), "etl", true, vec![]);
        let meta = FileMeta {
            mtime_ns: 0,
            mode: 0o644,
            sha256: String::new(),
            owner: None,
        };
        let mut want = Vec::new();
        // More subdirectories than FLAT_FANOUT below one directory, with files at every level.
        for i in 0..FLAT_FANOUT + 5 {
            want.push(format!("wide/d{i}/f"));
            want.push(format!("wide/d{i}/sub/g"));
        }
        want.extend(["top", "wide/level", "deep/a/b/c/f"].map(String::from));
        for rel in &want {
            b.put_bytes(Path::new(rel), Bytes::new(), &meta)
                .await
                .unwrap();
        }
        b.put_dir_marker(Path::new("empty")).await.unwrap();
        for k in [
            "etl/.etlfs/meta/top",
            "etl/.etlfs/manifest.v1.jsonl.gz",
            "etlx/y",
            "z",
        ] {
            store.put(&Key::from(k), PutPayload::new()).await.unwrap();
        }
        let mut got: Vec<String> = b
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.shown())
            .collect();
        got.sort();
        want.push("empty/".into());
        want.sort();
        assert_eq!(got, want);
        let mut below: Vec<_> = b
            .list(Some(Path::new("deep/a")))
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.rel)
            .collect();
        below.sort();
        assert_eq!(below, [PathBuf::from("deep/a/b/c/f")]);
    }
}
