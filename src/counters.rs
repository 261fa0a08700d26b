//! Small lock-free figures that the busy parts of etlfs keep for `/metrics` and `/status`.
//!
//! The mirror, the fetcher and the overlay count what they do in plain atomics (their own
//! `Stats` structs); this module holds the two shapes that are more than one number:
//!
//! - [`Latency`], a fixed-bucket histogram. The buckets are fixed (5 ms to 2 min) rather than
//!   configurable because the exposition format wants the same bucket bounds for the whole life
//!   of a time series, and because an upload of Kubecost's files (20 KiB–300 MiB) lands in that
//!   range on any bucket worth mounting.
//! - [`Health`], whether the bucket answers. It is fed by the *outcomes of real operations*
//!   (listing, uploads, deletes, downloads), never by probes of its own: an idle mount costs no
//!   requests, and a failure is only recorded once `object_store`'s own request retries gave up,
//!   so one dropped connection is not an outage. `/status` calls the mount `degraded` when
//!   operations have been failing, with no success in between, for longer than
//!   `--degraded-after`. A bucket that *refuses* us (access denied) is no blip: its reason is
//!   kept, and `/status` says `degraded` with it at once.
//!
//! Nothing here allocates or locks on the recording side of the busy paths: these are called
//! from upload and download tasks, and reading them (a scrape) must never slow those down. The
//! one lock, the reason of a refusal, is taken only while the bucket refuses us (and by the
//! first success after).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds of the latency buckets, in seconds (a `+Inf` bucket follows).
pub const LATENCY_BOUNDS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// A histogram of durations with the buckets of [`LATENCY_BOUNDS`].
#[derive(Debug, Default)]
pub struct Latency {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    counts: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Latency {
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts as (upper bound, count)) — the shape
    /// `prometheus-client` takes (it makes the buckets cumulative itself). The `+Inf` bucket is
    /// the last one.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut acc = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            acc += n;
            let bound = LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, acc, buckets)
    }
}

/// Milliseconds since the Unix epoch, now (0 is reserved for "never").
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis().max(1) as u64)
}

/// Whether the bucket answers, from the outcomes of the operations etlfs makes.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix ms of the last operation the bucket answered; 0 = none yet.
    last_success_ms: AtomicU64,
    /// Unix ms of the first failure since the last success; 0 = not failing.
    failing_since_ms: AtomicU64,
    failures: AtomicU64,
    /// Whether `refusal` holds a reason (read without the lock on every success).
    refused: AtomicBool,
    /// Why the bucket refuses our requests (access denied), since the last success.
    refusal: Mutex<Option<String>>,
}

impl Health {
    /// The bucket answered an operation.
    pub fn success(&self) {
        self.last_success_ms.store(now_ms(), Ordering::Relaxed);
        self.failing_since_ms.store(0, Ordering::Relaxed);
        if self.refused.swap(false, Ordering::Relaxed) {
            *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// An operation failed because the bucket refused our credentials or permissions:
    /// a failure, with its reason kept until the next success. `true` if the bucket was not
    /// refusing us before (the moment to say so, once).
    pub fn refused(&self, reason: String) -> bool {
        self.failure();
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        !self.refused.swap(true, Ordering::Relaxed)
    }

    /// Why the bucket refuses our requests, if the last outcome was such a refusal.
    pub fn refusal(&self) -> Option<String> {
        if !self.refused.load(Ordering::Relaxed) {
            return None;
        }
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// An operation failed because the bucket could not be reached or refused it.
    pub fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        // Only the first failure of a streak starts the clock.
        let _ = self.failing_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub fn last_success_ms(&self) -> u64 {
        self.last_success_ms.load(Ordering::Relaxed)
    }

    pub fn failing_since_ms(&self) -> u64 {
        self.failing_since_ms.load(Ordering::Relaxed)
    }

    /// Failed bucket operations since start (after `object_store`'s own retries).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_right_buckets() {
        let l = Latency::default();
        l.record(Duration::from_millis(3));
        l.record(Duration::from_millis(70));
        l.record(Duration::from_secs(500));
        let (sum, count, buckets) = l.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 500.073).abs() < 1e-6);
        assert_eq!(buckets[0], (0.005, 1));
        assert_eq!(buckets[4], (0.1, 1));
        assert_eq!(buckets.last().unwrap().1, 1);
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 3);
        assert!(buckets.last().unwrap().0.is_infinite());
    }

    #[test]
    fn a_success_ends_a_failure_streak() {
        let h = Health::default();
        h.failure();
        let since = h.failing_since_ms();
        assert!(since > 0);
        h.failure();
        assert_eq!(h.failing_since_ms(), since, "the streak keeps its start");
        h.success();
        assert_eq!(h.failing_since_ms(), 0);
        assert!(h.last_success_ms() > 0);
        assert_eq!(h.failures(), 2);
    }

    #[test]
    fn a_refusal_is_kept_until_a_success_and_told_once() {
        let h = Health::default();
        assert_eq!(h.refusal(), None);
        assert!(h.refused("403 one".into()), "the first refusal is news");
        assert!(!h.refused("403 two".into()), "the second is not");
        assert_eq!(h.refusal().as_deref(), Some("403 two"));
        assert!(h.failing_since_ms() > 0);
        h.failure();
        assert_eq!(
            h.refusal().as_deref(),
            Some("403 two"),
            "an outage keeps it"
        );
        h.success();
        assert_eq!(h.refusal(), None);
        assert!(h.refused("403 again".into()), "news again after a success");
        assert_eq!(h.failures(), 4);
    }
}
