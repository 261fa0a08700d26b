//! The status server of `etlfs mount --listen` and `etlfs status`, through real mounts of the
//! binary and a real S3 server (moto, started by scripts/test.sh): `/metrics` is valid
//! Prometheus text whose counters follow uploads, fetches and deletes; `/status` goes
//! `degraded` during an outage and back to `ready` after it, and `draining` on SIGTERM;
//! `/readyz` answers 503 until the bucket listing loads; `etlfs status` is a usable probe.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Output};
use std::time::Duration;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{self, bucket, servers, tools};
use bucket::{Target, kubecost_read, kubecost_write, poll, target, wipe};
use common::{Mounted, Opts};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `GET path` on 127.0.0.1:port: (status code, body), or `None` if nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    common::http_get(port, path).map(|r| (r.code, r.body))
}

fn state(port: u16) -> String {
    common::status(port)["state"].as_str().unwrap().to_owned()
}

/// Parses the text exposition strictly enough to catch a malformed page: every line is a
/// `# HELP`/`# TYPE` line, the final `# EOF`, or `name{labels} value` of a family whose
/// `# TYPE` came first. Returns `name{labels}` → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "no # EOF at the end:\n{text}");
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(valid_name(name), "bad metric name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "info"].contains(&kind),
                "unexpected type in {line:?}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(
                rest.split_once(' ')
                    .is_some_and(|(n, h)| valid_name(n) && !h.is_empty())
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad sample name in {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(
                        valid_name(k) && v.starts_with('"') && v.ends_with('"'),
                        "{line:?}"
                    );
                }
            }
        }
        let family = ["_total", "_bucket", "_sum", "_count", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("sample {line:?} without a # TYPE before it"));
        if name.ends_with("_total") && family != name {
            assert_eq!(kind, "counter", "{line:?}");
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.insert(series.to_owned(), v);
    }
    samples
}

/// `/metrics` in OpenMetrics (what Prometheus asks for), parsed.
fn metrics(port: u16) -> BTreeMap<String, f64> {
    let r =
        common::http_get_accept(port, "/metrics", OPENMETRICS).expect("the status server answers");
    assert_eq!(r.code, 200, "{}", r.body);
    parse_metrics(&r.body)
}

