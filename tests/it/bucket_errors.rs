//! Bucket errors, said once and clearly, against the real servers:
//! - a bucket that does not exist (moto's `NoSuchBucket`, Azurite's `ContainerNotFound` with
//!   `storage_create_container: false`, GCS's `NoSuchBucket` from the fake-gcs adapter) is a
//!   configuration error: the mount and the one-shot commands exit 2 with one line that names
//!   the bucket and its endpoint;
//! - credentials the bucket refuses (Azurite with a wrong key, a moto that checks credentials)
//!   make one ERROR line — the server's code and message, never its XML body — and
//!   `bucket.refused` on `/status`: a node that may be missing files waits (`starting`), one
//!   whose directory was complete at its last clean stop mounts and serves its local files,
//!   `degraded`; a one-shot command exits 1 with that one line;
//! - a refused connection names its cause once in every line that reports it: the one-shot's
//!   error, the mount's retry warnings, `/status`, `etlfs status`.

use std::fs;
use std::io::Write;
use std::process::Command;

use crate::common::{self, Mounted, Opts, bucket, free_port, mirror_idle, servers, status};
use bucket::poll;

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" ERROR ")).collect()
}

/// Exactly one ERROR line, holding every one of `needles`, and no server body anywhere.
fn assert_one_error(log: &str, needles: &[&str]) {
    let errors = error_lines(log);
    assert_eq!(errors.len(), 1, "one ERROR line:\n{log}");
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} not in {}", errors[0]);
    }
    assert!(
        !log.contains("<?xml") && !log.contains("<Error>"),
        "a server body was logged:\n{log}"
    );
}

/// A one-shot command on `cfg` over a scratch directory: (exit code, stderr).
fn oneshot(cmd: &str, cfg: &tempfile::NamedTempFile) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"x").unwrap();
    let run = common::run([
        cmd,
        "--config",
        cfg.path().to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    (run.code, run.stderr)
}

fn mount_opts(cfg: &tempfile::NamedTempFile, port: u16) -> Opts {
    Opts::on(cfg.path()).upload_delay("100ms").listen(port)
}

// ---------------------------------------------------------------------------------------------
// A bucket that does not exist
// ---------------------------------------------------------------------------------------------

fn a_missing_bucket_is_a_configuration_error(server: servers::Server, yaml: String, code: &str) {
    let cfg = write_config(&yaml);
    let host = server.host_port().to_owned();
    let needles = [
        server.bucket.as_str(),
        host.as_str(),
        code,
        "does not exist",
    ];
    let (st, log) = Mounted::refused(mount_opts(&cfg, free_port()));
    assert_eq!(st.code(), Some(2), "{log}");
    assert_one_error(&log, &needles);
    for cmd in ["backup", "restore", "verify"] {
        let (exit, log) = oneshot(cmd, &cfg);
        assert_eq!(exit, 2, "{cmd}: {log}");
        assert_one_error(&log, &needles);
    }
}

/// A server whose bucket was never created (its name only is taken).
fn absent(mut server: servers::Server) -> servers::Server {
    server.bucket = format!("{}-absent", server.bucket);
    server
}

#[test]
fn a_missing_s3_bucket_is_a_configuration_error() {
    let server = absent(servers::s3());
    let yaml = server.yaml();
    a_missing_bucket_is_a_configuration_error(server, yaml, "NoSuchBucket");
}

#[test]
fn a_missing_gcs_bucket_is_a_configuration_error() {
    let server = absent(servers::gcs());
    let yaml = server.yaml();
    a_missing_bucket_is_a_configuration_error(server, yaml, "NoSuchBucket");
}

#[test]
fn a_missing_azure_container_that_may_not_be_created_is_a_configuration_error() {
    let server = absent(servers::azure());
    let yaml = server.yaml().replacen(
        "config:\n",
        "config:\n  storage_create_container: false\n",
        1,
    );
    a_missing_bucket_is_a_configuration_error(server, yaml, "ContainerNotFound");
}

// ---------------------------------------------------------------------------------------------
// Access denied
// ---------------------------------------------------------------------------------------------

/// A well-formed key Azurite does not know.
const AZURE_WRONG_KEY: &str = "ZXRsZnMgd3Jvbmcga2V5IGZvciB0aGUgYnVja2V0IGVycm9ycyB0ZXN0cw==";

fn azure_wrong_key(server: &servers::Server) -> String {
    let key = std::env::var("ETLFS_TEST_AZURE_KEY").unwrap();
    server.yaml().replace(&key, AZURE_WRONG_KEY)
}

/// A new node (nothing local: it may be missing files) whose credentials are refused waits
/// before it mounts, as for an outage — but says why once, as an ERROR with the server's code,
/// and `/status` shows the reason; the one-shot commands exit 1 with that one line.
fn a_refusal_at_start_is_one_error_line(yaml: &str, code: &str) {
    let cfg = write_config(yaml);
    let port = free_port();
    let mut m = Mounted::start_unmounted(mount_opts(&cfg, port));
    // Several attempts, so that a line repeated at each retry would show.
    let seen = poll(60, || {
        common::http_get(port, "/status").is_some_and(|r| {
            let s: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            s["bucket"]["failures"].as_u64() >= Some(3)
                && s["bucket"]["refused"]
                    .as_str()
                    .is_some_and(|w| w.contains(code))
        })
    });
    let s = status(port);
    assert!(seen, "{s}\n{}", m.log());
    assert_eq!(s["state"], "starting", "{s}");
    assert!(
        s["bucket"]["refused"]
            .as_str()
            .unwrap()
            .contains("HTTP 403 Forbidden"),
        "{s}"
    );
    let log = m.log();
    assert_one_error(&log, &["access denied", code]);
    assert!(
        !log.contains(" WARN "),
        "a refusal is no outage to warn about:\n{log}"
    );
    assert!(m.stop().success(), "{}", m.log());

    for cmd in ["backup", "verify"] {
        let (exit, log) = oneshot(cmd, &cfg);
        assert_eq!(exit, 1, "{cmd}: {log}");
        assert_one_error(&log, &["HTTP 403 Forbidden", code]);
    }
}

#[test]
fn a_refused_azure_key_at_start_is_one_error_line() {
    let server = servers::azure();
    a_refusal_at_start_is_one_error_line(&azure_wrong_key(&server), "AuthorizationFailure");
}

#[test]
fn refused_s3_credentials_at_start_are_one_error_line() {
    let moto = servers::moto_checking_credentials();
    a_refusal_at_start_is_one_error_line(&moto.yaml(), "InvalidAccessKeyId");
}

/// A node whose directory was complete at its last clean stop mounts while its credentials
/// are refused: it serves the local files, writes nothing to the bucket, and `/status` says
/// `degraded` with the reason — loud, and the bucket holds no application hostage.
#[test]
fn a_complete_directory_is_served_degraded_while_access_is_denied() {
    let server = servers::azure();
    let cfg = write_config(&server.yaml());
    let port = free_port();
    let mut m = Mounted::with(mount_opts(&cfg, port));
    fs::write(m.path("kept"), b"local bytes").unwrap();
    assert!(poll(60, || mirror_idle(port)), "{}", m.log());
    assert!(m.stop().success(), "{}", m.log());

    fs::write(cfg.path(), azure_wrong_key(&server)).unwrap();
    let before = m.log().len();
    m.respawn();
    let degraded = poll(60, || {
        common::http_get(port, "/status").is_some_and(|r| {
            let s: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            s["state"] == "degraded"
                && s["bucket"]["refused"]
                    .as_str()
                    .is_some_and(|w| w.contains("AuthorizationFailure"))
        })
    });
    assert!(degraded, "{}\n{}", status(port), m.log());
    assert_eq!(fs::read(m.path("kept")).unwrap(), b"local bytes");
    fs::write(m.path("new"), b"written while refused").unwrap();
    assert_eq!(fs::read(m.path("new")).unwrap(), b"written while refused");
    assert!(common::ready(port), "degraded is still ready for traffic");
    let page = common::http_get(port, "/").expect("the status page").body;
    assert!(
        page.contains("The bucket refuses this mount")
            && page.contains("refused: list: HTTP 403 Forbidden: AuthorizationFailure"),
        "the page names the refusal:\n{page}"
    );
    let log = m.log()[before..].to_owned();
    assert_one_error(&log, &["access denied", "AuthorizationFailure"]);
    assert!(m.stop().success(), "{}", m.log());
}

// ---------------------------------------------------------------------------------------------
// A refused connection
// ---------------------------------------------------------------------------------------------

const REFUSED: &str = "Connection refused";

/// Every line of `text` says the cause at most once; `at_least` lines say it.
fn said_once_per_line(text: &str, at_least: usize, what: &str) {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(REFUSED)).collect();
    assert!(
        lines.len() >= at_least,
        "{what}: {at_least} lines with the cause:\n{text}"
    );
    for l in lines {
        assert_eq!(l.matches(REFUSED).count(), 1, "{what}: {l}");
    }
}

