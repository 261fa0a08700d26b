//! A bucket that fails on purpose: an `ObjectStore` wrapper for the fault-injection tests.
//!
//! etlfs makes promises about a bucket that misbehaves — uploads are retried until they land,
//! an object is never torn, a download is whole and verified or `EIO`, a removal is carried
//! out exactly once whatever the bucket answered — and those promises can only be tested if
//! the bucket misbehaves on demand, in every way a real one does:
//!
//! - **error**: the request is refused before it reaches the server; nothing happened;
//! - **timeout**: the request hangs for [`Settings::timeout`] and then fails; like a real
//!   timeout, the client cannot know whether the server carried it out (here: a coin flip);
//! - **slow**: the request waits [`Settings::delay`], then succeeds;
//! - **lost reply**: the server carried the request out (the object was written, deleted or
//!   copied) but the client is told it failed — the case that makes retries non-idempotent;
//! - **cut**: a download (or a listing) breaks off half way through its body.
//!
//! [`FaultyStore`] wraps any store and asks a shared [`FaultPlan`] before every request. The
//! plan is an `Arc` the test keeps, so it can switch faults on and off while etlfs runs: per
//! kind of request a probability for each fault ([`FaultPlan::set`]), and "fail the next N
//! requests of these kinds" switches ([`FaultPlan::fail_next`]). Draws come from a seeded
//! generator, so a plan's decisions are reproducible for a given order of requests (the order
//! itself depends on the scheduler). Every injected fault is counted ([`FaultPlan::counts`]),
//! so a test can say what it survived.
//!
//! Nothing here is used by a mount, and it is compiled only for tests (the unit tests, and the
//! integration tests through the `testing` feature); it lives in the bucket module because that
//! module alone touches `object_store`.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, Result, UploadPart,
};

/// The kinds of request a plan can aim at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A single PUT (`put`, `put_opts`).
    Put,
    /// Any step of a multipart upload: start, each part, completion.
    Multipart,
    /// A GET of an object's body (`get`, `get_opts`, `get_ranges`).
    Get,
    /// A HEAD (`head`, `get_opts` with `head: true`).
    Head,
    /// A listing (`list`, `list_with_offset`, `list_with_delimiter`).
    List,
    /// A DELETE (each location of `delete_stream`).
    Delete,
    /// A server-side copy or rename.
    Copy,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Put,
        Op::Multipart,
        Op::Get,
        Op::Head,
        Op::List,
        Op::Delete,
        Op::Copy,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Whether the request changes the bucket (so a reply can be lost after it took effect).
    fn mutates(self) -> bool {
        matches!(self, Op::Put | Op::Multipart | Op::Delete | Op::Copy)
    }
}

/// A set of [`Op`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ops(u8);

impl Ops {
    pub const NONE: Ops = Ops(0);
    pub const ALL: Ops = Ops(0x7f);

    pub fn of(ops: &[Op]) -> Ops {
        Ops(ops.iter().fold(0, |m, o| m | o.bit()))
    }

    pub fn contains(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    Error,
    Timeout,
    Slow,
    LostReply,
    Cut,
}

/// Probabilities (0.0 to 1.0, checked in this order) and timings of a plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Which requests the probabilities apply to.
    pub ops: Ops,
    pub error: f64,
    pub timeout: f64,
    pub slow: f64,
    /// Only for requests that change the bucket; others fail with a plain error instead.
    pub lost_reply: f64,
    /// Only for GETs and listings; others fail with a plain error instead.
    pub cut: f64,
    /// How long a slow request waits before it is served.
    pub delay: Duration,
    /// How long a request hangs before it times out.
    pub hang: Duration,
}

impl Default for Settings {
    /// No faults, and timings short enough for tests.
    fn default() -> Settings {
        Settings {
            ops: Ops::ALL,
            error: 0.0,
            timeout: 0.0,
            slow: 0.0,
            lost_reply: 0.0,
            cut: 0.0,
            delay: Duration::from_millis(20),
            hang: Duration::from_millis(100),
        }
    }
}

/// How many faults a plan injected, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultCounts {
    /// Requests seen, faulty or not.
    pub requests: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub slow: u64,
    pub lost_replies: u64,
    pub cuts: u64,
}