fn etlfs_status(port: u16) -> Output {
    Command::new(common::ETLFS)
        .args(["status", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("ETLFS_LISTEN")
        .output()
        .unwrap()
}

/// An S3 config whose requests are not retried by object_store, so an outage shows at once
/// (by default each request is retried for about a minute first).
fn fast_failing_config(server: &servers::Server) -> tempfile::NamedTempFile {
    let yaml = server
        .yaml()
        .replacen("config:\n", "config:\n  max_retries: 1\n", 1);
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    f
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";
const TEXT_004: &str = "text/plain; version=0.0.4";

/// Parses an exposition with the reference parsers of Prometheus' Python client (strict for
/// OpenMetrics: `# EOF`, counter and histogram shapes) and prints `type name labels value`
/// for each sample.
const PY_PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as text
parse = openmetrics if sys.argv[1] == "openmetrics" else text
for family in parse(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(family.type, s.name, "{" + labels + "}", s.value)
"#;

/// The samples of an exposition, parsed by Prometheus' Python client: `name{labels}` (labels
/// sorted) → (family type, value).
fn python_parse(format: &str, body: &str) -> BTreeMap<String, (String, f64)> {
    let mut cmd = Command::new(tools::python());
    cmd.args(["-c", PY_PARSE, format]);
    let ran = tools::run(cmd, Some(body), 60);
    ran.assert_ok(&format!("parsing {format} with prometheus_client"));
    ran.stdout
        .lines()
        .map(|l| {
            let mut w = l.splitn(4, ' ');
            let (kind, name, labels, value) = (
                w.next().unwrap(),
                w.next().unwrap(),
                w.next().unwrap(),
                w.next().unwrap(),
            );
            let labels = if labels == "{}" { "" } else { labels };
            (
                format!("{name}{labels}"),
                (kind.to_owned(), value.parse().unwrap()),
            )
        })
        .collect()
}

/// `GET /metrics` with no `Accept` header at all (every HTTP client library adds one): the
/// status line and headers of the answer, lower-cased.
fn raw_get_metrics_head(port: u16) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    answer.split("\r\n\r\n").next().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// `/metrics` speaks both exposition formats, chosen by `Accept`: OpenMetrics for
/// `application/openmetrics-text` (and Prometheus' own header), the text format 0.0.4 for
/// `text/plain;version=0.0.4`, `*/*` and no header. Both parse with the reference parsers
/// (promtool, Prometheus' Python client) and carry the same samples: build info, process
/// figures, and request counters and latencies by operation and outcome that move when a
/// file is uploaded.
#[test]
fn metrics_in_both_formats_with_request_counters_that_follow_an_upload() {
    let t = target("s3");
    let port = common::free_port();
    let (m, _cfg) = bucket::mount_on(&t, "100ms", Opts::default().listen(port));
    let fetch = |accept: &str| {
        let r = common::http_get_accept(port, "/metrics", accept).unwrap();
        assert_eq!(r.code, 200, "{}", r.body);
        let ctype = r
            .head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_owned();
        (ctype, r.body)
    };
    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for accept in [OPENMETRICS, prometheus_accept] {
        let (ctype, body) = fetch(accept);
        assert!(
            ctype.starts_with("application/openmetrics-text; version=1.0.0"),
            "{accept}: {ctype}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
    for accept in [TEXT_004, "*/*", "text/html"] {
        let (ctype, body) = fetch(accept);
        assert_eq!(
            ctype, "text/plain; version=0.0.4; charset=utf-8",
            "{accept}"
        );
        assert!(!body.contains("# EOF"), "{body}");
    }
    let head = raw_get_metrics_head(port);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );

    // promtool reads the text format (and lints it); the Python client parses both.
    let (_, text) = fetch(TEXT_004);
    let mut check = Command::new(tools::promtool());
    check.args(["check", "metrics"]);
    let ran = tools::run(check, Some(&text), 60);
    ran.assert_ok("promtool check metrics");
    let (_, om) = fetch(OPENMETRICS);
    let om_samples = python_parse("openmetrics", &om);
    let text_samples = python_parse("text", &text);
    for (name, kind) in [
        (
            "etlfs_build_info{arch=\"x86_64\",profile=\"debug\",version=\"0.1.0\"}",
            "info",
        ),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("etlfs_memory_limit_bytes", "gauge"),
        ("etlfs_max_local_bytes", "gauge"),
        (
            "etlfs_bucket_requests_total{op=\"list\",outcome=\"ok\"}",
            "counter",
        ),
        (
            "etlfs_bucket_request_duration_seconds_count{op=\"put\"}",
            "histogram",
        ),
    ] {
        let name = name.replace("x86_64", std::env::consts::ARCH).replace(
            "debug",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        );
        let (got, _) = om_samples
            .get(&name)
            .unwrap_or_else(|| panic!("{name} missing from OpenMetrics: {om}"));
        assert_eq!(got, kind, "{name}");
        let (text_kind, _) = text_samples
            .get(&name)
            .unwrap_or_else(|| panic!("{name} missing from the text format: {text}"));
        // The text format has no info type: an info metric is a gauge there.
        assert_eq!(
            text_kind,
            if kind == "info" { "gauge" } else { kind },
            "{name}"
        );
    }
    let value = |name: &str| om_samples[name].1;
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "{started} {now}"
    );

    // An upload: a PUT more, timed, and nothing counted as failed.
    let puts_ok = "etlfs_bucket_requests_total{op=\"put\",outcome=\"ok\"}";
    let put_count = "etlfs_bucket_request_duration_seconds_count{op=\"put\"}";
    let before = metrics(port);
    kubecost_write(&m.path("uploaded"), b"some bytes").unwrap();
    assert!(
        poll(30, || metrics(port)["etlfs_uploads_total"] >= 1.0),
        "no upload: {}",
        m.log()
    );
    let after = metrics(port);
    assert!(after[puts_ok] >= before[puts_ok] + 1.0, "{after:?}");
    assert!(after[put_count] >= before[put_count] + 1.0, "{after:?}");
    assert!(after["etlfs_bucket_request_duration_seconds_sum{op=\"put\"}"] > 0.0);
    for outcome in ["error", "timeout", "connect", "denied"] {
        assert_eq!(
            after[&format!("etlfs_bucket_requests_total{{op=\"put\",outcome=\"{outcome}\"}}")],
            0.0
        );
    }
    // A missing object answers 404: the HEAD of a file before its first upload, say.
    assert!(
        after.contains_key("etlfs_bucket_requests_total{op=\"head\",outcome=\"not_found\"}"),
        "{after:?}"
    );
}

/// `/metrics` parses, and its counters follow uploads, deletes and (after a lost volume)
/// fetches; `/status` carries the same figures.
#[test]
fn metrics_follow_uploads_deletes_and_fetches() {
    let t = target("s3");
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut m, _cfg) = bucket::mount_on(
        &t,
        "100ms",
        // Downloads on open only (with readahead): the fetch counters move with the reads.
        Opts::default().listen(port).arg("--no-prefetch"),
    );
    assert!(
        m.log().contains(&listen),
        "the address is logged:\n{}",
        m.log()
    );
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));
    let before = metrics(port);
    for name in [
        "etlfs_uploads_total",
        "etlfs_upload_failures_total",
        "etlfs_upload_bytes_total",
        "etlfs_deletes_total",
        "etlfs_fetches_total",
        "etlfs_fetch_bytes_total",
        "etlfs_retries_total",
        "etlfs_evictions_total",
        "etlfs_pending_changes",
        "etlfs_pending_bytes",
        "etlfs_oldest_pending_change_age_seconds",
        "etlfs_local_bytes",
        "etlfs_bucket_only_files",
        "etlfs_journal_bytes",
        "etlfs_passthrough",
        "etlfs_last_upload_timestamp_seconds",
        "etlfs_upload_duration_seconds_count",
        "etlfs_fetch_duration_seconds_bucket{le=\"+Inf\"}",
        "etlfs_state{state=\"ready\"}",
    ] {
        assert!(before.contains_key(name), "{name} missing: {before:?}");
    }
    assert_eq!(before["etlfs_state{state=\"ready\"}"], 1.0);
    assert_eq!(before["etlfs_uploads_total"], 0.0);

    let files = [("a", 1000usize), ("b", 2000), ("c", 3000)];
    for (name, len) in files {
        kubecost_write(&m.path(name), &vec![b'x'; len]).unwrap();
    }
    assert!(
        poll(30, || metrics(port)["etlfs_uploads_total"] >= 3.0),
        "uploads not counted: {:?}\n{}",
        metrics(port),
        m.log()
    );
    let after = metrics(port);
    assert_eq!(after["etlfs_upload_bytes_total"], 6000.0);
    assert_eq!(after["etlfs_upload_duration_seconds_count"], 3.0);
    assert_eq!(
        after["etlfs_upload_duration_seconds_bucket{le=\"+Inf\"}"], 3.0,
        "buckets are cumulative"
    );
    assert!(after["etlfs_last_upload_timestamp_seconds"] > 1.6e9);
    // Three single PUTs more than before, at least: each upload is one request.
    let puts =
        |m: &BTreeMap<String, f64>| m["etlfs_bucket_requests_total{op=\"put\",outcome=\"ok\"}"];
    assert!(puts(&after) >= puts(&before) + 3.0, "{after:?}");
    assert!(
        after["etlfs_bucket_requests_total{op=\"list\",outcome=\"ok\"}"] >= 1.0,
        "the start's listing"
    );
    assert!(
        poll(30, || metrics(port)["etlfs_pending_changes"] == 0.0),
        "{:?}\n{}",
        metrics(port),
        m.log()
    );
    let s = common::status(port);
    assert_eq!(s["state"], "ready");
    assert_eq!(s["uploads"]["done"], 3);
    assert_eq!(s["uploads"]["bytes"], 6000);
    assert!(s["uploads"]["last_success"].is_string(), "{s}");

    fs::remove_file(m.path("c")).unwrap();
    assert!(
        poll(30, || metrics(port)["etlfs_deletes_total"] >= 1.0),
        "delete not counted: {}",
        m.log()
    );
    assert!(m.stop().success());

    // A lost volume: both remaining files are bucket-only after a restart, and a read fetches
    // the file, then the rest of its directory (readahead).
    wipe(&m.local);
    m.respawn();
    let cold = metrics(port);
    assert_eq!(cold["etlfs_bucket_only_files"], 2.0, "{cold:?}");
    assert_eq!(cold["etlfs_fetches_total"], 0.0);
    assert_eq!(
        cold["etlfs_restore_bytes_left"],
        2000.0 + 1000.0,
        "{cold:?}"
    );
    assert_eq!(kubecost_read(&m.path("b")).unwrap(), vec![b'x'; 2000]);
    assert!(
        poll(30, || metrics(port)["etlfs_fetches_total"] == 2.0),
        "{:?}",
        metrics(port)
    );
    let warm = metrics(port);
    assert_eq!(warm["etlfs_fetch_bytes_total"], 3000.0);
    assert_eq!(warm["etlfs_fetch_duration_seconds_count"], 2.0);
    assert_eq!(warm["etlfs_bucket_only_files"], 0.0);
    assert_eq!(warm["etlfs_restore_bytes_left"], 0.0);
    assert_eq!(common::status(port)["fetches"]["done"], 2);
    assert!(m.stop().success());
}

/// An outage makes the mount `degraded` after `--degraded-after` (with the failure among the
/// recent events), `etlfs status` fails meanwhile, and both recover when the bucket returns.
/// On SIGTERM with uploads still pending, the mount is `draining` and not ready.
#[test]
fn degraded_during_an_outage_ready_after_and_draining_on_sigterm() {
    let server = servers::s3_isolated();
    let cfg = fast_failing_config(&server);
    let port = common::free_port();
    let t = Target::Cloud(server);
    let mut m = Mounted::with(
        Opts::on(cfg.path())
            .upload_delay("100ms")
            .listen(port)
            .args(["--degraded-after", "2s", "--drain-timeout", "10s"]),
    );
    assert_eq!(state(port), "ready");
    let ok = etlfs_status(port);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("READY") && out.contains("uploads:"), "{out}");

    t.server().stop();
    kubecost_write(&m.path("during-outage"), b"data").unwrap();
    assert!(
        poll(30, || state(port) == "degraded"),
        "not degraded: {}\n{}",
        common::status(port),
        m.log()
    );
    let s = common::status(port);
    assert!(s["bucket"]["failing_since"].is_string(), "{s}");
    assert!(s["pending"]["changes"].as_u64() >= Some(1), "{s}");
    assert!(
        s["pending"]["oldest_age_seconds"].as_f64() >= Some(1.0),
        "{s}"
    );
    let events = s["recent_events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["level"] == "WARN"
                && e["message"].as_str().unwrap().contains("upload failed")),
        "{s}"
    );
    // Still ready for traffic: the application works on the local disk.
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));
    let bad = etlfs_status(port);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("DEGRADED"));
    assert!(metrics(port)["etlfs_retries_total"] >= 1.0);
    assert_eq!(metrics(port)["etlfs_state{state=\"degraded\"}"], 1.0);

    t.server().start();
    assert!(
        poll(60, || state(port) == "ready"),
        "not ready again: {}\n{}",
        common::status(port),
        m.log()
    );
    assert!(poll(30, || common::status(port)["pending"]["changes"] == 0));
    assert!(etlfs_status(port).status.success());

    // Pending work at SIGTERM: draining (not ready) until the drain gives up.
    t.server().stop();
    kubecost_write(&m.path("at-shutdown"), b"data").unwrap();
    // The mirror knows of the file (its close reaches etlfs asynchronously) before SIGTERM.
    assert!(
        poll(30, || common::status(port)["pending"]["changes"].as_u64()
            >= Some(1)),
        "{}\n{}",
        common::status(port),
        m.log()
    );
    m.signal(rustix::process::Signal::TERM);
    assert!(
        poll(10, || get(port, "/readyz")
            .is_some_and(|(c, b)| c == 503 && b.contains("draining"))),
        "no draining state:\n{}",
        m.log()
    );
    assert_eq!(state(port), "draining");
    let st = m.wait_exit(Duration::from_secs(60)).expect("etlfs exits");
    assert!(st.success(), "{st}\n{}", m.log());
    t.server().start();
}