/// An endpoint where nothing listens: the one-shot's error, the mount's retry warnings, its
/// `/status` events, `etlfs status` of it, and `etlfs status` of a status server that is not
/// there each name the refused connection once.
#[test]
fn a_refused_connection_is_said_once_everywhere() {
    let closed = free_port();
    let yaml = format!(
        "type: S3\nconfig:\n  bucket: b\n  endpoint: 127.0.0.1:{closed}\n  insecure: true\n  \
         access_key: {k}\n  secret_key: {k}\n  region: us-east-1\n  max_retries: 1\n",
        k = servers::S3_KEY
    );
    let cfg = write_config(&yaml);
    let (exit, log) = oneshot("backup", &cfg);
    assert_eq!(exit, 1, "{log}");
    said_once_per_line(&log, 1, "backup");
    assert_eq!(error_lines(&log).len(), 1, "{log}");

    let port = free_port();
    let mut m = Mounted::start_unmounted(mount_opts(&cfg, port));
    let warned = |log: &str| log.matches("cannot take the lease yet").count() >= 3;
    assert!(poll(60, || warned(&m.log())), "{}", m.log());
    said_once_per_line(&m.log(), 3, "mount log");
    let events = status(port)["recent_events"].clone();
    let events: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.to_string())
        .collect();
    said_once_per_line(&events.join("\n"), 3, "/status recent_events");
    let out = Command::new(common::ETLFS)
        .args(["status", "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    said_once_per_line(&String::from_utf8_lossy(&out.stdout), 3, "etlfs status");
    assert!(m.stop().success(), "{}", m.log());

    let out = Command::new(common::ETLFS)
        .args(["status", "--listen", &format!("127.0.0.1:{closed}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    said_once_per_line(
        &String::from_utf8_lossy(&out.stderr),
        1,
        "etlfs status, no server",
    );
}
