//! S3 `put_user_metadata`: user metadata, and the `x-amz-*` headers S3 applies to the object a
//! write creates — a canned ACL, grants, the storage class, tags — sent on those writes only.
//!
//! # What Thanos does, and what etlfs does
//!
//! minio sends each `put_user_metadata` entry on every upload: `x-amz-meta-*` and plain names
//! as user metadata, `x-amz-*` names verbatim as headers. Kubecost's own S3 example has
//! `"X-Amz-Acl": "bucket-owner-full-control"` (a bucket another account owns).
//!
//! `object_store` has no per-request headers, only `ClientOptions::with_default_headers`, which
//! it signs on the requests it builds through its S3 request builder (PUT, copy, multipart,
//! GET, HEAD, bulk delete) but not on a listing, where reqwest adds them unsigned afterwards —
//! and S3 refuses any request with an unsigned `x-amz-*` header ("There were headers present in
//! the request which were not signed"). So the headers go to a second S3 client, used only for
//! the writes that create an object ([`WriteHeaders`]): a PUT, a server-side copy (which
//! otherwise makes a private, `STANDARD` object whatever the original had) and a multipart
//! upload (its start, parts and completion). Reads, listings and deletes go through a client
//! without them. Both clients share every other setting.
//!
//! # Which headers
//!
//! `x-amz-acl` (a canned ACL, checked against S3's list), `x-amz-grant-read`,
//! `x-amz-grant-read-acp`, `x-amz-grant-write-acp`, `x-amz-grant-full-control`,
//! `x-amz-storage-class` and `x-amz-tagging`: each an object-level setting of PutObject,
//! CopyObject and CreateMultipartUpload. Refused, with the reason: `x-amz-grant-write` (bucket
//! only), the Object Lock headers (S3 wants a Content-MD5 or checksum with them, which
//! object_store does not send), encryption (`sse_config` does that), checksums, and headers
//! that would have to go on every request (`x-amz-request-payer`, `x-amz-expected-bucket-owner`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use http::{HeaderMap, HeaderName, HeaderValue};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use crate::store::config::ConfigError;
use crate::store::config::error::Ctx;

/// Standard headers minio refuses in `put_user_metadata` (`isStandardHeader`).
const STANDARD_HEADERS: &[&str] = &[
    "content-type",
    "cache-control",
    "content-encoding",
    "content-disposition",
    "content-language",
    "content-length",
    "content-md5",
    "expires",
];

/// The `x-amz-*` headers sent on the writes that create an object (see the module docs).
const WRITE_HEADERS: &[&str] = &[
    "x-amz-acl",
    "x-amz-grant-read",
    "x-amz-grant-read-acp",
    "x-amz-grant-write-acp",
    "x-amz-grant-full-control",
    "x-amz-storage-class",
    "x-amz-tagging",
];

/// S3's canned ACLs for objects.
const CANNED_ACLS: &[&str] = &[
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

/// What `put_user_metadata` turns into.
#[derive(Debug, Default)]
pub(super) struct PutMetadata {
    /// User metadata, names without `x-amz-meta-` (object_store adds it).
    pub(super) metadata: Vec<(String, String)>,
    /// Headers for the writes that create an object, names in lowercase.
    pub(super) headers: HeaderMap,
}

/// Why an `x-amz-*` entry other than [`WRITE_HEADERS`] is refused.
fn refusal(lower: &str) -> &'static str {
    match lower {
        "x-amz-grant-write" => "is a bucket permission; objects take no such grant",
        l if l.starts_with("x-amz-object-lock-") => {
            "S3 requires a Content-MD5 or checksum header with Object Lock settings, which \
             object_store does not send; set a default retention on the bucket instead"
        }
        l if l.starts_with("x-amz-server-side-encryption") => {
            "encryption is set with config.sse_config"
        }
        l if l.starts_with("x-amz-checksum-") => {
            "object_store computes and sends its own payload checksum"
        }
        "x-amz-request-payer" | "x-amz-expected-bucket-owner" => {
            "would have to go on every request, reads and listings included; object_store can \
             send headers only with the writes here"
        }
        _ => {
            "is not an object setting etlfs sends; it sends x-amz-meta-* (user metadata), \
             x-amz-acl, x-amz-grant-read, x-amz-grant-read-acp, x-amz-grant-write-acp, \
             x-amz-grant-full-control, x-amz-storage-class and x-amz-tagging"
        }
    }
}