impl FaultCounts {
    /// Faults that made a request fail (slow ones succeed).
    pub fn failures(&self) -> u64 {
        self.errors + self.timeouts + self.lost_replies + self.cuts
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests: {} errors, {} timeouts, {} slow, {} lost replies, {} cut bodies",
            self.requests, self.errors, self.timeouts, self.slow, self.lost_replies, self.cuts
        )
    }
}

/// The error an injected fault returns (inside `object_store::Error::Generic`).
#[derive(Debug, thiserror::Error)]
pub enum InjectedError {
    #[error("injected fault: {op:?} {path} refused")]
    Refused { op: Op, path: String },
    #[error("injected fault: {op:?} {path} timed out after {after:?}")]
    TimedOut {
        op: Op,
        path: String,
        after: Duration,
    },
    #[error("injected fault: {op:?} {path} was carried out but its reply was lost")]
    LostReply { op: Op, path: String },
    #[error("injected fault: the body of {op:?} {path} broke off")]
    Cut { op: Op, path: String },
}

impl InjectedError {
    fn into_store(self) -> object_store::Error {
        object_store::Error::Generic {
            store: "fault",
            source: Box::new(self),
        }
    }
}

#[derive(Debug)]
struct State {
    settings: Settings,
    /// (which requests, how many left, what they get).
    fail_next: Option<(Ops, u32, Fault)>,
    /// splitmix64 state.
    rng: u64,
}

impl State {
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the faults are, shared by the test and every [`FaultyStore`] it made.
#[derive(Debug)]
pub struct FaultPlan {
    state: Mutex<State>,
    requests: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    slow: AtomicU64,
    lost_replies: AtomicU64,
    cuts: AtomicU64,
}

impl FaultPlan {
    /// A plan that injects nothing until told to.
    pub fn new(seed: u64) -> Arc<FaultPlan> {
        Arc::new(FaultPlan {
            state: Mutex::new(State {
                settings: Settings::default(),
                fail_next: None,
                rng: seed,
            }),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            lost_replies: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the probabilities and timings.
    pub fn set(&self, settings: Settings) {
        self.lock().settings = settings;
    }

    pub fn settings(&self) -> Settings {
        self.lock().settings
    }

    /// The next `n` requests among `ops` get `fault` (before any probability is drawn).
    pub fn fail_next(&self, ops: Ops, n: u32, fault: Fault) {
        self.lock().fail_next = (n > 0).then_some((ops, n, fault));
    }

    /// No faults any more (timings are kept).
    pub fn off(&self) {
        let mut s = self.lock();
        let Settings { delay, hang, .. } = s.settings;
        s.settings = Settings {
            delay,
            hang,
            ..Settings::default()
        };
        s.fail_next = None;
    }

    /// Whether any fault can still be injected.
    pub fn is_on(&self) -> bool {
        let s = self.lock();
        let p = s.settings;
        s.fail_next.is_some()
            || (p.ops != Ops::NONE && p.error + p.timeout + p.slow + p.lost_reply + p.cut > 0.0)
    }

    pub fn counts(&self) -> FaultCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FaultCounts {
            requests: get(&self.requests),
            errors: get(&self.errors),
            timeouts: get(&self.timeouts),
            slow: get(&self.slow),
            lost_replies: get(&self.lost_replies),
            cuts: get(&self.cuts),
        }
    }

    /// Decides the fate of one request of kind `op`, and counts it.
    fn decide(&self, op: Op) -> Option<Fault> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let fault = {
            let mut s = self.lock();
            if let Some((ops, n, fault)) = s.fail_next.filter(|(ops, ..)| ops.contains(op)) {
                s.fail_next = (n > 1).then_some((ops, n - 1, fault));
                Some(fault)
            } else if !s.settings.ops.contains(op) {
                None
            } else {
                let p = s.settings;
                let r = s.unit();
                let mut edge = 0.0;
                [
                    (p.error, Fault::Error),
                    (p.timeout, Fault::Timeout),
                    (p.slow, Fault::Slow),
                    (p.lost_reply, Fault::LostReply),
                    (p.cut, Fault::Cut),
                ]
                .into_iter()
                .find(|(chance, _)| {
                    edge += chance;
                    r < edge
                })
                .map(|(_, f)| f)
            }
        }?;
        // Faults that make no sense for this request become plain errors.
        let fault = match fault {
            Fault::LostReply if !op.mutates() => Fault::Error,
            Fault::Cut if !matches!(op, Op::Get | Op::List) => Fault::Error,
            f => f,
        };
        let counter = match fault {
            Fault::Error => &self.errors,
            Fault::Timeout => &self.timeouts,
            Fault::Slow => &self.slow,
            Fault::LostReply => &self.lost_replies,
            Fault::Cut => &self.cuts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some(fault)
    }

    /// Whether a timed-out request was carried out anyway.
    fn coin(&self) -> bool {
        self.lock().next_u64() & 1 == 1
    }

    fn timings(&self) -> (Duration, Duration) {
        let s = self.lock().settings;
        (s.delay, s.hang)
    }
}

/// Runs one request (`call`) under the plan's decision `fault`.
async fn run<T, F>(
    plan: &FaultPlan,
    op: Op,
    path: &str,
    fault: Option<Fault>,
    call: impl FnOnce() -> F,
) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    let (delay, hang) = plan.timings();
    let path = path.to_owned();
    match fault {
        None => call().await,
        Some(Fault::Slow) => {
            tokio::time::sleep(delay).await;
            call().await
        }
        Some(Fault::Error) | Some(Fault::Cut) => {
            Err(InjectedError::Refused { op, path }.into_store())
        }
        Some(Fault::Timeout) => {
            tokio::time::sleep(hang).await;
            if plan.coin() {
                let _ = call().await;
            }
            Err(InjectedError::TimedOut {
                op,
                path,
                after: hang,
            }
            .into_store())
        }
        Some(Fault::LostReply) => {
            call().await?;
            Err(InjectedError::LostReply { op, path }.into_store())
        }
    }
}

/// A stream that yields `keep` items of `inner`, then fails.
fn cut_after<T: Send + 'static>(
    inner: BoxStream<'static, Result<T>>,
    keep: usize,
    op: Op,
    path: String,
) -> BoxStream<'static, Result<T>> {
    inner
        .take(keep)
        .chain(stream::once(async move {
            Err(InjectedError::Cut { op, path }.into_store())
        }))
        .boxed()
}

