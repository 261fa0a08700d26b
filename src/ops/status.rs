//! Operating etlfs: the HTTP status server of `etlfs mount --listen` (its client, `etlfs
//! status`, is [`crate::cli::status`]).
//!
//! The server answers five paths, on the mount's tokio runtime, from the moment the
//! command line has been checked — before the bucket listing loads, so a probe sees `starting`
//! rather than a refused connection during a long first listing:
//!
//! - `/healthz`: 200 while the process is alive (a liveness probe);
//! - `/readyz`: 200 once the listing is loaded and the mount is up, 503 before that and while
//!   draining after SIGTERM (a readiness probe). A bucket outage does not make it fail: the
//!   application keeps working on the local disk, and restarting the pod would not help.
//! - `/status`: a JSON [`Report`]: the state (below), the figures of `/metrics` in plain units,
//!   and the last WARN/ERROR log events ([`recent`]);
//! - `/metrics`: the same figures in the OpenMetrics or the Prometheus text format, as the
//!   client's `Accept` asks ([`metrics`], the one place that names them; doc/METRICS.md
//!   describes each);
//! - `/`: the status as an HTML page for a person ([`page`]).
//!
//! # States
//!
//! `starting` until the mount is up, then `ready`; `degraded` instead of `ready` while writes to
//! the bucket are stopped (the lease was lost or cannot be renewed: [`crate::engine::lease`]),
//! while the bucket refuses our requests (access denied, or it does not exist: at once), or while
//! bucket operations have been failing with no success in between for longer than
//! `--degraded-after`
//! (see [`crate::counters::Health`]: the verdict comes from the real uploads, deletes,
//! downloads and listings, so an idle mount is never probed and never degraded); `draining`
//! from SIGTERM until the process exits.
//!
//! # What this module may see
//!
//! Counters only: it reads the atomics that the mirror, the fetcher, the overlay and the FUSE
//! layer keep, and never takes a lock that those hold on their own paths (the bucket-only count
//! and the journal size take short locks of their own). Secrets never reach it: it shows no
//! configuration, and the log events it keeps are the ones already written to stderr, where
//! secrets never go.

pub mod metrics;
pub mod page;
pub mod process;
pub mod recent;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::counters::{Health, Latency, now_ms};
use crate::engine::fetch::Fetcher;
use crate::engine::index::Index;
use crate::engine::mirror::Mirror;
use crate::escape::esc;
use crate::store::bucket::Fence;
use crate::store::bucket::requests::RequestCounts;

/// Default address of the status server (and of `etlfs status`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9500";

/// Errors of the status server.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("--listen {}: cannot listen there: {source}", esc(.addr))]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--listen {}: not an address (expected HOST:PORT, e.g. {DEFAULT_LISTEN})", esc(.addr))]
    BadAddress { addr: String },
}

/// What a running mount is doing; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Ready,
    Degraded,
    Draining,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Degraded => "degraded",
            State::Draining => "draining",
        })
    }
}

/// `/status` `index.listing`: the bucket listing is loaded.
pub const LISTING_LOADED: &str = "loaded";
/// `/status` `index.listing`: an offline start (the local directory was complete) serves while
/// the listing loads in the background, retrying while the bucket is unreachable.
pub const LISTING_BACKGROUND: &str = "loading in the background (started offline)";

const PHASE_STARTING: u8 = 0;
const PHASE_READY: u8 = 1;
const PHASE_DRAINING: u8 = 2;

/// The parts of a mount whose counters are shown; they exist once the listing is loaded.
#[derive(Debug)]
pub struct Sources {
    pub mirror: Arc<Mirror>,
    pub fetcher: Arc<Fetcher>,
    pub index: Arc<Index>,
    /// Files evicted to the bucket ([`crate::fs::overlay::Overlay::evictions`]).
    pub evictions: Arc<AtomicU64>,
    /// Whether FUSE passthrough is on ([`crate::fs::fuse::EtlFs::passthrough_flag`]).
    pub passthrough: Arc<AtomicBool>,
    /// Local file bytes: kept by the overlay with `--max-local-bytes`, else by a periodic walk
    /// ([`crate::core::Core::local_bytes`]).
    pub local_bytes: Arc<AtomicU64>,
    /// `--max-local-bytes`, if given.
    pub max_local_bytes: Option<u64>,
    /// Requests waiting for a download ([`crate::fs::fuse::EtlFs::parked_counter`]).
    pub parked: Arc<AtomicU64>,
}