pub(super) fn put_metadata(
    ctx: &Ctx,
    map: BTreeMap<String, String>,
) -> Result<PutMetadata, ConfigError> {
    let mut out = PutMetadata::default();
    for (name, value) in map {
        let key = format!("config.put_user_metadata.{name}");
        let lower = name.to_ascii_lowercase();
        let value = value.trim().to_string();
        if !value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
            return Err(ctx.invalid(
                &key,
                "has a value S3 cannot carry in a header (use printable ASCII)",
            ));
        }
        if WRITE_HEADERS.contains(&lower.as_str()) {
            out.headers.insert(
                header_name(&lower),
                write_header(ctx, &key, &lower, &value)?,
            );
            continue;
        }
        let meta_name = if let Some(stripped) = lower.strip_prefix("x-amz-meta-") {
            // Keep the user's spelling after the prefix.
            name[name.len() - stripped.len()..].to_string()
        } else if lower.starts_with("x-amz-") {
            return Err(ctx.refused(&key, refusal(&lower)));
        } else if STANDARD_HEADERS.contains(&lower.as_str()) {
            return Err(ctx.refused(
                &key,
                "is a standard HTTP header, which Thanos (minio) refuses here too",
            ));
        } else {
            name.clone()
        };
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if meta_name.is_empty() || !meta_name.chars().all(token) {
            return Err(ctx.invalid(&key, "is not a valid metadata (HTTP header) name"));
        }
        out.metadata.push((meta_name, value));
    }
    Ok(out)
}

fn header_name(lower: &str) -> HeaderName {
    HeaderName::from_lowercase(lower.as_bytes()).expect("WRITE_HEADERS are header names")
}

/// The value of one of [`WRITE_HEADERS`], checked where S3 has a fixed list of values.
fn write_header(
    ctx: &Ctx,
    key: &str,
    lower: &str,
    value: &str,
) -> Result<HeaderValue, ConfigError> {
    if value.is_empty() {
        return Err(ctx.invalid(key, "is empty"));
    }
    let value = if lower == "x-amz-acl" {
        let acl = value.to_ascii_lowercase();
        if !CANNED_ACLS.contains(&acl.as_str()) {
            return Err(ctx.invalid(
                key,
                format!(
                    "`{value}` is not one of S3's canned ACLs ({})",
                    CANNED_ACLS.join(", ")
                ),
            ));
        }
        acl
    } else {
        value.to_string()
    };
    // Printable ASCII was checked above: always a valid header value.
    HeaderValue::from_str(&value).map_err(|_| ctx.invalid(key, "is not a valid header value"))
}

/// An S3 store whose writes that create an object carry the `put_user_metadata` headers: they
/// go through `writes` (an S3 client whose default headers are those), everything else through
/// `reads` (the same client without them). See the module documentation for why.
#[derive(Debug)]
pub(super) struct WriteHeaders {
    pub(super) reads: Arc<dyn ObjectStore>,
    pub(super) writes: Arc<dyn ObjectStore>,
}

impl std::fmt::Display for WriteHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.reads, f)
    }
}

#[async_trait]
impl ObjectStore for WriteHeaders {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.writes.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.writes.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.reads.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.reads.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.reads.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.reads.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.reads.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.reads.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.writes.copy_opts(from, to, options).await
    }
    // rename_opts: the trait's own, a copy (carrying the headers) then a delete (not).
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    /// Two in-memory stores stand for the two clients: which one an operation reached shows
    /// whether it would have carried the headers.
    #[tokio::test]
    async fn only_the_writes_that_create_an_object_go_through_the_writes_client() {
        let (reads, writes) = (Arc::new(InMemory::new()), Arc::new(InMemory::new()));
        let s = WriteHeaders {
            reads: Arc::clone(&reads) as _,
            writes: Arc::clone(&writes) as _,
        };
        let p = Path::from("a");
        s.put(&p, PutPayload::from_static(b"x")).await.unwrap();
        assert!(writes.head(&p).await.is_ok() && reads.head(&p).await.is_err());
        let mut up = s.put_multipart(&Path::from("m")).await.unwrap();
        up.put_part(PutPayload::from_static(b"y")).await.unwrap();
        up.complete().await.unwrap();
        assert!(writes.head(&Path::from("m")).await.is_ok());
        s.copy(&p, &Path::from("b")).await.unwrap();
        assert!(writes.head(&Path::from("b")).await.is_ok());
        // Reads, listings and deletes go to the other one.
        reads.put(&p, PutPayload::from_static(b"r")).await.unwrap();
        assert_eq!(&s.get(&p).await.unwrap().bytes().await.unwrap()[..], b"r");
        assert_eq!(s.list_with_delimiter(None).await.unwrap().objects.len(), 1);
        s.delete(&p).await.unwrap();
        assert!(reads.head(&p).await.is_err() && writes.head(&p).await.is_ok());
    }
}
