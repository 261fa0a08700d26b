//! The monitoring kit under deploy/monitoring stays correct and agrees with the binary: the
//! Prometheus alerting rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), every expression of the Grafana dashboard is valid PromQL, and every
//! metric either of them names is one a live mount serves on `/metrics` (and doc/METRICS.md
//! describes every metric served). The alerts and panels an operator relies on are there by
//! name.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_yaml_ng::Value;

use crate::common::{self, Opts, bucket, tools};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

const RULES: &str = "etlfs-alerts.yaml";
const RULE_TESTS: &str = "etlfs-alerts.test.yaml";
const DASHBOARD: &str = "etlfs-dashboard.json";

/// `promtool ARGS...`, run in deploy/monitoring, which must succeed.
fn promtool(args: &[&str]) -> tools::Ran {
    let mut cmd = Command::new(tools::promtool());
    cmd.args(args).current_dir(dir());
    let ran = tools::run(cmd, None, 120);
    ran.assert_ok(&format!("promtool {}", args.join(" ")));
    ran
}

/// (alert name, expression) of every rule.
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir().join(RULES)).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("only alerting rules");
            let expr = rule["expr"].as_str().expect("an expression");
            out.push((name.to_owned(), expr.to_owned()));
        }
    }
    out
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join(DASHBOARD)).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every value of a key `key` anywhere in `v`.
fn strings_at(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(s) if k == key => out.push(s.to_owned()),
                    _ => strings_at(v, key, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings_at(v, key, out)),
        _ => {}
    }
}

/// The PromQL of the dashboard's panels, and the queries of its variables.
fn dashboard_queries() -> (Vec<String>, Vec<String>) {
    let d = dashboard();
    let mut exprs = Vec::new();
    strings_at(&d["panels"], "expr", &mut exprs);
    let mut vars = Vec::new();
    strings_at(&d["templating"], "query", &mut vars);
    vars.retain(|q| q.starts_with("label_values("));
    (exprs, vars)
}

/// The metric names in a PromQL expression: its identifiers that start like etlfs' metrics
/// (`etlfs_`, `process_`), outside quoted label values. Functions, keywords and label names
/// never start that way.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut quoted = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("etlfs_") || word.starts_with("process_") {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

#[test]
fn the_alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    let n = alerts().len();
    assert!(
        checked
            .stdout
            .contains(&format!("SUCCESS: {n} rules found")),
        "{}",
        checked.stdout
    );
    let tested = promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.stdout.contains("SUCCESS"), "{}", tested.stdout);
    let names: Vec<String> = alerts().into_iter().map(|a| a.0).collect();
    for want in [
        "EtlfsBacklogTooOld",
        "EtlfsBucketDegraded",
        "EtlfsUploadsFailing",
        "EtlfsWritesStopped",
        "EtlfsRestoreStalled",
        "EtlfsLocalBytesNearBound",
        "EtlfsMemoryNearLimit",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "no {want} alert: {names:?}"
        );
    }
}

/// Every panel expression parses as PromQL: promtool checks them as recording rules, with
/// Grafana's interval variable given a value.
#[test]
fn the_dashboard_is_valid_promql_with_the_panels_operators_need() {
    let d = dashboard();
    assert_eq!(d["uid"], "etlfs");
    let (exprs, vars) = dashboard_queries();
    assert!(exprs.len() >= 20, "{exprs:?}");
    assert!(!vars.is_empty());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m");
        let quoted = serde_json::to_string(&e).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {quoted}\n"
        ));
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("dashboard-rules.yaml");
    std::fs::write(&file, rules).unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()]);

    let mut titles = Vec::new();
    strings_at(&d["panels"], "title", &mut titles);
    for want in [
        "State",
        "Writes to the bucket",
        "Backlog",
        "Backlog age",
        "Uploads and failures",
        "Request latency p95 by operation",
        "Left to restore",
        "Restore rate",
        "Memory",
        "File descriptors",
        "Local bytes",
    ] {
        assert!(
            titles.iter().any(|t| t == want),
            "no {want:?} panel: {titles:?}"
        );
    }
}

/// The names the rules and the dashboard use are ones a live mount serves, and every one it
/// serves is documented.
#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_served() {
    let mut used = BTreeSet::new();
    for (_, expr) in alerts() {
        used.extend(metric_names(&expr));
    }
    let (exprs, vars) = dashboard_queries();
    for e in exprs.iter().chain(&vars) {
        used.extend(metric_names(e));
    }
    assert!(used.len() >= 25, "{used:?}");

    let t = bucket::target("filesystem");
    let port = common::free_port();
    let (_m, _cfg) = bucket::mount_on(&t, "100ms", Opts::default().listen(port));
    let r = common::http_get_accept(port, "/metrics", "text/plain; version=0.0.4").unwrap();
    assert_eq!(r.code, 200);
    let served: BTreeSet<String> = r
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let missing: Vec<&String> = used.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "used by deploy/monitoring but not on /metrics: {missing:?}\nserved: {served:?}"
    );

    // And doc/METRICS.md describes each (a histogram under its family's name).
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("doc/METRICS.md"))
            .unwrap();
    let undocumented: Vec<&String> = served
        .iter()
        .filter(|name| {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !doc.contains(&format!("`{name}`"))
                && !doc.contains(&format!("`{name}{{"))
                && !doc.contains(&format!("`{family}`"))
                && !doc.contains(&format!("`{family}{{"))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in doc/METRICS.md: {undocumented:?}"
    );
}

#[test]
fn metric_names_are_found_outside_quotes_only() {
    let got = metric_names(
        r#"sum by (op) (rate(etlfs_bucket_requests_total{outcome="etlfs_x"}[5m])) > 0.9 * process_max_fds"#,
    );
    let want: BTreeSet<String> = ["etlfs_bucket_requests_total", "process_max_fds"]
        .map(String::from)
        .into();
    assert_eq!(got, want);
}
