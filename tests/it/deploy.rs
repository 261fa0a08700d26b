//! The deployment examples stay correct and agree with the binary: every manifest under
//! deploy/kubernetes (the example Deployment, the Secret, the Helm values and the post-renderer
//! patches) and deploy/systemd/etlfs.service. The post-renderer itself runs in [`helm`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

mod helm;

/// Kubecost's ETL directory with the chart's defaults: what the examples mount over.
const ETL: &str = "/var/configs/db/etl";

/// Where Kubecost keeps its ETL directory, which the etlfs sidecar mounts over, and which
/// containers of the chart's pod mount the volume that holds it.
struct Layout {
    etl: &'static str,
    volume: &'static str,
    mount_path: &'static str,
    consumers: &'static [&'static str],
}

/// The chart's default: the ETL directory on the `persistent-configs` volume, which cost-model
/// and (Kubecost v2 `singlepod`) aggregator and cloud-cost mount.
const CONFIGS: Layout = Layout {
    etl: ETL,
    volume: "persistent-configs",
    mount_path: "/var/configs",
    consumers: &["cost-model", "aggregator", "cloud-cost"],
};

/// `persistentVolume.dbPVEnabled: true`: ETL_PATH_PREFIX=/var/db on the `persistent-db` volume,
/// which only cost-model and aggregator mount.
const DB_PV: Layout = Layout {
    etl: "/var/db/etl",
    volume: "persistent-db",
    mount_path: "/var/db",
    consumers: &["cost-model", "aggregator"],
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every YAML document of every file under deploy/kubernetes, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&repo().join("deploy/kubernetes"), &mut files);
    files.sort();
    assert!(files.len() >= 4, "expected the manifests, got {files:?}");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", file.display()));
            if !doc.is_null() {
                docs.push((file.clone(), doc));
            }
        }
    }
    docs
}

/// The value at a dot-separated path of mapping keys.
fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn seq<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn strings(v: &Value, path: &str) -> Vec<String> {
    seq(v, path)
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{path}: not a string: {s:?}"))
                .to_string()
        })
        .collect()
}

fn kind(doc: &Value) -> Option<&str> {
    str_at(doc, "kind")
}

/// The value following `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .map(|i| args.get(i + 1).expect("flag without a value").as_str())
}

/// `--drain-timeout` of an `etlfs mount` command line (30 s when absent, as in the binary).
fn drain_timeout(args: &[String]) -> Duration {
    flag_value(args, "--drain-timeout").map_or(Duration::from_secs(30), |t| {
        humantime::parse_duration(t).unwrap()
    })
}

/// The `--flags` a subcommand's `--help` lists.
fn help_flags(cmd: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_etlfs"))
        .args([cmd, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split('=').next().unwrap().to_string())
        .collect()
}

fn assert_flags_exist(cmd: &str, args: &[String], what: &str) {
    let known = help_flags(cmd);
    assert!(known.len() > 3, "no flags in `etlfs {cmd} --help`");
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(
            known.iter().any(|k| k == flag),
            "{what}: `{flag}` is not a flag of `etlfs {cmd}` ({known:?})"
        );
    }
}

