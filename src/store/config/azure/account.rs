//! Which storage account, at which URL, with which credentials: Azure's exclusivity rules
//! (Thanos' `validate()`), connection strings, and the credential each file ends up with.
//!
//! Credentials written in the file win; with none, the ambient Azure chain applies (env keys,
//! workload identity, client secret, managed identity). A connection string's values are
//! secrets or close to it: none of them is ever quoted in a message.

use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use tracing::debug;
use url::Url;

use crate::escape::esc;
use crate::store::config::ConfigError;
use crate::store::config::client::checked_base_url;
use crate::store::config::error::Ctx;

const AZURE_DEFAULT_SUFFIX: &str = "blob.core.windows.net";
const AZURITE_DEFAULT_URL: &str = "http://127.0.0.1:10000";

/// The parts of an Azure storage connection string we use. Values are secrets or close to it:
/// none of them is ever quoted in a message.
#[derive(Default)]
pub(super) struct ConnectionString {
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

pub(super) fn parse_connection_string(
    ctx: &Ctx,
    text: &str,
) -> Result<ConnectionString, ConfigError> {
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
pub(super) enum AzureAuth {
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
pub(super) fn is_azure_credential_key(key: &AzureConfigKey) -> bool {
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
        // The account is a DNS label here: Azure's names are 3 to 24 lowercase letters and
        // digits. (A placeholder left in, `<STORAGE_ACCOUNT>`, is blamed on its own key.)
        let lower_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        if !(3..=24).contains(&account.len()) || !account.chars().all(lower_alnum) {
            return Err(ctx.invalid(
                "config.storage_account",
                format!(
                    "`{account}` is not a storage account name (3 to 24 lowercase letters and \
                     digits)"
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

/// The credential keys of the file, checked against each other.
pub(super) struct FileCredentials {
    pub(super) account_key: Option<String>,
    pub(super) principal: Option<(String, String, String)>,
    pub(super) user_assigned_id: Option<String>,
}

/// Thanos' `validate()`, plus the service principal mixed with other sources (Thanos would
/// silently prefer one; we say which to keep).
pub(super) fn file_credentials(
    ctx: &Ctx,
    connection: Option<&ConnectionString>,
    account_key: Option<String>,
    (tenant, client_id, client_secret): (Option<String>, Option<String>, Option<String>),
    user_assigned_id: Option<String>,
) -> Result<FileCredentials, ConfigError> {
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
    Ok(FileCredentials {
        account_key,
        principal,
        user_assigned_id,
    })
}

/// The account, its URL and how to authenticate to it.
pub(super) struct Account {
    pub(super) name: String,
    pub(super) url: Url,
    pub(super) auth: AzureAuth,
    /// The credential came from `storage_connection_string` (which is then the key to blame).
    pub(super) from_connection_string: bool,
}

/// The account from the connection string when there is one, else from the file's keys.
pub(super) fn resolve(
    ctx: &Ctx,
    connection: Option<ConnectionString>,
    yaml_account: Option<String>,
    creds: FileCredentials,
    endpoint: Option<String>,
) -> Result<Account, ConfigError> {
    if let Some(cs) = connection {
        return from_connection_string(ctx, cs, yaml_account, endpoint);
    }
    let name = yaml_account
        .ok_or_else(|| ctx.missing("config.storage_account", "the name of the storage account"))?;
    let url = azure_account_url(ctx, &name, endpoint)?;
    let auth = if let Some(key) = creds.account_key {
        AzureAuth::AccountKey(key)
    } else if let Some((tenant, client_id, secret)) = creds.principal {
        AzureAuth::ClientSecret {
            tenant,
            client_id,
            secret,
        }
    } else if let Some(id) = creds.user_assigned_id {
        AzureAuth::ManagedIdentity(id)
    } else {
        AzureAuth::Ambient
    };
    Ok(Account {
        name,
        url,
        auth,
        from_connection_string: false,
    })
}

fn from_connection_string(
    ctx: &Ctx,
    cs: ConnectionString,
    yaml_account: Option<String>,
    endpoint: Option<String>,
) -> Result<Account, ConfigError> {
    if endpoint.is_some() {
        debug!(
            file = %esc(ctx.file),
            key = "config.endpoint",
            "ignored with storage_connection_string, as in Thanos"
        );
    }
    if cs.development {
        return development_storage(ctx, cs);
    }
    let name = cs.account.or(yaml_account).ok_or_else(|| {
        ctx.missing(
            "config.storage_account",
            "the connection string has no AccountName",
        )
    })?;
    let url_text = match cs.blob_endpoint {
        Some(endpoint) => endpoint,
        None => format!(
            "{}://{name}.blob.{}",
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
    Ok(Account {
        name,
        url,
        auth,
        from_connection_string: true,
    })
}

/// `UseDevelopmentStorage=true`: Azurite, through object_store's emulator mode.
fn development_storage(ctx: &Ctx, cs: ConnectionString) -> Result<Account, ConfigError> {
    let name = cs.account.unwrap_or_else(|| "devstoreaccount1".to_string());
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
    let url = Url::parse(&format!("{}/{name}", base.trim_end_matches('/'))).map_err(|e| {
        ctx.invalid(
            "config.storage_connection_string",
            format!("gives a development storage URL that does not parse: {e}"),
        )
    })?;
    Ok(Account {
        name,
        url,
        auth: AzureAuth::Emulator(cs.key),
        from_connection_string: true,
    })
}

impl AzureAuth {
    /// The key to blame when object_store refuses the credentials (e.g. a key not in base64).
    pub(super) fn blamed_key(&self, from_connection_string: bool) -> &'static str {
        match self {
            AzureAuth::AccountKey(_) if from_connection_string => {
                "config.storage_connection_string"
            }
            AzureAuth::AccountKey(_) => "config.storage_account_key",
            AzureAuth::Sas(_) | AzureAuth::Emulator(_) => "config.storage_connection_string",
            AzureAuth::ClientSecret { .. } => "config.client_secret",
            AzureAuth::ManagedIdentity(_) => "config.user_assigned_id",
            AzureAuth::Ambient => "config",
        }
    }

    /// Sets the credential on `builder`, with the account URL `url` (unless object_store's
    /// emulator mode computes it); returns the builder and how `describe` names the credential.
    pub(super) fn apply(
        self,
        builder: MicrosoftAzureBuilder,
        url: &str,
    ) -> (MicrosoftAzureBuilder, &'static str) {
        let at_url =
            |b: MicrosoftAzureBuilder| b.with_endpoint(url.to_string()).with_use_emulator(false);
        match self {
            AzureAuth::AccountKey(key) => (
                at_url(builder)
                    .with_access_key(key)
                    .with_credential_type("access_key"),
                "account key from the file",
            ),
            AzureAuth::Sas(sas) => (
                at_url(builder)
                    .with_config(AzureConfigKey::SasKey, sas)
                    .with_credential_type("sas_token"),
                "shared access signature from the file",
            ),
            AzureAuth::ClientSecret {
                tenant,
                client_id,
                secret,
            } => (
                at_url(builder)
                    .with_client_secret_authorization(client_id, secret, tenant)
                    .with_credential_type("client_secret"),
                "service principal (client secret) from the file",
            ),
            // The explicit type keeps `auto` from picking workload identity from the env.
            AzureAuth::ManagedIdentity(id) => (
                at_url(builder)
                    .with_client_id(id)
                    .with_credential_type("managed_identity"),
                "user-assigned managed identity",
            ),
            AzureAuth::Emulator(key) => {
                // object_store's emulator mode (path-style account, Azurite-safe listing) reads
                // AZURITE_BLOB_STORAGE_URL itself; we computed the same URL for `describe`.
                let mut builder = builder.with_use_emulator(true);
                if let Some(key) = key {
                    builder = builder.with_access_key(key);
                }
                (builder, "development storage (Azurite)")
            }
            AzureAuth::Ambient => (
                at_url(builder),
                "ambient Azure chain: env, workload identity, managed identity",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::config::testkit::*;

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
}
