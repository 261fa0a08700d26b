//! The one way a local file becomes an object: a consistent snapshot of it, uploaded with
//! the etlfs metadata every reader of the bucket relies on (mtime, mode, checksum, owner), or
//! nothing. The mirror and `etlfs backup` both upload through [`upload_snapshot`], so each
//! writes objects the other (and a restore) reads the same way.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::escape::esc;
use crate::os::local::Stat;
use crate::store::bucket::{Bucket, BucketError, FileMeta, PART_SIZE, SINGLE_PUT_MAX};

/// Why an upload failed (a snapshot that moved is not a failure: [`Snapshot::Moved`]).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("reading {}: {source}", esc(.path))]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the file in a blocking task: all of it (small files) or one chunk.
async fn read_all(file: Arc<std::fs::File>, path: &Path) -> Result<Vec<u8>, UploadError> {
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        (&*file).read_to_end(&mut buf).map(|_| buf)
    })
    .await
    // (cancelled by a runtime shutting down: a read itself does not panic)
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    .map_err(|source| UploadError::Local {
        path: path.to_owned(),
        source,
    })
}

async fn read_chunk(
    file: Arc<std::fs::File>,
    offset: u64,
    len: usize,
    path: &Path,
) -> Result<Vec<u8>, UploadError> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    })
    .await
    // (cancelled by a runtime shutting down: a read itself does not panic)
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    .map_err(|source| UploadError::Local {
        path: path.to_owned(),
        source,
    })
}

/// How [`upload_snapshot`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// The object now holds the file as its `Stat` described it.
    Uploaded(Uploaded),
    /// The file moved under us (or `still` said no): nothing was committed.
    Moved,
}

/// What a committed snapshot left in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    /// The object's normalized e_tag, as the put returned it (for the manifest).
    pub e_tag: Option<String>,
}

/// Uploads one consistent snapshot of an open regular file described by `st`, with the
/// etlfs metadata (mtime, mode, checksum, owner) every reader of the bucket relies on — or
/// nothing. `still(file)` says whether the snapshot is still good (the mirror: same identity
/// and no writer; `etlfs backup`: same identity); it is asked before reading, after the last
/// byte is read and right before the object is committed. Shared by the mirror and
/// `etlfs backup`, so both write objects the other (and a restore) reads the same way.
pub async fn upload_snapshot(
    bucket: &Bucket,
    file: &Arc<std::fs::File>,
    path: &Path,
    st: &Stat,
    still: impl Fn(&std::fs::File) -> std::io::Result<bool>,
) -> Result<Snapshot, UploadError> {
    let still = |f: &std::fs::File| {
        still(f).map_err(|source| UploadError::Local {
            path: path.to_owned(),
            source,
        })
    };
    if !still(file)? {
        return Ok(Snapshot::Moved);
    }
    let meta_of = |sha256: String| FileMeta {
        mtime_ns: crate::os::ns(st.mtime),
        mode: st.mode & 0o7777,
        sha256,
        owner: Some((st.uid, st.gid)),
    };
    let (sha256, e_tag) = if st.size <= SINGLE_PUT_MAX {
        let data = read_all(Arc::clone(file), path).await?;
        if !still(file)? || data.len() as u64 != st.size {
            return Ok(Snapshot::Moved);
        }
        let sha = hex::encode(Sha256::digest(&data));
        let e_tag = bucket
            .put_bytes(path, data.into(), &meta_of(sha.clone()))
            .await?;
        (sha, e_tag)
    } else {
        // Pass 1 computes the checksum the object's metadata carries; pass 2 streams the
        // bytes, and the upload is only completed if they hash the same and the file's
        // identity never moved.
        let chunk = PART_SIZE;
        let mut hasher = Sha256::new();
        let mut off = 0;
        while off < st.size {
            let buf = read_chunk(Arc::clone(file), off, chunk, path).await?;
            if buf.is_empty() {
                return Ok(Snapshot::Moved);
            }
            hasher.update(&buf);
            off += buf.len() as u64;
        }
        let sha = hex::encode(hasher.finalize());
        if !still(file)? {
            return Ok(Snapshot::Moved);
        }
        let mut up = bucket.start_upload(path, &meta_of(sha.clone())).await?;
        let mut hasher = Sha256::new();
        let mut off = 0;
        while off < st.size {
            let buf = match read_chunk(Arc::clone(file), off, chunk, path).await {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => {
                    let _ = up.abort().await;
                    return Ok(Snapshot::Moved);
                }
                Err(e) => {
                    let _ = up.abort().await;
                    return Err(e);
                }
            };
            hasher.update(&buf);
            off += buf.len() as u64;
            if let Err(e) = up.write(&buf).await {
                let _ = up.abort().await;
                return Err(e.into());
            }
        }
        if hex::encode(hasher.finalize()) != sha || !still(file)? {
            let _ = up.abort().await;
            return Ok(Snapshot::Moved);
        }
        (sha, up.finish(bucket).await?)
    };
    Ok(Snapshot::Uploaded(Uploaded { sha256, e_tag }))
}
