//! The Helm post-renderer (deploy/kubernetes/helm-postrender/kustomize.sh) run as Helm runs it:
//! the rendered chart on its stdin, what to install on its stdout. The renderings of Kubecost's
//! cost-analyzer chart are the fixtures in tests/it/fixtures/kubecost-chart/ and renderings
//! derived from them the way the chart would render them otherwise (another release name, the
//! chart's default rollout strategy, the aggregator in a StatefulSet of its own). The script runs
//! kustomize through kubectl (>= 1.21), which scripts/test.sh installs; no cluster is involved.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::{CONFIGS, DB_PV, Layout, check_pod, documents, get, kind, repo, secrets, seq, str_at};

/// The chart's Deployment in the fixtures (release `kubecost`): `<release>-cost-analyzer`.
const DEPLOYMENT: &str = "kubecost-cost-analyzer";

fn fixture(name: &str) -> String {
    let path = repo().join("tests/it/fixtures/kubecost-chart").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The YAML documents of a multi-document text, empty ones left out.
fn parse(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|de| Value::deserialize(de).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}")))
        .filter(|d| !d.is_null())
        .collect()
}

fn unparse(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).unwrap()))
        .collect()
}

/// kubectl is there and new enough for the script's `kubectl kustomize` with `patches`.
fn require_kubectl() {
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl ({e}): the post-renderer needs it; scripts/test.sh installs it")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .split("v1.")
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|m| m.parse::<u32>().ok());
    assert!(
        out.status.success() && minor.is_some_and(|m| m >= 21),
        "kubectl >= 1.21 needed (kustomize `patches`), got: {text}"
    );
}

/// Runs the post-renderer with `chart` on its stdin, as Helm does, with
/// ETLFS_KUBECOST_DEPLOYMENT set to `deployment` if given (and unset otherwise).
fn post_render(chart: &str, deployment: Option<&str>) -> Output {
    require_kubectl();
    let script = repo().join("deploy/kubernetes/helm-postrender/kustomize.sh");
    let mut cmd = Command::new(&script);
    cmd.env_remove("ETLFS_KUBECOST_DEPLOYMENT");
    if let Some(d) = deployment {
        cmd.env("ETLFS_KUBECOST_DEPLOYMENT", d);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    // From a thread: a script that refuses early stops reading, and must not block the test.
    let mut stdin = child.stdin.take().unwrap();
    let input = chart.to_string();
    let writer = std::thread::spawn(move || match stdin.write_all(input.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// The one line a refused rendering gets: exit 1, nothing to install, one message.
fn refused(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "not refused: {err}");
    assert!(
        out.stdout.is_empty(),
        "a refused rendering must print nothing for Helm to install"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one message, got: {err}");
    assert!(lines[0].starts_with("etlfs post-renderer: "), "{err}");
    lines[0].to_string()
}

/// `v` without its null map entries: kustomize drops them (`annotations:` left empty by a
/// template), which changes nothing Kubernetes sees.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Sequence(s) => Value::Sequence(s.iter().map(without_nulls).collect()),
        v => v.clone(),
    }
}

fn identity(d: &Value) -> (String, String) {
    (
        kind(d).unwrap_or_default().to_string(),
        str_at(d, "metadata.name").unwrap_or_default().to_string(),
    )
}

fn named<'a>(items: &'a [Value], name: &str) -> Option<&'a Value> {
    items.iter().find(|c| str_at(c, "name") == Some(name))
}

/// A successful rendering of `chart`: everything passes through unchanged but the Deployment
/// `deployment`, which gains the sidecar for `layout` (checked like the examples) while the
/// chart's own containers gain only `mountPropagation: HostToContainer` on the ETL volume, and
/// keep the chart's rollout strategy.
fn check_rendering(chart: &str, out: &Output, deployment: &str, layout: &Layout) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "post-renderer failed: {stderr}");
    let input = parse(chart);
    let output = parse(&String::from_utf8(out.stdout.clone()).unwrap());
    let mut ids_in: Vec<_> = input.iter().map(identity).collect();
    let mut ids_out: Vec<_> = output.iter().map(identity).collect();
    ids_in.sort();
    ids_out.sort();
    assert_eq!(ids_out, ids_in, "objects added or lost");

    let target = ("Deployment".to_string(), deployment.to_string());
    for d in input.iter().filter(|d| identity(d) != target) {
        let after = output.iter().find(|o| identity(o) == identity(d)).unwrap();
        assert_eq!(
            without_nulls(after),
            without_nulls(d),
            "{:?} changed",
            identity(d)
        );
    }

    let before = without_nulls(input.iter().find(|d| identity(d) == target).unwrap());
    let after = output.iter().find(|d| identity(d) == target).unwrap();
    let at = format!("the rendered Deployment {deployment}");
    check_pod(
        &at,
        get(after, "spec.template.spec").unwrap(),
        &secrets(&documents()),
        layout,
    );
    for field in [
        "metadata",
        "spec.selector",
        "spec.strategy",
        "spec.replicas",
    ] {
        assert_eq!(
            get(&without_nulls(after), field),
            get(&before, field),
            "{at}: {field} changed"
        );
    }
    assert_eq!(str_at(after, "spec.strategy.type"), Some("Recreate"));
    let pod_before = get(&before, "spec.template.spec").unwrap();
    let pod_after = get(after, "spec.template.spec").unwrap();
    assert_eq!(
        get(pod_after, "securityContext"),
        get(pod_before, "securityContext"),
        "{at}: the pod's security context changed"
    );
    for v in seq(pod_before, "volumes") {
        let name = str_at(v, "name").unwrap();
        assert_eq!(
            named(seq(pod_after, "volumes"), name),
            Some(v),
            "{at}: volume {name}"
        );
    }
    let containers = seq(pod_after, "containers");
    assert_eq!(containers.len(), seq(pod_before, "containers").len());
    // Mounts compared in mountPath order: the strategic merge moves the patched one first.
    let by_path = |c: &mut Value| {
        if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_sequence_mut) {
            mounts.sort_by_key(|m| str_at(m, "mountPath").unwrap().to_string());
        }
    };
    for c in seq(pod_before, "containers") {
        let name = str_at(c, "name").unwrap();
        let mut c_before = c.clone();
        by_path(&mut c_before);
        let mut c_after = named(containers, name).unwrap().clone();
        by_path(&mut c_after);
        if layout.consumers.contains(&name) {
            let mounts = c_after.get_mut("volumeMounts").unwrap();
            for m in mounts.as_sequence_mut().unwrap() {
                if str_at(m, "name") == Some(layout.volume) {
                    let propagation = m.as_mapping_mut().unwrap().remove("mountPropagation");
                    assert_eq!(
                        propagation.as_ref().and_then(Value::as_str),
                        Some("HostToContainer"),
                        "{at}: {name}"
                    );
                }
            }
        }
        assert_eq!(
            c_after, c_before,
            "{at}: container {name} changed beyond the propagation"
        );
    }
}

