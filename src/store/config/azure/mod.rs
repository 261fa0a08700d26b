//! AZURE: Thanos' Azure `config` mapped onto `MicrosoftAzureBuilder`, and the [`AzureLister`]
//! that reads the levels object_store's own listing cannot.
//!
//! Which account and credentials a file ends up with is decided in [`account`]; this file maps
//! the rest: retries (`max_retries`, `pipeline_config`), the keys ignored with a log line, and
//! the ambient `AZURE_*` settings. Account URLs lose their trailing `/` (a `//` would end up
//! in every blob URL).

mod account;

use std::sync::Arc;

use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use serde::Deserialize;

use self::account::{Account, is_azure_credential_key};
use super::client::{
    HttpYaml, apply_http_config, default_client_options, finish_store, limit_note, non_negative,
    url_text,
};
use super::duration::GoDuration;
use super::error::Ctx;
use super::schema::{Flag, nonempty};
use super::{BucketConfig, ConfigError, StoreKind, UploadTuning};
use crate::store::bucket::Lister;
use crate::store::bucket::azure_list::AzureLister;

/// `providers/azure/azure.go` `Config`, a superset of OpenCost's `AzureConfig`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "AZURE config")]
pub(super) struct AzureYaml {
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

/// Keys accepted without effect, each with its log line.
fn note_ignored(ctx: &Ctx, y: &AzureYaml) {
    if nonempty(y.msi_resource.clone()).is_some() {
        ctx.ignored(
            "config.msi_resource",
            true,
            "deprecated and ignored by Thanos too; use user_assigned_id for a managed identity",
        );
    }
}

/// `max_retries` and `pipeline_config`'s retry keys; `None` keeps object_store's defaults.
/// azcore counts retries (no -1); `pipeline_config.max_tries` wins over `max_retries`.
fn retry(ctx: &Ctx, y: &AzureYaml) -> Result<Option<RetryConfig>, ConfigError> {
    let pipeline = y.pipeline_config.as_ref();
    let max_tries = match pipeline.and_then(|p| p.max_tries) {
        Some(n) => non_negative(ctx, "config.pipeline_config.max_tries", n)?,
        None => 0,
    };
    let max_retries = match y.max_retries {
        Some(n) => non_negative(ctx, "config.max_retries", n)?,
        None => 0,
    };
    if let Some(n) = y.reader_config.as_ref().and_then(|r| r.max_retry_requests) {
        non_negative(ctx, "config.reader_config.max_retry_requests", n)?;
        ctx.ignored(
            "config.reader_config.max_retry_requests",
            false,
            "object_store resumes broken downloads within the request retry budget",
        );
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
    if let Some(GoDuration(d)) = pipeline.and_then(|p| p.retry_delay) {
        if !d.is_zero() {
            backoff.init_backoff = d;
            retry_set = true;
        }
    }
    if let Some(GoDuration(d)) = pipeline.and_then(|p| p.max_retry_delay) {
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
    Ok(retry_set.then_some(retry))
}

/// `from_env()`, minus credentials when the file has its own, with client options kept aside
/// (they must reach the one `with_client_options` call, which replaces all before it).
fn ambient(ctx: &Ctx, file_has_credentials: bool) -> (ClientOptions, MicrosoftAzureBuilder) {
    let mut opts = default_client_options();
    let mut builder = MicrosoftAzureBuilder::new();
    for (name, value) in ctx.env.prefixed("AZURE_") {
        let Ok(key) = name.to_ascii_lowercase().parse::<AzureConfigKey>() else {
            continue;
        };
        match key {
            AzureConfigKey::Client(client_key) => opts = opts.with_config(client_key, value),
            key if file_has_credentials && is_azure_credential_key(&key) => {}
            key => builder = builder.with_config(key, value),
        }
    }
    if let Some(msi_endpoint) = ctx.env.get("IDENTITY_ENDPOINT") {
        builder = builder.with_msi_endpoint(msi_endpoint);
    }
    (opts, builder)
}

pub(super) fn build_azure(ctx: &Ctx, mut y: AzureYaml) -> Result<BucketConfig, ConfigError> {
    let container = nonempty(y.container.take())
        .ok_or_else(|| ctx.missing("config.container", "the name of the blob container"))?;
    let connection = match nonempty(y.storage_connection_string.take()) {
        Some(text) => Some(account::parse_connection_string(ctx, &text)?),
        None => None,
    };
    let principal = (
        nonempty(y.az_tenant_id.take()),
        nonempty(y.client_id.take()),
        nonempty(y.client_secret.take()),
    );
    let creds = account::file_credentials(
        ctx,
        connection.as_ref(),
        nonempty(y.storage_account_key.take()),
        principal,
        nonempty(y.user_assigned_id.take()),
    )?;
    let yaml_account = nonempty(y.storage_account.take());
    let endpoint = nonempty(y.endpoint.take());
    let Account {
        name: account,
        url,
        auth,
        from_connection_string,
    } = account::resolve(ctx, connection, yaml_account, creds, endpoint)?;
    let url_text = url_text(&url);
    note_ignored(ctx, &y);
    // Thanos' default is true: the container is created when it is missing.
    let create_missing = y.storage_create_container.is_none_or(|f| f.0);
    let retry = retry(ctx, &y)?;

    let (mut opts, builder) = ambient(ctx, !matches!(auth, account::AzureAuth::Ambient));
    let try_timeout = y.pipeline_config.as_ref().and_then(|p| p.try_timeout);
    if let Some(GoDuration(d)) = try_timeout {
        // Per attempt, like azcore's TryTimeout; 0 = no per-attempt limit there, our default here.
        if !d.is_zero() {
            opts = opts.with_timeout(d);
        }
    }
    let (opts, limit) = apply_http_config(ctx, opts, y.http_config.take())?;
    let opts = opts.with_allow_http(url.scheme() == "http");
    let raw_opts = opts.clone();
    let builder = builder
        .with_client_options(opts)
        .with_account(&account)
        .with_container_name(&container);
    let credential_key = auth.blamed_key(from_connection_string);
    let (mut builder, credentials) = auth.apply(builder, &url_text);
    if let Some(retry) = retry {
        builder = builder.with_retry(retry);
    }
    let store = builder
        .build()
        .map_err(|e| ctx.build_error(credential_key, StoreKind::Azure, e))?;
    let lister = AzureLister::new(
        store.clone(),
        &account,
        format!("{url_text}/{container}"),
        &raw_opts,
    )
    .map_err(|e| ctx.build_error(credential_key, StoreKind::Azure, e))?;
    let describe = format!(
        "AZURE container `{container}` at {url_text} (account {account}{}; credentials: \
         {credentials}{})",
        limit_note(limit),
        if create_missing {
            "; created if missing"
        } else {
            ""
        }
    );
    Ok(BucketConfig {
        kind: StoreKind::Azure,
        paged: Some(Lister::Azure(Arc::new(lister))),
        store: finish_store(store, limit),
        prefix: String::new(),
        user_metadata: true,
        extra_metadata: Vec::new(),
        describe,
        target: format!("AZURE container `{container}` at {url_text}"),
        endpoint: Some(url_text),
        create_missing,
        upload: UploadTuning::default(),
    })
}

#[cfg(test)]
mod tests {
    use crate::store::config::testkit::*;

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
}
