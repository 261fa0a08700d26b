//! S3 (and every S3-compatible store): Thanos' S3 `config` mapped onto `AmazonS3Builder`.
//!
//! Each key is mapped, refused (SigV2, ListObjects v1: effects object_store cannot reproduce
//! and whose absence would change what ends up in the bucket or who can read it) or ignored
//! with a log line (tracing, dual-stack, Content-MD5: transport details). Where requests go is
//! decided in [`endpoint`], encryption in [`sse`], what `put_user_metadata` sends (metadata, and
//! headers such as a canned ACL on the writes) in [`headers`].
//!
//! Credentials written in the file win; without them the ambient AWS chain applies (env keys,
//! web identity, ECS/EKS container credentials, IMDS), read from the [`Env`] snapshot with the
//! file's credentials shutting the ambient ones out.
//!
//! [`Env`]: crate::store::config::env::Env

mod endpoint;
mod headers;
mod sse;

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{ClientOptions, ObjectStore};
use serde::Deserialize;
use tracing::info;
use url::Url;

use self::endpoint::Target;
use self::headers::{WriteHeaders, put_metadata};
use self::sse::SseYaml;
use super::client::{
    HttpYaml, apply_http_config, attempts_to_retry, default_client_options, finish_store,
    limit_note,
};
use super::error::Ctx;
use super::schema::{Flag, flag, nonempty};
use super::{BucketConfig, ConfigError, StoreKind, UploadTuning, part_size};
use crate::escape::esc;
use crate::store::bucket::Lister;

