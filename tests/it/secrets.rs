//! Credentials never leak: every log line (at `debug`, dependencies included), every error
//! message, every `/status`, `/metrics`, `/healthz` and `/readyz` answer and every `etlfs
//! status` / `backup` / `verify` output produced by runs with credentials set — working runs,
//! an outage, rejected credentials and broken configuration files — is searched for the
//! secrets, and any hit fails the test.
//!
//! Real servers (moto, Azurite, fake-gcs-server behind its adapter), started by
//! scripts/test.sh.

use std::fs;
use std::io::Write;
use std::process::{Command, Output};

use crate::common::{self, ETLFS, bucket, servers};
use bucket::{kubecost_write, poll};
use common::{Mounted, Opts};

/// Distinctive values: a hit cannot be a coincidence.
const S3_SECRET: &str = "etlfsSecretKey9f3b2c71d0";
const S3_TOKEN: &str = "etlfsSessionToken77aa51e3";
/// Access key ids are not secret to AWS, but nothing needs to print them either.
const S3_KEY_ID: &str = "AKIAETLFSKEYID4242";
/// A well-formed key Azurite does not know (base64 of a fixed phrase).
const AZURE_WRONG_KEY: &str = "ZXRsZnMgd3Jvbmcga2V5IGZvciB0aGUgc2VjcmV0cyB0ZXN0IDEyMzQ1Ng==";
const GCS_SECRET: &str = "etlfsGcsPrivateKey0c1d2e3f";

/// `GET path` on 127.0.0.1:port, the response (headers and body), or "" if nothing answers.
fn get(port: u16, path: &str) -> String {
    common::http_get(port, path).map_or_else(String::new, |r| format!("{}\n{}", r.head, r.body))
}

/// Everything a run produced, labelled, to search and to show on failure.
#[derive(Default)]
struct Transcript(Vec<(String, String)>);

