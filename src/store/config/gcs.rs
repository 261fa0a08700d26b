//! GCS: Thanos' GCS `config` mapped onto `GoogleCloudStorageBuilder` (the XML API over HTTP).
//!
//! The service-account JSON is checked before object_store sees it, so that a path given
//! instead of the content, or a credential type object_store cannot use, gets a message that
//! says so. Without a key in the file the ambient Google chain applies
//! (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud ADC, the metadata server as on GKE Workload
//! Identity); `STORAGE_EMULATOR_HOST` reaches an emulator without auth, as in Thanos.

use std::sync::Arc;

use object_store::ClientOptions;
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use serde::Deserialize;
use url::Url;

use super::client::{
    HttpYaml, apply_http_config, attempts_to_retry, checked_base_url, default_client_options,
    finish_store, limit_note, non_negative, url_text,
};
use super::error::Ctx;
use super::schema::{Flag, flag, nonempty};
use super::{BucketConfig, ConfigError, StoreKind, UploadTuning, part_size};
use crate::store::bucket::Lister;

const GCS_DEFAULT_BASE_URL: &str = "https://storage.googleapis.com";

/// `providers/gcs/gcs.go` `Config`; OpenCost knows only `bucket` and `service_account`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "GCS config")]
pub(super) struct GcsYaml {
    bucket: Option<String>,
    service_account: Option<String>,
    use_grpc: Option<Flag>,
    grpc_conn_pool_size: Option<i64>,
    http_config: Option<HttpYaml>,
    chunk_size_bytes: Option<i64>,
    max_retries: Option<i64>,
}

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

/// `from_env()`: SERVICE_ACCOUNT, then GOOGLE_*, with client options kept aside. File
/// credentials shut the ambient ones out (a path and a key together make build() fail; a
/// bearer token would win over the key).
fn ambient(ctx: &Ctx, file_has_key: bool) -> (ClientOptions, GoogleCloudStorageBuilder) {
    let mut opts = default_client_options();
    let mut builder = GoogleCloudStorageBuilder::new();
    if !file_has_key {
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
                if file_has_key => {}
            key => builder = builder.with_config(key, value),
        }
    }
    (opts, builder)
}

/// Where requests go: the emulator, else the service account's `gcs_base_url`, else
/// `GOOGLE_BASE_URL`, else Google's.
fn base_url(
    ctx: &Ctx,
    emulator: Option<&str>,
    sa: Option<&ServiceAccount>,
    builder: &GoogleCloudStorageBuilder,
) -> Result<Url, ConfigError> {
    let (base, base_key) = if let Some(emulator) = emulator {
        (emulator.to_string(), "STORAGE_EMULATOR_HOST")
    } else if let Some(url) = sa.and_then(|sa| sa.base_url.clone()) {
        (url, "config.service_account")
    } else if let Some(url) = builder.get_config_value(&GoogleConfigKey::BaseUrl) {
        (url, "GOOGLE_BASE_URL")
    } else {
        (GCS_DEFAULT_BASE_URL.to_string(), "config")
    };
    checked_base_url(ctx, base_key, &base)
}

/// The keys that tune what object_store cannot use or leaves to the uploader.
fn upload_and_transport(ctx: &Ctx, y: &GcsYaml) -> Result<UploadTuning, ConfigError> {
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
    Ok(UploadTuning {
        part_size: part_size(ctx, "config.chunk_size_bytes", chunk),
        single_put: false,
    })
}

pub(super) fn build_gcs(ctx: &Ctx, mut y: GcsYaml) -> Result<BucketConfig, ConfigError> {
    let bucket = nonempty(y.bucket.take())
        .ok_or_else(|| ctx.missing("config.bucket", "the name of the GCS bucket"))?;
    let upload = upload_and_transport(ctx, &y)?;
    let max_retries = attempts_to_retry(ctx, "config.max_retries", y.max_retries)?;
    let service_account = nonempty(y.service_account.take());
    let sa = match &service_account {
        Some(json) => Some(inspect_service_account(ctx, json)?),
        None => None,
    };

    let (opts, mut builder) = ambient(ctx, service_account.is_some());
    // STORAGE_EMULATOR_HOST is how Thanos (the Go client) reaches an emulator: no auth.
    let emulator = ctx.env.get("STORAGE_EMULATOR_HOST").map(|host| {
        if host.contains("://") {
            host.to_string()
        } else {
            format!("http://{host}")
        }
    });
    let base = base_url(ctx, emulator.as_deref(), sa.as_ref(), &builder)?;
    let base_text = url_text(&base);
    let (opts, limit) = apply_http_config(ctx, opts, y.http_config.take())?;
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
        target: format!("GCS bucket `{bucket}` at {base_text}"),
        endpoint: Some(base_text),
        create_missing: false,
        upload,
    })
}

#[cfg(test)]
mod tests {
    use crate::store::config::parse_with_env;
    use crate::store::config::testkit::*;

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
    fn gcs_base_url_and_allow_http() {
        // gcs_base_url from the service-account JSON (fake-gcs-server): http must be allowed,
        // and with_client_options must not have reset it.
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
}
