//! S3 `sse_config`: server-side encryption of every object etlfs writes (SSE-S3, SSE-KMS,
//! SSE-C).
//!
//! A key that belongs to another encryption type than the one chosen is refused rather than
//! ignored: objects would not be encrypted the way it suggests. The SSE-C key is read from the
//! file `encryption_key` names and never appears in a message, only its length.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use serde::Deserialize;
use tracing::warn;

use crate::escape::esc;
use crate::store::config::error::Ctx;
use crate::store::config::schema::nonempty;
use crate::store::config::{ConfigError, StoreKind};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "sse_config")]
pub(super) struct SseYaml {
    #[serde(rename = "type")]
    kind: Option<String>,
    kms_key_id: Option<String>,
    kms_encryption_context: Option<BTreeMap<String, String>>,
    encryption_key: Option<String>,
}

/// The builder key for SSE-S3; `S3EncryptionConfigKey` is not re-exported by object_store 0.14.
fn sse_s3_key(ctx: &Ctx) -> Result<AmazonS3ConfigKey, ConfigError> {
    "aws_server_side_encryption"
        .parse()
        .map_err(|e| ctx.build_error("config.sse_config.type", StoreKind::S3, e))
}

/// Sets the encryption `sse` asks for; returns the builder and the type for `describe`.
pub(super) fn apply_sse(
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
            builder = builder.with_ssec_encryption(ssec_key(ctx, key_path, https)?);
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

/// The SSE-C key from the file `encryption_key` names, base64-encoded as object_store wants it.
fn ssec_key(ctx: &Ctx, key_path: Option<String>, https: bool) -> Result<String, ConfigError> {
    const KEY: &str = "config.sse_config.encryption_key";
    let Some(key_path) = key_path else {
        return Err(ctx.missing(
            KEY,
            "the path of a file holding the raw 32-byte key, for config.sse_config.type SSE-C",
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
    Ok(BASE64.encode(&key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::config::env::Env;
    use crate::store::config::secrets::Secrets;

    /// The SSE-C key file's 32 raw bytes go to object_store as padded standard base64.
    #[test]
    fn ssec_key_is_padded_standard_base64() {
        let env = Env::default();
        let ctx = Ctx {
            file: "test/object-store.yaml",
            env: &env,
            secrets: Secrets::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        for (bytes, want) in [
            (
                *b"0123456789abcdefghijklmnopqrstuv",
                "MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0dXY=",
            ),
            ([0xff; 32], "//////////////////////////////////////////8="),
        ] {
            let path = dir.path().join("key");
            std::fs::write(&path, bytes).unwrap();
            let key = ssec_key(&ctx, Some(path.display().to_string()), true).unwrap();
            assert_eq!(key, want);
        }
    }
}
