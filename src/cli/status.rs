//! `etlfs status`: the client of the status server ([`crate::ops::status`]). It reads a running
//! mount's `/status` document and prints it for a human, and exits 0 only when the mount is
//! `ready`, so the command works as a probe.
//!
//! One request over reqwest's blocking client, never through a proxy (the server is on the
//! node or in the pod). Its errors name the address and, once, the cause underneath: a refused
//! connection reads `no etlfs status server answers at 127.0.0.1:9500: Connection refused (os
//! error 111)`, not the layers of the HTTP client around it.

use std::error::Error as _;
use std::net::ToSocketAddrs;
use std::time::{Duration, SystemTime};

use crate::escape::esc;
use crate::ops::status::{DEFAULT_LISTEN, Report, State};

/// How long `etlfs status` waits for the server (to connect, and for the whole answer).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why `etlfs status` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusClientError {
    #[error("--listen {}: not an address (expected HOST:PORT, e.g. {DEFAULT_LISTEN})", esc(.addr))]
    BadAddress { addr: String },
    #[error("no etlfs status server answers at {}: {source}", esc(.addr))]
    Unreachable {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    // `detail` quotes what the server sent.
    #[error("{}: unexpected answer: {}", esc(.addr), esc(.detail))]
    BadReply { addr: String, detail: String },
    #[error("the mount at {} is {state}", esc(.addr))]
    NotReady { addr: String, state: State },
}

/// `etlfs status`: prints the mount's status for a human. `Ok` only when it is `ready`, so the
/// command works as a probe; [`StatusClientError::NotReady`] for any other state.
pub fn run(addr: &str) -> Result<(), StatusClientError> {
    let report = query(addr)?;
    print!("{}", human(addr, &report));
    match report.state {
        State::Ready => Ok(()),
        state => Err(StatusClientError::NotReady {
            addr: addr.to_owned(),
            state,
        }),
    }
}

/// Reads `/status` from a running mount.
pub fn query(addr: &str) -> Result<Report, StatusClientError> {
    let bad = |detail: String| StatusClientError::BadReply {
        addr: addr.to_owned(),
        detail,
    };
    let failed = |e: reqwest::Error| match io_cause(&e) {
        Some(source) => StatusClientError::Unreachable {
            addr: addr.to_owned(),
            source,
        },
        None => bad(innermost(&e)),
    };
    let sock = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| StatusClientError::BadAddress {
            addr: addr.to_owned(),
        })?;
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .no_proxy()
        .build()
        .map_err(failed)?;
    let resp = client
        .get(format!("http://{sock}/status"))
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .map_err(failed)?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(bad(format!("{:?} {}", resp.version(), resp.status())));
    }
    let body = resp.text().map_err(failed)?;
    serde_json::from_str(&body).map_err(|e| bad(format!("not an etlfs status document: {e}")))
}

/// The I/O error under a failed request (a refused connection, a reset, a timeout), rebuilt as
/// an owned error with the same message; `None` when the server answered something that is
/// not HTTP.
fn io_cause(e: &reqwest::Error) -> Option<std::io::Error> {
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(match io.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(io.kind(), io.to_string()),
            });
        }
        cause = c.source();
    }
    if e.is_timeout() {
        return Some(std::io::ErrorKind::TimedOut.into());
    }
    e.is_connect().then(|| std::io::Error::other(innermost(e)))
}

/// The message of the last error in `e`'s chain: the cause, without the layers around it.
fn innermost(e: &reqwest::Error) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(c) = last.source() {
        last = c;
    }
    last.to_string()
}

/// `5 s ago`, `3 min ago`... from an RFC 3339 time.
fn ago(when: &Option<String>) -> String {
    let Some(t) = when else {
        return "never".into();
    };
    match humantime::parse_rfc3339_weak(t)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
    {
        Some(d) => format!("{} ago", short(d)),
        None => t.clone(),
    }
}

