//! Writes: file uploads (one PUT, or a streamed multipart [`Upload`]), deletes, copies and
//! directory markers, each checked against the [`super::Fence`] before a request is sent. With
//! history on, a file's upload, copy or delete keeps the version it replaces or removes first
//! (see [`super::history`]).
//!
//! The object's etlfs metadata travels with every write (user metadata, or a sidecar object on
//! FILESYSTEM), so that what is in the bucket always says how to restore it.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{
    Attribute, AttributeValue, Attributes, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, WriteMultipart,
};

use super::error::absent;
use super::{Bucket, BucketError, FileMeta, PART_SIZE, Result, history, normalize_e_tag};

impl Bucket {
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

    pub(super) async fn delete_key(&self, key: &Key) -> Result<()> {
        self.fence.check()?;
        match self.store.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if absent(&e) => Ok(()),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::bucket::tests::bucket;

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
}
