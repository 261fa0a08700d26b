//! The secret scrubber: every secret value found in an object-store.yaml, so that it can be
//! cut out of messages etlfs passes on.
//!
//! Secret values (S3 secret key and session token, Azure account key, client secret and
//! connection string, the GCS service-account JSON, SSE-C key material) never reach an error
//! message, a `Debug` rendering, `BucketConfig::describe` or a log line. etlfs' own messages
//! never format them; messages passed on from `serde_yaml_ng`, `serde_json` or `object_store`
//! go through [`Secrets::scrub`] first, which removes every secret value found in the file.

/// Keys whose values are secrets, wherever they appear in the file.
const SECRET_KEYS: &[&str] = &[
    "secret_key",
    "session_token",
    "access_key",
    "storage_account_key",
    "client_secret",
    "storage_connection_string",
    "service_account",
];

/// Every secret value found in the file, longest first, so it can be cut out of third-party
/// error messages.
#[derive(Debug, Default)]
pub(super) struct Secrets(Vec<String>);

impl Secrets {
    /// Best effort over a document that may not even parse: a YAML tree walk, plus a line scan
    /// for `secret_key: value` forms when the tree cannot be built.
    pub(super) fn collect(yaml: &str) -> Self {
        let mut found = Vec::new();
        if let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(yaml) {
            walk_yaml(&value, &mut found);
        }
        for line in yaml.lines() {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            if SECRET_KEYS.contains(&key.trim()) {
                let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
                add_secret(value, &mut found);
            }
        }
        found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        found.dedup();
        Secrets(found)
    }

    pub(super) fn scrub(&self, message: String) -> String {
        let mut message = message;
        for secret in &self.0 {
            if message.contains(secret.as_str()) {
                message = message.replace(secret.as_str(), "<redacted>");
            }
        }
        message
    }
}

