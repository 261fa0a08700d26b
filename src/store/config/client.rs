//! HTTP client settings shared by S3, GCS and AZURE: `http_config` (Thanos' `exthttp`) turned
//! into `object_store`'s [`ClientOptions`], retries, the request-concurrency cap, and the base
//! URLs requests go to.
//!
//! # Timeouts
//!
//! `object_store` limits every request attempt to 30 s by default, which cuts a 300 MiB upload
//! on a slow link. Thanos has no total timeout at all. etlfs uses 5 minutes per attempt plus a
//! 2 minute read timeout (Thanos' `response_header_timeout` default); `http_config` and Azure's
//! `pipeline_config.try_timeout` override them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::limit::LimitStore;
use object_store::{Certificate, ClientOptions, ObjectStore, RetryConfig};
use serde::Deserialize;
use tracing::warn;
use url::Url;

use super::ConfigError;
use super::duration::GoDuration;
use super::error::Ctx;
use super::schema::{Flag, flag, nonempty};
use crate::escape::esc;

/// Per request attempt, connect to end of body. See "Timeouts" above.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest silence while reading a response: Thanos' `response_header_timeout` default.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// `exthttp.HTTPConfig`, shared by S3, GCS and AZURE.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "http_config")]
pub(super) struct HttpYaml {
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

/// etlfs' defaults, before the environment and the file have their say.
pub(super) fn default_client_options() -> ClientOptions {
    ClientOptions::new()
        .with_timeout(DEFAULT_TIMEOUT)
        .with_read_timeout(DEFAULT_READ_TIMEOUT)
}

/// Applies `http_config`; returns the options and a request-concurrency cap
/// (`max_conns_per_host`) to enforce with [`LimitStore`] (see [`finish_store`]).
pub(super) fn apply_http_config(
    ctx: &Ctx,
    opts: ClientOptions,
    http: Option<HttpYaml>,
) -> Result<(ClientOptions, Option<usize>), ConfigError> {
    let Some(http) = http else {
        return Ok((opts, None));
    };
    let opts = apply_timeouts(ctx, opts, &http);
    let (opts, limit) = apply_pool(ctx, opts, &http)?;
    let opts = apply_tls(ctx, opts, http)?;
    Ok((opts, limit))
}

fn apply_timeouts(ctx: &Ctx, mut opts: ClientOptions, http: &HttpYaml) -> ClientOptions {
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
    opts
}

/// The connection-pool keys, and the concurrency cap `max_conns_per_host` becomes.
fn apply_pool(
    ctx: &Ctx,
    mut opts: ClientOptions,
    http: &HttpYaml,
) -> Result<(ClientOptions, Option<usize>), ConfigError> {
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
    Ok((opts, limit))
}

/// Certificate verification, a private CA, and the TLS keys `object_store` cannot honour.
fn apply_tls(
    ctx: &Ctx,
    mut opts: ClientOptions,
    http: HttpYaml,
) -> Result<ClientOptions, ConfigError> {
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
        opts = with_ca_file(ctx, opts, &ca)?;
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
    Ok(opts)
}

/// `tls_config.ca_file`: the bundle's certificates become the only trusted roots.
fn with_ca_file(
    ctx: &Ctx,
    mut opts: ClientOptions,
    ca: &str,
) -> Result<ClientOptions, ConfigError> {
    const KEY: &str = "config.http_config.tls_config.ca_file";
    let path = PathBuf::from(ca);
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
    Ok(opts.with_no_system_certificates(true))
}

/// A count from the file that Go would take as an `int`; negative ones are refused.
pub(super) fn non_negative(ctx: &Ctx, key: &str, n: i64) -> Result<usize, ConfigError> {
    usize::try_from(n).map_err(|_| ctx.invalid(key, format!("must be 0 or more, not {n}")))
}

/// Go `max_retries` counts attempts (1 = no retry); object_store counts retries.
pub(super) fn attempts_to_retry(
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

/// The built store, behind a [`LimitStore`] when `max_conns_per_host` asked for a cap.
pub(super) fn finish_store<T: ObjectStore>(store: T, limit: Option<usize>) -> Arc<dyn ObjectStore> {
    match limit {
        Some(n) => Arc::new(LimitStore::new(store, n)),
        None => Arc::new(store),
    }
}

/// The cap as `describe` shows it ("" when none).
pub(super) fn limit_note(limit: Option<usize>) -> String {
    limit
        .map(|n| format!(", at most {n} concurrent requests"))
        .unwrap_or_default()
}

/// A base URL without the trailing '/' (object_store appends `/{bucket}`).
pub(super) fn checked_base_url(ctx: &Ctx, key: &str, text: &str) -> Result<Url, ConfigError> {
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

/// The URL as text without its trailing '/': object_store appends segments to it.
pub(super) fn url_text(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use crate::store::config::testkit::*;

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
}
