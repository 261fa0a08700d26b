//! `/`: the status as an HTML page for a person — state, bucket, backlog, uploads, restore,
//! local disk and the recent warnings and errors — without `etlfs status` or a JSON viewer.
//!
//! The page is self-contained: its CSS is inline, it loads nothing and runs no script (it
//! refreshes itself with `<meta http-equiv="refresh">`), so it works from a port-forward with
//! no access to anything else. Its `Content-Security-Policy` forbids scripts and every
//! outside load, as a second line behind the escaping.
//!
//! Outside text — the mount point, log messages that quote paths, keys and bucket errors —
//! reaches the page only through askama's HTML escaping, which is on for every value of an
//! `.html` template (`templates/status.html`): nothing on the page can be markup unless the
//! template says so, and it never does for a value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use indicatif::HumanBytes;

use super::{Report, State, Status, recent::LogEvent};

/// Seconds between two refreshes of the page.
const REFRESH_SECONDS: u32 = 5;

#[derive(Template)]
#[template(path = "status.html")]
struct Page {
    refresh: u32,
    /// `ready`, `degraded`...: also the CSS class of the state's colour.
    state: String,
    version: String,
    mountpoint: String,
    uptime: String,
    /// Why the state is not `ready`, in a sentence; empty when ready.
    state_note: String,
    bucket: Vec<Row>,
    requests: Vec<RequestRow>,
    backlog: Vec<Row>,
    uploads: Vec<Row>,
    restore: Option<Restore>,
    local: Vec<Row>,
    events: Vec<LogEvent>,
    now: String,
}

/// One line of a card: a label, a value, and whether the value is bad news.
struct Row {
    label: &'static str,
    value: String,
    bad: bool,
}

fn row(label: &'static str, value: impl Into<String>) -> Row {
    Row {
        label,
        value: value.into(),
        bad: false,
    }
}

fn bad_row(label: &'static str, value: impl Into<String>, bad: bool) -> Row {
    Row {
        label,
        value: value.into(),
        bad,
    }
}

struct RequestRow {
    op: &'static str,
    total: u64,
    failed: u64,
    mean: String,
}

struct Restore {
    /// Downloaded share of (downloaded + left), in per cent.
    percent: u32,
    rows: Vec<Row>,
}

fn age(rfc3339: Option<&str>, never: &str) -> String {
    let Some(t) = rfc3339 else {
        return never.to_owned();
    };
    match humantime::parse_rfc3339_weak(t)
        .ok()
        .and_then(|at| SystemTime::now().duration_since(at).ok())
    {
        Some(ago) => format!("{t} ({} ago)", seconds(ago)),
        None => t.to_owned(),
    }
}