/// The state of a mount as the status server shows it. Shared by `run` (which moves the
/// phase along) and the server.
#[derive(Debug)]
pub struct Status {
    phase: AtomicU8,
    degraded_after: Duration,
    health: Arc<Health>,
    /// Whether this mount may write the bucket (the lease; see [`crate::engine::lease`]).
    fence: Arc<Fence>,
    sources: OnceLock<Sources>,
    /// The requests sent to the bucket ([`crate::store::bucket::Bucket::requests`]): shown
    /// from the start, because the start's listing and lease are requests too.
    requests: Arc<RequestCounts>,
    /// What the bucket's history did (kept versions, garbage collected).
    history: OnceLock<Arc<crate::store::bucket::history::Stats>>,
    mountpoint: String,
    started: SystemTime,
    /// [`LISTING_LOADED`] or [`LISTING_BACKGROUND`].
    listing: std::sync::Mutex<&'static str>,
}

/// Every figure, read once, for `/status` and `/metrics` alike (so both always agree).
#[derive(Debug, Default)]
pub(crate) struct Figures<'a> {
    pub state: Option<State>,
    pub pending: u64,
    pub pending_bytes: u64,
    pub oldest_pending_ms: u64,
    pub uploads: u64,
    pub upload_failures: u64,
    pub upload_bytes: u64,
    pub last_upload_ms: u64,
    pub deletes: u64,
    pub delete_failures: u64,
    pub copies: u64,
    pub skipped_paths: u64,
    pub retries: u64,
    pub fetches: u64,
    pub fetch_failures: u64,
    pub fetch_bytes: u64,
    /// The restore's progress, once the parts are attached.
    pub restore: Option<crate::engine::fetch::Progress>,
    pub waiting_requests: u64,
    pub evictions: u64,
    pub local_bytes: u64,
    pub bucket_only_files: u64,
    pub index_heads: u64,
    pub refused_keys: u64,
    pub index_from_manifest: u64,
    pub journal_intents: u64,
    pub journal_bytes: u64,
    /// The requests sent to the bucket, by operation and outcome, with their durations.
    pub bucket_requests: Option<&'a RequestCounts>,
    /// `--max-local-bytes` (0: none), once the parts are attached.
    pub max_local_bytes: u64,
    pub history_versions_kept: u64,
    pub history_bytes_kept: u64,
    pub history_gc_deletions: u64,
    pub history_empty_replacements: u64,
    pub history_tripwire_trips: u64,
    /// Unix ms since when many files are being destroyed at once (the tripwire), 0 if not.
    pub history_tripped_since_ms: u64,
    pub passthrough: bool,
    pub bucket_failures: u64,
    pub bucket_last_success_ms: u64,
    pub bucket_failing_since_ms: u64,
    /// Why writes to the bucket are stopped (the lease), if they are.
    pub writes_stopped: Option<String>,
    pub upload_latency: Option<&'a Latency>,
    pub fetch_latency: Option<&'a Latency>,
}

impl Status {
    /// A mount that is `starting`. `health` is the bucket's ([`crate::store::bucket::Bucket::health`]).
    pub fn new(
        mountpoint: String,
        degraded_after: Duration,
        health: Arc<Health>,
        fence: Arc<Fence>,
        requests: Arc<RequestCounts>,
    ) -> Arc<Status> {
        Arc::new(Status {
            phase: AtomicU8::new(PHASE_STARTING),
            degraded_after,
            health,
            fence,
            sources: OnceLock::new(),
            requests,
            history: OnceLock::new(),
            mountpoint,
            started: SystemTime::now(),
            listing: std::sync::Mutex::new(LISTING_LOADED),
        })
    }

    /// The history counters to show (a second call is ignored).
    pub fn watch_history(&self, stats: Arc<crate::store::bucket::history::Stats>) {
        let _ = self.history.set(stats);
    }

    /// The counters to show, once the parts exist (a second call is ignored).
    pub fn attach(&self, sources: Sources) {
        let _ = self.sources.set(sources);
    }

