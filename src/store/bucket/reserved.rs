//! etlfs' own objects under the reserved `.etlfs/` prefix: the lease's conditional writes and
//! the manifest.
//!
//! Apart from user files because their rules differ: the lease's writes are conditional and
//! not fenced (they are how the fence is decided), and no listing of user files shows them.

use std::time::SystemTime;

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::error::absent;
use super::{
    Bucket, BucketError, Conditional, MANIFEST, ManifestObject, ObjectVersion, RESERVED, Result,
    WriteIf, normalize_e_tag,
};

impl Bucket {
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
            Err(e) if absent(&e) => return Ok(None),
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
            Ok(()) => Ok(()),
            Err(e) if absent(&e) => Ok(()),
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
            Err(e) if absent(&e) => return Ok(None),
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
