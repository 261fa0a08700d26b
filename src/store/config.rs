//! Bucket configuration: the Thanos-style `object-store.yaml` (the file Kubecost mounts from its
//! `kubecost-thanos` secret) read, validated and turned into a ready [`ObjectStore`].
//!
//! # What this module owns
//!
//! The file has three top-level keys: `type` (S3, GCS, AZURE or FILESYSTEM, case-insensitive),
//! `config` (the provider's own mapping) and an optional `prefix`. This module parses them,
//! decides for every key of the S3, GCS and AZURE schemas whether it is **mapped** onto an
//! `object_store` builder, **refused** (an error that names the key and says why) or
//! **ignored** (it has no behavioural effect for etlfs: a `debug!` line, or a `warn!` when the
//! user asked for something we will not do), and builds the store. Nothing here touches the
//! network: the builders are lazy and the first request is made by `bucket.rs` (beside it). The prefix is
//! returned, not applied, because the caller joins it with `--prefix`. The per-key table with
//! the reasons is `doc/CONFIGURATION.md`; the facts behind it are in
//! `shared/reference/object-store-yaml.md`.
//!
//! # Strict parsing
//!
//! Thanos parses S3, GCS and AZURE with `yaml.UnmarshalStrict`; OpenCost (Kubecost's open core)
//! forks those providers and parses S3 and GCS non-strictly, but every key it knows is also a
//! Thanos key. So etlfs reads the union strictly: every file that either product documents
//! loads, and a misspelt or misplaced key (`secret_kye`, `prefix` inside `config` -- Kubecost
//! #1758) stops the start with the key's path and line instead of silently dropping a setting.
//! Silently ignored settings are how backups end up disabled without a trace (Kubecost #3357,
//! a mis-indented file). FILESYSTEM, which Thanos parses leniently, is strict here too: it is
//! our own demo type and a typo in it should not create a bucket somewhere unexpected.
//!
//! Refusal is for keys whose effect we cannot reproduce and whose absence would change what
//! ends up in the bucket or who can read it (SigV2, ACL headers, mTLS, an SSE-KMS context...).
//! Keys that only tune Go's transport or minio's upload strategy are ignored with a log line.
//!
//! # Credentials
//!
//! Credentials written in the file win. When the file has none, each cloud's standard chain
//! applies, as `object_store` implements it: AWS env keys, web identity (IRSA), ECS/EKS
//! container credentials, IMDS; GCS `GOOGLE_APPLICATION_CREDENTIALS`, gcloud ADC, the metadata
//! server (GKE Workload Identity); Azure env keys, workload identity, client secret, managed
//! identity. We reproduce `XxxBuilder::from_env()` over an explicit snapshot of the environment
//! (`Env`) instead of calling it, for three reasons: credentials from the environment must
//! not mix with the file's (an ambient `AWS_SESSION_TOKEN` beside static keys from the file
//! breaks every signature; an ambient `GOOGLE_SERVICE_ACCOUNT` beside a key from the file makes
//! the GCS builder refuse to build); client options found in the environment (proxy, ...) must
//! land in the single [`ClientOptions`] we hand over last, because `with_client_options`
//! replaces everything set before it; and tests can pass an empty environment and run in
//! parallel without depending on the machine's `AWS_*`/`GOOGLE_*`/`AZURE_*` variables.
//!
//! # Endpoints
//!
//! Thanos' S3 `endpoint` is `host[:port]` with `insecure` choosing the scheme. `object_store`
//! wants a full URL and *panics at the first request* when the scheme is missing, so the URL is
//! always built here (`http` when `insecure`, else `https`), parsed with [`url::Url`], and
//! `allow_http` follows the scheme. The path-style or virtual-hosted choice (minio's `auto`
//! rule) is made here too, because with a custom endpoint `object_store` expects the bucket
//! already inside a virtual-hosted URL. Azure endpoints lose their trailing `/` (a `//` would
//! end up in every blob URL).
//!
//! # Secrets
//!
//! Secret values (S3 secret key and session token, Azure account key, client secret and
//! connection string, the GCS service-account JSON, SSE-C key material) never reach an error
//! message, a `Debug` rendering, [`BucketConfig::describe`] or a log line. Our own messages never
//! format them; messages we pass on from `serde_yaml_ng`, `serde_json` or `object_store` go
//! through a scrubber that removes every secret value found in the file first.
//!
//! # Timeouts
//!
//! `object_store` limits every request attempt to 30 s by default, which cuts a 300 MiB upload
//! on a slow link. Thanos has no total timeout at all. etlfs uses 5 minutes per attempt plus a
//! 2 minute read timeout (Thanos' `response_header_timeout` default); `http_config` and Azure's
//! `pipeline_config.try_timeout` override them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::limit::LimitStore;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, Certificate, ClientOptions, ObjectStore, RetryConfig};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, IgnoredAny};
use tracing::{debug, info, warn};
use url::Url;

use crate::escape::esc;
use crate::store::bucket::Lister;
use crate::store::bucket::azure_list::AzureLister;

const MIB: u64 = 1024 * 1024;
/// Thanos' S3 `part_size` default (its README says 128 MiB; the code says 64).
pub const DEFAULT_PART_SIZE: u64 = 64 * MIB;
/// S3 and GCS (XML API) refuse multipart parts below 5 MiB, except the last one.
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// The S3 limit for one part (and for one single PUT).
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// Per request attempt, connect to end of body. See "Timeouts" above.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest silence while reading a response: Thanos' `response_header_timeout` default.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);
const AZURE_DEFAULT_SUFFIX: &str = "blob.core.windows.net";
const GCS_DEFAULT_BASE_URL: &str = "https://storage.googleapis.com";
const AZURITE_DEFAULT_URL: &str = "http://127.0.0.1:10000";
/// What [`filesystem`] reports as its "file" in errors.
const EMBEDDED_SOURCE: &str = "embedded default bucket";

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// Which backend the file selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    S3,
    Gcs,
    Azure,
    Filesystem,
}

impl StoreKind {
    /// The `type` value as Thanos spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::S3 => "S3",
            StoreKind::Gcs => "GCS",
            StoreKind::Azure => "AZURE",
            StoreKind::Filesystem => "FILESYSTEM",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated bucket configuration with its store built (lazily: no request made yet).
pub struct BucketConfig {
    pub kind: StoreKind,
    pub store: Arc<dyn ObjectStore>,
    /// How a listing gets past a key `object_store` cannot represent (`None`: FILESYSTEM).
    pub paged: Option<Lister>,
    /// The top-level `prefix` of the file, trimmed of '/', "" if none (NOT applied to `store`:
    /// the caller joins it with --prefix).
    pub prefix: String,
    /// Whether put() may carry user metadata (attributes). false for FILESYSTEM
    /// (LocalFileSystem refuses attributes).
    pub user_metadata: bool,
    /// Extra user metadata to add to every put (S3 `put_user_metadata`), may be empty. Names are
    /// without the `x-amz-meta-` prefix (object_store adds it): use them as
    /// `Attribute::Metadata(name)`.
    pub extra_metadata: Vec<(String, String)>,
    /// One human line for logs: type, bucket/container/directory, endpoint — never a secret.
    pub describe: String,
    /// The URL requests go to (S3: the endpoint, with the bucket in the host when
    /// virtual-hosted; GCS: the base URL; AZURE: the account URL), `None` for FILESYSTEM.
    /// Never carries credentials.
    pub endpoint: Option<String>,
    /// S3 storage class from `put_user_metadata: {X-Amz-Storage-Class: ...}`: set
    /// `Attribute::StorageClass` on every put when present.
    pub storage_class: Option<String>,
    /// Upload tuning from the file, for the uploader to honour.
    pub upload: UploadTuning,
}

impl fmt::Debug for BucketConfig {
    // By hand: object_store's own Debug of a store walks into its credential provider.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketConfig")
            .field("kind", &self.kind)
            .field("store", &format_args!("{}", self.store))
            .field("prefix", &self.prefix)
            .field("user_metadata", &self.user_metadata)
            .field("extra_metadata", &self.extra_metadata)
            .field("describe", &self.describe)
            .field("endpoint", &self.endpoint)
            .field("storage_class", &self.storage_class)
            .field("upload", &self.upload)
            .finish()
    }
}

/// How uploads should be cut, from S3 `part_size`/`disable_multipart` and GCS
/// `chunk_size_bytes`. Advisory: the uploader decides when to use multipart at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadTuning {
    /// Part size for multipart uploads, in bytes, within [`MIN_PART_SIZE`]..=[`MAX_PART_SIZE`].
    pub part_size: u64,
    /// S3 `disable_multipart: true`: always one PUT (so objects are at most 5 GiB).
    pub single_put: bool,
}

impl Default for UploadTuning {
    fn default() -> Self {
        UploadTuning {
            part_size: DEFAULT_PART_SIZE,
            single_put: false,
        }
    }
}

/// Why a bucket configuration was rejected. Every message starts with the file, names the key
/// (`config.sse_config.type`, ...) and never contains a secret value. Every text in it is
/// escaped when shown: they quote the file's values and third-party messages about them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the bucket configuration: {source}", esc(.file))]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax or a value of the wrong type; `message` is serde_yaml_ng's, which carries the
    /// key path and the line and column.
    #[error("{}: invalid object-store.yaml: {}", esc(.file), esc(.message))]
    Syntax { file: String, message: String },
    #[error(
        "{}: unknown key `{}`{at} (etlfs reads object-store.yaml strictly, as Thanos \
         does; {})",
        esc(.file), esc(.key), esc(.expected)
    )]
    UnknownKey {
        file: String,
        key: String,
        /// " at line L column C", or "".
        at: String,
        expected: String,
    },
    #[error("{}: `{}` is required: {}", esc(.file), esc(.key), esc(.why))]
    Missing {
        file: String,
        key: String,
        why: String,
    },
    #[error("{}: `{}` {}", esc(.file), esc(.key), esc(.problem))]
    Invalid {
        file: String,
        key: String,
        problem: String,
    },
    #[error("{}: `{}` is not supported by etlfs: {}", esc(.file), esc(.key), esc(.reason))]
    Refused {
        file: String,
        key: String,
        reason: String,
    },
    #[error(
        "{}: `type: {}` is not supported by etlfs; etlfs supports the types S3, GCS, \
         AZURE and FILESYSTEM{}",
        esc(.file), esc(.kind), esc(.hint)
    )]
    UnsupportedType {
        file: String,
        kind: String,
        hint: String,
    },
    /// A file named by a key (`tls_config.ca_file`, `sse_config.encryption_key`, `directory`).
    #[error("{}: `{}`: cannot use {}: {source}", esc(.file), esc(.key), esc(.path))]
    KeyFile {
        file: String,
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `object_store` refused the assembled settings; `message` is scrubbed of secrets.
    #[error("{}: `{}`: cannot set up the {kind} store: {}", esc(.file), esc(.key), esc(.message))]
    Build {
        file: String,
        key: String,
        kind: StoreKind,
        message: String,
    },
}

/// Reads and parses `path`; errors name the file.
pub fn load(path: &Path) -> Result<BucketConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

/// Parses the text of an object-store.yaml; `source` is the file name used in messages.
/// Absent credentials fall back to the process environment's credential chain.
pub fn parse(yaml: &str, source: &str) -> Result<BucketConfig, ConfigError> {
    parse_with_env(yaml, source, &Env::process())
}

/// The embedded default: a FILESYSTEM bucket at `dir`, created if missing.
pub fn filesystem(dir: &Path) -> Result<BucketConfig, ConfigError> {
    let ctx = Ctx {
        file: EMBEDDED_SOURCE,
        env: &Env::default(),
        secrets: Secrets::default(),
    };
    build_filesystem(&ctx, dir, "directory")
}

// ---------------------------------------------------------------------------------------------
// Environment snapshot and secret scrubbing
// ---------------------------------------------------------------------------------------------

