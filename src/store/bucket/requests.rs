//! Counting and timing the requests etlfs sends to the bucket, by operation and outcome: what
//! a mount costs in requests (and what history adds to each upload), how many fail and why,
//! and how long the bucket takes to answer are figures on `/metrics`, not guesses.
//!
//! [`CountingStore`] wraps the store every [`super::Bucket`] is built on, so every request
//! passes it: a single PUT, each step of a multipart upload (start, part, completion, abort),
//! a GET, a HEAD, a listing page (`list_with_delimiter`) or a whole flat listing, a DELETE, a
//! server-side copy. (The one exception, the listing pages that get past a key object_store
//! cannot represent, go to the backend directly and are counted through
//! [`RequestCounts::time_list`].) Each request is recorded once, when it ends, with its
//! outcome (see [`OUTCOMES`]) and its duration: for a GET until the response headers (the
//! body streams afterwards, and the fetch's own duration covers it), for a flat listing until
//! its last page. A request whose caller gave up on it (a future dropped, a timeout) is
//! recorded as `cancelled`.
//!
//! Recording is a few relaxed atomic adds: nothing a scrape could slow down, and nothing that
//! slows a request down.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

use crate::counters::Latency;

/// The operations, as `/metrics` labels them (`op`).
pub const OPS: [&str; 10] = [
    "put",
    "multipart_start",
    "multipart_part",
    "multipart_complete",
    "multipart_abort",
    "get",
    "head",
    "list",
    "delete",
    "copy",
];

/// The outcomes, as `/metrics` labels them (`outcome`):
///
/// - `ok`;
/// - `not_found`: the object is absent (often expected: a HEAD before the first upload);
/// - `precondition`: a conditional request was refused (the object changed, or exists
///   already): how the lease and history keep one writer;
/// - `denied`: the credentials were refused (403, 401);
/// - `unsupported`: the backend cannot do this request (a conditional update on FILESYSTEM);
/// - `invalid_key`: the bucket holds a key object_store cannot represent;
/// - `timeout`, `connect`: no answer in time, or no connection, after object_store's retries;
/// - `error`: any other failure (a 5xx after the retries, a broken body, a local I/O error);
/// - `cancelled`: the caller stopped waiting before the answer.
pub const OUTCOMES: [&str; 9] = [
    "ok",
    "not_found",
    "precondition",
    "denied",
    "unsupported",
    "invalid_key",
    "timeout",
    "connect",
    "error",
];
const CANCELLED: &str = "cancelled";
/// Every outcome label, `cancelled` last.
const ALL_OUTCOMES: usize = OUTCOMES.len() + 1;

const PUT: usize = 0;
const MP_START: usize = 1;
const MP_PART: usize = 2;
const MP_COMPLETE: usize = 3;
const MP_ABORT: usize = 4;
const GET: usize = 5;
const HEAD: usize = 6;
const LIST: usize = 7;
const DELETE: usize = 8;
const COPY: usize = 9;

const OK: usize = 0;
const ERROR: usize = 8;
const CANCELLED_AT: usize = OUTCOMES.len();

/// Requests ended, per operation and outcome, and their durations per operation.
#[derive(Debug, Default)]
pub struct RequestCounts {
    counts: [[AtomicU64; ALL_OUTCOMES]; OPS.len()],
    latency: [Latency; OPS.len()],
}

/// One line of [`RequestCounts::snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCount {
    pub op: &'static str,
    pub outcome: &'static str,
    pub count: u64,
}

impl RequestCounts {
    fn record(&self, op: usize, outcome: usize, started: Instant) {
        self.counts[op][outcome].fetch_add(1, Ordering::Relaxed);
        self.latency[op].record(started.elapsed());
    }

    /// Every (operation, outcome) pair, zeros included, so that a series exists before its
    /// first increment (a rate or an alert on it then sees that increment).
    pub fn snapshot(&self) -> Vec<RequestCount> {
        let mut out = Vec::with_capacity(OPS.len() * ALL_OUTCOMES);
        for (op, row) in OPS.iter().zip(&self.counts) {
            for (i, c) in row.iter().enumerate() {
                out.push(RequestCount {
                    op,
                    outcome: OUTCOMES.get(i).copied().unwrap_or(CANCELLED),
                    count: c.load(Ordering::Relaxed),
                });
            }
        }
        out
    }

    /// The duration histogram of each operation.
    pub fn latencies(&self) -> impl Iterator<Item = (&'static str, &Latency)> {
        OPS.iter().copied().zip(self.latency.iter())
    }

    /// Counts and times one listing page requested around [`CountingStore`]: the pages that
    /// get past a key object_store cannot represent (`super::listing`), which go to the
    /// backend's paginated or raw listing directly.
    pub(super) async fn time_list<T>(
        self: &Arc<Self>,
        request: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let timer = Timer::start(self, LIST);
        timer.end(request.await)
    }

