//! Counting the requests etlfs sends to the bucket, by kind: what a mount costs in requests
//! (and what history adds to each upload) is a figure on `/metrics`, not a guess.
//!
//! [`CountingStore`] wraps the store every [`super::Bucket`] is built on and counts each
//! request as it is made (whatever its outcome): a single PUT, the start of a multipart upload,
//! a GET, a HEAD, a listing page request (`list_with_delimiter`) or a whole flat listing, a
//! DELETE, a server-side copy. The parts and the completion of a multipart upload are not
//! counted apart (etlfs sends files up to 16 MiB with one PUT). Counting is one relaxed atomic
//! add per request: nothing a scrape could slow down.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The kinds of request counted, as `/metrics` labels them.
pub const KINDS: [&str; 7] = ["put", "multipart", "get", "head", "list", "delete", "copy"];

/// Requests sent, per kind (the order of [`KINDS`]).
#[derive(Debug, Default)]
pub struct RequestCounts([AtomicU64; KINDS.len()]);

impl RequestCounts {
    fn add(&self, kind: usize) {
        self.0[kind].fetch_add(1, Ordering::Relaxed);
    }

    /// (kind, requests) for every kind.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        KINDS
            .iter()
            .zip(&self.0)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .collect()
    }
}

const PUT: usize = 0;
const MULTIPART: usize = 1;
const GET: usize = 2;
const HEAD: usize = 3;
const LIST: usize = 4;
const DELETE: usize = 5;
const COPY: usize = 6;

/// A store that counts the requests made through it.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counts: Arc<RequestCounts>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, counts: Arc<RequestCounts>) -> CountingStore {
        CountingStore { inner, counts }
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.counts.add(PUT);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.counts.add(MULTIPART);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.counts.add(if options.head { HEAD } else { GET });
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.counts.add(GET);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let counts = Arc::clone(&self.counts);
        let locations = locations.inspect(move |_| counts.add(DELETE)).boxed();
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.counts.add(LIST);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.counts.add(LIST);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.counts.add(LIST);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.counts.add(COPY);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.counts.add(COPY);
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn each_request_is_counted_by_kind() {
        let counts = Arc::new(RequestCounts::default());
        let s = CountingStore::new(Arc::new(InMemory::new()), Arc::clone(&counts));
        let p = Path::from("a");
        s.put(&p, PutPayload::from_static(b"x")).await.unwrap();
        s.head(&p).await.unwrap();
        s.get(&p).await.unwrap();
        s.copy(&p, &Path::from("b")).await.unwrap();
        s.delete(&p).await.unwrap();
        s.list_with_delimiter(None).await.unwrap();
        let got: Vec<u64> = counts.snapshot().into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, [1, 0, 1, 1, 1, 1, 1]);
    }
}