    /// The mount is up and shows the bucket's files.
    pub fn set_ready(&self) {
        // Never back from draining.
        let _ = self.phase.compare_exchange(
            PHASE_STARTING,
            PHASE_READY,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A signal asked us to stop: unmounting and uploading what is pending.
    /// Says how far the bucket listing is.
    pub fn set_listing(&self, listing: &'static str) {
        *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = listing;
    }

    pub fn listing(&self) -> &'static str {
        *self.listing.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_draining(&self) {
        self.phase.store(PHASE_DRAINING, Ordering::Relaxed);
    }

    pub fn state(&self) -> State {
        match self.phase.load(Ordering::Relaxed) {
            PHASE_STARTING => State::Starting,
            PHASE_DRAINING => State::Draining,
            _ if self.fence.reason().is_some() => State::Degraded,
            // Access denied, or no such bucket: no blip to wait out (`counters::Health`).
            _ if self.health.refusal().is_some() => State::Degraded,
            _ => {
                let since = self.health.failing_since_ms();
                let failing_for = Duration::from_millis(now_ms().saturating_sub(since));
                if since != 0 && failing_for >= self.degraded_after {
                    State::Degraded
                } else {
                    State::Ready
                }
            }
        }
    }

    pub(crate) fn figures(&self) -> Figures<'_> {
        let mut f = Figures {
            state: Some(self.state()),
            bucket_failures: self.health.failures(),
            bucket_last_success_ms: self.health.last_success_ms(),
            bucket_failing_since_ms: self.health.failing_since_ms(),
            writes_stopped: self.fence.reason(),
            bucket_requests: Some(&self.requests),
            ..Figures::default()
        };
        if let Some(h) = self.history.get() {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            f.history_versions_kept = get(&h.versions_kept);
            f.history_bytes_kept = get(&h.bytes_kept);
            f.history_gc_deletions = get(&h.gc_deletions);
            f.history_empty_replacements = get(&h.empty_replacements);
            f.history_tripwire_trips = get(&h.tripwire_trips);
            f.history_tripped_since_ms = h.tripped_since().map_or(0, |t| {
                t.duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
            });
        }
        let Some(s) = self.sources.get() else {
            return f;
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let m = s.mirror.stats();
        f.pending = get(&m.pending);
        f.pending_bytes = get(&m.pending_bytes);
        f.oldest_pending_ms = get(&m.oldest_pending_ms);
        f.uploads = get(&m.uploads);
        f.upload_failures = get(&m.upload_failures);
        f.upload_bytes = get(&m.upload_bytes);
        f.last_upload_ms = get(&m.last_upload_ms);
        f.deletes = get(&m.deletes);
        f.delete_failures = get(&m.delete_failures);
        f.copies = get(&m.copies);
        f.skipped_paths = get(&m.skipped_paths);
        f.retries = get(&m.retries);
        f.upload_latency = Some(&m.upload_latency);
        let fe = &s.fetcher.stats;
        f.fetches = get(&fe.fetches);
        f.fetch_failures = get(&fe.failures);
        f.fetch_bytes = get(&fe.bytes);
        f.fetch_latency = Some(&fe.latency);
        f.restore = Some(s.fetcher.progress());
        f.waiting_requests = get(&s.parked);
        f.evictions = get(&s.evictions);
        f.local_bytes = get(&s.local_bytes);
        f.bucket_only_files = s.index.len() as u64;
        f.index_heads = s.index.report().heads;
        f.refused_keys = s.index.refused();
        f.index_from_manifest = s.index.report().from_manifest;
        f.journal_intents = s.mirror.journal_pending() as u64;
        f.journal_bytes = s.mirror.journal_size();
        f.passthrough = s.passthrough.load(Ordering::Relaxed);
        f.max_local_bytes = s.max_local_bytes.unwrap_or(0);
        f
    }

    /// The `/status` document.
    pub fn report(&self) -> Report {
        let f = self.figures();
        let now = now_ms();
        Report {
            state: f.state.unwrap_or(State::Starting),
            version: env!("CARGO_PKG_VERSION").into(),
            mountpoint: self.mountpoint.clone(),
            uptime_seconds: self.started.elapsed().map_or(0, |d| d.as_secs()),
            degraded_after_seconds: self.degraded_after.as_secs_f64(),
            bucket: BucketReport {
                last_success: time_of(f.bucket_last_success_ms),
                failing_since: time_of(f.bucket_failing_since_ms),
                failures: f.bucket_failures,
                writes_stopped: f.writes_stopped.clone(),
                refused: self.health.refusal(),
            },
            pending: PendingReport {
                changes: f.pending,
                bytes: f.pending_bytes,
                oldest_age_seconds: (f.oldest_pending_ms != 0)
                    .then(|| now.saturating_sub(f.oldest_pending_ms) as f64 / 1000.0),
                journal_intents: f.journal_intents,
                journal_bytes: f.journal_bytes,
            },
            uploads: UploadReport {
                done: f.uploads,
                failed: f.upload_failures,
                bytes: f.upload_bytes,
                retries: f.retries,
                skipped_paths: f.skipped_paths,
                last_success: time_of(f.last_upload_ms),
            },
            deletes: CountReport {
                done: f.deletes,
                failed: f.delete_failures,
            },
            fetches: FetchReport {
                done: f.fetches,
                failed: f.fetch_failures,
                bytes: f.fetch_bytes,
            },
            restore: f.restore.map(|p| RestoreReport {
                files_left: p.files_left,
                bytes_left: p.bytes_left,
                bytes_per_second: p.bytes_per_second,
                eta_seconds: p.eta_seconds,
                prefetch: serde_json::to_value(p.prefetch)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                waiting_requests: f.waiting_requests,
                queued_opens: p.queue.open as u64,
                queued_readahead: p.queue.readahead as u64,
                queued_prefetch: p.queue.prefetch as u64,
                downloading: p.queue.running as u64,
            }),
            local: LocalReport {
                bytes: f.local_bytes,
                bucket_only_files: f.bucket_only_files,
                evictions: f.evictions,
                passthrough: f.passthrough,
            },
            index: IndexReport {
                files_from_manifest: f.index_from_manifest,
                heads: f.index_heads,
                listing: self.listing().to_owned(),
                refused_keys: f.refused_keys,
            },
            history: HistoryReport {
                versions_kept: f.history_versions_kept,
                bytes_kept: f.history_bytes_kept,
                gc_deletions: f.history_gc_deletions,
                empty_replacements: f.history_empty_replacements,
                corruption_suspected_since: time_of(f.history_tripped_since_ms),
            },
            recent_events: recent::events(),
        }
    }
}

/// RFC 3339 (UTC, milliseconds) of a Unix-ms figure; `None` for 0 ("never").
fn time_of(ms: u64) -> Option<String> {
    (ms != 0).then(|| {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    })
}

/// The `/status` JSON document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub state: State,
    pub version: String,
    pub mountpoint: String,
    pub uptime_seconds: u64,
    pub degraded_after_seconds: f64,
    pub bucket: BucketReport,
    pub pending: PendingReport,
    pub uploads: UploadReport,
    pub deletes: CountReport,
    pub fetches: FetchReport,
    /// How far getting the bucket-only files back is (absent while starting).
    #[serde(default)]
    pub restore: Option<RestoreReport>,
    pub local: LocalReport,
    /// How the bucket's metadata was loaded at start.
    #[serde(default)]
    pub index: IndexReport,
    /// What the bucket's history kept and collected (see `bucket/history.rs`).
    #[serde(default)]
    pub history: HistoryReport,
    /// The last WARN and ERROR log events, oldest first.
    pub recent_events: Vec<recent::LogEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketReport {
    /// When the bucket last answered an operation (RFC 3339), if it did since start.
    pub last_success: Option<String>,
    /// Start of the current streak of failed operations, if failing.
    pub failing_since: Option<String>,
    /// Failed bucket operations since start.
    pub failures: u64,
    /// Why this mount does not write the bucket now (the lease was lost, or could not be
    /// renewed), if it does not: the state is `degraded` meanwhile.
    #[serde(default)]
    pub writes_stopped: Option<String>,
    /// Why the bucket refuses this mount's requests (access denied, or no such bucket), while
    /// it does: the state is `degraded` meanwhile, at once.
    #[serde(default)]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingReport {
    /// Paths waiting to be uploaded or in flight, plus removals and renames not carried out.
    pub changes: u64,
    pub bytes: u64,
    pub oldest_age_seconds: Option<f64>,
    pub journal_intents: u64,
    pub journal_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadReport {
    pub done: u64,
    pub failed: u64,
    pub bytes: u64,
    pub retries: u64,
    pub skipped_paths: u64,
    pub last_success: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CountReport {
    pub done: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchReport {
    pub done: u64,
    pub failed: u64,
    pub bytes: u64,
}

/// Files still only in the bucket, how fast they come, and who waits for them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreReport {
    pub files_left: u64,
    pub bytes_left: u64,
    /// Download rate over the last 10 s.
    pub bytes_per_second: u64,
    /// `bytes_left` at that rate; absent while nothing comes.
    pub eta_seconds: Option<u64>,
    /// The background prefetch: `off`, `running`, `done`, or `bounded` (stopped at
    /// `--max-local-bytes`).
    pub prefetch: String,
    /// Application requests waiting for a download now.
    pub waiting_requests: u64,
    pub queued_opens: u64,
    pub queued_readahead: u64,
    pub queued_prefetch: u64,
    /// Downloads running now.
    pub downloading: u64,
}

/// Versions history kept, and whether many files are being destroyed at once right now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryReport {
    pub versions_kept: u64,
    pub bytes_kept: u64,
    pub gc_deletions: u64,
    pub empty_replacements: u64,
    /// Since when (RFC 3339) more files than usual are truncated, shrunk or deleted at once
    /// (the tripwire): possible corruption; every version is kept meanwhile.
    #[serde(default)]
    pub corruption_suspected_since: Option<String>,
}

/// How the bucket index was loaded: files the manifest described, and metadata reads made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexReport {
    pub files_from_manifest: u64,
    pub heads: u64,
    /// `loaded`, or `loading in the background (started offline)`.
    #[serde(default)]
    pub listing: String,
    /// Objects under the prefix the last listing could not show (their key cannot be a path
    /// here); each is named once in the log.
    #[serde(default)]
    pub refused_keys: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalReport {
    pub bytes: u64,
    pub bucket_only_files: u64,
    pub evictions: u64,
    pub passthrough: bool,
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Binds the status address. Done synchronously, before anything is mounted, so that an
/// address in use is a usage error that names it, not a surprise later.
pub fn bind(addr: &str) -> Result<std::net::TcpListener, StatusError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|_| StatusError::BadAddress {
            addr: addr.to_owned(),
        })?
        .collect();
    let listener = std::net::TcpListener::bind(&addrs[..]).map_err(|source| StatusError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| StatusError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(listener)
}

struct ServerState {
    status: Arc<Status>,
    registry: prometheus_client::registry::Registry,
}

/// Serves `/`, `/metrics`, `/status`, `/healthz` and `/readyz` on `listener` until the
/// runtime stops.
pub fn serve(
    listener: std::net::TcpListener,
    status: Arc<Status>,
    rt: &tokio::runtime::Handle,
) -> Result<(), StatusError> {
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(listener).map_err(|source| StatusError::Bind {
            addr: local.clone(),
            source,
        })?
    };
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(metrics::Collector(Arc::clone(&status))));
    let state = Arc::new(ServerState { status, registry });
    let app = Router::new()
        .route("/", get(html_page))
        .route("/metrics", get(metrics_page))
        .route("/status", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    tracing::info!(addr = %local, "status server listening (/, /status, /metrics, /healthz, /readyz)");
    rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "status server stopped");
        }
    });
    Ok(())
}