    /// Requests of operation `op` that failed: every outcome but `ok` and the answers that
    /// are part of normal work (`not_found`, `precondition`, and `unsupported`, after which
    /// etlfs falls back to another way).
    pub fn failed(&self, op: &str) -> u64 {
        let expected = ["ok", "not_found", "precondition", "unsupported"];
        self.snapshot()
            .into_iter()
            .filter(|c| c.op == op && !expected.contains(&c.outcome))
            .map(|c| c.count)
            .sum()
    }

    /// Requests of operation `op` ended so far, whatever their outcome.
    pub fn total(&self, op: &str) -> u64 {
        OPS.iter().position(|o| *o == op).map_or(0, |i| {
            self.counts[i]
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum()
        })
    }
}

/// The outcome (an index into [`OUTCOMES`]) of a failed request.
fn outcome_of(e: &object_store::Error) -> usize {
    use object_store::Error as E;
    let label = match e {
        E::NotFound { .. } => "not_found",
        E::Precondition { .. } | E::AlreadyExists { .. } | E::NotModified { .. } => "precondition",
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => "denied",
        E::NotSupported { .. } | E::NotImplemented { .. } => "unsupported",
        e if super::error::names_a_bad_key(e) => "invalid_key",
        e => transport_failure(e).unwrap_or("error"),
    };
    OUTCOMES.iter().position(|o| *o == label).unwrap_or(ERROR)
}

/// `timeout` or `connect` when the HTTP client gave up on the connection (the cause sits
/// deep in the chain, below object_store's retry error).
fn transport_failure(e: &object_store::Error) -> Option<&'static str> {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = cur {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return match http.kind() {
                HttpErrorKind::Timeout => Some("timeout"),
                HttpErrorKind::Connect => Some("connect"),
                _ => None,
            };
        }
        cur = e.source();
    }
    None
}

/// One request on its way: recorded when it ends ([`Timer::end`]), or as `cancelled` if it
/// is dropped first.
struct Timer {
    counts: Arc<RequestCounts>,
    op: usize,
    started: Instant,
    ended: bool,
}

impl Timer {
    fn start(counts: &Arc<RequestCounts>, op: usize) -> Timer {
        Timer {
            counts: Arc::clone(counts),
            op,
            started: Instant::now(),
            ended: false,
        }
    }

    fn finish(mut self, outcome: usize) {
        self.ended = true;
        self.counts.record(self.op, outcome, self.started);
    }

    fn end<T>(self, r: Result<T>) -> Result<T> {
        self.finish(r.as_ref().map_or_else(outcome_of, |_| OK));
        r
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !self.ended {
            self.counts.record(self.op, CANCELLED_AT, self.started);
        }
    }
}

/// A store that counts and times the requests made through it.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counts: Arc<RequestCounts>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, counts: Arc<RequestCounts>) -> CountingStore {
        CountingStore { inner, counts }
    }

    fn timer(&self, op: usize) -> Timer {
        Timer::start(&self.counts, op)
    }

    /// A flat listing, recorded when it ends: `ok` at its end (or when its reader stops after
    /// an entry), the error's outcome at the first error, `cancelled` if dropped unread.
    fn listing(
        &self,
        inner: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        Listing {
            inner,
            timer: Some(self.timer(LIST)),
            read_any: false,
        }
        .boxed()
    }
}

struct Listing {
    inner: BoxStream<'static, Result<ObjectMeta>>,
    timer: Option<Timer>,
    read_any: bool,
}

impl Stream for Listing {
    type Item = Result<ObjectMeta>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        match &next {
            Poll::Ready(None) => {
                if let Some(t) = self.timer.take() {
                    t.finish(OK);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(t) = self.timer.take() {
                    t.finish(outcome_of(e));
                }
            }
            Poll::Ready(Some(Ok(_))) => self.read_any = true,
            Poll::Pending => {}
        }
        next
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        // A reader that stopped after an entry got what it wanted (the first match, say).
        if let (Some(t), true) = (self.timer.take(), self.read_any) {
            t.finish(OK);
        }
    }
}

/// The results of a delete stream, each recorded as one DELETE: its duration runs from the
/// previous result (or the start), which is exact for the single deletes etlfs makes.
struct Deletes {
    inner: BoxStream<'static, Result<Path>>,
    counts: Arc<RequestCounts>,
    since: Instant,
    /// Locations handed to the inner store so far.
    sent: Arc<AtomicUsize>,
    answered: usize,
}

impl Stream for Deletes {
    type Item = Result<Path>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(r)) = &next {
            let outcome = r.as_ref().map_or_else(outcome_of, |_| OK);
            let since = std::mem::replace(&mut self.since, Instant::now());
            self.counts.record(DELETE, outcome, since);
            self.answered += 1;
        }
        next
    }
}

impl Drop for Deletes {
    fn drop(&mut self) {
        for _ in self.answered..self.sent.load(Ordering::Relaxed) {
            self.counts.record(DELETE, CANCELLED_AT, self.since);
        }
    }
}

