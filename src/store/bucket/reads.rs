//! Reads: an object's bytes (whole or streamed), its size, and its etlfs metadata (from the
//! object's user metadata, or its sidecar on FILESYSTEM).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{Attribute, ObjectStoreExt};

use super::error::absent;
use super::{Bucket, BucketError, FileMeta, MetaRead, Result, normalize_e_tag};

impl Bucket {
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

    pub(super) async fn get_stream_key(
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
                    cause: source,
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
    pub(super) async fn meta_read_at(&self, key: &Key, sidecar: Key) -> Result<MetaRead> {
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
                Err(e) if absent(&e) => Ok(MetaRead {
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
}