/// `/metrics`, in the format the client's `Accept` header prefers ([`metrics::negotiate`]).
async fn metrics_page(AxState(s): AxState<Arc<ServerState>>, headers: HeaderMap) -> Response {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let format = metrics::negotiate((!accept.is_empty()).then_some(accept.as_str()));
    let mut body = String::new();
    match format.encode(&mut body, &s.registry) {
        Ok(()) => (
            [
                (header::CONTENT_TYPE, format.content_type()),
                (header::VARY, "Accept"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `/`: the status for a person, as an HTML page ([`page`]).
async fn html_page(AxState(s): AxState<Arc<ServerState>>) -> Response {
    page::render(&s.status)
}

async fn status_page(AxState(s): AxState<Arc<ServerState>>) -> Response {
    axum::Json(s.status.report()).into_response()
}

async fn readyz(AxState(s): AxState<Arc<ServerState>>) -> Response {
    let state = s.status.state();
    let code = match state {
        State::Ready | State::Degraded => StatusCode::OK,
        State::Starting | State::Draining => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, format!("{state}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_only_after_the_threshold_and_never_while_starting() {
        let health = Arc::new(Health::default());
        let fence = Arc::new(Fence::default());
        let s = Status::new(
            "/m".into(),
            Duration::from_millis(50),
            Arc::clone(&health),
            Arc::clone(&fence),
            Arc::default(),
        );
        health.failure();
        assert_eq!(s.state(), State::Starting);
        s.set_ready();
        assert_eq!(s.state(), State::Ready);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.state(), State::Degraded);
        health.success();
        assert_eq!(s.state(), State::Ready);
        fence.raise("lease lost".into());
        assert_eq!(s.state(), State::Degraded);
        assert_eq!(
            s.report().bucket.writes_stopped.as_deref(),
            Some("lease lost")
        );
        fence.lift();
        assert_eq!(s.state(), State::Ready);
        health.refused("HTTP 403 Forbidden: AccessDenied".into());
        assert_eq!(s.state(), State::Degraded, "a refusal degrades at once");
        assert_eq!(
            s.report().bucket.refused.as_deref(),
            Some("HTTP 403 Forbidden: AccessDenied")
        );
        health.success();
        assert_eq!(s.state(), State::Ready);
        assert_eq!(s.report().bucket.refused, None);
        s.set_draining();
        s.set_ready();
        assert_eq!(s.state(), State::Draining);
    }
}