fn short(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// The human rendering of a report.
pub fn human(addr: &str, r: &Report) -> String {
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        format!(
            "etlfs {} at {addr}: {} (mounted on {}, up {})",
            r.version,
            r.state.to_string().to_uppercase(),
            r.mountpoint,
            short(Duration::from_secs(r.uptime_seconds))
        ),
    );
    let bucket = match &r.bucket.failing_since {
        Some(_) => format!(
            "failing since {} (last answer {}; degraded after {} s)",
            ago(&r.bucket.failing_since),
            ago(&r.bucket.last_success),
            r.degraded_after_seconds
        ),
        None => format!("ok (last answer {})", ago(&r.bucket.last_success)),
    };
    line(&mut out, format!("bucket:   {bucket}"));
    if let Some(why) = &r.bucket.refused {
        line(&mut out, format!("bucket:   REFUSED: {why}"));
    }
    if let Some(why) = &r.bucket.writes_stopped {
        line(&mut out, format!("writes:   STOPPED: {why}"));
    }
    if r.history.corruption_suspected_since.is_some() {
        line(
            &mut out,
            format!(
                "history:  POSSIBLE CORRUPTION: many files truncated, shrunk or deleted since {}; every version is kept",
                ago(&r.history.corruption_suspected_since)
            ),
        );
    }
    let oldest = r
        .pending
        .oldest_age_seconds
        .map(|s| format!(", oldest {} old", short(Duration::from_secs_f64(s))))
        .unwrap_or_default();
    line(
        &mut out,
        format!(
            "pending:  {} changes, {}{oldest}; journal {} intents ({})",
            r.pending.changes,
            bytes(r.pending.bytes),
            r.pending.journal_intents,
            bytes(r.pending.journal_bytes)
        ),
    );
    line(
        &mut out,
        format!(
            "uploads:  {} done ({}), {} failed, {} retries, {} skipped paths; last {}",
            r.uploads.done,
            bytes(r.uploads.bytes),
            r.uploads.failed,
            r.uploads.retries,
            r.uploads.skipped_paths,
            ago(&r.uploads.last_success)
        ),
    );
    line(
        &mut out,
        format!(
            "deletes:  {} done, {} failed",
            r.deletes.done, r.deletes.failed
        ),
    );
    line(
        &mut out,
        format!(
            "fetches:  {} done ({}), {} failed",
            r.fetches.done,
            bytes(r.fetches.bytes),
            r.fetches.failed
        ),
    );
    if let Some(rs) = &r.restore {
        line(
            &mut out,
            format!(
                "restore:  {} files ({}) only in the bucket, {}/s{}, prefetch {}; {} requests waiting, {} downloading",
                rs.files_left,
                bytes(rs.bytes_left),
                bytes(rs.bytes_per_second),
                rs.eta_seconds
                    .map(|s| format!(
                        ", about {} left",
                        humantime::format_duration(Duration::from_secs(s))
                    ))
                    .unwrap_or_default(),
                rs.prefetch,
                rs.waiting_requests,
                rs.downloading
            ),
        );
    }
    line(
        &mut out,
        format!(
            "local:    {} in files, {} files only in the bucket, {} evictions, passthrough {}",
            bytes(r.local.bytes),
            r.local.bucket_only_files,
            r.local.evictions,
            if r.local.passthrough { "on" } else { "off" }
        ),
    );
    if r.recent_events.is_empty() {
        line(&mut out, "recent warnings and errors: none".into());
    } else {
        line(&mut out, "recent warnings and errors:".into());
        for e in &r.recent_events {
            line(
                &mut out,
                format!("  {} {:5} {}: {}", e.time, e.level, e.target, e.message),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::Status;
    use std::sync::Arc;

    #[test]
    fn the_report_round_trips_and_renders() {
        let s = Status::new(
            "/m".into(),
            Duration::from_secs(30),
            Arc::default(),
            Arc::default(),
            Arc::default(),
        );
        let r = s.report();
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.state, State::Starting);
        let text = human("127.0.0.1:1", &back);
        assert!(text.contains("STARTING"), "{text}");
        assert_eq!(bytes(1536), "1.50 KiB");
    }
}