/// Kills and unmounts a daemon that was started by hand.
struct Daemon {
    child: Child,
    mnt: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if common::is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// While the bucket listing cannot load the mount is `starting`: alive, not ready, and
/// `etlfs status` fails; it becomes ready once the bucket answers.
#[test]
fn not_ready_until_the_bucket_listing_loads() {
    let server = servers::s3_isolated();
    let cfg = fast_failing_config(&server);
    server.stop();
    let port = common::free_port();
    let tmp = tempfile::Builder::new()
        .prefix("etlfs")
        .tempdir_in("/tmp")
        .unwrap();
    let mnt = tmp.path().join("m");
    fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("etlfs.log");
    let child = Command::new(common::ETLFS)
        .args([
            "mount",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(cfg.path())
        .arg(&mnt)
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon {
        child,
        mnt: mnt.clone(),
    };
    let log = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        poll(20, || get(port, "/healthz").is_some_and(|r| r.0 == 200)),
        "no status server:\n{}",
        log()
    );
    // Give the lease (taken first) or the listing time to fail for real.
    assert!(
        poll(20, || log().contains("the mount waits for")),
        "{}",
        log()
    );
    let (code, body) = get(port, "/readyz").unwrap();
    assert_eq!((code, body.trim()), (503, "starting"));
    assert_eq!(state(port), "starting");
    let probe = etlfs_status(port);
    assert_eq!(probe.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&probe.stdout).contains("STARTING"));
    assert!(!common::is_mounted(&mnt));

    server.start();
    assert!(
        poll(60, || get(port, "/readyz").is_some_and(|r| r.0 == 200)),
        "not ready after the bucket returned:\n{}",
        log()
    );
    assert!(common::is_mounted(&mnt));
    assert_eq!(state(port), "ready");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let st = d.child.wait().unwrap();
    assert!(st.success(), "{st}\n{}", log());
}

/// `etlfs status` fails, naming the address, when nothing listens there.
#[test]
fn status_command_fails_when_nothing_listens() {
    let port = common::free_port();
    let out = etlfs_status(port);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// A `--listen` address in use is a usage error (exit 2) that names it, and nothing is
/// mounted.
#[test]
fn listen_address_in_use_is_a_usage_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("m");
    fs::create_dir(&mnt).unwrap();
    let out = Command::new(common::ETLFS)
        .args(["mount", "--listen", &addr])
        .arg(&mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&addr), "{err}");
    assert!(!common::is_mounted(&mnt));
}