/// A duration rounded to whole seconds, as `1h 2m 3s`.
fn seconds(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn state_note(r: &Report) -> String {
    match r.state {
        State::Ready => String::new(),
        State::Starting => format!("Waiting for the bucket listing ({}).", r.index.listing),
        State::Draining => "Stopping: unmounted, uploading what is pending.".to_owned(),
        State::Degraded => match (
            &r.bucket.refused,
            &r.bucket.writes_stopped,
            &r.bucket.failing_since,
        ) {
            (Some(why), _, _) => format!("The bucket refuses this mount's requests: {why}"),
            (None, Some(why), _) => format!("Writes to the bucket are stopped: {why}"),
            (None, None, Some(since)) => format!("Bucket operations failing since {since}."),
            (None, None, None) => "Bucket operations are failing.".to_owned(),
        },
    }
}

fn build(status: &Status) -> Page {
    let r = status.report();
    let f = status.figures();
    let b = &r.bucket;
    let bucket = vec![
        bad_row(
            "answers",
            match (&b.refused, &b.writes_stopped, &b.failing_since) {
                (Some(why), _, _) => format!("refused: {why}"),
                (None, Some(_), _) => "writes stopped".to_owned(),
                (None, None, Some(since)) => format!("failing since {since}"),
                (None, None, None) => "ok".to_owned(),
            },
            b.refused.is_some() || b.writes_stopped.is_some() || b.failing_since.is_some(),
        ),
        row("last answer", age(b.last_success.as_deref(), "never")),
        bad_row("failed operations", b.failures.to_string(), b.failures > 0),
    ];
    let requests = f.bucket_requests.map_or_else(Vec::new, |counts| {
        counts
            .latencies()
            .map(|(op, latency)| {
                let (sum, n, _) = latency.snapshot();
                RequestRow {
                    op,
                    total: n,
                    failed: counts.failed(op),
                    mean: if n == 0 {
                        "-".to_owned()
                    } else {
                        format!("{:.0} ms", sum / n as f64 * 1000.0)
                    },
                }
            })
            .filter(|r| r.total > 0)
            .collect()
    });
    let p = &r.pending;
    let backlog = vec![
        row("changes", p.changes.to_string()),
        row("bytes", HumanBytes(p.bytes).to_string()),
        bad_row(
            "oldest",
            p.oldest_age_seconds.map_or_else(
                || "nothing pending".to_owned(),
                |s| format!("{} old", seconds(Duration::from_secs_f64(s))),
            ),
            p.oldest_age_seconds.is_some_and(|s| s > 600.0),
        ),
        row(
            "journal",
            format!(
                "{} removals and renames ({})",
                p.journal_intents,
                HumanBytes(p.journal_bytes)
            ),
        ),
    ];
    let u = &r.uploads;
    let uploads = vec![
        row("done", format!("{} ({})", u.done, HumanBytes(u.bytes))),
        row("last", age(u.last_success.as_deref(), "none since start")),
        bad_row("failed attempts", u.failed.to_string(), u.failed > 0),
        row("retries", u.retries.to_string()),
        bad_row(
            "skipped paths",
            u.skipped_paths.to_string(),
            u.skipped_paths > 0,
        ),
    ];
    let restore = r.restore.as_ref().map(|x| {
        let done = r.fetches.bytes;
        let total = done + x.bytes_left;
        Restore {
            // Nothing to download at all is a finished restore.
            percent: (done * 100).checked_div(total).map_or(100, |p| p as u32),
            rows: vec![
                row(
                    "left",
                    format!("{} files, {}", x.files_left, HumanBytes(x.bytes_left)),
                ),
                row(
                    "downloaded",
                    format!("{} files, {}", r.fetches.done, HumanBytes(done)),
                ),
                row("rate", format!("{}/s", HumanBytes(x.bytes_per_second))),
                row(
                    "eta",
                    x.eta_seconds
                        .map_or_else(|| "-".to_owned(), |s| seconds(Duration::from_secs(s))),
                ),
                row("prefetch", x.prefetch.clone()),
                row(
                    "waiting",
                    format!(
                        "{} requests; {} downloading, {} queued",
                        x.waiting_requests,
                        x.downloading,
                        x.queued_opens + x.queued_readahead + x.queued_prefetch
                    ),
                ),
                bad_row(
                    "failed downloads",
                    r.fetches.failed.to_string(),
                    r.fetches.failed > 0,
                ),
            ],
        }
    });
    let l = &r.local;
    let mut local = vec![row("files", HumanBytes(l.bytes).to_string())];
    if f.max_local_bytes > 0 {
        let share = l.bytes as f64 / f.max_local_bytes as f64;
        local.push(bad_row(
            "bound",
            format!(
                "{} (--max-local-bytes), {:.0}% used",
                HumanBytes(f.max_local_bytes),
                share * 100.0
            ),
            share > 0.9,
        ));
    }
    local.extend([
        row(
            "only in the bucket",
            format!("{} files", l.bucket_only_files),
        ),
        row("evictions", l.evictions.to_string()),
        row("passthrough", if l.passthrough { "on" } else { "off" }),
    ]);
    let mut events = r.recent_events.clone();
    // Newest first: what went wrong last is what a person looks for.
    events.reverse();
    Page {
        refresh: REFRESH_SECONDS,
        state: r.state.to_string(),
        version: r.version.clone(),
        mountpoint: r.mountpoint.clone(),
        uptime: seconds(Duration::from_secs(r.uptime_seconds)),
        state_note: state_note(&r),
        bucket,
        requests,
        backlog,
        uploads,
        restore,
        local,
        events,
        now: humantime::format_rfc3339_seconds(
            UNIX_EPOCH
                + SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default(),
        )
        .to_string(),
    }
}

/// The page, with headers that keep the browser from running or loading anything.
pub fn render(status: &Status) -> Response {
    match build(status).render() {
        Ok(html) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