/// The etlfs sidecar of a pod spec and its consumers, checked field by field. `at` names the pod
/// in messages.
fn check_pod(at: &str, pod: &Value, secrets: &[(String, Vec<String>)], layout: &Layout) {
    let etl = layout.etl;
    let inits = seq(pod, "initContainers");
    let pos = inits
        .iter()
        .position(|c| str_at(c, "name") == Some("etlfs"))
        .unwrap_or_else(|| panic!("{at}: no etlfs init container (native sidecar)"));
    let etlfs = &inits[pos];
    assert!(
        seq(pod, "containers")
            .iter()
            .all(|c| str_at(c, "name") != Some("etlfs")),
        "{at}: etlfs must be a native sidecar, not an app container"
    );
    assert_eq!(
        str_at(etlfs, "restartPolicy"),
        Some("Always"),
        "{at}: the sidecar needs restartPolicy: Always"
    );
    assert_eq!(
        get(etlfs, "securityContext.privileged").and_then(Value::as_bool),
        Some(true),
        "{at}: the sidecar must be privileged"
    );
    assert_ne!(
        get(etlfs, "securityContext.allowPrivilegeEscalation").and_then(Value::as_bool),
        Some(false),
        "{at}: privileged with allowPrivilegeEscalation: false is rejected by the API"
    );

    // The command line.
    let args = strings(etlfs, "args");
    assert_eq!(
        args.first().map(String::as_str),
        Some("mount"),
        "{at}: {args:?}"
    );
    assert_eq!(args.last().map(String::as_str), Some(etl), "{at}: {args:?}");
    assert_eq!(flag_value(&args, "--prefix"), Some("etl"), "{at}: {args:?}");
    assert_flags_exist("mount", &args[1..], &format!("{at} args"));
    let config = flag_value(&args, "--config").unwrap_or_else(|| panic!("{at}: no --config"));
    let drain = drain_timeout(&args);

    // The ETL volume: Bidirectional on the sidecar, HostToContainer on every consumer.
    let mounts = seq(etlfs, "volumeMounts");
    let etl_mount = mounts
        .iter()
        .find(|m| str_at(m, "mountPath").is_some_and(|p| etl.starts_with(p)))
        .unwrap_or_else(|| panic!("{at}: the sidecar does not mount the ETL volume"));
    assert_eq!(
        str_at(etl_mount, "mountPropagation"),
        Some("Bidirectional"),
        "{at}: the sidecar's ETL mount must propagate out"
    );
    let volume = str_at(etl_mount, "name").unwrap();
    let path = str_at(etl_mount, "mountPath").unwrap();
    assert_eq!(
        (volume, path),
        (layout.volume, layout.mount_path),
        "{at}: the sidecar mounts the wrong volume for {etl}"
    );
    let mut consumers = Vec::new();
    for c in seq(pod, "containers") {
        let name = str_at(c, "name").unwrap();
        for m in seq(c, "volumeMounts") {
            if str_at(m, "name") == Some(volume) {
                assert_eq!(
                    str_at(m, "mountPath"),
                    Some(path),
                    "{at}: {name} mounts {volume} elsewhere"
                );
                assert_eq!(
                    str_at(m, "mountPropagation"),
                    Some("HostToContainer"),
                    "{at}: {name} would not see the etlfs mount"
                );
                consumers.push(name);
            }
        }
    }
    for needed in layout.consumers {
        assert!(
            consumers.contains(needed),
            "{at}: {needed} does not get the mount"
        );
    }

    // The directory exists before etlfs mounts over it, made on the volume that holds it.
    assert!(
        inits[..pos].iter().any(|c| {
            let cmd = strings(c, "command");
            cmd.iter().any(|a| a == "mkdir")
                && cmd.iter().any(|a| a == etl)
                && seq(c, "volumeMounts").iter().any(|m| {
                    str_at(m, "name") == Some(volume) && str_at(m, "mountPath") == Some(path)
                })
        }),
        "{at}: no init container creates {etl} on {volume} before the sidecar"
    );

    // The Secret: mounted read-only where --config points, with the right key.
    let config = Path::new(config);
    let (dir, file_name) = (config.parent().unwrap(), config.file_name().unwrap());
    let secret_mount = mounts
        .iter()
        .find(|m| str_at(m, "mountPath").map(Path::new) == Some(dir))
        .unwrap_or_else(|| panic!("{at}: nothing mounted at {}", dir.display()));
    assert_eq!(
        get(secret_mount, "readOnly").and_then(Value::as_bool),
        Some(true),
        "{at}: the bucket Secret must be mounted read-only"
    );
    let name = str_at(secret_mount, "name").unwrap();
    let vol = seq(pod, "volumes")
        .iter()
        .find(|v| str_at(v, "name") == Some(name))
        .unwrap_or_else(|| panic!("{at}: no volume {name}"));
    let secret_name = str_at(vol, "secret.secretName")
        .unwrap_or_else(|| panic!("{at}: volume {name} is not a Secret"));
    let items = seq(vol, "secret.items");
    let key = if items.is_empty() {
        file_name.to_str().unwrap()
    } else {
        let item = items
            .iter()
            .find(|i| str_at(i, "path").map(std::ffi::OsStr::new) == Some(file_name))
            .unwrap_or_else(|| panic!("{at}: no Secret item gives {}", config.display()));
        str_at(item, "key").unwrap()
    };
    let (_, keys) = secrets
        .iter()
        .find(|(n, _)| n == secret_name)
        .unwrap_or_else(|| panic!("{at}: no Secret {secret_name} among the manifests"));
    assert!(
        keys.iter().any(|k| k == key),
        "{at}: Secret {secret_name} has no key {key}"
    );

    // Probes: `etlfs status` gates the start and readiness; no liveness on it (too strict).
    for probe in ["startupProbe", "readinessProbe"] {
        let cmd = strings(etlfs, &format!("{probe}.exec.command"));
        assert!(
            cmd.first().is_some_and(|c| c.ends_with("etlfs"))
                && cmd.get(1).is_some_and(|c| c == "status"),
            "{at}: the {probe} must run `etlfs status`, got {cmd:?}"
        );
        assert_flags_exist("status", &cmd[2..], &format!("{at} {probe}"));
    }
    if let Some(live) = get(etlfs, "livenessProbe") {
        let cmd = strings(live, "exec.command");
        assert!(
            !cmd.iter().any(|a| a == "status"),
            "{at}: `etlfs status` fails while degraded; as liveness it would restart etlfs"
        );
    }

    // Shutdown budget and resources.
    let grace = get(pod, "terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30);
    assert!(
        Duration::from_secs(grace) > drain,
        "{at}: terminationGracePeriodSeconds {grace} must exceed --drain-timeout {drain:?}"
    );
    for r in ["cpu", "memory"] {
        assert!(
            get(etlfs, &format!("resources.requests.{r}")).is_some(),
            "{at}: the sidecar requests no {r}"
        );
    }
}

/// The example Secrets under deploy/kubernetes: name and keys of each.
fn secrets(docs: &[(PathBuf, Value)]) -> Vec<(String, Vec<String>)> {
    docs.iter()
        .filter(|(_, d)| kind(d) == Some("Secret"))
        .map(|(_, d)| {
            let mut keys = Vec::new();
            for section in ["stringData", "data"] {
                if let Some(m) = get(d, section).and_then(Value::as_mapping) {
                    keys.extend(m.keys().filter_map(Value::as_str).map(String::from));
                }
            }
            (str_at(d, "metadata.name").unwrap().to_string(), keys)
        })
        .collect()
}

#[test]
fn kubernetes_manifests_wire_the_sidecar() {
    let docs = documents();
    let secrets = secrets(&docs);
    assert!(!secrets.is_empty(), "no Secret example");
    for (file, d) in docs.iter().filter(|(_, d)| kind(d) == Some("Secret")) {
        let text = get(d, "stringData")
            .and_then(|m| m.get("object-store.yaml"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{}: no object-store.yaml", file.display()));
        let conf: Value = serde_yaml_ng::from_str(text).unwrap();
        assert_eq!(str_at(&conf, "type"), Some("S3"), "{}", file.display());
        assert!(
            str_at(&conf, "config.bucket").is_some(),
            "{}",
            file.display()
        );
    }

    // The example Deployment, and the post-renderer's patches for the chart's Deployment: one
    // per layout of the ETL directory.
    let dir = repo().join("deploy/kubernetes");
    let expected = [
        ("deployment.yaml", &CONFIGS),
        ("helm-postrender/kubecost-patch.yaml", &CONFIGS),
        ("helm-postrender/kubecost-patch-dbpv.yaml", &DB_PV),
    ];
    let deployments: Vec<_> = docs
        .iter()
        .filter(|(_, d)| kind(d) == Some("Deployment"))
        .collect();
    let mut names: Vec<_> = deployments
        .iter()
        .map(|(f, _)| f.strip_prefix(&dir).unwrap().to_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut want: Vec<_> = expected.iter().map(|(f, _)| *f).collect();
    want.sort_unstable();
    assert_eq!(names, want, "one Deployment in each file, no other");
    for (file, d) in deployments {
        let name = file.strip_prefix(&dir).unwrap().to_str().unwrap();
        let layout = expected.iter().find(|(f, _)| *f == name).unwrap().1;
        assert_eq!(str_at(d, "apiVersion"), Some("apps/v1"), "{name}");
        if name == "deployment.yaml" {
            assert_eq!(
                str_at(d, "spec.strategy.type"),
                Some("Recreate"),
                "{name}: two pods must never mirror the same volume at once"
            );
        } else {
            // The chart has a value for the strategy (helm-values.yaml); the post-renderer
            // checks the rendering has it.
            assert!(
                get(d, "spec.strategy").is_none(),
                "{name}: the strategy is the chart's value, not the patch's"
            );
        }
        if let Some(selector) = get(d, "spec.selector.matchLabels").and_then(Value::as_mapping) {
            let labels = get(d, "spec.template.metadata.labels").unwrap();
            for (k, v) in selector {
                assert_eq!(labels.get(k), Some(v), "{name}: selector {k:?}");
            }
        }
        check_pod(
            name,
            get(d, "spec.template.spec").unwrap(),
            &secrets,
            layout,
        );
    }

    // The two patches differ only in where the ETL directory is: the same sidecar otherwise.
    let patch = |file: &str| -> Value {
        let d = &docs.iter().find(|(f, _)| f.ends_with(file)).unwrap().1;
        let mut pod = get(d, "spec.template.spec").unwrap().clone();
        let inits = pod.get_mut("initContainers").unwrap();
        for c in inits.as_sequence_mut().unwrap() {
            let c = c.as_mapping_mut().unwrap();
            c.remove("volumeMounts");
            c.remove("command");
            if let Some(args) = c.get_mut("args").and_then(Value::as_sequence_mut) {
                args.pop();
            }
        }
        pod.as_mapping_mut().unwrap().remove("containers");
        pod
    };
    assert_eq!(
        patch("helm-postrender/kubecost-patch.yaml"),
        patch("helm-postrender/kubecost-patch-dbpv.yaml"),
        "the patches' sidecars differ beyond the ETL directory"
    );
    assert!(dir.join("helm-postrender/kustomize.sh").is_file());
}

#[test]
fn helm_values_turn_kubecost_backup_off() {
    let file = repo().join("deploy/kubernetes/helm-values.yaml");
    let values: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    // One writer per key: Kubecost's own bucket backup must be unset.
    let secret = get(&values, "kubecostModel.etlBucketConfigSecret");
    assert!(
        secret.is_none_or(|v| v.is_null() || v.as_str() == Some("")),
        "kubecostModel.etlBucketConfigSecret must be unset, got {secret:?}"
    );
    assert_eq!(
        get(&values, "persistentVolume.enabled").and_then(Value::as_bool),
        Some(true)
    );
    // The patch gives the aggregator container the mount, so it must be in this pod.
    assert_eq!(
        str_at(&values, "kubecostAggregator.deployMethod"),
        Some("singlepod")
    );
    // The chart's own value for the rollout, and one pod.
    assert_eq!(
        str_at(&values, "kubecostDeployment.deploymentStrategy.type"),
        Some("Recreate")
    );
    assert_eq!(
        get(&values, "kubecostDeployment.replicas").and_then(Value::as_u64),
        Some(1)
    );
}

/// `Key=value` lines of a systemd unit, sections ignored (keys may repeat).
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('[')
        })
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=value: {l}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// A systemd time span: plain seconds or humantime-like units (`75s`, `2min`).
fn systemd_span(v: &str) -> Duration {
    v.parse::<u64>()
        .map(Duration::from_secs)
        .unwrap_or_else(|_| humantime::parse_duration(v).unwrap())
}

#[test]
fn systemd_unit_mounts_before_the_app_and_drains_on_stop() {
    let text = std::fs::read_to_string(repo().join("deploy/systemd/etlfs.service")).unwrap();
    let entries = unit_entries(&text);
    let one = |key: &str| -> &str {
        let vals: Vec<&str> = entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(vals.len(), 1, "expected one {key}=, got {vals:?}");
        vals[0]
    };
    // Active only once etlfs says READY=1 (tests/it/cli.rs checks when it does).
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("Restart"), "on-failure");
    assert!(
        one("After")
            .split_whitespace()
            .any(|u| u == "network-online.target")
    );
    assert!(
        one("Wants")
            .split_whitespace()
            .any(|u| u == "network-online.target")
    );
    assert!(
        !one("Before").is_empty(),
        "the app's unit must be ordered after etlfs"
    );

    let exec: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(
        exec[0].starts_with('/') && exec[0].ends_with("/etlfs"),
        "{exec:?}"
    );
    assert_eq!(exec[1], "mount");
    assert_eq!(exec.last().map(String::as_str), Some(ETL));
    assert!(flag_value(&exec, "--config").is_some(), "{exec:?}");
    assert_eq!(flag_value(&exec, "--prefix"), Some("etl"));
    assert_flags_exist("mount", &exec[2..], "ExecStart");

    let stop = systemd_span(one("TimeoutStopSec"));
    let drain = drain_timeout(&exec);
    assert!(
        stop > drain,
        "TimeoutStopSec {stop:?} must exceed --drain-timeout {drain:?}"
    );

    // Readiness is etlfs' own READY=1, not a polling loop.
    assert!(entries.iter().all(|(k, _)| k != "ExecStartPost"));

    // No sandboxing that would hide the mount in a private mount namespace.
    for key in [
        "PrivateMounts",
        "PrivateTmp",
        "ProtectSystem",
        "ProtectHome",
    ] {
        assert!(
            entries.iter().all(|(k, _)| k != key),
            "{key}= hides the mount"
        );
    }
}

/// `systemd-analyze verify` accepts the unit without a word (it warns about unknown keys and
/// bad values but still exits 0, so its output must be empty). The binary paths are pointed at
/// the binary under test, since verify checks that they exist.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let text = std::fs::read_to_string(repo().join("deploy/systemd/etlfs.service")).unwrap();
    let text = text.replace("/usr/local/bin/etlfs", env!("CARGO_BIN_EXE_etlfs"));
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("etlfs.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze is installed (scripts/test.sh installs systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify says:\n{said}"
    );
}