/// `chart` as the chart renders it for release `release` (namespace unchanged).
fn other_release(chart: &str, release: &str) -> String {
    let mut text = chart.to_string();
    for (from, to) in [
        ("kubecost-cost-analyzer", format!("{release}-cost-analyzer")),
        ("kubecost-forecasting", format!("{release}-forecasting")),
        (
            "kubecost-prometheus-server",
            format!("{release}-prometheus-server"),
        ),
        (
            "app.kubernetes.io/instance: kubecost",
            format!("app.kubernetes.io/instance: {release}"),
        ),
        ("release: kubecost", format!("release: {release}")),
        (
            "name: RELEASE_NAME\n              value: kubecost",
            format!("name: RELEASE_NAME\n              value: {release}"),
        ),
    ] {
        assert!(text.contains(from), "fixture without {from:?}");
        text = text.replace(from, &to);
    }
    text
}

#[test]
fn post_renderer_adds_the_sidecar_to_the_charts_pod() {
    let chart = fixture("singlepod.yaml");
    check_rendering(&chart, &post_render(&chart, None), DEPLOYMENT, &CONFIGS);
}

#[test]
fn post_renderer_follows_the_legacy_db_volume() {
    // persistentVolume.dbPVEnabled: the ETL directory is /var/db/etl on `persistent-db`;
    // check_rendering also shows the /var/configs mounts and cloud-cost left as they were, and
    // the aggregator's /var/db mount still read-only.
    let chart = fixture("dbpv.yaml");
    check_rendering(&chart, &post_render(&chart, None), DEPLOYMENT, &DB_PV);
}

#[test]
fn post_renderer_refuses_another_release_and_patches_the_one_named() {
    // kustomize alone patches nothing here and says nothing: a release without a backup.
    let chart = other_release(&fixture("singlepod.yaml"), "kc");
    let msg = refused(&post_render(&chart, None));
    for needle in [
        "no Deployment \"kubecost-cost-analyzer\"",
        "found: kc-cost-analyzer, kc-forecasting, kc-prometheus-server",
        "ETLFS_KUBECOST_DEPLOYMENT",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
    }

    let out = post_render(&chart, Some("kc-cost-analyzer"));
    check_rendering(&chart, &out, "kc-cost-analyzer", &CONFIGS);

    let msg = refused(&post_render(&chart, Some("kc cost")));
    assert!(
        msg.contains("ETLFS_KUBECOST_DEPLOYMENT=\"kc cost\" is not a Deployment name"),
        "{msg}"
    );
}

#[test]
fn post_renderer_refuses_the_charts_default_rolling_update() {
    // Without helm-values.yaml the chart renders its default strategy.
    let chart = fixture("singlepod.yaml");
    let recreate = "  strategy: \n    type: Recreate\n";
    assert!(chart.contains(recreate));
    let rolling = chart.replace(
        recreate,
        "  strategy:\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 1\n    \
         type: RollingUpdate\n",
    );
    let msg = refused(&post_render(&rolling, None));
    for needle in [
        "strategy RollingUpdate, not Recreate",
        "kubecostDeployment.deploymentStrategy",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
    }
}

#[test]
fn post_renderer_refuses_a_pod_without_the_etl_readers() {
    // kubecostAggregator.deployMethod: statefulset moves aggregator and cloud-cost out of the
    // pod (into a StatefulSet and a Deployment of their own, left out here): merging the patch
    // by container name would add two containers without an image.
    let mut docs = parse(&fixture("singlepod.yaml"));
    let d = docs
        .iter_mut()
        .find(|d| identity(d) == ("Deployment".into(), DEPLOYMENT.into()))
        .unwrap();
    let containers = d["spec"]["template"]["spec"]
        .get_mut("containers")
        .and_then(Value::as_sequence_mut)
        .unwrap();
    containers.retain(|c| !matches!(str_at(c, "name"), Some("aggregator" | "cloud-cost")));
    assert_eq!(containers.len(), 2);
    let msg = refused(&post_render(&unparse(&docs), None));
    for needle in [
        "lacks the container(s) aggregator, cloud-cost",
        "its containers: cost-model, cost-analyzer-frontend",
        "kubecostAggregator.deployMethod: singlepod",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
    }
}