/// An `ObjectStore` that injects the faults its [`FaultPlan`] decides.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: Arc<FaultPlan>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, plan: Arc<FaultPlan>) -> FaultyStore {
        FaultyStore { inner, plan }
    }

    pub fn plan(&self) -> &Arc<FaultPlan> {
        &self.plan
    }

    /// A listing stream under the plan.
    fn faulty_list(
        &self,
        prefix: Option<&Path>,
        list: impl FnOnce() -> BoxStream<'static, Result<ObjectMeta>> + Send + 'static,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let shown = prefix.map(|p| p.to_string()).unwrap_or_default();
        let (delay, hang) = self.plan.timings();
        match self.plan.decide(Op::List) {
            None => list(),
            Some(Fault::Slow) => stream::once(async move {
                tokio::time::sleep(delay).await;
                list()
            })
            .flatten()
            .boxed(),
            Some(Fault::Cut) => cut_after(list(), 1, Op::List, shown),
            Some(Fault::Timeout) => stream::once(async move {
                tokio::time::sleep(hang).await;
                Err(InjectedError::TimedOut {
                    op: Op::List,
                    path: shown,
                    after: hang,
                }
                .into_store())
            })
            .boxed(),
            Some(Fault::Error) | Some(Fault::LostReply) => stream::once(async move {
                Err(InjectedError::Refused {
                    op: Op::List,
                    path: shown,
                }
                .into_store())
            })
            .boxed(),
        }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let fault = self.plan.decide(Op::Put);
        run(&self.plan, Op::Put, location.as_ref(), fault, || {
            self.inner.put_opts(location, payload, opts)
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let fault = self.plan.decide(Op::Multipart);
        let inner = run(&self.plan, Op::Multipart, location.as_ref(), fault, || {
            self.inner.put_multipart_opts(location, opts)
        })
        .await?;
        Ok(Box::new(FaultyUpload {
            inner,
            plan: Arc::clone(&self.plan),
            path: location.to_string(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let fault = self.plan.decide(op);
        let res = run(
            &self.plan,
            op,
            location.as_ref(),
            fault.filter(|f| *f != Fault::Cut),
            || self.inner.get_opts(location, options),
        )
        .await?;
        if fault != Some(Fault::Cut) {
            return Ok(res);
        }
        // Half of the body arrives, then the connection breaks.
        let (meta, range) = (res.meta.clone(), res.range.clone());
        let (attributes, extensions) = (res.attributes.clone(), res.extensions.clone());
        let full = res.bytes().await?;
        let part = full.slice(..full.len() / 2);
        let payload = stream::once(async move { Ok(part) }).boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(cut_after(payload, 1, Op::Get, location.to_string())),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let fault = self.plan.decide(Op::Get);
        run(&self.plan, Op::Get, location.as_ref(), fault, || {
            self.inner.get_ranges(location, ranges)
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // Each location is one DELETE with its own fate.
        let (inner, plan) = (Arc::clone(&self.inner), Arc::clone(&self.plan));
        locations
            .then(move |loc| {
                let (inner, plan) = (Arc::clone(&inner), Arc::clone(&plan));
                async move {
                    let loc = loc?;
                    let fault = plan.decide(Op::Delete);
                    run(&plan, Op::Delete, loc.as_ref(), fault, || {
                        inner.delete(&loc)
                    })
                    .await?;
                    Ok(loc)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let (inner, owned) = (Arc::clone(&self.inner), prefix.cloned());
        self.faulty_list(prefix, move || inner.list(owned.as_ref()))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let (inner, owned, offset) = (Arc::clone(&self.inner), prefix.cloned(), offset.clone());
        self.faulty_list(prefix, move || {
            inner.list_with_offset(owned.as_ref(), &offset)
        })
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let shown = prefix.map(|p| p.to_string()).unwrap_or_default();
        let fault = self.plan.decide(Op::List);
        run(&self.plan, Op::List, &shown, fault, || {
            self.inner.list_with_delimiter(prefix)
        })
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let fault = self.plan.decide(Op::Copy);
        run(&self.plan, Op::Copy, from.as_ref(), fault, || {
            self.inner.copy_opts(from, to, options)
        })
        .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let fault = self.plan.decide(Op::Copy);
        run(&self.plan, Op::Copy, from.as_ref(), fault, || {
            self.inner.rename_opts(from, to, options)
        })
        .await
    }
}

/// A multipart upload whose every step (each part, the completion) has its own fate.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    plan: Arc<FaultPlan>,
    path: String,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let fault = self.plan.decide(Op::Multipart);
        if matches!(fault, Some(Fault::Error) | Some(Fault::Cut)) {
            let err = InjectedError::Refused {
                op: Op::Multipart,
                path: self.path.clone(),
            };
            return async move { Err(err.into_store()) }.boxed();
        }
        let part = self.inner.put_part(data);
        let (plan, path) = (Arc::clone(&self.plan), self.path.clone());
        async move { run(&plan, Op::Multipart, &path, fault, || part).await }.boxed()
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let fault = self.plan.decide(Op::Multipart);
        let (plan, path) = (Arc::clone(&self.plan), self.path.clone());
        run(&plan, Op::Multipart, &path, fault, || self.inner.complete()).await
    }

    async fn abort(&mut self) -> Result<()> {
        // Aborts are best effort for every caller; failing them proves nothing.
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::memory::InMemory;

    fn setup() -> (Arc<InMemory>, Arc<FaultPlan>, FaultyStore) {
        let inner = Arc::new(InMemory::new());
        let plan = FaultPlan::new(7);
        let store = FaultyStore::new(inner.clone(), Arc::clone(&plan));
        (inner, plan, store)
    }

    fn key(s: &str) -> Path {
        Path::parse(s).unwrap()
    }

    #[tokio::test]
    async fn without_faults_it_is_the_inner_store() {
        let (inner, plan, store) = setup();
        store.put(&key("a/b"), "x".into()).await.unwrap();
        assert_eq!(
            inner.get(&key("a/b")).await.unwrap().bytes().await.unwrap(),
            "x"
        );
        assert_eq!(
            store
                .list(None)
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .len(),
            1
        );
        store.copy(&key("a/b"), &key("c")).await.unwrap();
        store.delete(&key("a/b")).await.unwrap();
        let listed = store.list_with_delimiter(None).await.unwrap();
        assert_eq!(listed.objects.len(), 1);
        assert!(!plan.is_on());
        assert_eq!(plan.counts().failures(), 0);
        assert_eq!(plan.counts().requests, 5);
    }

    #[tokio::test]
    async fn a_plain_error_leaves_the_bucket_alone() {
        let (inner, plan, store) = setup();
        plan.fail_next(Ops::of(&[Op::Put]), 2, Fault::Error);
        assert!(store.put(&key("a"), "x".into()).await.is_err());
        // Only puts were aimed at: a listing passes.
        assert!(store.list_with_delimiter(None).await.is_ok());
        assert!(store.put(&key("a"), "x".into()).await.is_err());
        assert!(inner.head(&key("a")).await.is_err());
        store.put(&key("a"), "x".into()).await.unwrap();
        assert_eq!(plan.counts().errors, 2);
    }

    #[tokio::test]
    async fn a_lost_reply_did_happen() {
        let (inner, plan, store) = setup();
        inner.put(&key("gone"), "x".into()).await.unwrap();
        plan.fail_next(Ops::ALL, 3, Fault::LostReply);
        assert!(store.put(&key("a"), "x".into()).await.is_err());
        assert!(inner.head(&key("a")).await.is_ok(), "written anyway");
        assert!(store.delete(&key("gone")).await.is_err());
        assert!(inner.head(&key("gone")).await.is_err(), "deleted anyway");
        // A read cannot lose a reply after an effect: it fails plainly.
        assert!(store.head(&key("a")).await.is_err());
        let c = plan.counts();
        assert_eq!((c.lost_replies, c.errors), (2, 1));
    }

    #[tokio::test]
    async fn a_cut_body_fails_half_way() {
        let (inner, plan, store) = setup();
        inner.put(&key("a"), vec![1u8; 1000].into()).await.unwrap();
        plan.fail_next(Ops::of(&[Op::Get]), 1, Fault::Cut);
        let res = store.get(&key("a")).await.unwrap();
        let chunks: Vec<_> = res.into_stream().collect().await;
        assert_eq!(chunks[0].as_ref().unwrap().len(), 500);
        assert!(chunks.last().unwrap().is_err());
        // The listing version: one entry, then the failure.
        inner.put(&key("b"), "y".into()).await.unwrap();
        plan.fail_next(Ops::of(&[Op::List]), 1, Fault::Cut);
        let items: Vec<_> = store.list(None).collect().await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok() && items[1].is_err());
        assert_eq!(plan.counts().cuts, 2);
    }

    #[tokio::test]
    async fn timeouts_hang_and_slow_requests_succeed_late() {
        let (_inner, plan, store) = setup();
        plan.set(Settings {
            slow: 1.0,
            delay: Duration::from_millis(30),
            ..Settings::default()
        });
        let t = std::time::Instant::now();
        store.put(&key("a"), "x".into()).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30));
        plan.set(Settings {
            timeout: 1.0,
            hang: Duration::from_millis(40),
            ..Settings::default()
        });
        let t = std::time::Instant::now();
        let e = store.head(&key("a")).await.unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(40));
        assert!(e.to_string().contains("timed out"), "{e}");
        plan.off();
        assert!(!plan.is_on());
        store.head(&key("a")).await.unwrap();
        let c = plan.counts();
        assert_eq!((c.slow, c.timeouts), (1, 1));
    }

    #[tokio::test]
    async fn multipart_steps_fail_on_their_own() {
        let (inner, plan, store) = setup();
        let mut up = store.put_multipart(&key("big")).await.unwrap();
        up.put_part(vec![1u8; 10].into()).await.unwrap();
        plan.fail_next(Ops::of(&[Op::Multipart]), 1, Fault::Error);
        assert!(up.put_part(vec![2u8; 10].into()).await.is_err());
        up.put_part(vec![2u8; 10].into()).await.unwrap();
        plan.fail_next(Ops::of(&[Op::Multipart]), 1, Fault::LostReply);
        assert!(up.complete().await.is_err());
        let body = inner.get(&key("big")).await.unwrap().bytes().await.unwrap();
        assert_eq!(body.len(), 20, "completed on the server");
    }

    #[tokio::test]
    async fn probabilities_are_drawn_from_the_seed() {
        let run = |seed| async move {
            let inner = Arc::new(InMemory::new());
            let plan = FaultPlan::new(seed);
            plan.set(Settings {
                error: 0.5,
                ..Settings::default()
            });
            let store = FaultyStore::new(inner, plan);
            let mut out = Vec::new();
            for i in 0..64 {
                out.push(store.put(&key(&format!("k{i}")), "x".into()).await.is_ok());
            }
            out
        };
        let a = run(1).await;
        assert_eq!(a, run(1).await);
        let ok = a.iter().filter(|x| **x).count();
        assert!((16..=48).contains(&ok), "{ok} of 64 succeeded");
    }
}