impl Transcript {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }

    fn output(&mut self, what: &str, out: &Output) {
        self.add(
            format!("{what} stdout"),
            String::from_utf8_lossy(&out.stdout),
        );
        self.add(
            format!("{what} stderr"),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    fn status_server(&mut self, when: &str, port: u16) {
        for path in ["/status", "/metrics", "/healthz", "/readyz"] {
            self.add(format!("{path} {when}"), get(port, path));
        }
        let out = Command::new(ETLFS)
            .args(["status", "--listen", &format!("127.0.0.1:{port}")])
            .output()
            .unwrap();
        self.output(&format!("etlfs status {when}"), &out);
    }

    /// Fails if any secret appears anywhere; also checks that there was something to search.
    fn assert_clean(&self, secrets: &[&str]) {
        let total: usize = self.0.iter().map(|(_, t)| t.len()).sum();
        assert!(
            total > 1000,
            "too little output to prove anything: {total} bytes"
        );
        for (what, text) in &self.0 {
            for s in secrets {
                // Also URL- and JSON-escaped forms (a secret could travel in a query string).
                let forms = [s.to_string(), s.replace('=', "%3D").replace('+', "%2B")];
                for f in forms {
                    assert!(
                        !text.contains(&f),
                        "secret {s:?} found in {what}:\n{}",
                        excerpt(text, &f)
                    );
                }
            }
        }
    }
}

fn excerpt(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or(0);
    let mut from = at.saturating_sub(300);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let mut to = (at + needle.len() + 300).min(text.len());
    while !text.is_char_boundary(to) {
        to += 1;
    }
    text[from..to].to_owned()
}

fn s3_yaml(server: &servers::Server, secret: &str) -> String {
    format!(
        "type: S3\nconfig:\n  bucket: {}\n  endpoint: {}\n  insecure: true\n  \
         access_key: {S3_KEY_ID}\n  secret_key: {secret}\n  session_token: {S3_TOKEN}\n  \
         region: us-east-1\n  bucket_lookup_type: path\n",
        server.bucket,
        server.host_port(),
    )
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn oneshot(
    t: &mut Transcript,
    what: &str,
    cmd: &str,
    dir: &std::path::Path,
    cfg: &std::path::Path,
) {
    let out = Command::new(ETLFS)
        .arg(cmd)
        .arg("--config")
        .arg(cfg)
        .arg(dir)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    t.output(&format!("etlfs {cmd} ({what})"), &out);
}

/// A mount on S3 with a secret key and a session token, through uploads, an outage (failing
/// uploads, `degraded`), its end and SIGTERM; plus backup/verify working and during an outage.
#[test]
fn s3_credentials_never_appear() {
    let server = servers::s3_isolated();
    let cfg = write_config(&s3_yaml(&server, S3_SECRET));
    let port = common::free_port();
    let mut t = Transcript::default();
    let mut m = Mounted::with(
        Opts::on(cfg.path())
            .upload_delay("100ms")
            .listen(port)
            .args(["--degraded-after", "1s"])
            .log_filter("debug"),
    );
    for i in 0..5 {
        kubecost_write(&m.path(&format!("f{i}")), b"some bytes").unwrap();
    }
    assert!(
        poll(30, || get(port, "/metrics")
            .contains("etlfs_uploads_total 5")),
        "uploads done: {}",
        m.log()
    );
    t.status_server("after uploads", port);

    server.stop();
    kubecost_write(&m.path("during-outage"), b"more").unwrap();
    assert!(
        poll(60, || get(port, "/status").contains("\"degraded\"")),
        "degraded during the outage: {}",
        m.log()
    );
    t.status_server("during the outage", port);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("x"), b"x").unwrap();
    oneshot(&mut t, "outage", "backup", dir.path(), cfg.path());
    server.start();
    assert!(
        poll(60, || get(port, "/status").contains("\"ready\"")),
        "ready after the outage: {}",
        m.log()
    );
    t.status_server("after the outage", port);
    oneshot(&mut t, "working", "backup", dir.path(), cfg.path());
    oneshot(&mut t, "working", "verify", dir.path(), cfg.path());
    assert!(m.stop().success());
    t.add("mount log", m.log());
    assert!(
        t.0.iter().any(|(_, l)| l.contains("upload failed")),
        "the outage was logged"
    );
    t.assert_clean(&[S3_SECRET, S3_TOKEN, S3_KEY_ID]);
}

/// Azure with a key Azurite rejects: every attempt fails with an authorization error, which
/// is reported (log, /status, backup's errors) without the key; the working key too.
#[test]
fn azure_keys_never_appear_even_when_rejected() {
    let server = servers::azure();
    let good_key = std::env::var("ETLFS_TEST_AZURE_KEY").expect("run through scripts/test.sh");
    let good = server.yaml();
    assert!(good.contains(&good_key));
    let bad = good.replace(&good_key, AZURE_WRONG_KEY);
    let (good_cfg, bad_cfg) = (write_config(&good), write_config(&bad));
    let mut t = Transcript::default();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("x"), b"x").unwrap();
    oneshot(&mut t, "rejected key", "backup", dir.path(), bad_cfg.path());
    oneshot(&mut t, "working key", "backup", dir.path(), good_cfg.path());
    oneshot(&mut t, "working key", "verify", dir.path(), good_cfg.path());

    // The listing is refused, so the mount never comes up (Mounted would wait for it): run
    // the daemon directly, read its log and status server, stop it with SIGTERM.
    let port = common::free_port();
    let mnt = tempfile::tempdir().unwrap();
    let log_path = mnt.path().with_extension("log");
    let mut child = Command::new(ETLFS)
        .args([
            "mount",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(bad_cfg.path())
        .arg(mnt.path())
        .env("RUST_LOG", "debug")
        .stderr(fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || fs::read_to_string(&log_path).unwrap_or_default();
    let refused = poll(30, || log().contains("AuthorizationFailure"));
    t.status_server("with a rejected key", port);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let text = log();
    let _ = fs::remove_file(&log_path);
    assert!(refused, "the refusal was logged: {text}");
    t.add("mount log", text);
    assert!(
        status.success(),
        "SIGTERM while waiting for the bucket: {status:?}"
    );
    t.assert_clean(&[&good_key, AZURE_WRONG_KEY]);
}

/// A GCS service account whose private key is set: mount, upload, stop.
#[test]
fn gcs_private_key_never_appears() {
    let server = servers::gcs();
    let yaml = server.yaml().replace(
        r#"\"private_key\":\"\""#,
        &format!(r#"\"private_key\":\"{GCS_SECRET}\""#),
    );
    assert!(yaml.contains(GCS_SECRET), "{yaml}");
    let cfg = write_config(&yaml);
    let port = common::free_port();
    let mut t = Transcript::default();
    let mut m = Mounted::with(
        Opts::on(cfg.path())
            .upload_delay("100ms")
            .listen(port)
            .log_filter("debug"),
    );
    kubecost_write(&m.path("f"), b"bytes").unwrap();
    assert!(
        poll(30, || get(port, "/metrics")
            .contains("etlfs_uploads_total 1")),
        "{}",
        m.log()
    );
    t.status_server("after an upload", port);
    assert!(m.stop().success());
    t.add("mount log", m.log());
    t.assert_clean(&[GCS_SECRET]);
}

/// Broken configuration files that carry secrets: the messages name the file, the key and the
/// problem, never the value.
#[test]
fn config_errors_never_echo_secrets() {
    let server = servers::s3();
    let base = s3_yaml(&server, S3_SECRET);
    let broken = [
        // a secret of the wrong type
        base.replace(
            &format!("secret_key: {S3_SECRET}"),
            &format!("secret_key: [{S3_SECRET}]"),
        ),
        // a misspelt secret field
        base.replace("secret_key:", "secret_kye:"),
        // a mapping where a string belongs
        base.replace(
            &format!("session_token: {S3_TOKEN}"),
            &format!("session_token: {{ value: {S3_TOKEN} }}"),
        ),
        // a YAML syntax error on the secret's line
        base.replace(
            &format!("secret_key: {S3_SECRET}"),
            &format!("secret_key: \"{S3_SECRET}"),
        ),
        // a tab-indented line holding the secret
        base.replace(
            &format!("  secret_key: {S3_SECRET}"),
            &format!("\tsecret_key: {S3_SECRET}"),
        ),
        // an unknown type around valid secrets
        base.replace("type: S3", "type: S4"),
        // an endpoint without a host, next to valid secrets
        base.replace(server.host_port(), "http://"),
    ];
    let mut t = Transcript::default();
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in broken.iter().enumerate() {
        assert_ne!(text, &base, "case {i} changed nothing");
        let cfg = write_config(text);
        for cmd in ["backup", "verify"] {
            let out = Command::new(ETLFS)
                .arg(cmd)
                .arg("--config")
                .arg(cfg.path())
                .arg(dir.path())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "case {i}: {out:?}");
            t.output(&format!("{cmd}, broken config {i}"), &out);
        }
        let out = Command::new(ETLFS)
            .args(["mount", "--listen", "127.0.0.1:0", "--config"])
            .arg(cfg.path())
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "case {i}: {out:?}");
        t.output(&format!("mount, broken config {i}"), &out);
    }
    t.assert_clean(&[S3_SECRET, S3_TOKEN]);
}
