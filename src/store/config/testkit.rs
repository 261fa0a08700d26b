//! Test fixtures shared by the config tests: sample files per provider, parsing with an empty
//! environment, and the table check that every message names its key and leaks no secret.

use super::env::Env;
use super::{BucketConfig, ConfigError, parse_with_env};

/// The file name every message must start with.
pub(super) const FILE: &str = "test/object-store.yaml";
/// Valid base64 (Azure keys must decode) and unlikely anywhere else.
pub(super) const SENTINEL: &str = "SENTINELsecret00";
/// The public Azurite development key.
pub(super) const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The fake-gcs-server credentials object_store's CI uses: no OAuth, so no metadata server.
pub(super) const FAKE_GCS_SA: &str = r#"{"gcs_base_url":"http://127.0.0.1:4443","disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}"#;
/// A self-signed CA, for `tls_config.ca_file`.
pub(super) const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
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
pub(super) fn try_parse(yaml: &str) -> Result<BucketConfig, ConfigError> {
    parse_with_env(yaml, FILE, &Env::default())
}

/// An environment holding exactly `vars`.
pub(super) fn env(vars: &[(&str, &str)]) -> Env {
    Env::from_pairs(vars)
}

pub(super) fn ok(yaml: &str) -> BucketConfig {
    match try_parse(yaml) {
        Ok(cfg) => cfg,
        Err(e) => panic!("expected Ok for\n{yaml}\ngot: {e}"),
    }
}

pub(super) fn err(yaml: &str) -> ConfigError {
    match try_parse(yaml) {
        Ok(cfg) => panic!("expected an error for\n{yaml}\ngot: {cfg:?}"),
        Err(e) => e,
    }
}

/// Lines under `config:` (each given without indentation, or with its own nesting).
pub(super) fn indent(extra: &str) -> String {
    extra
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// A working S3 file (minio over HTTP) plus `extra`.
pub(super) fn s3(extra: &str) -> String {
    format!(
        "type: S3\nconfig:\n  bucket: etl\n  endpoint: minio:9000\n  insecure: true\n{}",
        indent(extra)
    )
}

/// S3 without endpoint/insecure, for the cases that set them.
pub(super) fn s3_bare(extra: &str) -> String {
    format!("type: S3\nconfig:\n  bucket: etl\n{}", indent(extra))
}

/// A working GCS file (fake-gcs-server's credentials) plus `extra`.
pub(super) fn gcs(extra: &str) -> String {
    format!(
        "type: GCS\nconfig:\n  bucket: etl\n  service_account: '{FAKE_GCS_SA}'\n{}",
        indent(extra)
    )
}

/// GCS without the service account, for the cases that set their own (never left unset).
pub(super) fn gcs_bare(extra: &str) -> String {
    format!("type: GCS\nconfig:\n  bucket: etl\n{}", indent(extra))
}

/// A working AZURE file (an account key) plus `extra`.
pub(super) fn azure(extra: &str) -> String {
    format!(
        "type: AZURE\nconfig:\n  storage_account: acct\n  container: etl\n  \
         storage_account_key: {AZURITE_KEY}\n{}",
        indent(extra)
    )
}

pub(super) fn azure_bare(extra: &str) -> String {
    format!(
        "type: AZURE\nconfig:\n  storage_account: acct\n  container: etl\n{}",
        indent(extra)
    )
}

pub(super) enum Want {
    Ok,
    /// The message must contain this (the key's dotted path).
    Err(&'static str),
}

/// Checks one table row, and that no message ever carries the sentinel.
pub(super) fn check(name: &str, yaml: &str, want: Want) {
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

/// The endpoint URL object_store really uses (not just our `endpoint` field): AmazonS3's
/// Debug shows `bucket_endpoint`. Test-only; Debug of a store is never logged.
pub(super) fn s3_bucket_endpoint(cfg: &BucketConfig) -> String {
    let debug = format!("{:?}", cfg.store);
    let start = debug
        .find("bucket_endpoint: \"")
        .expect("bucket_endpoint in Debug")
        + 18;
    debug[start..start + debug[start..].find('"').unwrap()].to_string()
}