/// A multipart upload whose steps are counted: each part, the completion, an abort.
#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    counts: Arc<RequestCounts>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let timer = Timer::start(&self.counts, MP_PART);
        self.inner.put_part(data).map(|r| timer.end(r)).boxed()
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let timer = Timer::start(&self.counts, MP_COMPLETE);
        timer.end(self.inner.complete().await)
    }

    async fn abort(&mut self) -> Result<()> {
        let timer = Timer::start(&self.counts, MP_ABORT);
        timer.end(self.inner.abort().await)
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
        let timer = self.timer(PUT);
        timer.end(self.inner.put_opts(location, payload, opts).await)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let timer = self.timer(MP_START);
        let inner = timer.end(self.inner.put_multipart_opts(location, opts).await)?;
        Ok(Box::new(CountingUpload {
            inner,
            counts: Arc::clone(&self.counts),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let timer = self.timer(if options.head { HEAD } else { GET });
        timer.end(self.inner.get_opts(location, options).await)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let timer = self.timer(GET);
        timer.end(self.inner.get_ranges(location, ranges).await)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let sent = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&sent);
        let locations = locations
            .inspect(move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
            })
            .boxed();
        Deletes {
            inner: self.inner.delete_stream(locations),
            counts: Arc::clone(&self.counts),
            since: Instant::now(),
            sent,
            answered: 0,
        }
        .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listing(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listing(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let timer = self.timer(LIST);
        timer.end(self.inner.list_with_delimiter(prefix).await)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let timer = self.timer(COPY);
        timer.end(self.inner.copy_opts(from, to, options).await)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let timer = self.timer(COPY);
        timer.end(self.inner.rename_opts(from, to, options).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    fn count(counts: &RequestCounts, op: &str, outcome: &str) -> u64 {
        counts
            .snapshot()
            .into_iter()
            .find(|c| c.op == op && c.outcome == outcome)
            .map_or_else(|| panic!("no {op}/{outcome}"), |c| c.count)
    }

    #[tokio::test]
    async fn each_request_is_counted_by_operation_and_outcome() {
        let counts = Arc::new(RequestCounts::default());
        let s = CountingStore::new(Arc::new(InMemory::new()), Arc::clone(&counts));
        let p = Path::from("a");
        s.put(&p, PutPayload::from_static(b"x")).await.unwrap();
        s.head(&p).await.unwrap();
        s.get(&p).await.unwrap();
        s.copy(&p, &Path::from("b")).await.unwrap();
        s.delete(&p).await.unwrap();
        s.list_with_delimiter(None).await.unwrap();
        let flat: Vec<_> = s.list(None).collect().await;
        assert_eq!(flat.len(), 1);
        assert!(s.head(&p).await.is_err());
        let put_if_absent = PutOptions::from(object_store::PutMode::Create);
        let b = Path::from("b");
        let refused = s.put_opts(&b, PutPayload::from_static(b"y"), put_if_absent);
        assert!(refused.await.is_err());
        for op in ["put", "head", "get", "copy", "delete", "list"] {
            assert_eq!(
                count(&counts, op, "ok"),
                if op == "list" { 2 } else { 1 },
                "{op}"
            );
        }
        assert_eq!(count(&counts, "head", "not_found"), 1);
        assert_eq!(count(&counts, "put", "precondition"), 1);
        assert_eq!(counts.total("put"), 2);
        assert_eq!(counts.failed("put"), 0, "a refused condition is an answer");
        let (_, n, _) = counts
            .latencies()
            .find(|(op, _)| *op == "head")
            .unwrap()
            .1
            .snapshot();
        assert_eq!(n, 2, "every request is timed, whatever its outcome");
        // Every pair is there from the start, zeros included.
        assert_eq!(counts.snapshot().len(), OPS.len() * (OUTCOMES.len() + 1));
    }

    #[tokio::test]
    async fn multipart_steps_and_abandoned_requests_are_counted() {
        let counts = Arc::new(RequestCounts::default());
        let s = CountingStore::new(Arc::new(InMemory::new()), Arc::clone(&counts));
        let p = Path::from("big");
        let mut up = s.put_multipart(&p).await.unwrap();
        up.put_part(PutPayload::from_static(b"1")).await.unwrap();
        up.put_part(PutPayload::from_static(b"2")).await.unwrap();
        up.complete().await.unwrap();
        assert_eq!(count(&counts, "multipart_start", "ok"), 1);
        assert_eq!(count(&counts, "multipart_part", "ok"), 2);
        assert_eq!(count(&counts, "multipart_complete", "ok"), 1);
        // A request whose caller gave up: a future dropped after its first poll.
        let mut get = Box::pin(s.get(&p));
        let _ = futures::poll!(get.as_mut());
        drop(get);
        let gets = count(&counts, "get", "ok") + count(&counts, "get", "cancelled");
        assert_eq!(gets, 1);
        // A listing read to its first entry only is a successful one.
        let mut l = s.list(None);
        assert!(l.next().await.is_some());
        drop(l);
        assert_eq!(count(&counts, "list", "ok"), 1);
    }
}