/// The environment variables the credential chains read, captured once. Tests build their own.
#[derive(Debug, Clone, Default)]
struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    fn process() -> Self {
        // Non-UTF-8 variables are skipped, as object_store's from_env() does.
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Env { vars }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

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
struct Secrets(Vec<String>);

impl Secrets {
    /// Best effort over a document that may not even parse: a YAML tree walk, plus a line scan
    /// for `secret_key: value` forms when the tree cannot be built.
    fn collect(yaml: &str) -> Self {
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

    fn scrub(&self, message: String) -> String {
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

// ---------------------------------------------------------------------------------------------
// Parsing context and error helpers
// ---------------------------------------------------------------------------------------------

struct Ctx<'a> {
    file: &'a str,
    env: &'a Env,
    secrets: Secrets,
}

impl Ctx<'_> {
    fn missing(&self, key: &str, why: impl Into<String>) -> ConfigError {
        ConfigError::Missing {
            file: self.file.to_string(),
            key: key.to_string(),
            why: why.into(),
        }
    }

    fn invalid(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    fn refused(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Refused {
            file: self.file.to_string(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn key_file(&self, key: &str, path: &Path, source: std::io::Error) -> ConfigError {
        ConfigError::KeyFile {
            file: self.file.to_string(),
            key: key.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }

    fn build_error(&self, key: &str, kind: StoreKind, err: impl fmt::Display) -> ConfigError {
        ConfigError::Build {
            file: self.file.to_string(),
            key: key.to_string(),
            kind,
            message: self.secrets.scrub(err.to_string()),
        }
    }

    /// serde_yaml_ng renders `<path>: <message> at line L column C`; an unknown field becomes
    /// [`ConfigError::UnknownKey`] with the full dotted key.
    fn yaml_error(&self, err: serde_yaml_ng::Error) -> ConfigError {
        let message = self.secrets.scrub(err.to_string());
        let at = err
            .location()
            .map(|l| format!(" at line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        if let Some((path, name, _)) = field_in_message(&message, "duplicate field `") {
            return self.invalid(&dotted(path, name), format!("is set twice{at}"));
        }
        if let Some((path, name, rest)) = field_in_message(&message, "unknown field `") {
            // `rest` is ", expected one of `a`, `b` at line L column C".
            let expected = rest.trim_start_matches(',').trim();
            let expected = expected
                .find(" at line ")
                .map_or(expected, |i| &expected[..i]);
            return ConfigError::UnknownKey {
                file: self.file.to_string(),
                key: dotted(path, name),
                at,
                expected: expected.to_string(),
            };
        }
        ConfigError::Syntax {
            file: self.file.to_string(),
            message,
        }
    }

    /// A key accepted without effect. `loud` when the user asked for something we do not do.
    fn ignored(&self, key: &str, loud: bool, why: &str) {
        if loud {
            warn!(file = %esc(self.file), key = %esc(key), "ignored: {why}");
        } else {
            debug!(file = %esc(self.file), key = %esc(key), "ignored: {why}");
        }
    }
}

/// Splits serde's "<path>: <mark><name>`<rest>" into (path, name, rest).
fn field_in_message<'m>(message: &'m str, mark: &str) -> Option<(&'m str, &'m str, &'m str)> {
    let start = message.find(mark)?;
    let path = message[..start].trim_end().trim_end_matches(':');
    let tail = &message[start + mark.len()..];
    let end = tail.find('`')?;
    Some((path, &tail[..end], &tail[end + 1..]))
}

fn dotted(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

// ---------------------------------------------------------------------------------------------
// YAML schema
// ---------------------------------------------------------------------------------------------

/// First pass: the top level, to learn `type` (and refuse unknown top-level keys).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "object-store.yaml")]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "config")]
    _config: Option<IgnoredAny>,
    prefix: Option<String>,
}

/// Second pass, typed by `type`: serde_yaml_ng then reports `config.<key>` paths with lines.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "object-store.yaml")]
struct Doc<C> {
    #[serde(rename = "type", default)]
    _kind: IgnoredAny,
    config: Option<C>,
    #[serde(rename = "prefix", default)]
    _prefix: IgnoredAny,
}

/// `providers/s3/s3.go` `Config` (Thanos), a superset of OpenCost's `S3Config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "S3 config")]
struct S3Yaml {
    bucket: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    disable_dualstack: Option<Flag>,
    aws_sdk_auth: Option<Flag>,
    access_key: Option<String>,
    insecure: Option<Flag>,
    signature_version2: Option<Flag>,
    secret_key: Option<String>,
    session_token: Option<String>,
    put_user_metadata: Option<BTreeMap<String, String>>,
    http_config: Option<HttpYaml>,
    trace: Option<TraceYaml>,
    list_objects_version: Option<String>,
    bucket_lookup_type: Option<String>,
    send_content_md5: Option<Flag>,
    disable_multipart: Option<Flag>,
    part_size: Option<u64>,
    sse_config: Option<SseYaml>,
    sts_endpoint: Option<String>,
    max_retries: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "sse_config")]
struct SseYaml {
    #[serde(rename = "type")]
    kind: Option<String>,
    kms_key_id: Option<String>,
    kms_encryption_context: Option<BTreeMap<String, String>>,
    encryption_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "trace")]
struct TraceYaml {
    enable: Option<Flag>,
}

/// `exthttp.HTTPConfig`, shared by S3, GCS and AZURE.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "http_config")]
struct HttpYaml {
    idle_conn_timeout: Option<GoDuration>,
    response_header_timeout: Option<GoDuration>,
    insecure_skip_verify: Option<Flag>,
    tls_handshake_timeout: Option<GoDuration>,
    expect_continue_timeout: Option<GoDuration>,
    max_idle_conns: Option<i64>,
    max_idle_conns_per_host: Option<i64>,
    max_conns_per_host: Option<i64>,
    disable_compression: Option<Flag>,
    tls_config: Option<TlsYaml>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "tls_config")]
struct TlsYaml {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    server_name: Option<String>,
    insecure_skip_verify: Option<Flag>,
}

/// `providers/gcs/gcs.go` `Config`; OpenCost knows only `bucket` and `service_account`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "GCS config")]
struct GcsYaml {
    bucket: Option<String>,
    service_account: Option<String>,
    use_grpc: Option<Flag>,
    grpc_conn_pool_size: Option<i64>,
    http_config: Option<HttpYaml>,
    chunk_size_bytes: Option<i64>,
    max_retries: Option<i64>,
}

/// `providers/azure/azure.go` `Config`, a superset of OpenCost's `AzureConfig`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "AZURE config")]
struct AzureYaml {
    az_tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    storage_account: Option<String>,
    storage_account_key: Option<String>,
    storage_connection_string: Option<String>,
    storage_create_container: Option<Flag>,
    container: Option<String>,
    endpoint: Option<String>,
    user_assigned_id: Option<String>,
    max_retries: Option<i64>,
    reader_config: Option<ReaderYaml>,
    pipeline_config: Option<PipelineYaml>,
    http_config: Option<HttpYaml>,
    msi_resource: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "reader_config")]
struct ReaderYaml {
    max_retry_requests: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "pipeline_config")]
struct PipelineYaml {
    max_tries: Option<i64>,
    try_timeout: Option<GoDuration>,
    retry_delay: Option<GoDuration>,
    max_retry_delay: Option<GoDuration>,
}

/// `providers/filesystem/filesystem.go` `Config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "FILESYSTEM config")]
struct FsYaml {
    directory: Option<String>,
}

/// A boolean as Go's yaml.v2 reads one: also `yes`/`no`/`on`/`off`/`y`/`n` (YAML 1.1), which
/// serde_yaml_ng (YAML 1.2) would hand us as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean (true or false)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                match v.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "y" | "on" => Ok(Flag(true)),
                    "false" | "no" | "n" | "off" => Ok(Flag(false)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn flag(value: Option<Flag>) -> bool {
    value.is_some_and(|f| f.0)
}

/// A duration as Go (`time.ParseDuration`: `1m30s`, `1.5h`, `300ms`) or Prometheus
/// (`model.Duration`: `1d`, `1w`) write it. Thanos uses the latter, OpenCost the former.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GoDuration(Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 90s, 1m30s or 2m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                parse_go_duration(v)
                    .map(GoDuration)
                    .map_err(|why| E::custom(format!("invalid duration `{v}`: {why}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                match v {
                    0 => Ok(GoDuration(Duration::ZERO)),
                    _ => Err(E::custom(format!(
                        "invalid duration `{v}`: a unit is required, e.g. `{v}s`"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("invalid duration `{v}`: negative"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<GoDuration, E> {
                Err(E::custom(format!(
                    "invalid duration `{v}`: a unit is required, e.g. `{v}s`"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Go's `time.ParseDuration` plus Prometheus' `d`, `w` and `y` units; no negative values.
fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty".into());
    }
    if text.starts_with('-') {
        return Err("negative".into());
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total_nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." {
            return Err("expected a number".into());
        }
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{number}` is not a number"))?;
        rest = &rest[number_len..];
        const UNITS: &[(&str, f64)] = &[
            ("ns", 1.0),
            ("us", 1e3),
            ("µs", 1e3),
            ("μs", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 60e9),
            ("h", 3600e9),
            ("d", 86_400e9),
            ("w", 604_800e9),
            ("y", 31_536_000e9),
        ];
        // Two-letter units first so that `ms` is not read as `m` followed by garbage.
        let Some((unit, scale)) = UNITS.iter().find(|(unit, _)| rest.starts_with(unit)) else {
            return Err("a unit is required (ns, us, ms, s, m, h, d, w, y)".into());
        };
        rest = &rest[unit.len()..];
        total_nanos += value * scale;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err("too large".into());
    }
    Ok(Duration::from_nanos(total_nanos as u64))
}

/// Go treats an empty string like an absent key.
fn nonempty(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Top level
// ---------------------------------------------------------------------------------------------

fn parse_with_env(yaml: &str, source: &str, env: &Env) -> Result<BucketConfig, ConfigError> {
    let ctx = Ctx {
        file: source,
        env,
        secrets: Secrets::collect(yaml),
    };
    let head: Head = serde_yaml_ng::from_str(yaml).map_err(|e| ctx.yaml_error(e))?;
    let Some(kind) = nonempty(head.kind) else {
        return Err(ctx.missing("type", "one of S3, GCS, AZURE or FILESYSTEM"));
    };
    let prefix = normalize_prefix(&ctx, head.prefix.as_deref())?;
    let mut bucket = match kind.to_ascii_uppercase().as_str() {
        "S3" => build_s3(&ctx, provider_config(&ctx, yaml)?),
        "GCS" => build_gcs(&ctx, provider_config(&ctx, yaml)?),
        "AZURE" => build_azure(&ctx, provider_config(&ctx, yaml)?),
        "FILESYSTEM" => {
            let fs: FsYaml = provider_config(&ctx, yaml)?;
            let dir = nonempty(fs.directory).ok_or_else(|| {
                ctx.missing("config.directory", "the directory that holds the bucket")
            })?;
            build_filesystem(&ctx, Path::new(&dir), "config.directory")
        }
        other => Err(unsupported_type(&ctx, &kind, other)),
    }?;
    if !prefix.is_empty() {
        bucket.describe = format!("{}, prefix `{prefix}`", bucket.describe);
    }
    bucket.prefix = prefix;
    Ok(bucket)
}

fn provider_config<C: DeserializeOwned>(ctx: &Ctx, yaml: &str) -> Result<C, ConfigError> {
    let doc: Doc<C> = serde_yaml_ng::from_str(yaml).map_err(|e| ctx.yaml_error(e))?;
    doc.config
        .ok_or_else(|| ctx.missing("config", "the provider's settings (a mapping)"))
}

fn unsupported_type(ctx: &Ctx, kind: &str, upper: &str) -> ConfigError {
    let hint = match upper {
        "COS" | "ALIYUNOSS" | "OSS" | "OBS" | "BOS" | "OCI" => {
            "; this provider also speaks the S3 API: configure it as `type: S3` with its \
             S3-compatible endpoint and HMAC keys"
        }
        "CLUSTER" => "; CLUSTER is Kubecost's in-cluster storage, not an object store",
        _ => "",
    };
    ConfigError::UnsupportedType {
        file: ctx.file.to_string(),
        kind: kind.to_string(),
        hint: hint.to_string(),
    }
}

/// Thanos' `NewPrefixedBucket`: nothing when only slashes, else trimmed of '/'. The result must
/// be a valid object key prefix (no `a//b`, `.` or `..` segment).
fn normalize_prefix(ctx: &Ctx, prefix: Option<&str>) -> Result<String, ConfigError> {
    let trimmed = prefix.unwrap_or_default().trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    object_store::path::Path::parse(trimmed).map_err(|_| {
        ctx.invalid(
            "prefix",
            format!(
                "`{trimmed}` is not a valid object key prefix (empty segment `//`, `.` or `..`, \
                 or a control character)"
            ),
        )
    })?;
    Ok(trimmed.to_string())
}

// ---------------------------------------------------------------------------------------------
// Shared: http_config → ClientOptions, retries
// ---------------------------------------------------------------------------------------------

fn default_client_options() -> ClientOptions {
    ClientOptions::new()
        .with_timeout(DEFAULT_TIMEOUT)
        .with_read_timeout(DEFAULT_READ_TIMEOUT)
}

/// Applies `http_config`; returns the options and a request-concurrency cap
/// (`max_conns_per_host`) to enforce with [`LimitStore`].
fn apply_http_config(
    ctx: &Ctx,
    mut opts: ClientOptions,
    http: Option<HttpYaml>,
) -> Result<(ClientOptions, Option<usize>), ConfigError> {
    let Some(http) = http else {
        return Ok((opts, None));
    };
    if let Some(GoDuration(d)) = http.idle_conn_timeout {
        // Go: 0 = idle connections never expire; reqwest keeps its 90 s then (harmless).
        if !d.is_zero() {
            opts = opts.with_pool_idle_timeout(d);
        }
    }
    if let Some(GoDuration(d)) = http.response_header_timeout {
        // reqwest has no "time to first header" limit; its read timeout (the longest silence
        // while reading a response) is the nearest: it covers waiting for the headers too.
        opts = if d.is_zero() {
            opts.with_read_timeout_disabled()
        } else {
            opts.with_read_timeout(d)
        };
    }
    if let Some(GoDuration(d)) = http.tls_handshake_timeout {
        // object_store has one connect timeout, TCP connect plus TLS handshake.
        opts = if d.is_zero() {
            opts.with_connect_timeout_disabled()
        } else {
            opts.with_connect_timeout(d)
        };
    }
    if http.expect_continue_timeout.is_some() {
        ctx.ignored(
            "config.http_config.expect_continue_timeout",
            false,
            "object_store never sends `Expect: 100-continue`",
        );
    }
    if let Some(n) = http.max_idle_conns {
        non_negative(ctx, "config.http_config.max_idle_conns", n)?;
        ctx.ignored(
            "config.http_config.max_idle_conns",
            false,
            "object_store has no global idle-connection cap (max_idle_conns_per_host applies)",
        );
    }
    if let Some(n) = http.max_idle_conns_per_host {
        let n = non_negative(ctx, "config.http_config.max_idle_conns_per_host", n)?;
        if n > 0 {
            opts = opts.with_pool_max_idle_per_host(n);
        }
    }
    let mut limit = None;
    if let Some(n) = http.max_conns_per_host {
        let n = non_negative(ctx, "config.http_config.max_conns_per_host", n)?;
        // It caps concurrent requests rather than connections: the same bound on the server.
        limit = (n > 0).then_some(n);
    }
    if http.disable_compression.is_some() {
        ctx.ignored(
            "config.http_config.disable_compression",
            false,
            "object_store never decompresses bodies transparently",
        );
    }
    let tls = http.tls_config.unwrap_or_default();
    // Thanos lets http_config's flag overwrite tls_config's; OpenCost (Kubecost) ORs them. We OR:
    // a file that asks for no verification in either place gets none, and says so loudly.
    let skip_verify = flag(http.insecure_skip_verify) || flag(tls.insecure_skip_verify);
    if skip_verify {
        warn!(
            file = %esc(ctx.file),
            key = "config.http_config.insecure_skip_verify",
            "TLS certificate verification is disabled for the bucket"
        );
        opts = opts.with_allow_invalid_certificates(true);
    }
    if let Some(ca) = nonempty(tls.ca_file) {
        const KEY: &str = "config.http_config.tls_config.ca_file";
        let path = PathBuf::from(&ca);
        let pem = std::fs::read(&path).map_err(|e| ctx.key_file(KEY, &path, e))?;
        let certs = Certificate::from_pem_bundle(&pem)
            .map_err(|e| ctx.invalid(KEY, format!("{ca}: not a PEM bundle ({e})")))?;
        if certs.is_empty() {
            return Err(ctx.invalid(KEY, format!("{ca}: holds no PEM certificate")));
        }
        for cert in certs {
            opts = opts.with_root_certificate(cert);
        }
        // Go's RootCAs replaces the system pool; do the same.
        opts = opts.with_no_system_certificates(true);
    }
    let cert_file = nonempty(tls.cert_file).is_some();
    if cert_file || nonempty(tls.key_file).is_some() {
        let key = if cert_file {
            "config.http_config.tls_config.cert_file"
        } else {
            "config.http_config.tls_config.key_file"
        };
        return Err(ctx.refused(
            key,
            "client-certificate (mTLS) authentication to the object store is not available in \
             object_store; remove cert_file and key_file",
        ));
    }
    if nonempty(tls.server_name).is_some() {
        return Err(ctx.refused(
            "config.http_config.tls_config.server_name",
            "object_store cannot override the TLS server name; use an endpoint whose host \
             matches the certificate",
        ));
    }
    Ok((opts, limit))
}

fn non_negative(ctx: &Ctx, key: &str, n: i64) -> Result<usize, ConfigError> {
    usize::try_from(n).map_err(|_| ctx.invalid(key, format!("must be 0 or more, not {n}")))
}

/// Go `max_retries` counts attempts (1 = no retry); object_store counts retries.
fn attempts_to_retry(
    ctx: &Ctx,
    key: &str,
    attempts: Option<i64>,
) -> Result<Option<RetryConfig>, ConfigError> {
    let Some(attempts) = attempts else {
        return Ok(None);
    };
    let attempts = non_negative(ctx, key, attempts)?;
    Ok((attempts > 0).then(|| RetryConfig {
        max_retries: attempts - 1,
        ..RetryConfig::default()
    }))
}

fn part_size(ctx: &Ctx, key: &str, bytes: u64) -> u64 {
    if bytes == 0 {
        return DEFAULT_PART_SIZE;
    }
    let clamped = bytes.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    if clamped != bytes {
        warn!(
            file = %esc(ctx.file),
            key,
            bytes,
            used = clamped,
            "part size outside what S3/GCS multipart accepts (5 MiB to 5 GiB); adjusted"
        );
    }
    clamped
}

fn finish_store<T: ObjectStore>(store: T, limit: Option<usize>) -> Arc<dyn ObjectStore> {
    match limit {
        Some(n) => Arc::new(LimitStore::new(store, n)),
        None => Arc::new(store),
    }
}

fn limit_note(limit: Option<usize>) -> String {
    limit
        .map(|n| format!(", at most {n} concurrent requests"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Auto,
    VirtualHosted,
    Path,
}

/// What an AWS S3 host name tells us.
struct AwsHost {
    /// `None` for the global `s3.amazonaws.com`.
    region: Option<String>,
    suffix: &'static str,
}

/// Recognizes the AWS hosts minio's `GetRegionFromURL` knows: `s3.amazonaws.com`,
/// `s3.<r>.amazonaws.com`, `s3-<r>.amazonaws.com`, `s3.dualstack.<r>...`, `s3-fips.<r>...`,
/// and the `.amazonaws.com.cn` forms.
fn aws_host(host: &str) -> Option<AwsHost> {
    let (rest, suffix) = if let Some(rest) = host.strip_suffix(".amazonaws.com") {
        (rest, "amazonaws.com")
    } else if let Some(rest) = host.strip_suffix(".amazonaws.com.cn") {
        (rest, "amazonaws.com.cn")
    } else {
        return None;
    };
    let region_like = |r: &str| r.contains('-') && r.ends_with(|c: char| c.is_ascii_digit());
    let labels: Vec<&str> = rest.split('.').collect();
    let region = match labels.as_slice() {
        ["s3"] => None,
        ["s3-external-1"] => Some("us-east-1"),
        ["s3" | "s3-fips", region] | ["s3" | "s3-fips", "dualstack", region]
            if region_like(region) =>
        {
            Some(*region)
        }
        [label] if label.starts_with("s3-") && region_like(&label[3..]) => Some(&label[3..]),
        _ => return None,
    };
    Some(AwsHost {
        region: region.map(str::to_string),
        suffix,
    })
}

/// Thanos' `host[:port]` plus `insecure` → a URL with a scheme. A scheme in the endpoint is
/// accepted (newer minio does too) when it agrees with an explicit `insecure`.
fn s3_endpoint_url(ctx: &Ctx, endpoint: &str, insecure: Option<bool>) -> Result<Url, ConfigError> {
    const KEY: &str = "config.endpoint";
    let text = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        let scheme = if insecure == Some(true) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{endpoint}")
    };
    // Credentials in the URL would be a secret we must not echo: check before quoting it.
    let url = Url::parse(&text).map_err(|e| {
        ctx.invalid(
            KEY,
            format!("must be `host[:port]` (e.g. `s3.amazonaws.com` or `minio:9000`): {e}"),
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ctx.invalid(
            KEY,
            "must not carry credentials; use config.access_key and config.secret_key",
        ));
    }
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(ctx.invalid(
                KEY,
                format!("has scheme `{other}`; only http and https work"),
            ));
        }
    }
    let http = url.scheme() == "http";
    if let Some(insecure) = insecure {
        if insecure != http {
            return Err(ctx.invalid(
                KEY,
                format!(
                    "says {} but config.insecure is {insecure}; drop the scheme and let \
                     `insecure` choose it",
                    url.scheme()
                ),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ctx.invalid(KEY, format!("`{endpoint}` has no host")));
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Err(ctx.invalid(
            KEY,
            format!(
                "`{endpoint}` has a path; the endpoint is `host[:port]` only and the bucket \
                 goes in config.bucket"
            ),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ctx.invalid(KEY, format!("`{endpoint}` has a query or fragment")));
    }
    Ok(url)
}

fn s3_lookup(ctx: &Ctx, value: Option<String>) -> Result<Lookup, ConfigError> {
    match nonempty(value).as_deref() {
        None | Some("auto") => Ok(Lookup::Auto),
        Some("virtual-hosted") => Ok(Lookup::VirtualHosted),
        Some("path") => Ok(Lookup::Path),
        Some(other) => Err(ctx.invalid(
            "config.bucket_lookup_type",
            format!("`{other}` is not one of auto, virtual-hosted, path"),
        )),
    }
}

/// Standard headers minio refuses in `put_user_metadata` (`isStandardHeader`).
const STANDARD_HEADERS: &[&str] = &[
    "content-type",
    "cache-control",
    "content-encoding",
    "content-disposition",
    "content-language",
    "content-length",
    "content-md5",
    "expires",
];

/// What `put_user_metadata` turns into.
#[derive(Default)]
struct UserMetadata {
    /// Names without `x-amz-meta-` (object_store adds it).
    metadata: Vec<(String, String)>,
    storage_class: Option<String>,
}

fn s3_user_metadata(ctx: &Ctx, map: BTreeMap<String, String>) -> Result<UserMetadata, ConfigError> {
    let mut metadata = Vec::new();
    let mut storage_class = None;
    for (name, value) in map {
        let key = format!("config.put_user_metadata.{name}");
        let lower = name.to_ascii_lowercase();
        let value = value.trim().to_string();
        if !value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
            return Err(ctx.invalid(
                &key,
                "has a value S3 cannot carry in a header (use printable ASCII)",
            ));
        }
        if lower == "x-amz-storage-class" {
            if value.is_empty() {
                return Err(ctx.invalid(&key, "is empty"));
            }
            storage_class = Some(value);
            continue;
        }
        if lower == "x-amz-acl" || lower.starts_with("x-amz-grant-") {
            return Err(ctx.refused(
                &key,
                "object ACL headers cannot be sent by object_store; grant access with a bucket \
                 policy, or set the bucket's Object Ownership to \"bucket owner enforced\" \
                 (the default for new buckets) which makes `bucket-owner-full-control` \
                 unnecessary",
            ));
        }
        let meta_name = if let Some(stripped) = lower.strip_prefix("x-amz-meta-") {
            // Keep the user's spelling after the prefix.
            name[name.len() - stripped.len()..].to_string()
        } else if lower.starts_with("x-amz-") {
            return Err(ctx.refused(
                &key,
                "Thanos sends `x-amz-*` entries as request headers; object_store cannot add \
                 arbitrary headers to uploads (use sse_config for encryption)",
            ));
        } else if STANDARD_HEADERS.contains(&lower.as_str()) {
            return Err(ctx.refused(
                &key,
                "is a standard HTTP header, which Thanos (minio) refuses here too",
            ));
        } else {
            name.clone()
        };
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if meta_name.is_empty() || !meta_name.chars().all(token) {
            return Err(ctx.invalid(&key, "is not a valid metadata (HTTP header) name"));
        }
        metadata.push((meta_name, value));
    }
    Ok(UserMetadata {
        metadata,
        storage_class,
    })
}

/// The builder key for SSE-S3; `S3EncryptionConfigKey` is not re-exported by object_store 0.14.
fn sse_s3_key(ctx: &Ctx) -> Result<AmazonS3ConfigKey, ConfigError> {
    "aws_server_side_encryption"
        .parse()
        .map_err(|e| ctx.build_error("config.sse_config.type", StoreKind::S3, e))
}

fn apply_sse(
    ctx: &Ctx,
    mut builder: AmazonS3Builder,
    sse: SseYaml,
    https: bool,
) -> Result<(AmazonS3Builder, Option<&'static str>), ConfigError> {
    let kind = nonempty(sse.kind).map(|k| k.to_ascii_uppercase());
    let kms_key_id = nonempty(sse.kms_key_id);
    let context = sse.kms_encryption_context.unwrap_or_default();
    let key_path = nonempty(sse.encryption_key);
    let stray = |key: &str, wanted: &str| {
        ctx.invalid(
            key,
            format!(
                "is set but config.sse_config.type is not {wanted}; set the type, or remove the \
                 key (objects would not be encrypted the way it suggests)"
            ),
        )
    };
    if kind.as_deref() != Some("SSE-KMS") {
        if kms_key_id.is_some() {
            return Err(stray("config.sse_config.kms_key_id", "SSE-KMS"));
        }
        if !context.is_empty() {
            return Err(stray("config.sse_config.kms_encryption_context", "SSE-KMS"));
        }
    }
    if kind.as_deref() != Some("SSE-C") && key_path.is_some() {
        return Err(stray("config.sse_config.encryption_key", "SSE-C"));
    }
    let label = match kind.as_deref() {
        None => None,
        Some("SSE-S3") => {
            builder = builder.with_config(sse_s3_key(ctx)?, "AES256");
            Some("SSE-S3")
        }
        Some("SSE-KMS") => {
            let Some(kms_key_id) = kms_key_id else {
                return Err(ctx.missing(
                    "config.sse_config.kms_key_id",
                    "the KMS key for config.sse_config.type SSE-KMS",
                ));
            };
            if !context.is_empty() {
                return Err(ctx.refused(
                    "config.sse_config.kms_encryption_context",
                    "object_store cannot send the SSE-KMS encryption context header",
                ));
            }
            builder = builder.with_sse_kms_encryption(kms_key_id);
            Some("SSE-KMS")
        }
        Some("SSE-C") => {
            const KEY: &str = "config.sse_config.encryption_key";
            let Some(key_path) = key_path else {
                return Err(ctx.missing(
                    KEY,
                    "the path of a file holding the raw 32-byte key, for config.sse_config.type \
                     SSE-C",
                ));
            };
            let path = PathBuf::from(key_path);
            let key = std::fs::read(&path).map_err(|e| ctx.key_file(KEY, &path, e))?;
            if key.len() != 32 {
                // Only the length is reported, never the bytes.
                return Err(ctx.invalid(
                    KEY,
                    format!(
                        "{}: an SSE-C key is exactly 32 raw bytes; this file has {}",
                        path.display(),
                        key.len()
                    ),
                ));
            }
            if !https {
                warn!(
                    file = %esc(ctx.file),
                    key = KEY,
                    "SSE-C over plain HTTP: AWS S3 refuses customer keys without TLS"
                );
            }
            builder = builder.with_ssec_encryption(base64_encode(&key));
            Some("SSE-C")
        }
        Some(other) => {
            return Err(ctx.invalid(
                "config.sse_config.type",
                format!("`{other}` is not one of SSE-S3, SSE-KMS, SSE-C"),
            ));
        }
    };
    Ok((builder, label))
}

fn build_s3(ctx: &Ctx, y: S3Yaml) -> Result<BucketConfig, ConfigError> {
    let bucket = nonempty(y.bucket)
        .ok_or_else(|| ctx.missing("config.bucket", "the name of the S3 bucket"))?;
    let endpoint = nonempty(y.endpoint).ok_or_else(|| {
        ctx.missing(
            "config.endpoint",
            "`host[:port]` of the S3 API, e.g. `s3.amazonaws.com` or `minio:9000` (Thanos \
             requires it too)",
        )
    })?;
    let access_key = nonempty(y.access_key);
    let secret_key = nonempty(y.secret_key);
    let session_token = nonempty(y.session_token);
    let static_keys = match (access_key, secret_key) {
        (Some(access), Some(secret)) => Some((access, secret)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ctx.missing(
                "config.secret_key",
                "config.access_key is set; set both, or neither to use the ambient AWS \
                 credential chain",
            ));
        }
        (None, Some(_)) => {
            return Err(ctx.missing(
                "config.access_key",
                "config.secret_key is set; set both, or neither to use the ambient AWS \
                 credential chain",
            ));
        }
    };
    if session_token.is_some() && static_keys.is_none() {
        return Err(ctx.invalid(
            "config.session_token",
            "is used only together with config.access_key and config.secret_key (with the \
             ambient chain, set AWS_SESSION_TOKEN instead)",
        ));
    }
    if flag(y.aws_sdk_auth) {
        if static_keys.is_some() {
            return Err(ctx.invalid(
                "config.aws_sdk_auth",
                "cannot be combined with config.access_key (Thanos refuses this too)",
            ));
        }
        info!(
            file = %esc(ctx.file),
            key = "config.aws_sdk_auth",
            "using object_store's AWS credential chain (env, web identity, ECS/EKS, IMDS); \
             shared credentials files, profiles, SSO and credential_process are not read"
        );
    }
    if flag(y.signature_version2) {
        return Err(ctx.refused(
            "config.signature_version2",
            "object_store signs requests with AWS Signature Version 4 only",
        ));
    }
    match nonempty(y.list_objects_version).as_deref() {
        None | Some("v2") => {}
        Some("v1") => {
            return Err(ctx.refused(
                "config.list_objects_version",
                "object_store lists with ListObjectsV2 only; `v1` is unavailable",
            ));
        }
        Some(other) => {
            return Err(ctx.invalid(
                "config.list_objects_version",
                format!("`{other}` is not one of v1, v2"),
            ));
        }
    }
    let lookup = s3_lookup(ctx, y.bucket_lookup_type)?;
    if let Some(trace) = y.trace {
        if flag(trace.enable) {
            ctx.ignored(
                "config.trace.enable",
                true,
                "request tracing is a log setting here: RUST_LOG=object_store=debug",
            );
        }
    }
    if y.disable_dualstack.is_some() {
        ctx.ignored(
            "config.disable_dualstack",
            false,
            "object_store uses dual-stack only for an explicit s3.dualstack.* endpoint",
        );
    }
    if y.send_content_md5.is_some() {
        ctx.ignored(
            "config.send_content_md5",
            false,
            "object_store signs the payload's SHA-256 (x-amz-content-sha256), which S3 verifies",
        );
    }
    let max_retries = attempts_to_retry(ctx, "config.max_retries", y.max_retries)?;

    // Where requests go.
    let url = s3_endpoint_url(ctx, &endpoint, y.insecure.map(|f| f.0))?;
    let https = url.scheme() == "https";
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let aws = aws_host(&host);
    let yaml_region = nonempty(y.region);
    let region = match &aws {
        Some(aws) => match (yaml_region, &aws.region) {
            (Some(yaml), Some(from_host)) if &yaml != from_host => {
                return Err(ctx.invalid(
                    "config.region",
                    format!("`{yaml}` differs from the region `{from_host}` in config.endpoint"),
                ));
            }
            (Some(yaml), _) => yaml,
            (None, Some(from_host)) => from_host.clone(),
            (None, None) => {
                let ambient = ctx
                    .env
                    .get("AWS_REGION")
                    .or_else(|| ctx.env.get("AWS_DEFAULT_REGION"));
                // minio would ask GetBucketLocation; object_store cannot without a request.
                let region = ambient.unwrap_or("us-east-1").to_string();
                warn!(
                    file = %esc(ctx.file),
                    key = "config.region",
                    region = %esc(&region),
                    "region is empty and the endpoint names none; assuming it (set config.region \
                     if the bucket lives elsewhere: S3 answers 301 to the wrong region)"
                );
                region
            }
        },
        None => yaml_region.unwrap_or_else(|| {
            debug!(
                file = %esc(ctx.file),
                key = "config.region",
                "region is empty; signing for us-east-1 (what S3-compatible servers expect)"
            );
            "us-east-1".to_string()
        }),
    };
    let request_host = match &aws {
        // The global endpoint only serves us-east-1 buckets; go to the bucket's region.
        Some(AwsHost {
            region: None,
            suffix,
        }) => format!("s3.{region}.{suffix}"),
        _ => host.clone(),
    };
    let known_virtual_host =
        aws.is_some() || host == "storage.googleapis.com" || host.ends_with(".aliyuncs.com");
    let virtual_hosted = match lookup {
        Lookup::Path => false,
        Lookup::VirtualHosted => true,
        // minio's rule; a dotted bucket name breaks the *.s3 wildcard certificate.
        Lookup::Auto => known_virtual_host && !(https && bucket.contains('.')),
    };
    let authority = match url.port() {
        Some(port) => format!("{request_host}:{port}"),
        None => request_host,
    };
    let endpoint_url = if virtual_hosted {
        format!("{}://{bucket}.{authority}", url.scheme())
    } else {
        format!("{}://{authority}", url.scheme())
    };
    Url::parse(&endpoint_url).map_err(|e| {
        ctx.invalid(
            "config.bucket",
            format!("does not form a valid virtual-hosted URL ({e}); use bucket_lookup_type: path"),
        )
    })?;

    // from_env(), minus credentials when the file has its own, with client options kept aside.
    let mut opts = default_client_options();
    let mut builder = AmazonS3Builder::new();
    for (name, value) in ctx.env.prefixed("AWS_") {
        let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() else {
            continue;
        };
        match key {
            AmazonS3ConfigKey::Client(client_key) => opts = opts.with_config(client_key, value),
            AmazonS3ConfigKey::AccessKeyId
            | AmazonS3ConfigKey::SecretAccessKey
            | AmazonS3ConfigKey::Token
                if static_keys.is_some() => {}
            key => builder = builder.with_config(key, value),
        }
    }
    let (opts, limit) = apply_http_config(ctx, opts, y.http_config)?;
    builder = builder
        .with_client_options(opts.with_allow_http(!https))
        .with_bucket_name(&bucket)
        .with_region(&region)
        .with_endpoint(&endpoint_url)
        // AWS_ENDPOINT_URL_S3 would beat with_endpoint in build().
        .with_config(AmazonS3ConfigKey::S3Endpoint, &endpoint_url)
        .with_virtual_hosted_style_request(virtual_hosted);
    let credentials = match static_keys {
        Some((access, secret)) => {
            builder = builder
                .with_access_key_id(access)
                .with_secret_access_key(secret);
            if let Some(token) = session_token {
                builder = builder.with_token(token);
            }
            "static keys from the file"
        }
        None => "ambient AWS chain: env, web identity, ECS/EKS, IMDS",
    };
    if let Some(sts) = nonempty(y.sts_endpoint) {
        const KEY: &str = "config.sts_endpoint";
        let url = Url::parse(&sts).map_err(|e| {
            ctx.invalid(
                KEY,
                format!("must be a URL such as https://sts.amazonaws.com: {e}"),
            )
        })?;
        if url.scheme() != "https" {
            return Err(ctx.refused(KEY, "object_store talks to STS over HTTPS only"));
        }
        builder = builder.with_config(AmazonS3ConfigKey::StsEndpoint, sts);
    }
    let mut sse_label = None;
    if let Some(sse) = y.sse_config {
        let (b, label) = apply_sse(ctx, builder, sse, https)?;
        builder = b;
        sse_label = label;
    }
    if let Some(retry) = max_retries {
        builder = builder.with_retry(retry);
    }
    if host == "storage.googleapis.com" || host.ends_with(".aliyuncs.com") {
        // These S3 dialects lack DeleteObjects (POST /?delete), which delete() uses since 0.13.
        builder = builder.with_disable_bulk_delete(true);
    }
    let UserMetadata {
        metadata: extra_metadata,
        storage_class,
    } = s3_user_metadata(ctx, y.put_user_metadata.unwrap_or_default())?;
    let upload = UploadTuning {
        part_size: part_size(ctx, "config.part_size", y.part_size.unwrap_or(0)),
        single_put: flag(y.disable_multipart),
    };
    let store = builder
        .build()
        .map_err(|e| ctx.build_error("config", StoreKind::S3, e))?;
    let style = if virtual_hosted {
        "virtual-hosted"
    } else {
        "path-style"
    };
    let sse_note = sse_label.map(|l| format!(", {l}")).unwrap_or_default();
    let describe = format!(
        "S3 bucket `{bucket}` at {endpoint_url} ({style}, region {region}{sse_note}{}; \
         credentials: {credentials})",
        limit_note(limit)
    );
    Ok(BucketConfig {
        kind: StoreKind::S3,
        paged: Some(Lister::Paged(Arc::new(store.clone()))),
        store: finish_store(store, limit),
        prefix: String::new(),
        user_metadata: true,
        extra_metadata,
        describe,
        endpoint: Some(endpoint_url),
        storage_class,
        upload,
    })
}

// ---------------------------------------------------------------------------------------------
// GCS
// ---------------------------------------------------------------------------------------------

/// What the service-account JSON says about where and how to talk, checked before handing it
/// to object_store (whose own messages would be less helpful).
struct ServiceAccount {
    base_url: Option<String>,
    disable_oauth: bool,
}

fn inspect_service_account(ctx: &Ctx, json: &str) -> Result<ServiceAccount, ConfigError> {
    const KEY: &str = "config.service_account";
    // serde_json's syntax errors give a position, never the text.
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        ctx.invalid(
            KEY,
            format!(
                "is not valid JSON ({}); it holds the content of a credentials file, not its path",
                ctx.secrets.scrub(e.to_string())
            ),
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ctx.invalid(
            KEY,
            "must be a JSON object (the content of a credentials file)",
        ));
    };
    match obj.get("type").and_then(|t| t.as_str()) {
        None | Some("service_account") => {}
        Some("authorized_user") => {
            return Err(ctx.refused(
                KEY,
                "holds `authorized_user` (gcloud user) credentials, which object_store reads only \
                 from a file: point GOOGLE_APPLICATION_CREDENTIALS at it and leave \
                 config.service_account empty",
            ));
        }
        Some("external_account") => {
            return Err(ctx.refused(
                KEY,
                "holds an `external_account` (Workload Identity Federation) credential, which \
                 object_store does not support (apache/arrow-rs-object-store#258); use a \
                 service-account key, or GKE Workload Identity with config.service_account empty",
            ));
        }
        Some(other) => {
            return Err(ctx.refused(
                KEY,
                format!("holds credential type `{other}`; only `service_account` keys work"),
            ));
        }
    }
    let disable_oauth = match obj.get("disable_oauth") {
        None => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => return Err(ctx.invalid(KEY, "has a `disable_oauth` that is not a boolean")),
    };
    for field in ["private_key", "private_key_id", "client_email"] {
        match obj.get(field) {
            Some(serde_json::Value::String(s)) if !s.is_empty() || disable_oauth => {}
            Some(serde_json::Value::String(_)) => {
                return Err(ctx.invalid(KEY, format!("has an empty `{field}`")));
            }
            _ => {
                return Err(ctx.invalid(
                    KEY,
                    format!(
                        "has no `{field}` string (a service-account key has private_key, \
                         private_key_id and client_email)"
                    ),
                ));
            }
        }
    }
    let base_url = match obj.get("gcs_base_url") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ctx.invalid(KEY, "has a `gcs_base_url` that is not a string")),
    };
    Ok(ServiceAccount {
        base_url,
        disable_oauth,
    })
}

/// A base URL without the trailing '/' (object_store appends `/{bucket}`).
fn checked_base_url(ctx: &Ctx, key: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim())
        .map_err(|e| ctx.invalid(key, format!("holds a base URL that does not parse: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ctx.invalid(key, "holds a base URL that is not http(s)://host[:port]"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(ctx.invalid(key, "holds a base URL with credentials or a query"));
    }
    Ok(url)
}

fn url_text(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

fn build_gcs(ctx: &Ctx, y: GcsYaml) -> Result<BucketConfig, ConfigError> {
    let bucket = nonempty(y.bucket)
        .ok_or_else(|| ctx.missing("config.bucket", "the name of the GCS bucket"))?;
    if flag(y.use_grpc) {
        ctx.ignored(
            "config.use_grpc",
            true,
            "object_store speaks the GCS XML API over HTTP; the gRPC transport is unavailable",
        );
    }
    if y.grpc_conn_pool_size.is_some() {
        ctx.ignored("config.grpc_conn_pool_size", false, "no gRPC transport");
    }
    let chunk = match y.chunk_size_bytes {
        Some(n) => non_negative(ctx, "config.chunk_size_bytes", n)? as u64,
        None => 0,
    };
    let upload = UploadTuning {
        part_size: part_size(ctx, "config.chunk_size_bytes", chunk),
        single_put: false,
    };
    let max_retries = attempts_to_retry(ctx, "config.max_retries", y.max_retries)?;
    let service_account = nonempty(y.service_account);
    let sa = match &service_account {
        Some(json) => Some(inspect_service_account(ctx, json)?),
        None => None,
    };

    let mut opts = default_client_options();
    let mut builder = GoogleCloudStorageBuilder::new();
    // from_env(): SERVICE_ACCOUNT, then GOOGLE_*; file credentials shut the ambient ones out
    // (a path and a key together make build() fail; a bearer token would win over the key).
    if service_account.is_none() {
        if let Some(path) = ctx.env.get("SERVICE_ACCOUNT") {
            builder = builder.with_service_account_path(path);
        }
    }
    for (name, value) in ctx.env.prefixed("GOOGLE_") {
        let Ok(key) = name.to_ascii_lowercase().parse::<GoogleConfigKey>() else {
            continue;
        };
        match key {
            GoogleConfigKey::Client(client_key) => opts = opts.with_config(client_key, value),
            GoogleConfigKey::ServiceAccount
            | GoogleConfigKey::ServiceAccountKey
            | GoogleConfigKey::ApplicationCredentials
            | GoogleConfigKey::BearerToken
                if service_account.is_some() => {}
            key => builder = builder.with_config(key, value),
        }
    }
    // STORAGE_EMULATOR_HOST is how Thanos (the Go client) reaches an emulator: no auth.
    let emulator = ctx.env.get("STORAGE_EMULATOR_HOST").map(|host| {
        if host.contains("://") {
            host.to_string()
        } else {
            format!("http://{host}")
        }
    });
    let (base, base_key) = if let Some(emulator) = &emulator {
        (emulator.clone(), "STORAGE_EMULATOR_HOST")
    } else if let Some(url) = sa.as_ref().and_then(|sa| sa.base_url.clone()) {
        (url, "config.service_account")
    } else if let Some(url) = builder.get_config_value(&GoogleConfigKey::BaseUrl) {
        (url, "GOOGLE_BASE_URL")
    } else {
        (GCS_DEFAULT_BASE_URL.to_string(), "config")
    };
    let base = checked_base_url(ctx, base_key, &base)?;
    let base_text = url_text(&base);
    let (opts, limit) = apply_http_config(ctx, opts, y.http_config)?;
    // Last, so nothing resets it (GCS's own default would allow http; we follow the URL).
    let opts = opts.with_allow_http(base.scheme() == "http");
    builder = builder
        .with_client_options(opts)
        .with_bucket_name(&bucket)
        .with_base_url(&base_text);
    let credentials = match (&service_account, &sa, &emulator) {
        (_, _, Some(_)) => "none (STORAGE_EMULATOR_HOST)",
        (Some(_), Some(sa), None) if sa.disable_oauth => {
            "none (disable_oauth in the service account)"
        }
        (Some(_), _, None) => "service-account key from the file",
        (None, _, None) => {
            "ambient Google chain: GOOGLE_APPLICATION_CREDENTIALS, gcloud ADC, metadata server"
        }
    };
    // Blamed when object_store refuses the credentials (a key that is not RSA, an ADC file).
    let credential_key = if service_account.is_some() {
        "config.service_account"
    } else {
        "config"
    };
    if let Some(json) = service_account {
        builder = builder.with_service_account_key(json);
    }
    if emulator.is_some() {
        builder = builder.with_skip_signature(true);
    }
    if let Some(retry) = max_retries {
        builder = builder.with_retry(retry);
    }
    let store = builder
        .build()
        .map_err(|e| ctx.build_error(credential_key, StoreKind::Gcs, e))?;
    let describe = format!(
        "GCS bucket `{bucket}` at {base_text} (XML API{}; credentials: {credentials})",
        limit_note(limit)
    );
    Ok(BucketConfig {
        kind: StoreKind::Gcs,
        paged: Some(Lister::Paged(Arc::new(store.clone()))),
        store: finish_store(store, limit),
        prefix: String::new(),
        user_metadata: true,
        extra_metadata: Vec::new(),
        describe,
        endpoint: Some(base_text),
        storage_class: None,
        upload,
    })
}

// ---------------------------------------------------------------------------------------------
// AZURE
// ---------------------------------------------------------------------------------------------

/// The parts of an Azure storage connection string we use. Values are secrets or close to it:
/// none of them is ever quoted in a message.
#[derive(Default)]
struct ConnectionString {
    account: Option<String>,
    key: Option<String>,
    sas: Option<String>,
    blob_endpoint: Option<String>,
    protocol: Option<String>,
    suffix: Option<String>,
    development: bool,
    /// Noted only to say it is not used.
    development_proxy: Option<String>,
}

fn parse_connection_string(ctx: &Ctx, text: &str) -> Result<ConnectionString, ConfigError> {
    const KEY: &str = "config.storage_connection_string";
    let mut cs = ConnectionString::default();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(ctx.invalid(KEY, "is not a list of `Name=Value` pairs separated by `;`"));
        };
        let value = Some(value.trim().to_string()).filter(|v| !v.is_empty());
        match name.trim().to_ascii_lowercase().as_str() {
            "accountname" => cs.account = value,
            "accountkey" => cs.key = value,
            "sharedaccesssignature" => cs.sas = value,
            "blobendpoint" => cs.blob_endpoint = value,
            "defaultendpointsprotocol" => cs.protocol = value,
            "endpointsuffix" => cs.suffix = value,
            "usedevelopmentstorage" => {
                cs.development = value.is_some_and(|v| v.eq_ignore_ascii_case("true"));
            }
            "developmentstorageproxyuri" => cs.development_proxy = value,
            // QueueEndpoint, TableEndpoint, FileEndpoint, ...: other services.
            _ => {}
        }
    }
    if cs.key.is_some() && cs.sas.is_some() {
        return Err(ctx.invalid(
            KEY,
            "has both AccountKey and SharedAccessSignature; keep one",
        ));
    }
    if !cs.development && cs.key.is_none() && cs.sas.is_none() {
        return Err(ctx.invalid(KEY, "has neither AccountKey nor SharedAccessSignature"));
    }
    Ok(cs)
}

/// How the file authenticates to Azure, after Thanos' exclusivity rules.
enum AzureAuth {
    AccountKey(String),
    Sas(String),
    ClientSecret {
        tenant: String,
        client_id: String,
        secret: String,
    },
    ManagedIdentity(String),
    Emulator(Option<String>),
    Ambient,
}

/// Whether an `AZURE_*` variable carries a credential (skipped when the file has its own).
fn is_azure_credential_key(key: &AzureConfigKey) -> bool {
    matches!(
        key,
        AzureConfigKey::AccessKey
            | AzureConfigKey::ClientId
            | AzureConfigKey::ClientSecret
            | AzureConfigKey::AuthorityId
            | AzureConfigKey::SasKey
            | AzureConfigKey::Token
            | AzureConfigKey::ObjectId
            | AzureConfigKey::MsiResourceId
            | AzureConfigKey::FederatedTokenFile
            | AzureConfigKey::UseAzureCli
            | AzureConfigKey::CredentialType
            | AzureConfigKey::UseEmulator
            | AzureConfigKey::FabricTokenServiceUrl
            | AzureConfigKey::FabricWorkloadHost
            | AzureConfigKey::FabricSessionToken
            | AzureConfigKey::FabricClusterIdentifier
    )
}

/// The account URL: a full URL in `endpoint` (an etlfs extension, e.g. Azurite), else Thanos'
/// `https://{account}.{endpoint suffix}`. Trailing '/' removed: object_store appends segments.
fn azure_account_url(
    ctx: &Ctx,
    account: &str,
    endpoint: Option<String>,
) -> Result<Url, ConfigError> {
    const KEY: &str = "config.endpoint";
    let endpoint = endpoint.unwrap_or_else(|| AZURE_DEFAULT_SUFFIX.to_string());
    let text = if endpoint.contains("://") {
        endpoint.trim_end_matches('/').to_string()
    } else {
        let suffix = endpoint.trim_matches(|c| c == '.' || c == '/');
        if suffix.contains('/') || suffix.contains(':') {
            return Err(ctx.invalid(
                KEY,
                format!(
                    "`{endpoint}` is neither a DNS suffix (like `{AZURE_DEFAULT_SUFFIX}`) nor a \
                     full URL with a scheme"
                ),
            ));
        }
        format!("https://{account}.{suffix}")
    };
    let url = Url::parse(&text)
        .map_err(|e| ctx.invalid(KEY, format!("does not form a valid account URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ctx.invalid(KEY, "does not form an http(s) account URL"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(ctx.invalid(
            KEY,
            "must not carry credentials or a query; use the credential keys",
        ));
    }
    Ok(url)
}

fn build_azure(ctx: &Ctx, y: AzureYaml) -> Result<BucketConfig, ConfigError> {
    let container = nonempty(y.container)
        .ok_or_else(|| ctx.missing("config.container", "the name of the blob container"))?;
    let connection = match nonempty(y.storage_connection_string) {
        Some(text) => Some(parse_connection_string(ctx, &text)?),
        None => None,
    };
    let yaml_account = nonempty(y.storage_account);
    let account_key = nonempty(y.storage_account_key);
    let tenant = nonempty(y.az_tenant_id);
    let client_id = nonempty(y.client_id);
    let client_secret = nonempty(y.client_secret);
    let user_assigned_id = nonempty(y.user_assigned_id);

    // Thanos' validate(), plus the service principal mixed with other sources (Thanos would
    // silently prefer one; we say which to keep).
    if account_key.is_some() && connection.is_some() {
        return Err(ctx.invalid(
            "config.storage_account_key",
            "cannot be combined with config.storage_connection_string",
        ));
    }
    if user_assigned_id.is_some() {
        let other = if account_key.is_some() {
            Some("config.storage_account_key")
        } else if connection.is_some() {
            Some("config.storage_connection_string")
        } else if client_id.is_some() {
            Some("config.client_id")
        } else {
            None
        };
        if let Some(other) = other {
            return Err(ctx.invalid(
                "config.user_assigned_id",
                format!("cannot be combined with {other}"),
            ));
        }
    }
    let principal = match (tenant, client_id, client_secret) {
        (None, None, None) => None,
        (Some(tenant), Some(client_id), Some(secret)) => Some((tenant, client_id, secret)),
        (tenant, client_id, secret) => {
            let absent = [
                ("config.az_tenant_id", tenant.is_none()),
                ("config.client_id", client_id.is_none()),
                ("config.client_secret", secret.is_none()),
            ];
            let (key, _) = absent
                .iter()
                .find(|(_, absent)| *absent)
                .copied()
                .unwrap_or_default();
            return Err(ctx.missing(
                key,
                "a service principal needs az_tenant_id, client_id and client_secret together",
            ));
        }
    };
    if principal.is_some() && (account_key.is_some() || connection.is_some()) {
        let other = if account_key.is_some() {
            "config.storage_account_key"
        } else {
            "config.storage_connection_string"
        };
        return Err(ctx.invalid(
            "config.client_secret",
            format!("cannot be combined with {other}; keep one way to authenticate"),
        ));
    }

    // Account, account URL and credentials.
    let from_connection_string = connection.is_some();
    let (account, url, auth) = if let Some(cs) = connection {
        if nonempty(y.endpoint).is_some() {
            debug!(
                file = %esc(ctx.file),
                key = "config.endpoint",
                "ignored with storage_connection_string, as in Thanos"
            );
        }
        if cs.development {
            let account = cs.account.unwrap_or_else(|| "devstoreaccount1".to_string());
            if cs.development_proxy.is_some() {
                ctx.ignored(
                    "config.storage_connection_string",
                    true,
                    "DevelopmentStorageProxyUri: object_store's emulator mode takes its URL from \
                     AZURITE_BLOB_STORAGE_URL",
                );
            }
            // The URL object_store's emulator mode will use (it reads the variable itself).
            let base = ctx
                .env
                .get("AZURITE_BLOB_STORAGE_URL")
                .unwrap_or(AZURITE_DEFAULT_URL)
                .to_string();
            let url =
                Url::parse(&format!("{}/{account}", base.trim_end_matches('/'))).map_err(|e| {
                    ctx.invalid(
                        "config.storage_connection_string",
                        format!("gives a development storage URL that does not parse: {e}"),
                    )
                })?;
            (account, url, AzureAuth::Emulator(cs.key))
        } else {
            let account = cs.account.or(yaml_account).ok_or_else(|| {
                ctx.missing(
                    "config.storage_account",
                    "the connection string has no AccountName",
                )
            })?;
            let url_text = match cs.blob_endpoint {
                Some(endpoint) => endpoint,
                None => format!(
                    "{}://{account}.blob.{}",
                    cs.protocol.as_deref().unwrap_or("https"),
                    cs.suffix.as_deref().unwrap_or("core.windows.net")
                ),
            };
            let url = checked_base_url(ctx, "config.storage_connection_string", &url_text)?;
            let auth = match (cs.key, cs.sas) {
                (Some(key), _) => AzureAuth::AccountKey(key),
                (None, Some(sas)) => AzureAuth::Sas(sas),
                (None, None) => unreachable!("parse_connection_string requires one"),
            };
            (account, url, auth)
        }
    } else {
        let account = yaml_account.ok_or_else(|| {
            ctx.missing("config.storage_account", "the name of the storage account")
        })?;
        let url = azure_account_url(ctx, &account, nonempty(y.endpoint))?;
        let auth = if let Some(key) = account_key {
            AzureAuth::AccountKey(key)
        } else if let Some((tenant, client_id, secret)) = principal {
            AzureAuth::ClientSecret {
                tenant,
                client_id,
                secret,
            }
        } else if let Some(id) = user_assigned_id {
            AzureAuth::ManagedIdentity(id)
        } else {
            AzureAuth::Ambient
        };
        (account, url, auth)
    };
    let url_text = url_text(&url);

    // Thanos defaults to true; only an explicit `true` is worth a warning.
    if flag(y.storage_create_container) {
        ctx.ignored(
            "config.storage_create_container",
            true,
            "object_store cannot create containers; the container must already exist",
        );
    }
    if nonempty(y.msi_resource).is_some() {
        ctx.ignored(
            "config.msi_resource",
            true,
            "deprecated and ignored by Thanos too; use user_assigned_id for a managed identity",
        );
    }
    // Retries: azcore counts retries (no -1). pipeline_config.max_tries wins over max_retries.
    let pipeline = y.pipeline_config.unwrap_or_default();
    let max_tries = match pipeline.max_tries {
        Some(n) => non_negative(ctx, "config.pipeline_config.max_tries", n)?,
        None => 0,
    };
    let max_retries = match y.max_retries {
        Some(n) => non_negative(ctx, "config.max_retries", n)?,
        None => 0,
    };
    if let Some(reader) = y.reader_config {
        if let Some(n) = reader.max_retry_requests {
            non_negative(ctx, "config.reader_config.max_retry_requests", n)?;
            ctx.ignored(
                "config.reader_config.max_retry_requests",
                false,
                "object_store resumes broken downloads within the request retry budget",
            );
        }
    }
    let mut retry = RetryConfig::default();
    let mut retry_set = false;
    let retries = if max_tries > 0 {
        max_tries
    } else {
        max_retries
    };
    if retries > 0 {
        retry.max_retries = retries;
        retry_set = true;
    }
    let mut backoff = BackoffConfig::default();
    if let Some(GoDuration(d)) = pipeline.retry_delay {
        if !d.is_zero() {
            backoff.init_backoff = d;
            retry_set = true;
        }
    }
    if let Some(GoDuration(d)) = pipeline.max_retry_delay {
        if !d.is_zero() {
            backoff.max_backoff = d;
            retry_set = true;
        }
    }
    if backoff.max_backoff < backoff.init_backoff {
        return Err(ctx.invalid(
            "config.pipeline_config.max_retry_delay",
            "is shorter than config.pipeline_config.retry_delay",
        ));
    }
    retry.backoff = backoff;

    let explicit_credentials = !matches!(auth, AzureAuth::Ambient);
    let mut opts = default_client_options();
    let mut builder = MicrosoftAzureBuilder::new();
    for (name, value) in ctx.env.prefixed("AZURE_") {
        let Ok(key) = name.to_ascii_lowercase().parse::<AzureConfigKey>() else {
            continue;
        };
        match key {
            AzureConfigKey::Client(client_key) => opts = opts.with_config(client_key, value),
            key if explicit_credentials && is_azure_credential_key(&key) => {}
            key => builder = builder.with_config(key, value),
        }
    }
    if let Some(msi_endpoint) = ctx.env.get("IDENTITY_ENDPOINT") {
        builder = builder.with_msi_endpoint(msi_endpoint);
    }
    if let Some(GoDuration(d)) = pipeline.try_timeout {
        // Per attempt, like azcore's TryTimeout; 0 = no per-attempt limit there, our default here.
        if !d.is_zero() {
            opts = opts.with_timeout(d);
        }
    }
    let (opts, limit) = apply_http_config(ctx, opts, y.http_config)?;
    let opts = opts.with_allow_http(url.scheme() == "http");
    let raw_opts = opts.clone();
    builder = builder
        .with_client_options(opts)
        .with_account(&account)
        .with_container_name(&container);
    // The key to blame when object_store refuses the credentials (e.g. a key not in base64).
    let credential_key = match &auth {
        AzureAuth::AccountKey(_) if from_connection_string => "config.storage_connection_string",
        AzureAuth::AccountKey(_) => "config.storage_account_key",
        AzureAuth::Sas(_) | AzureAuth::Emulator(_) => "config.storage_connection_string",
        AzureAuth::ClientSecret { .. } => "config.client_secret",
        AzureAuth::ManagedIdentity(_) => "config.user_assigned_id",
        AzureAuth::Ambient => "config",
    };
    let credentials = match auth {
        AzureAuth::AccountKey(key) => {
            builder = builder
                .with_endpoint(url_text.clone())
                .with_use_emulator(false)
                .with_access_key(key)
                .with_credential_type("access_key");
            "account key from the file"
        }
        AzureAuth::Sas(sas) => {
            builder = builder
                .with_endpoint(url_text.clone())
                .with_use_emulator(false)
                .with_config(AzureConfigKey::SasKey, sas)
                .with_credential_type("sas_token");
            "shared access signature from the file"
        }
        AzureAuth::ClientSecret {
            tenant,
            client_id,
            secret,
        } => {
            builder = builder
                .with_endpoint(url_text.clone())
                .with_use_emulator(false)
                .with_client_secret_authorization(client_id, secret, tenant)
                .with_credential_type("client_secret");
            "service principal (client secret) from the file"
        }
        AzureAuth::ManagedIdentity(id) => {
            // The explicit type keeps `auto` from picking workload identity from the env.
            builder = builder
                .with_endpoint(url_text.clone())
                .with_use_emulator(false)
                .with_client_id(id)
                .with_credential_type("managed_identity");
            "user-assigned managed identity"
        }
        AzureAuth::Emulator(key) => {
            // object_store's emulator mode (path-style account, Azurite-safe listing) reads
            // AZURITE_BLOB_STORAGE_URL itself; we computed the same URL for `describe`.
            builder = builder.with_use_emulator(true);
            if let Some(key) = key {
                builder = builder.with_access_key(key);
            }
            "development storage (Azurite)"
        }
        AzureAuth::Ambient => {
            builder = builder
                .with_endpoint(url_text.clone())
                .with_use_emulator(false);
            "ambient Azure chain: env, workload identity, managed identity"
        }
    };
    if retry_set {
        builder = builder.with_retry(retry);
    }
    let store = builder
        .build()
        .map_err(|e| ctx.build_error(credential_key, StoreKind::Azure, e))?;
    let describe = format!(
        "AZURE container `{container}` at {url_text} (account {account}{}; credentials: \
         {credentials})",
        limit_note(limit)
    );
    Ok(BucketConfig {
        kind: StoreKind::Azure,
        paged: Some(Lister::Azure(Arc::new(
            AzureLister::new(
                store.clone(),
                &account,
                format!("{url_text}/{container}"),
                &raw_opts,
            )
            .map_err(|e| ctx.build_error(credential_key, StoreKind::Azure, e))?,
        ))),
        store: finish_store(store, limit),
        prefix: String::new(),
        user_metadata: true,
        extra_metadata: Vec::new(),
        describe,
        endpoint: Some(url_text),
        storage_class: None,
        upload: UploadTuning::default(),
    })
}

// ---------------------------------------------------------------------------------------------
// FILESYSTEM
// ---------------------------------------------------------------------------------------------

fn build_filesystem(ctx: &Ctx, dir: &Path, key: &str) -> Result<BucketConfig, ConfigError> {
    // Thanos makes the path absolute against the working directory (filepath.Abs).
    let dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| ctx.key_file(key, dir, e))?
            .join(dir)
    };
    std::fs::create_dir_all(&dir).map_err(|e| ctx.key_file(key, &dir, e))?;
    let store = LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| ctx.build_error(key, StoreKind::Filesystem, e))?
        // Thanos removes empty parent directories on delete.
        .with_automatic_cleanup(true)
        // The bucket is the backup: make each put durable before reporting it done.
        .with_fsync(true);
    Ok(BucketConfig {
        kind: StoreKind::Filesystem,
        store: Arc::new(store),
        paged: None,
        prefix: String::new(),
        user_metadata: false,
        extra_metadata: Vec::new(),
        describe: format!("FILESYSTEM directory {}", dir.display()),
        endpoint: None,
        storage_class: None,
        upload: UploadTuning::default(),
    })
}

/// Standard base64 with padding (SSE-C wants the key encoded; no crate needed for 32 bytes).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "test/object-store.yaml";
    /// Valid base64 (Azure keys must decode) and unlikely anywhere else.
    const SENTINEL: &str = "SENTINELsecret00";
    /// The public Azurite development key.
    const AZURITE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    /// The fake-gcs-server credentials object_store's CI uses: no OAuth, so no metadata server.
    const FAKE_GCS_SA: &str = r#"{"gcs_base_url":"http://127.0.0.1:4443","disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}"#;
    /// A self-signed CA, for `tls_config.ca_file`.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBhjCCAS2gAwIBAgIUT/rrWJdykKNN8FbM2Gws5g+La9AwCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNZXRsZnMtdGVzdC1jYTAgFw0yNjExMjYwNjA4MzJaGA8yMTI2
MTEwMjA2MDgzMlowGDEWMBQGA1UEAwwNZXRsZnMtdGVzdC1jYTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABMgJxHMmnTVIJMn9xLqL9UjrQGpuRRrpmLHvYj2Cz1xT
eHcK6DRaUyZpAnc9cLEkaSCv81bUnvbn32EGDwjIStejUzBRMB0GA1UdDgQWBBSe
FGIf/0zVvFEkn8b2/4wgh11I5zAfBgNVHSMEGDAWgBSeFGIf/0zVvFEkn8b2/4wg
h11I5zAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIApVoB9RPUb6
rEduWd3OIBUt9osfvhpA9jccRv3YVS+rAiA6Prz2ti58LuDiyBPK4Fl1vcTNh2UH
ogGdV0iApZ5HXQ==
-----END CERTIFICATE-----
";

    /// Parses with an empty environment: no test depends on the machine's AWS_/GOOGLE_/AZURE_.
    fn try_parse(yaml: &str) -> Result<BucketConfig, ConfigError> {
        parse_with_env(yaml, FILE, &Env::default())
    }

    fn env(vars: &[(&str, &str)]) -> Env {
        Env {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn ok(yaml: &str) -> BucketConfig {
        match try_parse(yaml) {
            Ok(cfg) => cfg,
            Err(e) => panic!("expected Ok for\n{yaml}\ngot: {e}"),
        }
    }

    fn err(yaml: &str) -> ConfigError {
        match try_parse(yaml) {
            Ok(cfg) => panic!("expected an error for\n{yaml}\ngot: {cfg:?}"),
            Err(e) => e,
        }
    }

    /// Lines under `config:` (each given without indentation, or with its own nesting).
    fn indent(extra: &str) -> String {
        extra
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("  {l}\n"))
            .collect()
    }

    fn s3(extra: &str) -> String {
        format!(
            "type: S3\nconfig:\n  bucket: etl\n  endpoint: minio:9000\n  insecure: true\n{}",
            indent(extra)
        )
    }

    /// S3 without endpoint/insecure, for the cases that set them.
    fn s3_bare(extra: &str) -> String {
        format!("type: S3\nconfig:\n  bucket: etl\n{}", indent(extra))
    }

    fn gcs(extra: &str) -> String {
        format!(
            "type: GCS\nconfig:\n  bucket: etl\n  service_account: '{FAKE_GCS_SA}'\n{}",
            indent(extra)
        )
    }

    /// GCS without the service account, for the cases that set their own (never left unset).
    fn gcs_bare(extra: &str) -> String {
        format!("type: GCS\nconfig:\n  bucket: etl\n{}", indent(extra))
    }

    fn azure(extra: &str) -> String {
        format!(
            "type: AZURE\nconfig:\n  storage_account: acct\n  container: etl\n  \
             storage_account_key: {AZURITE_KEY}\n{}",
            indent(extra)
        )
    }

    fn azure_bare(extra: &str) -> String {
        format!(
            "type: AZURE\nconfig:\n  storage_account: acct\n  container: etl\n{}",
            indent(extra)
        )
    }

    enum Want {
        Ok,
        /// The message must contain this (the key's dotted path).
        Err(&'static str),
    }

    /// Checks one table row, and that no message ever carries the sentinel.
    fn check(name: &str, yaml: &str, want: Want) {
        let result = try_parse(yaml);
        match (&result, want) {
            (Ok(cfg), Want::Ok) => {
                assert!(!cfg.describe.contains(SENTINEL), "{name}: describe leaks");
                assert!(
                    !format!("{cfg:?}").contains(SENTINEL),
                    "{name}: Debug leaks"
                );
            }
            (Ok(cfg), Want::Err(key)) => {
                panic!("{name}: expected an error naming `{key}`, got Ok: {cfg:?}\n{yaml}")
            }
            (Err(e), Want::Ok) => panic!("{name}: expected Ok, got: {e}\n{yaml}"),
            (Err(e), Want::Err(key)) => {
                let message = e.to_string();
                assert!(
                    message.contains(key),
                    "{name}: message does not name `{key}`: {message}"
                );
                assert!(message.starts_with(FILE), "{name}: no file name: {message}");
                assert!(
                    !message.contains(SENTINEL),
                    "{name}: message leaks: {message}"
                );
                assert!(!format!("{e:?}").contains(SENTINEL), "{name}: Debug leaks");
            }
        }
    }

    #[test]
    fn s3_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let key32 = dir.path().join("sse-c.key");
        std::fs::write(&key32, [7u8; 32]).unwrap();
        let key31 = dir.path().join("short.key");
        std::fs::write(&key31, [7u8; 31]).unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, TEST_CA).unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let missing = dir.path().join("missing");
        let (key32, key31, ca, not_pem, missing) = (
            key32.display(),
            key31.display(),
            ca.display(),
            not_pem.display(),
            missing.display(),
        );
        // One row per key and outcome: easier to scan as a table than as rustfmt's layout.
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Want)> = vec![
            ("base", s3(""), Want::Ok),
            ("bucket missing", "type: S3\nconfig:\n  endpoint: m:9000\n".into(), Want::Err("config.bucket")),
            ("bucket empty", "type: S3\nconfig:\n  bucket: ''\n  endpoint: m:9000\n".into(), Want::Err("config.bucket")),
            ("endpoint missing", s3_bare(""), Want::Err("config.endpoint")),
            ("endpoint with path", s3_bare("endpoint: minio:9000/etl"), Want::Err("config.endpoint")),
            ("endpoint ftp", s3_bare("endpoint: ftp://minio"), Want::Err("config.endpoint")),
            ("endpoint query", s3_bare("endpoint: minio:9000?x=1"), Want::Err("config.endpoint")),
            ("endpoint userinfo", s3_bare(&format!("endpoint: ak:{SENTINEL}@minio:9000")), Want::Err("config.endpoint")),
            ("endpoint not a host", s3_bare("endpoint: 'min io:9000'"), Want::Err("config.endpoint")),
            ("endpoint scheme agrees", s3_bare("endpoint: http://minio:9000\ninsecure: true"), Want::Ok),
            ("endpoint scheme disagrees", s3_bare("endpoint: https://minio:9000\ninsecure: true"), Want::Err("config.endpoint")),
            ("endpoint scheme alone", s3_bare("endpoint: http://minio:9000"), Want::Ok),
            ("region", s3("region: eu-west-1"), Want::Ok),
            ("region conflicts with host", s3_bare("endpoint: s3.eu-west-1.amazonaws.com\nregion: us-east-2"), Want::Err("config.region")),
            ("disable_dualstack", s3("disable_dualstack: true"), Want::Ok),
            ("aws_sdk_auth", s3("aws_sdk_auth: true"), Want::Ok),
            ("aws_sdk_auth with keys", s3(&format!("aws_sdk_auth: true\naccess_key: AKID\nsecret_key: {SENTINEL}")), Want::Err("config.aws_sdk_auth")),
            ("static keys", s3(&format!("access_key: AKID\nsecret_key: {SENTINEL}")), Want::Ok),
            ("access_key alone", s3("access_key: AKID"), Want::Err("config.secret_key")),
            ("secret_key alone", s3(&format!("secret_key: {SENTINEL}")), Want::Err("config.access_key")),
            ("insecure false", s3_bare("endpoint: minio:9000\ninsecure: false"), Want::Ok),
            ("insecure yes (YAML 1.1)", s3_bare("endpoint: minio:9000\ninsecure: yes"), Want::Ok),
            ("insecure not a bool", s3_bare("endpoint: minio:9000\ninsecure: maybe"), Want::Err("config.insecure")),
            ("signature_version2 false", s3("signature_version2: false"), Want::Ok),
            ("signature_version2 true", s3("signature_version2: true"), Want::Err("config.signature_version2")),
            ("session_token", s3(&format!("access_key: AKID\nsecret_key: x{SENTINEL}\nsession_token: {SENTINEL}")), Want::Ok),
            ("session_token alone", s3(&format!("session_token: {SENTINEL}")), Want::Err("config.session_token")),
            ("put_user_metadata", s3("put_user_metadata:\n  X-Amz-Storage-Class: STANDARD_IA\n  x-amz-meta-team: etl\n  owner: kubecost"), Want::Ok),
            ("put_user_metadata acl", s3("put_user_metadata:\n  X-Amz-Acl: bucket-owner-full-control"), Want::Err("config.put_user_metadata.X-Amz-Acl")),
            ("put_user_metadata grant", s3("put_user_metadata:\n  x-amz-grant-read: id=1"), Want::Err("config.put_user_metadata.x-amz-grant-read")),
            ("put_user_metadata other x-amz", s3("put_user_metadata:\n  x-amz-tagging: a=b"), Want::Err("config.put_user_metadata.x-amz-tagging")),
            ("put_user_metadata standard header", s3("put_user_metadata:\n  Content-Type: text/plain"), Want::Err("config.put_user_metadata.Content-Type")),
            ("put_user_metadata bad name", s3("put_user_metadata:\n  'bad name': x"), Want::Err("config.put_user_metadata.bad name")),
            ("put_user_metadata bad value", s3("put_user_metadata:\n  team: \"a\\nb\""), Want::Err("config.put_user_metadata.team")),
            ("http_config.idle_conn_timeout", s3("http_config:\n  idle_conn_timeout: 1m30s"), Want::Ok),
            ("http_config.idle_conn_timeout no unit", s3("http_config:\n  idle_conn_timeout: 90"), Want::Err("config.http_config.idle_conn_timeout")),
            ("http_config.response_header_timeout", s3("http_config:\n  response_header_timeout: 2m"), Want::Ok),
            ("http_config.response_header_timeout 0", s3("http_config:\n  response_header_timeout: 0s"), Want::Ok),
            ("http_config.insecure_skip_verify", s3("http_config:\n  insecure_skip_verify: true"), Want::Ok),
            ("http_config.tls_handshake_timeout", s3("http_config:\n  tls_handshake_timeout: 10s"), Want::Ok),
            ("http_config.expect_continue_timeout", s3("http_config:\n  expect_continue_timeout: 1s"), Want::Ok),
            ("http_config.max_idle_conns", s3("http_config:\n  max_idle_conns: 100"), Want::Ok),
            ("http_config.max_idle_conns negative", s3("http_config:\n  max_idle_conns: -1"), Want::Err("config.http_config.max_idle_conns")),
            ("http_config.max_idle_conns_per_host", s3("http_config:\n  max_idle_conns_per_host: 100"), Want::Ok),
            ("http_config.max_conns_per_host", s3("http_config:\n  max_conns_per_host: 8"), Want::Ok),
            ("http_config.max_conns_per_host negative", s3("http_config:\n  max_conns_per_host: -8"), Want::Err("config.http_config.max_conns_per_host")),
            ("http_config.disable_compression", s3("http_config:\n  disable_compression: true"), Want::Ok),
            ("http_config unknown", s3("http_config:\n  dial_timeout: 5s"), Want::Err("config.http_config.dial_timeout")),
            ("tls_config.ca_file", s3(&format!("http_config:\n  tls_config:\n    ca_file: {ca}")), Want::Ok),
            ("tls_config.ca_file missing", s3(&format!("http_config:\n  tls_config:\n    ca_file: {missing}")), Want::Err("config.http_config.tls_config.ca_file")),
            ("tls_config.ca_file not PEM", s3(&format!("http_config:\n  tls_config:\n    ca_file: {not_pem}")), Want::Err("config.http_config.tls_config.ca_file")),
            ("tls_config.cert_file", s3("http_config:\n  tls_config:\n    cert_file: /c.pem\n    key_file: /k.pem"), Want::Err("config.http_config.tls_config.cert_file")),
            ("tls_config.key_file", s3("http_config:\n  tls_config:\n    key_file: /k.pem"), Want::Err("config.http_config.tls_config.key_file")),
            ("tls_config.server_name", s3("http_config:\n  tls_config:\n    server_name: minio.local"), Want::Err("config.http_config.tls_config.server_name")),
            ("tls_config.insecure_skip_verify", s3("http_config:\n  tls_config:\n    insecure_skip_verify: true"), Want::Ok),
            ("tls_config unknown", s3("http_config:\n  tls_config:\n    ca: x"), Want::Err("config.http_config.tls_config.ca")),
            ("trace.enable", s3("trace:\n  enable: true"), Want::Ok),
            ("trace unknown", s3("trace:\n  level: debug"), Want::Err("config.trace.level")),
            ("list_objects_version v2", s3("list_objects_version: v2"), Want::Ok),
            ("list_objects_version v1", s3("list_objects_version: v1"), Want::Err("config.list_objects_version")),
            ("list_objects_version v3", s3("list_objects_version: v3"), Want::Err("config.list_objects_version")),
            ("bucket_lookup_type auto", s3("bucket_lookup_type: auto"), Want::Ok),
            ("bucket_lookup_type path", s3("bucket_lookup_type: path"), Want::Ok),
            ("bucket_lookup_type virtual-hosted", s3("bucket_lookup_type: virtual-hosted"), Want::Ok),
            ("bucket_lookup_type dns", s3("bucket_lookup_type: dns"), Want::Err("config.bucket_lookup_type")),
            ("send_content_md5", s3("send_content_md5: false"), Want::Ok),
            ("disable_multipart", s3("disable_multipart: true"), Want::Ok),
            ("part_size", s3("part_size: 134217728"), Want::Ok),
            ("part_size not a number", s3("part_size: big"), Want::Err("config.part_size")),
            ("part_size negative", s3("part_size: -5"), Want::Err("config.part_size")),
            ("sse_config SSE-S3", s3("sse_config:\n  type: SSE-S3"), Want::Ok),
            ("sse_config SSE-KMS", s3("sse_config:\n  type: SSE-KMS\n  kms_key_id: alias/etl"), Want::Ok),
            ("sse_config SSE-KMS no key", s3("sse_config:\n  type: SSE-KMS"), Want::Err("config.sse_config.kms_key_id")),
            ("sse_config kms_encryption_context", s3("sse_config:\n  type: SSE-KMS\n  kms_key_id: k\n  kms_encryption_context:\n    team: etl"), Want::Err("config.sse_config.kms_encryption_context")),
            ("sse_config SSE-C", s3(&format!("sse_config:\n  type: SSE-C\n  encryption_key: {key32}")), Want::Ok),
            ("sse_config SSE-C no key", s3("sse_config:\n  type: SSE-C"), Want::Err("config.sse_config.encryption_key")),
            ("sse_config SSE-C short key", s3(&format!("sse_config:\n  type: SSE-C\n  encryption_key: {key31}")), Want::Err("config.sse_config.encryption_key")),
            ("sse_config SSE-C missing file", s3(&format!("sse_config:\n  type: SSE-C\n  encryption_key: {missing}")), Want::Err("config.sse_config.encryption_key")),
            ("sse_config bad type", s3("sse_config:\n  type: AES"), Want::Err("config.sse_config.type")),
            ("sse_config stray kms_key_id", s3("sse_config:\n  kms_key_id: k"), Want::Err("config.sse_config.kms_key_id")),
            ("sse_config stray encryption_key", s3("sse_config:\n  type: SSE-S3\n  encryption_key: /k"), Want::Err("config.sse_config.encryption_key")),
            ("sse_config unknown", s3("sse_config:\n  kind: SSE-S3"), Want::Err("config.sse_config.kind")),
            ("sts_endpoint", s3("sts_endpoint: https://sts.eu-west-1.amazonaws.com"), Want::Ok),
            ("sts_endpoint http", s3("sts_endpoint: http://sts.local"), Want::Err("config.sts_endpoint")),
            ("sts_endpoint not a URL", s3("sts_endpoint: sts.amazonaws.com"), Want::Err("config.sts_endpoint")),
            ("max_retries", s3("max_retries: 3"), Want::Ok),
            ("max_retries negative", s3("max_retries: -1"), Want::Err("config.max_retries")),
            ("unknown key", s3("encrypt_sse: true"), Want::Err("config.encrypt_sse")),
            ("prefix inside config (Kubecost #1758)", s3("prefix: etl"), Want::Err("config.prefix")),
            ("duplicate key", s3("bucket: other"), Want::Err("config.bucket")),
        ];
        for (name, yaml, want) in cases {
            check(name, &yaml, want);
        }
    }

    #[test]
    fn gcs_every_key() {
        // One row per key and outcome: easier to scan as a table than as rustfmt's layout.
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Want)> = vec![
            ("base", gcs(""), Want::Ok),
            ("bucket missing", format!("type: GCS\nconfig:\n  service_account: '{FAKE_GCS_SA}'\n"), Want::Err("config.bucket")),
            ("service_account full key", gcs_bare(&format!(
                "service_account: '{{\"type\":\"service_account\",\"private_key\":\"{SENTINEL}\",\"private_key_id\":\"1\",\"client_email\":\"a@b\",\"disable_oauth\":true}}'"
            )), Want::Ok),
            ("service_account not JSON", gcs_bare(&format!("service_account: {SENTINEL}")), Want::Err("config.service_account")),
            ("service_account a path", gcs_bare("service_account: /var/secrets/key.json"), Want::Err("config.service_account")),
            ("service_account not an object", gcs_bare("service_account: '[1]'"), Want::Err("config.service_account")),
            ("service_account external_account", gcs_bare(&format!(
                "service_account: '{{\"type\":\"external_account\",\"private_key\":\"{SENTINEL}\"}}'"
            )), Want::Err("config.service_account")),
            ("service_account authorized_user", gcs_bare(&format!(
                "service_account: '{{\"type\":\"authorized_user\",\"refresh_token\":\"{SENTINEL}\"}}'"
            )), Want::Err("config.service_account")),
            ("service_account no private_key", gcs_bare(
                "service_account: '{\"type\":\"service_account\",\"private_key_id\":\"1\",\"client_email\":\"a@b\"}'"
            ), Want::Err("config.service_account")),
            ("service_account empty private_key", gcs_bare(
                "service_account: '{\"private_key\":\"\",\"private_key_id\":\"1\",\"client_email\":\"a@b\"}'"
            ), Want::Err("config.service_account")),
            ("service_account bad base url", gcs_bare(
                "service_account: '{\"gcs_base_url\":\"localhost:4443\",\"disable_oauth\":true,\"private_key\":\"\",\"private_key_id\":\"\",\"client_email\":\"\"}'"
            ), Want::Err("config.service_account")),
            ("use_grpc", gcs("use_grpc: true"), Want::Ok),
            ("grpc_conn_pool_size", gcs("grpc_conn_pool_size: 4"), Want::Ok),
            ("http_config", gcs("http_config:\n  idle_conn_timeout: 1m\n  response_header_timeout: 30s"), Want::Ok),
            ("http_config.tls_config.server_name", gcs("http_config:\n  tls_config:\n    server_name: x"), Want::Err("config.http_config.tls_config.server_name")),
            ("chunk_size_bytes", gcs("chunk_size_bytes: 16777216"), Want::Ok),
            ("chunk_size_bytes negative", gcs("chunk_size_bytes: -1"), Want::Err("config.chunk_size_bytes")),
            ("max_retries", gcs("max_retries: 1"), Want::Ok),
            ("max_retries negative", gcs("max_retries: -2"), Want::Err("config.max_retries")),
            ("no endpoint key in GCS", gcs("endpoint: storage.googleapis.com"), Want::Err("config.endpoint")),
            ("no_auth is not settable (Thanos)", gcs("no_auth: true"), Want::Err("config.no_auth")),
        ];
        for (name, yaml, want) in cases {
            check(name, &yaml, want);
        }
    }

    #[test]
    fn azure_every_key() {
        let cs_key = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={SENTINEL};\
             BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
        );
        // One row per key and outcome: easier to scan as a table than as rustfmt's layout.
        #[rustfmt::skip]
        let cases: Vec<(&str, String, Want)> = vec![
            ("base", azure(""), Want::Ok),
            ("storage_account missing", "type: AZURE\nconfig:\n  container: etl\n".into(), Want::Err("config.storage_account")),
            ("container missing", "type: AZURE\nconfig:\n  storage_account: acct\n".into(), Want::Err("config.container")),
            ("storage_account_key sentinel", azure_bare(&format!("storage_account_key: {SENTINEL}")), Want::Ok),
            ("storage_account_key not base64", azure_bare(&format!("storage_account_key: '{SENTINEL}!!'")), Want::Err("config.storage_account_key")),
            ("storage_connection_string key", azure_bare(&format!("storage_connection_string: '{cs_key}'")), Want::Ok),
            ("storage_connection_string sas", azure_bare(&format!(
                "storage_connection_string: 'BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2022&sig={SENTINEL}'"
            )), Want::Ok),
            ("storage_connection_string dev", azure_bare("storage_connection_string: UseDevelopmentStorage=true"), Want::Ok),
            ("storage_connection_string and key", azure(&format!("storage_connection_string: '{cs_key}'")), Want::Err("config.storage_account_key")),
            ("storage_connection_string no credential", azure_bare("storage_connection_string: 'AccountName=acct'"), Want::Err("config.storage_connection_string")),
            ("storage_connection_string garbage", azure_bare(&format!("storage_connection_string: {SENTINEL}")), Want::Err("config.storage_connection_string")),
            ("service principal", azure_bare(&format!("az_tenant_id: t\nclient_id: c\nclient_secret: {SENTINEL}")), Want::Ok),
            ("client_id alone", azure_bare("client_id: c"), Want::Err("config.az_tenant_id")),
            ("client_secret without tenant", azure_bare(&format!("client_id: c\nclient_secret: {SENTINEL}")), Want::Err("config.az_tenant_id")),
            ("tenant without secret", azure_bare("az_tenant_id: t\nclient_id: c"), Want::Err("config.client_secret")),
            ("service principal and key", azure(&format!("az_tenant_id: t\nclient_id: c\nclient_secret: {SENTINEL}")), Want::Err("config.client_secret")),
            ("user_assigned_id", azure_bare("user_assigned_id: 00000000-0000-0000-0000-000000000001"), Want::Ok),
            ("user_assigned_id and key", azure("user_assigned_id: u"), Want::Err("config.user_assigned_id")),
            ("user_assigned_id and client_id", azure_bare("user_assigned_id: u\nclient_id: c"), Want::Err("config.user_assigned_id")),
            ("ambient credentials", azure_bare(""), Want::Ok),
            ("storage_create_container true", azure("storage_create_container: true"), Want::Ok),
            ("storage_create_container false", azure("storage_create_container: false"), Want::Ok),
            ("endpoint suffix", azure("endpoint: blob.core.chinacloudapi.cn"), Want::Ok),
            ("endpoint URL", azure("endpoint: http://127.0.0.1:10000/devstoreaccount1/"), Want::Ok),
            ("endpoint bad", azure("endpoint: blob.core/windows"), Want::Err("config.endpoint")),
            ("endpoint with credentials", azure(&format!("endpoint: 'https://u:{SENTINEL}@h/'")), Want::Err("config.endpoint")),
            ("max_retries", azure("max_retries: 3"), Want::Ok),
            ("max_retries negative", azure("max_retries: -1"), Want::Err("config.max_retries")),
            ("reader_config.max_retry_requests", azure("reader_config:\n  max_retry_requests: 3"), Want::Ok),
            ("reader_config.max_retry_requests negative", azure("reader_config:\n  max_retry_requests: -1"), Want::Err("config.reader_config.max_retry_requests")),
            ("pipeline_config.max_tries", azure("pipeline_config:\n  max_tries: 3"), Want::Ok),
            ("pipeline_config.max_tries negative", azure("pipeline_config:\n  max_tries: -1"), Want::Err("config.pipeline_config.max_tries")),
            ("pipeline_config.try_timeout", azure("pipeline_config:\n  try_timeout: 30s"), Want::Ok),
            ("pipeline_config.retry_delay", azure("pipeline_config:\n  retry_delay: 4s"), Want::Ok),
            ("pipeline_config.max_retry_delay", azure("pipeline_config:\n  max_retry_delay: 2m"), Want::Ok),
            ("pipeline_config delays inverted", azure("pipeline_config:\n  retry_delay: 10s\n  max_retry_delay: 1s"), Want::Err("config.pipeline_config.max_retry_delay")),
            ("pipeline_config unknown", azure("pipeline_config:\n  max_retries: 1"), Want::Err("config.pipeline_config.max_retries")),
            ("http_config", azure("http_config:\n  response_header_timeout: 1m\n  max_conns_per_host: 4"), Want::Ok),
            ("msi_resource", azure_bare("msi_resource: https://storage.azure.com/"), Want::Ok),
            ("unknown key", azure("account_name: acct"), Want::Err("config.account_name")),
        ];
        for (name, yaml, want) in cases {
            check(name, &yaml, want);
        }
    }

    #[test]
    fn filesystem_type() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = dir.path().join("a/b/bucket");
        let cfg = ok(&format!(
            "type: FILESYSTEM\nconfig:\n  directory: {}\n",
            bucket.display()
        ));
        assert_eq!(cfg.kind, StoreKind::Filesystem);
        assert!(bucket.is_dir(), "the directory is created");
        assert!(!cfg.user_metadata);
        assert_eq!(cfg.endpoint, None);
        assert!(
            cfg.describe.contains(&bucket.display().to_string()),
            "{}",
            cfg.describe
        );

        let e = err("type: FILESYSTEM\nconfig: {}\n");
        assert!(e.to_string().contains("config.directory"), "{e}");
        let e = err("type: FILESYSTEM\nconfig:\n  directory: /tmp/x\n  dir: /tmp/y\n");
        assert!(e.to_string().contains("config.dir"), "{e}");

        let default = filesystem(&dir.path().join("embedded")).unwrap();
        assert_eq!(default.kind, StoreKind::Filesystem);
        assert!(dir.path().join("embedded").is_dir());
        assert!(!default.user_metadata);
        assert_eq!(default.prefix, "");
    }

    #[test]
    fn type_is_case_insensitive() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ok(&s3("").replace("type: S3", "type: s3")).kind,
            StoreKind::S3
        );
        assert_eq!(
            ok(&gcs("").replace("type: GCS", "type: Gcs")).kind,
            StoreKind::Gcs
        );
        assert_eq!(
            ok(&azure("").replace("type: AZURE", "type: azure")).kind,
            StoreKind::Azure
        );
        let fs = format!(
            "type: filesystem\nconfig:\n  directory: {}\n",
            dir.path().display()
        );
        assert_eq!(ok(&fs).kind, StoreKind::Filesystem);
    }

    #[test]
    fn other_types_are_refused() {
        for kind in [
            "SWIFT",
            "cos",
            "ALIYUNOSS",
            "BOS",
            "OCI",
            "OBS",
            "MEMORY",
            "CLUSTER",
            "FTP",
        ] {
            let e = err(&format!("type: {kind}\nconfig: {{}}\n"));
            let message = e.to_string();
            assert!(
                matches!(e, ConfigError::UnsupportedType { .. }),
                "{message}"
            );
            assert!(message.contains(kind), "{message}");
            assert!(
                message.contains("S3, GCS, AZURE and FILESYSTEM"),
                "{message}"
            );
        }
        assert!(
            err("type: COS\nconfig: {}\n")
                .to_string()
                .contains("type: S3")
        );
        assert!(err("config: {}\n").to_string().contains("`type`"));
        assert!(err("").to_string().contains("`type`"));
        assert!(err("type: S3\n").to_string().contains("`config`"));
    }

    #[test]
    fn prefix_is_trimmed_and_checked() {
        let with_prefix = |p: &str| format!("{}prefix: {p}\n", s3(""));
        assert_eq!(ok(&with_prefix("/etl/")).prefix, "etl");
        assert_eq!(ok(&with_prefix("kubecost/etl")).prefix, "kubecost/etl");
        assert_eq!(ok(&with_prefix("'///'")).prefix, "");
        assert_eq!(ok(&with_prefix("''")).prefix, "");
        assert_eq!(ok(&s3("")).prefix, "");
        assert!(ok(&with_prefix("etl")).describe.ends_with("prefix `etl`"));
        for bad in ["a//b", "a/../b", "./a"] {
            let e = err(&with_prefix(bad));
            assert!(e.to_string().contains("`prefix`"), "{e}");
        }
    }

    #[test]
    fn unknown_top_level_key() {
        let e = err(&format!("{}prefx: etl\n", s3("")));
        let message = e.to_string();
        assert!(matches!(e, ConfigError::UnknownKey { .. }), "{message}");
        assert!(message.contains("`prefx`"), "{message}");
        assert!(message.contains("line 6"), "{message}");
        assert!(message.contains(FILE), "{message}");
    }

    #[test]
    fn unknown_config_key_names_path_and_line() {
        let e = err(&s3("sse_config:\n  typ: SSE-S3"));
        let message = e.to_string();
        assert!(matches!(e, ConfigError::UnknownKey { .. }), "{message}");
        assert!(message.contains("`config.sse_config.typ`"), "{message}");
        assert!(message.contains("line 7"), "{message}");
        assert!(message.contains("expected one of `type`"), "{message}");
    }

    #[test]
    fn bad_yaml_names_file_and_line() {
        let e = err("type: S3\nconfig:\n  bucket: [etl\n  endpoint: x\n");
        let message = e.to_string();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{message}");
        assert!(message.starts_with(FILE), "{message}");
        assert!(message.contains("line"), "{message}");

        let e = err("type: S3\nconfig:\n  insecure: [true]\n  endpoint: x\n  bucket: b\n");
        assert!(e.to_string().contains("config.insecure"), "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = err("- type: S3\n");
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        let e = err("type: S3\nconfig: [1, 2]\n");
        assert!(e.to_string().contains("config"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object-store.yaml");
        let e = load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");

        std::fs::write(
            &path,
            "type: S3\nconfig:\n  bucket: etl\n  endpoint: minio:9000\n  bogus: 1\n",
        )
        .unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            e.to_string().starts_with(&path.display().to_string()),
            "{e}"
        );
        assert!(e.to_string().contains("config.bogus"), "{e}");
    }

    /// The endpoint URL object_store really uses (not just our `endpoint` field): AmazonS3's
    /// Debug shows `bucket_endpoint`. Test-only; Debug of a store is never logged.
    fn s3_bucket_endpoint(cfg: &BucketConfig) -> String {
        let debug = format!("{:?}", cfg.store);
        let start = debug
            .find("bucket_endpoint: \"")
            .expect("bucket_endpoint in Debug")
            + 18;
        debug[start..start + debug[start..].find('"').unwrap()].to_string()
    }

    #[test]
    fn s3_endpoint_scheme_and_lookup() {
        let cfg = ok(&s3_bare("endpoint: minio:9000\ninsecure: true"));
        assert_eq!(cfg.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(s3_bucket_endpoint(&cfg), "http://minio:9000/etl");
        assert!(
            cfg.describe.contains("http://minio:9000"),
            "{}",
            cfg.describe
        );
        assert!(cfg.describe.contains("path-style"), "{}", cfg.describe);

        let cfg = ok(&s3_bare("endpoint: minio:9000\ninsecure: false"));
        assert_eq!(cfg.endpoint.as_deref(), Some("https://minio:9000"));
        assert_eq!(s3_bucket_endpoint(&cfg), "https://minio:9000/etl");
        let cfg = ok(&s3_bare("endpoint: minio:9000"));
        assert_eq!(cfg.endpoint.as_deref(), Some("https://minio:9000"));
        let cfg = ok(&s3_bare("endpoint: '[::1]:9000'\ninsecure: true"));
        assert_eq!(cfg.endpoint.as_deref(), Some("http://[::1]:9000"));

        // Virtual-hosted on a custom endpoint: the bucket moves into the host.
        let cfg = ok(&s3("bucket_lookup_type: virtual-hosted"));
        assert_eq!(cfg.endpoint.as_deref(), Some("http://etl.minio:9000"));
        assert_eq!(s3_bucket_endpoint(&cfg), "http://etl.minio:9000");

        // AWS: minio's auto rule picks virtual-hosted; the global host goes regional.
        let cfg = ok(&s3_bare("endpoint: s3.amazonaws.com\nregion: eu-west-1"));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://etl.s3.eu-west-1.amazonaws.com")
        );
        assert!(
            cfg.describe.contains("region eu-west-1"),
            "{}",
            cfg.describe
        );
        let cfg = ok(&s3_bare("endpoint: s3.eu-central-1.amazonaws.com"));
        assert!(
            cfg.describe.contains("region eu-central-1"),
            "{}",
            cfg.describe
        );
        let cfg = ok(&s3_bare(
            "endpoint: s3.amazonaws.com\nregion: eu-west-1\nbucket_lookup_type: path",
        ));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://s3.eu-west-1.amazonaws.com")
        );
        assert_eq!(
            s3_bucket_endpoint(&cfg),
            "https://s3.eu-west-1.amazonaws.com/etl"
        );
        // A dotted bucket breaks the wildcard certificate: path style.
        let cfg =
            ok("type: S3\nconfig:\n  bucket: my.etl\n  endpoint: s3.us-east-2.amazonaws.com\n");
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://s3.us-east-2.amazonaws.com")
        );
        // GCS's S3 interop is virtual-hosted under auto.
        let cfg = ok(&s3_bare("endpoint: storage.googleapis.com"));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://etl.storage.googleapis.com")
        );

        // The global endpoint without a region takes the ambient region.
        let yaml = s3_bare("endpoint: s3.amazonaws.com");
        let cfg = parse_with_env(&yaml, FILE, &env(&[("AWS_REGION", "ap-south-1")])).unwrap();
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://etl.s3.ap-south-1.amazonaws.com")
        );
        let cfg = ok(&yaml);
        assert!(
            cfg.describe.contains("region us-east-1"),
            "{}",
            cfg.describe
        );
    }

    #[test]
    fn s3_ambient_endpoint_cannot_override_the_file() {
        let yaml = s3("");
        let hostile = env(&[
            ("AWS_ENDPOINT_URL_S3", "http://elsewhere:1"),
            ("AWS_ENDPOINT", "http://elsewhere:2"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true"),
            ("AWS_BUCKET", "other"),
        ]);
        let cfg = parse_with_env(&yaml, FILE, &hostile).unwrap();
        assert_eq!(s3_bucket_endpoint(&cfg), "http://minio:9000/etl");
    }

    #[test]
    fn aws_host_names() {
        let region = |h: &str| aws_host(h).map(|a| a.region);
        assert_eq!(region("s3.amazonaws.com"), Some(None));
        assert_eq!(
            region("s3.eu-west-1.amazonaws.com"),
            Some(Some("eu-west-1".into()))
        );
        assert_eq!(
            region("s3-eu-west-1.amazonaws.com"),
            Some(Some("eu-west-1".into()))
        );
        assert_eq!(
            region("s3-external-1.amazonaws.com"),
            Some(Some("us-east-1".into()))
        );
        assert_eq!(
            region("s3.dualstack.us-west-2.amazonaws.com"),
            Some(Some("us-west-2".into()))
        );
        assert_eq!(
            region("s3-fips.us-gov-west-1.amazonaws.com"),
            Some(Some("us-gov-west-1".into()))
        );
        assert_eq!(
            region("s3.cn-north-1.amazonaws.com.cn"),
            Some(Some("cn-north-1".into()))
        );
        assert_eq!(region("minio.example.com").map(|_| ()), None);
        assert_eq!(
            region("bucket.vpce-1.s3.us-east-1.vpce.amazonaws.com").map(|_| ()),
            None
        );
    }

    #[test]
    fn s3_metadata_storage_class_and_upload_tuning() {
        let cfg = ok(&s3(
            "put_user_metadata:\n  X-Amz-Storage-Class: STANDARD_IA\n  x-amz-meta-Team: etl\n  owner: kubecost\n\
             part_size: 1048576\ndisable_multipart: true",
        ));
        assert_eq!(cfg.storage_class.as_deref(), Some("STANDARD_IA"));
        assert_eq!(
            cfg.extra_metadata,
            vec![
                ("owner".to_string(), "kubecost".to_string()),
                ("Team".to_string(), "etl".to_string())
            ]
        );
        assert!(cfg.user_metadata);
        assert_eq!(
            cfg.upload,
            UploadTuning {
                part_size: MIN_PART_SIZE,
                single_put: true
            }
        );
        assert_eq!(ok(&s3("")).upload, UploadTuning::default());
        assert_eq!(ok(&s3("part_size: 0")).upload.part_size, DEFAULT_PART_SIZE);
        assert_eq!(
            ok(&gcs("chunk_size_bytes: 16777216")).upload.part_size,
            16 * MIB
        );
    }

    #[test]
    fn s3_max_conns_per_host_wraps_in_a_limit() {
        let cfg = ok(&s3("http_config:\n  max_conns_per_host: 8"));
        assert!(
            cfg.store.to_string().starts_with("LimitStore(8"),
            "{}",
            cfg.store
        );
        assert!(
            cfg.describe.contains("at most 8 concurrent requests"),
            "{}",
            cfg.describe
        );
    }

    #[test]
    fn gcs_base_url_and_allow_http() {
        // gcs_base_url from the service-account JSON (fake-gcs-server): http must be allowed,
        // and with_client_options must not have reset it (pitfall #3).
        let cfg = ok(&gcs(""));
        assert_eq!(cfg.endpoint.as_deref(), Some("http://127.0.0.1:4443"));
        let debug = format!("{:?}", cfg.store);
        assert!(debug.contains("allow_http: Parsed(true)"), "{debug}");
        assert!(cfg.describe.contains("disable_oauth"), "{}", cfg.describe);

        let sa = FAKE_GCS_SA.replace("http://127.0.0.1:4443", "https://gcs.local:4443/");
        let cfg = ok(&gcs_bare(&format!("service_account: '{sa}'")));
        assert_eq!(cfg.endpoint.as_deref(), Some("https://gcs.local:4443"));
        assert!(format!("{:?}", cfg.store).contains("allow_http: Parsed(false)"));

        // Thanos' way to an emulator: STORAGE_EMULATOR_HOST wins and disables signing.
        let yaml = gcs("");
        let cfg = parse_with_env(
            &yaml,
            FILE,
            &env(&[("STORAGE_EMULATOR_HOST", "127.0.0.1:9023")]),
        )
        .unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("http://127.0.0.1:9023"));
        assert!(
            cfg.describe.contains("STORAGE_EMULATOR_HOST"),
            "{}",
            cfg.describe
        );

        // An ambient key path next to the file's key would make build() fail: it is skipped.
        let hostile = env(&[
            ("GOOGLE_SERVICE_ACCOUNT", "/nonexistent.json"),
            ("SERVICE_ACCOUNT", "/nonexistent.json"),
            ("GOOGLE_BEARER_TOKEN", "abcd"),
        ]);
        parse_with_env(&yaml, FILE, &hostile).unwrap();
    }

    #[test]
    fn azure_endpoints() {
        let cfg = ok(&azure(""));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        assert!(
            cfg.describe.contains("account key from the file"),
            "{}",
            cfg.describe
        );
        let cfg = ok(&azure("endpoint: blob.core.chinacloudapi.cn"));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://acct.blob.core.chinacloudapi.cn")
        );
        let cfg = ok(&azure("endpoint: http://127.0.0.1:10000/devstoreaccount1/"));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert!(format!("{:?}", cfg.store).contains("allow_http: Parsed(true)"));

        let cs = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};\
             BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;"
        );
        let cfg = ok(&azure_bare(&format!("storage_connection_string: '{cs}'")));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert!(
            cfg.describe.contains("account devstoreaccount1"),
            "{}",
            cfg.describe
        );

        let cs = format!(
            "AccountName=other;AccountKey={AZURITE_KEY};EndpointSuffix=core.usgovcloudapi.net"
        );
        let cfg = ok(&azure_bare(&format!("storage_connection_string: '{cs}'")));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://other.blob.core.usgovcloudapi.net")
        );

        let cfg = ok(&azure_bare(
            "storage_connection_string: UseDevelopmentStorage=true",
        ));
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert!(cfg.describe.contains("Azurite"), "{}", cfg.describe);
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
    fn go_durations() {
        let d = |s: &str| parse_go_duration(s);
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(d("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(d("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(d("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "-1s", "1x", "s", "1.2.3s", "ms"] {
            assert!(d(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn flags_accept_yaml_1_1_words() {
        #[derive(Deserialize)]
        struct F {
            f: Flag,
        }
        for (text, want) in [
            ("true", true),
            ("yes", true),
            ("On", true),
            ("false", false),
            ("no", false),
        ] {
            let parsed: F = serde_yaml_ng::from_str(&format!("f: {text}")).unwrap();
            assert_eq!(parsed.f.0, want, "{text}");
        }
        assert!(serde_yaml_ng::from_str::<F>("f: 1").is_err());
    }

    /// Every YAML example in doc/CONFIGURATION.md loads (with an empty environment).
    #[test]
    fn documented_examples_parse() {
        let doc = include_str!("../../doc/CONFIGURATION.md");
        let mut examples = 0;
        for block in doc.split("```yaml\n").skip(1) {
            let yaml = &block[..block.find("```").expect("closed code block")];
            if let Err(e) = try_parse(yaml) {
                panic!("documented example fails:\n{yaml}\n{e}");
            }
            examples += 1;
        }
        assert!(examples >= 5, "{examples} examples found");
    }

    #[test]
    fn base64_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(&[0xff; 32]).len(), 44);
    }
}
