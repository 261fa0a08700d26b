//! The one place that names etlfs' metrics (doc/METRICS.md describes each; keep both in step).
//!
//! Every figure is read at scrape time from the counters the parts keep (see
//! [`super::Status::figures`]) and written as a constant sample, rather than mirrored into
//! `prometheus-client` metric objects as it happens: the parts then stay free of any metrics
//! library, and `/metrics` and `/status` can never disagree, because both come from one read.
//!
//! Names follow the Prometheus conventions: base units (seconds, bytes), counters end in
//! `_total` (the encoder appends it to the names below), timestamps are Unix seconds.

use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;

use super::{State, Status};
use crate::counters::Latency;
use crate::store::bucket::requests::RequestCounts;

/// Writes every metric on each scrape.
#[derive(Debug)]
pub struct Collector(pub Arc<Status>);

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn gauge_f(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// (sum, count, buckets) of a histogram; before the mount is up, an empty one with the same
/// buckets.
fn snapshot(l: Option<&Latency>) -> (f64, u64, Vec<(f64, u64)>) {
    l.map_or_else(|| Latency::default().snapshot(), Latency::snapshot)
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    l: Option<&Latency>,
) -> std::fmt::Result {
    let (sum, count, buckets) = snapshot(l);
    enc.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// `etlfs_build_info`: which etlfs this is, for dashboards that compare nodes or releases.
fn build_info(e: &mut DescriptorEncoder) -> std::fmt::Result {
    let info = Info::new([
        ("version", env!("CARGO_PKG_VERSION")),
        ("arch", std::env::consts::ARCH),
        (
            "profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        ),
    ]);
    info.encode(e.encode_descriptor(
        "etlfs_build",
        "etlfs' version, architecture and build profile (always 1)",
        None,
        info.metric_type(),
    )?)
}

/// The bucket's requests by operation and outcome, and their durations by operation
/// ([`crate::store::bucket::requests`]).
fn bucket_requests(e: &mut DescriptorEncoder, r: Option<&RequestCounts>) -> std::fmt::Result {
    let fallback = RequestCounts::default();
    let r = r.unwrap_or(&fallback);
    {
        let mut m = e.encode_descriptor(
            "etlfs_bucket_requests",
            "Requests sent to the bucket, by operation (put, multipart_start, multipart_part, multipart_complete, multipart_abort, get, head, list, delete, copy) and outcome (ok, not_found, precondition, denied, unsupported, invalid_key, timeout, connect, error, cancelled), counted when they end",
            None,
            MetricType::Counter,
        )?;
        for c in r.snapshot() {
            let labels = [("op", c.op), ("outcome", c.outcome)];
            ConstCounter::new(c.count).encode(m.encode_family(&labels)?)?;
        }
    }
    let mut m = e.encode_descriptor(
        "etlfs_bucket_request_duration_seconds",
        "Duration of the requests sent to the bucket, by operation, whatever their outcome (a GET until its response headers, a flat listing until its last page)",
        None,
        MetricType::Histogram,
    )?;
    for (op, l) in r.latencies() {
        let (sum, count, buckets) = l.snapshot();
        m.encode_family(&[("op", op)])?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// Unix ms (0 = never) as Unix seconds.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let f = self.0.figures();
        let e = &mut enc;
        build_info(e)?;
        {
            let state = f.state.unwrap_or(State::Starting);
            let mut m = e.encode_descriptor(
                "etlfs_state",
                "1 for the mount's current state (starting, ready, degraded, draining), 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for s in [
                State::Starting,
                State::Ready,
                State::Degraded,
                State::Draining,
            ] {
                let labels = [("state", s.to_string())];
                ConstGauge::new(i64::from(s == state)).encode(m.encode_family(&labels)?)?;
            }
        }
        gauge(
            e,
            "etlfs_pending_changes",
            "Changes not yet in the bucket: files waiting for or in upload, plus journaled removals and renames",
            f.pending as i64,
        )?;
        gauge(
            e,
            "etlfs_pending_bytes",
            "Size of the files waiting for or in upload, as of their last change",
            f.pending_bytes as i64,
        )?;
        let age = if f.oldest_pending_ms == 0 {
            0.0
        } else {
            secs(crate::counters::now_ms().saturating_sub(f.oldest_pending_ms))
        };
        gauge_f(
            e,
            "etlfs_oldest_pending_change_age_seconds",
            "Age of the oldest change not yet in the bucket; 0 when nothing is pending",
            age,
        )?;
        counter(e, "etlfs_uploads", "Files uploaded", f.uploads)?;
        counter(
            e,
            "etlfs_upload_failures",
            "Failed upload attempts (each is retried)",
            f.upload_failures,
        )?;
        counter(e, "etlfs_upload_bytes", "Bytes uploaded", f.upload_bytes)?;
        gauge_f(
            e,
            "etlfs_last_upload_timestamp_seconds",
            "Unix time of the last successful upload; 0 if none since start",
            secs(f.last_upload_ms),
        )?;
        histogram(
            e,
            "etlfs_upload_duration_seconds",
            "Duration of successful uploads, from opening the file to the committed object",
            f.upload_latency,
        )?;
        counter(
            e,
            "etlfs_deletes",
            "Objects deleted for removals and renames",
            f.deletes,
        )?;
        counter(
            e,
            "etlfs_delete_failures",
            "Failed attempts to carry out a removal or rename in the bucket (each is retried)",
            f.delete_failures,
        )?;
        counter(
            e,
            "etlfs_copies",
            "Server-side copies for renames",
            f.copies,
        )?;
        counter(
            e,
            "etlfs_skipped_paths",
            "Paths or intents that can never be mirrored (not a valid key), skipped",
            f.skipped_paths,
        )?;
        counter(
            e,
            "etlfs_retries",
            "Failed bucket operations scheduled again after a backoff",
            f.retries,
        )?;
        counter(
            e,
            "etlfs_fetches",
            "Bucket-only files downloaded",
            f.fetches,
        )?;
        counter(
            e,
            "etlfs_fetch_failures",
            "Failed downloads (the application got EIO)",
            f.fetch_failures,
        )?;
        counter(e, "etlfs_fetch_bytes", "Bytes downloaded", f.fetch_bytes)?;
        histogram(
            e,
            "etlfs_fetch_duration_seconds",
            "Duration of successful downloads, from the request to the verified file in place",
            f.fetch_latency,
        )?;
        if let Some(p) = &f.restore {
            gauge(
                e,
                "etlfs_restore_bytes_left",
                "Bytes of the files that are only in the bucket (what a restore has left)",
                p.bytes_left as i64,
            )?;
            gauge(
                e,
                "etlfs_restore_bytes_per_second",
                "Download rate over the last 10 s",
                p.bytes_per_second as i64,
            )?;
            gauge(
                e,
                "etlfs_fetch_queued",
                "Downloads waiting for a worker (opens, readahead and prefetch together)",
                (p.queue.open + p.queue.readahead + p.queue.prefetch) as i64,
            )?;
            gauge(
                e,
                "etlfs_fetch_running",
                "Downloads running now",
                p.queue.running as i64,
            )?;
            gauge(
                e,
                "etlfs_prefetch_running",
                "1 while the background prefetch runs",
                i64::from(p.prefetch == crate::engine::fetch::PrefetchState::Running),
            )?;
        }
        gauge(
            e,
            "etlfs_fetch_waiting_requests",
            "Application requests waiting for a download now",
            f.waiting_requests as i64,
        )?;
        counter(
            e,
            "etlfs_evictions",
            "Local files evicted to the bucket (--max-local-bytes)",
            f.evictions,
        )?;
        gauge(
            e,
            "etlfs_local_bytes",
            "Bytes of local files in the served directory (live with --max-local-bytes, else counted every 30 s)",
            f.local_bytes as i64,
        )?;
        gauge(
            e,
            "etlfs_max_local_bytes",
            "--max-local-bytes: the local bytes above which clean files are evicted; 0 without a bound",
            f.max_local_bytes as i64,
        )?;
        gauge(
            e,
            "etlfs_bucket_only_files",
            "Files that are only in the bucket (not yet fetched)",
            f.bucket_only_files as i64,
        )?;
        gauge(
            e,
            "etlfs_bucket_keys_refused",
            "Objects under the prefix the last listing could not show: keys that cannot be a path here (empty, . or .. segments, control characters, too long, a file that is also a directory)",
            f.refused_keys as i64,
        )?;
        counter(
            e,
            "etlfs_index_heads",
            "Metadata reads (HEADs; sidecar GETs on FILESYSTEM) made to load the bucket index at start",
            f.index_heads,
        )?;
        counter(
            e,
            "etlfs_index_manifest_files",
            "Files whose metadata the bucket's manifest supplied at start, without a HEAD",
            f.index_from_manifest,
        )?;
        gauge(
            e,
            "etlfs_journal_intents",
            "Removals and renames journaled and not yet carried out",
            f.journal_intents as i64,
        )?;
        gauge(
            e,
            "etlfs_journal_bytes",
            "Size of the journal file",
            f.journal_bytes as i64,
        )?;
        gauge(
            e,
            "etlfs_passthrough",
            "1 when FUSE passthrough is on, 0 in daemon mode",
            i64::from(f.passthrough),
        )?;
        bucket_requests(e, f.bucket_requests)?;
        counter(
            e,
            "etlfs_history_versions_kept",
            "Old versions kept under .etlfs/history/ before an upload, copy or delete replaced them",
            f.history_versions_kept,
        )?;
        counter(
            e,
            "etlfs_history_bytes_kept",
            "Bytes of the versions kept (server-side copies)",
            f.history_bytes_kept,
        )?;
        counter(
            e,
            "etlfs_history_gc_deletions",
            "Kept versions deleted past --history-retention",
            f.history_gc_deletions,
        )?;
        counter(
            e,
            "etlfs_history_empty_replacements",
            "Files replaced by an empty one (a writer killed mid-rewrite?) whose previous version was kept",
            f.history_empty_replacements,
        )?;
        counter(
            e,
            "etlfs_history_tripwire_trips",
            "Times many files were truncated, shrunk or deleted at once (possible corruption)",
            f.history_tripwire_trips,
        )?;
        gauge(
            e,
            "etlfs_history_corruption_suspected",
            "1 while many files are being truncated, shrunk or deleted at once; every version is kept meanwhile",
            i64::from(f.history_tripped_since_ms != 0),
        )?;
        counter(
            e,
            "etlfs_bucket_failures",
            "Bucket operations that failed after object_store's own retries (outages, refusals)",
            f.bucket_failures,
        )?;
        gauge(
            e,
            "etlfs_bucket_writes_stopped",
            "1 while this mount does not write the bucket (the lease was lost or cannot be renewed)",
            i64::from(f.writes_stopped.is_some()),
        )?;
        gauge_f(
            e,
            "etlfs_bucket_last_success_timestamp_seconds",
            "Unix time the bucket last answered an operation; 0 if never since start",
            secs(f.bucket_last_success_ms),
        )?;
        super::process::encode(e)
    }
}

/// The exposition formats `/metrics` speaks; see [`negotiate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (`application/openmetrics-text`), which Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// Every metric of `registry`, in this format.
    pub fn encode(
        self,
        out: &mut String,
        registry: &prometheus_client::registry::Registry,
    ) -> std::fmt::Result {
        match self {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(out, registry),
            Format::Text => prometheus_client::encoding::prometheus_text::encode(out, registry),
        }
    }
}

/// How one format matched an `Accept` header: how specific the range was (2 for the exact
/// type, 1 for `type/*`, 0 for `*/*`), its weight, and its place in the header.
#[derive(Debug, Clone, Copy)]
struct Match {
    specific: u8,
    q: f32,
    at: usize,
}

/// The format to answer an `Accept` header with.
///
/// OpenMetrics when the client prefers it: a higher `q`, or the same `q` from a more specific
/// range, or from an equally specific one listed earlier. Everything else — no `Accept`,
/// `*/*`, `text/plain`, a header naming neither — gets the Prometheus text format 0.0.4:
/// Prometheus itself always asks for OpenMetrics first, so it gets OpenMetrics, while the
/// tools that send no preference (curl, promtool, agents that scrape "Prometheus
/// endpoints") all read the classic format and not all of them read OpenMetrics. The official
/// Go client decides the same way. Version parameters are not compared: there is one version
/// of each format to give.
pub fn negotiate(accept: Option<&str>) -> Format {
    use mediatype::names::{_STAR, APPLICATION, PLAIN, Q, TEXT};
    use mediatype::{Name, ReadParams};
    const OPENMETRICS: Name = Name::new_unchecked("openmetrics-text");
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut best: [Option<Match>; 2] = [None, None];
    for (at, range) in mediatype::MediaTypeList::new(accept).enumerate() {
        // A malformed entry is skipped, as if it were not there.
        let Ok(range) = range else { continue };
        let q = range
            .get_param(Q)
            .and_then(|v| v.unquoted_str().trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        for (slot, (ty, subty)) in [(APPLICATION, OPENMETRICS), (TEXT, PLAIN)]
            .into_iter()
            .enumerate()
        {
            let specific = if range.ty == ty && range.subty == subty {
                2
            } else if range.ty == ty && range.subty == _STAR {
                1
            } else if range.ty == _STAR {
                0
            } else {
                continue;
            };
            // The most specific range that matches decides (RFC 9110, 12.5.1).
            if best[slot].is_none_or(|b| specific > b.specific) {
                best[slot] = Some(Match { specific, q, at });
            }
        }
    }
    let key = |m: Match| (m.q, m.specific, std::cmp::Reverse(m.at));
    match best {
        [Some(om), text] if om.q > 0.0 && text.is_none_or(|t| key(om) > key(t)) => {
            Format::OpenMetrics
        }
        _ => Format::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_s_preference_picks_the_format() {
        let cases = [
            (None, Format::Text),
            (Some("*/*"), Format::Text),
            (Some(""), Format::Text),
            (Some("application/json"), Format::Text),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (Some("application/openmetrics-text;q=0"), Format::Text),
            (
                Some("*/*, application/openmetrics-text"),
                Format::OpenMetrics,
            ),
            (
                Some("text/plain, application/openmetrics-text"),
                Format::Text,
            ),
            (
                Some("application/openmetrics-text, text/plain"),
                Format::OpenMetrics,
            ),
            (
                Some("application/*;q=0.9, text/*;q=0.8"),
                Format::OpenMetrics,
            ),
            // What Prometheus 2 and 3 send by default.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Format::OpenMetrics,
            ),
            // Prometheus told to prefer the classic format (scrape_protocols).
            (
                Some(
                    "text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.1",
                ),
                Format::Text,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
    }
}
