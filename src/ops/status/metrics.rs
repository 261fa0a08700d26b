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

use super::{State, Status};
use crate::counters::Latency;

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

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    l: Option<&Latency>,
) -> std::fmt::Result {
    let (sum, count, buckets) = match l {
        Some(l) => l.snapshot(),
        // Before the mount is up: an empty histogram with the same buckets.
        None => Latency::default().snapshot(),
    };
    enc.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// Unix ms (0 = never) as Unix seconds.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let f = self.0.figures();
        let e = &mut enc;
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
        {
            let mut m = e.encode_descriptor(
                "etlfs_bucket_requests",
                "Requests sent to the bucket, by kind (put, multipart: the start of one, get, head, list: one page or one flat listing, delete, copy)",
                None,
                MetricType::Counter,
            )?;
            for (kind, n) in &f.bucket_requests {
                let labels = [("op", kind.to_string())];
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }
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
        Ok(())
    }
}