/// `providers/s3/s3.go` `Config` (Thanos), a superset of OpenCost's `S3Config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "S3 config")]
pub(super) struct S3Yaml {
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
#[serde(deny_unknown_fields, rename = "trace")]
struct TraceYaml {
    enable: Option<Flag>,
}

/// Static keys from the file: `access_key`, `secret_key` and the optional `session_token`.
struct StaticKeys {
    access: String,
    secret: String,
    token: Option<String>,
}

/// The file's credentials, set both or neither; `None` means the ambient chain.
fn static_keys(
    ctx: &Ctx,
    access_key: Option<String>,
    secret_key: Option<String>,
    session_token: Option<String>,
) -> Result<Option<StaticKeys>, ConfigError> {
    let keys = match (nonempty(access_key), nonempty(secret_key)) {
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
    let token = nonempty(session_token);
    match keys {
        Some((access, secret)) => Ok(Some(StaticKeys {
            access,
            secret,
            token,
        })),
        None if token.is_some() => Err(ctx.invalid(
            "config.session_token",
            "is used only together with config.access_key and config.secret_key (with the \
             ambient chain, set AWS_SESSION_TOKEN instead)",
        )),
        None => Ok(None),
    }
}

/// The keys that choose how to authenticate, sign and list: accepted, or refused with the
/// reason.
fn check_protocol(ctx: &Ctx, y: &S3Yaml, has_static_keys: bool) -> Result<(), ConfigError> {
    if flag(y.aws_sdk_auth) {
        if has_static_keys {
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
    match nonempty(y.list_objects_version.clone()).as_deref() {
        None | Some("v2") => Ok(()),
        Some("v1") => Err(ctx.refused(
            "config.list_objects_version",
            "object_store lists with ListObjectsV2 only; `v1` is unavailable",
        )),
        Some(other) => Err(ctx.invalid(
            "config.list_objects_version",
            format!("`{other}` is not one of v1, v2"),
        )),
    }
}

/// Keys accepted without effect, each with its log line.
fn note_ignored(ctx: &Ctx, y: &S3Yaml) {
    if y.trace.as_ref().is_some_and(|trace| flag(trace.enable)) {
        ctx.ignored(
            "config.trace.enable",
            true,
            "request tracing is a log setting here: RUST_LOG=object_store=debug",
        );
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
}

/// `from_env()`, minus credentials when the file has its own, with client options kept aside
/// (they must reach the one `with_client_options` call, which replaces all before it).
fn ambient(ctx: &Ctx, file_has_keys: bool) -> (ClientOptions, AmazonS3Builder) {
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
                if file_has_keys => {}
            key => builder = builder.with_config(key, value),
        }
    }
    (opts, builder)
}

/// `sts_endpoint`, for web-identity credentials: an HTTPS URL.
fn with_sts_endpoint(
    ctx: &Ctx,
    builder: AmazonS3Builder,
    sts: Option<String>,
) -> Result<AmazonS3Builder, ConfigError> {
    const KEY: &str = "config.sts_endpoint";
    let Some(sts) = nonempty(sts) else {
        return Ok(builder);
    };
    let url = Url::parse(&sts).map_err(|e| {
        ctx.invalid(
            KEY,
            format!("must be a URL such as https://sts.amazonaws.com: {e}"),
        )
    })?;
    if url.scheme() != "https" {
        return Err(ctx.refused(KEY, "object_store talks to STS over HTTPS only"));
    }
    Ok(builder.with_config(AmazonS3ConfigKey::StsEndpoint, sts))
}

pub(super) fn build_s3(ctx: &Ctx, mut y: S3Yaml) -> Result<BucketConfig, ConfigError> {
    let bucket = nonempty(y.bucket.take())
        .ok_or_else(|| ctx.missing("config.bucket", "the name of the S3 bucket"))?;
    let endpoint = nonempty(y.endpoint.take()).ok_or_else(|| {
        ctx.missing(
            "config.endpoint",
            "`host[:port]` of the S3 API, e.g. `s3.amazonaws.com` or `minio:9000` (Thanos \
             requires it too)",
        )
    })?;
    let keys = static_keys(
        ctx,
        y.access_key.take(),
        y.secret_key.take(),
        y.session_token.take(),
    )?;
    check_protocol(ctx, &y, keys.is_some())?;
    let lookup = endpoint::lookup(ctx, y.bucket_lookup_type.take())?;
    note_ignored(ctx, &y);
    let max_retries = attempts_to_retry(ctx, "config.max_retries", y.max_retries)?;
    let insecure = y.insecure.map(|f| f.0);
    let target = endpoint::resolve(ctx, &bucket, &endpoint, insecure, y.region.take(), lookup)?;

    let (opts, mut builder) = ambient(ctx, keys.is_some());
    let (opts, limit) = apply_http_config(ctx, opts, y.http_config.take())?;
    let opts = opts.with_allow_http(!target.https);
    builder = builder
        .with_client_options(opts.clone())
        .with_bucket_name(&bucket)
        .with_region(&target.region)
        .with_endpoint(&target.endpoint_url)
        // AWS_ENDPOINT_URL_S3 would beat with_endpoint in build().
        .with_config(AmazonS3ConfigKey::S3Endpoint, &target.endpoint_url)
        .with_virtual_hosted_style_request(target.virtual_hosted);
    let credentials = match keys {
        Some(keys) => {
            builder = builder
                .with_access_key_id(keys.access)
                .with_secret_access_key(keys.secret);
            if let Some(token) = keys.token {
                builder = builder.with_token(token);
            }
            "static keys from the file"
        }
        None => "ambient AWS chain: env, web identity, ECS/EKS, IMDS",
    };
    builder = with_sts_endpoint(ctx, builder, y.sts_endpoint.take())?;
    let mut sse_label = None;
    if let Some(sse) = y.sse_config.take() {
        let (b, label) = sse::apply_sse(ctx, builder, sse, target.https)?;
        builder = b;
        sse_label = label;
    }
    if let Some(retry) = max_retries {
        builder = builder.with_retry(retry);
    }
    if target.host == "storage.googleapis.com" || target.host.ends_with(".aliyuncs.com") {
        // These S3 dialects lack DeleteObjects (POST /?delete), which delete() uses since 0.13.
        builder = builder.with_disable_bulk_delete(true);
    }
    let metadata = put_metadata(ctx, y.put_user_metadata.take().unwrap_or_default())?;
    let upload = UploadTuning {
        part_size: part_size(ctx, "config.part_size", y.part_size.unwrap_or(0)),
        single_put: flag(y.disable_multipart),
    };
    let build = |b: AmazonS3Builder| {
        b.build()
            .map_err(|e| ctx.build_error("config", StoreKind::S3, e))
    };
    let reads = build(builder.clone())?;
    let paged = Some(Lister::Paged(Arc::new(reads.clone())));
    let mut header_names: Vec<&str> = metadata.headers.keys().map(|k| k.as_str()).collect();
    header_names.sort_unstable();
    let header_note = match header_names.as_slice() {
        [] => String::new(),
        names => format!("; on writes: {}", names.join(", ")),
    };
    let store: Arc<dyn ObjectStore> = if metadata.headers.is_empty() {
        Arc::new(reads)
    } else {
        let writes =
            build(builder.with_client_options(opts.with_default_headers(metadata.headers)))?;
        Arc::new(WriteHeaders {
            reads: Arc::new(reads),
            writes: Arc::new(writes),
        })
    };
    Ok(BucketConfig {
        kind: StoreKind::S3,
        paged,
        store: finish_store(store, limit),
        prefix: String::new(),
        user_metadata: true,
        extra_metadata: metadata.metadata,
        target: format!("S3 bucket `{bucket}` at {}", target.endpoint_url),
        describe: describe(
            &bucket,
            &target,
            sse_label,
            limit,
            credentials,
            &header_note,
        ),
        endpoint: Some(target.endpoint_url),
        create_missing: false,
        upload,
    })
}

/// The `describe` line: where, how, and which credentials (never their values).
fn describe(
    bucket: &str,
    target: &Target,
    sse_label: Option<&str>,
    limit: Option<usize>,
    credentials: &str,
    header_note: &str,
) -> String {
    let Target {
        endpoint_url,
        region,
        ..
    } = target;
    let style = if target.virtual_hosted {
        "virtual-hosted"
    } else {
        "path-style"
    };
    let sse_note = sse_label.map(|l| format!(", {l}")).unwrap_or_default();
    format!(
        "S3 bucket `{bucket}` at {endpoint_url} ({style}, region {region}{sse_note}{}; \
         credentials: {credentials}{header_note})",
        limit_note(limit)
    )
}

#[cfg(test)]
mod tests {
    use crate::store::config::testkit::*;
    use crate::store::config::{
        DEFAULT_PART_SIZE, MIB, MIN_PART_SIZE, UploadTuning, parse_with_env,
    };

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
            ("put_user_metadata acl", s3("put_user_metadata:\n  X-Amz-Acl: bucket-owner-full-control"), Want::Ok),
            ("put_user_metadata acl unknown", s3("put_user_metadata:\n  X-Amz-Acl: everyone"), Want::Err("config.put_user_metadata.X-Amz-Acl")),
            ("put_user_metadata acl empty", s3("put_user_metadata:\n  X-Amz-Acl: ''"), Want::Err("config.put_user_metadata.X-Amz-Acl")),
            ("put_user_metadata grants", s3("put_user_metadata:\n  x-amz-grant-read: id=1\n  x-amz-grant-read-acp: id=2\n  x-amz-grant-write-acp: id=3\n  x-amz-grant-full-control: 'uri=\"http://acs.amazonaws.com/groups/global/AllUsers\"'"), Want::Ok),
            ("put_user_metadata tagging", s3("put_user_metadata:\n  x-amz-tagging: a=b"), Want::Ok),
            ("put_user_metadata grant-write", s3("put_user_metadata:\n  x-amz-grant-write: id=1"), Want::Err("config.put_user_metadata.x-amz-grant-write")),
            ("put_user_metadata object lock", s3("put_user_metadata:\n  x-amz-object-lock-mode: GOVERNANCE"), Want::Err("config.put_user_metadata.x-amz-object-lock-mode")),
            ("put_user_metadata sse", s3("put_user_metadata:\n  x-amz-server-side-encryption: AES256"), Want::Err("config.put_user_metadata.x-amz-server-side-encryption")),
            ("put_user_metadata request payer", s3("put_user_metadata:\n  x-amz-request-payer: requester"), Want::Err("config.put_user_metadata.x-amz-request-payer")),
            ("put_user_metadata other x-amz", s3("put_user_metadata:\n  x-amz-website-redirect-location: /x"), Want::Err("config.put_user_metadata.x-amz-website-redirect-location")),
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
            ("prefix inside config", s3("prefix: etl"), Want::Err("config.prefix")),
            ("duplicate key", s3("bucket: other"), Want::Err("config.bucket")),
        ];
        for (name, yaml, want) in cases {
            check(name, &yaml, want);
        }
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
    fn s3_metadata_storage_class_and_upload_tuning() {
        let cfg = ok(&s3(
            "put_user_metadata:\n  X-Amz-Storage-Class: STANDARD_IA\n  x-amz-meta-Team: etl\n  owner: kubecost\n\
             part_size: 1048576\ndisable_multipart: true",
        ));
        assert!(
            cfg.describe.ends_with("; on writes: x-amz-storage-class)"),
            "{}",
            cfg.describe
        );
        assert!(
            cfg.store.to_string().starts_with("AmazonS3"),
            "{}",
            cfg.store
        );
        let acl = ok(&s3(
            "put_user_metadata:\n  X-Amz-Acl: Bucket-Owner-Full-Control\n  x-amz-tagging: a=b",
        ));
        assert!(
            acl.describe
                .ends_with("; on writes: x-amz-acl, x-amz-tagging)"),
            "{}",
            acl.describe
        );
        assert!(acl.extra_metadata.is_empty());
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
}