fn walk_yaml(value: &serde_yaml_ng::Value, found: &mut Vec<String>) {
    use serde_yaml_ng::Value;
    match value {
        Value::Mapping(map) => {
            for (key, value) in map {
                let secret_key = key.as_str().is_some_and(|k| SECRET_KEYS.contains(&k));
                if secret_key {
                    let text = match value {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    };
                    if let Some(text) = text {
                        add_secret(&text, found);
                    }
                }
                walk_yaml(value, found);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| walk_yaml(v, found)),
        Value::Tagged(tagged) => walk_yaml(&tagged.value, found),
        _ => {}
    }
}

/// Adds `value` and the secret parts inside it: a connection string's key or signature and
/// the private fields of a credentials JSON.
fn add_secret(value: &str, found: &mut Vec<String>) {
    // Shorter strings would garble messages (and are not plausible secrets).
    const MIN_LEN: usize = 4;
    let value = value.trim();
    if value.len() < MIN_LEN {
        return;
    }
    found.push(value.to_string());
    for part in value.split(';') {
        if let Some((name, v)) = part.split_once('=') {
            let name = name.trim().to_ascii_lowercase();
            let secret = name == "accountkey" || name == "sharedaccesssignature";
            if secret && v.trim().len() >= MIN_LEN {
                found.push(v.trim().to_string());
            }
        }
    }
    if let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(value) {
        for field in [
            "private_key",
            "private_key_id",
            "client_secret",
            "refresh_token",
        ] {
            if let Some(serde_json::Value::String(s)) = obj.get(field) {
                if s.len() >= MIN_LEN {
                    found.push(s.clone());
                    // As it may appear re-escaped in a JSON error excerpt.
                    found.push(s.replace('\n', "\\n"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::config::testkit::*;

    #[test]
    fn scrubber_removes_secrets_from_foreign_messages() {
        let secrets = Secrets::collect(&format!(
            "config:\n  secret_key: {SENTINEL}\n  storage_connection_string: 'A=1;AccountKey=k{SENTINEL}'\n"
        ));
        let scrubbed = secrets.scrub(format!("bad key k{SENTINEL} and {SENTINEL}"));
        assert!(!scrubbed.contains(SENTINEL), "{scrubbed}");
        assert!(scrubbed.contains("<redacted>"), "{scrubbed}");
    }

    #[test]
    fn secrets_never_leak() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, format!("{SENTINEL}{SENTINEL}")).unwrap();
        let short = dir.path().join("s");
        std::fs::write(&short, SENTINEL).unwrap();
        let sa_ok = format!(
            "{{\"type\":\"service_account\",\"private_key\":\"{SENTINEL}\",\"private_key_id\":\"{SENTINEL}\",\
             \"client_email\":\"a@b\",\"disable_oauth\":true}}"
        );
        let sa_real = format!(
            "{{\"type\":\"service_account\",\"private_key\":\"-----BEGIN PRIVATE KEY-----\\n{SENTINEL}\\n-----END PRIVATE KEY-----\\n\",\
             \"private_key_id\":\"1\",\"client_email\":\"a@b\"}}"
        );
        let cs = format!("AccountName=acct;AccountKey={SENTINEL}");
        let cs_bad = format!("AccountName=acct;AccountKey={SENTINEL}!;");
        let configs = [
            s3(&format!(
                "access_key: AKID\nsecret_key: {SENTINEL}\nsession_token: {SENTINEL}"
            )),
            s3(&format!(
                "access_key: AKID\nsecret_key: {SENTINEL}\nsignature_version2: true"
            )),
            s3(&format!(
                "access_key: AKID\nsecret_key: {SENTINEL}\nsession_token: {SENTINEL}\nbogus: 1"
            )),
            s3(&format!("secret_key: [{SENTINEL}]")),
            s3(&format!("secret_key: {{a: {SENTINEL}}}")),
            s3(&format!("secret_key: {SENTINEL}\n  bad: [")),
            s3(&format!("session_token: {SENTINEL}")),
            s3(&format!("access_key: {SENTINEL}")),
            s3(&format!(
                "sse_config:\n  type: SSE-C\n  encryption_key: {}",
                key.display()
            )),
            s3(&format!(
                "sse_config:\n  type: SSE-C\n  encryption_key: {}",
                short.display()
            )),
            s3_bare(&format!("endpoint: 'http://AKID:{SENTINEL}@minio:9000'")),
            gcs_bare(&format!("service_account: '{sa_ok}'")),
            gcs_bare(&format!("service_account: '{sa_ok}'\nuse_grpc: maybe")),
            gcs_bare(&format!("service_account: '{sa_real}'")),
            gcs_bare(&format!(
                "service_account: '{}'",
                sa_ok.replace("service_account\"", "external_account\"")
            )),
            gcs_bare(&format!(
                "service_account: '{{\"private_key\": \"{SENTINEL}\", oops}}'"
            )),
            gcs_bare(&format!("service_account: {SENTINEL}")),
            azure_bare(&format!("storage_account_key: {SENTINEL}")),
            azure_bare(&format!("storage_account_key: '{SENTINEL}!'")),
            azure_bare(&format!(
                "storage_account_key: {SENTINEL}\nstorage_connection_string: '{cs}'"
            )),
            azure_bare(&format!("storage_connection_string: '{cs}'")),
            azure_bare(&format!("storage_connection_string: '{cs_bad}'")),
            azure_bare(&format!("storage_connection_string: {SENTINEL}")),
            azure_bare(&format!(
                "az_tenant_id: t\nclient_id: c\nclient_secret: {SENTINEL}"
            )),
            azure_bare(&format!("client_id: c\nclient_secret: {SENTINEL}")),
            azure_bare(&format!("client_secret: {SENTINEL}\nuser_assigned_id: u")),
            format!("type: SWIFT\nconfig:\n  password: {SENTINEL}\n"),
        ];
        let mut oks = 0;
        for yaml in &configs {
            match try_parse(yaml) {
                Ok(cfg) => {
                    oks += 1;
                    assert!(
                        !cfg.describe.contains(SENTINEL),
                        "describe leaks: {}",
                        cfg.describe
                    );
                    assert!(
                        !format!("{cfg:?}").contains(SENTINEL),
                        "Debug leaks: {cfg:?}"
                    );
                }
                Err(e) => {
                    assert!(!e.to_string().contains(SENTINEL), "message leaks: {e}");
                    assert!(!format!("{e:?}").contains(SENTINEL), "Debug leaks: {e:?}");
                }
            }
        }
        // Both paths are exercised.
        assert!(
            oks >= 5 && oks < configs.len(),
            "{oks} of {} parsed",
            configs.len()
        );
    }
}
