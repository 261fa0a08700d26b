//! [`ConfigError`], and the [`Ctx`] every check builds its errors and log lines from.
//!
//! Every message starts with the file and names the key by its dotted path
//! (`config.sse_config.type`), so one place decides how a key is blamed. `serde_yaml_ng`'s own
//! messages are reshaped here too: an unknown or duplicate field becomes a message about the
//! full dotted key with its line, and any text passed on from a third party is scrubbed of the
//! file's secrets first.

use std::fmt;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::StoreKind;
use super::env::Env;
use super::secrets::Secrets;
use crate::escape::esc;

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
    /// A `$(NAME)` in the file names a variable that is not set (Thanos' words).
    #[error(
        "{}: found reference to unset environment variable \"{}\" (etlfs replaces `$(NAME)` \
         with the variable's value, as Thanos does)",
        esc(.file), esc(.name)
    )]
    UnsetVariable { file: String, name: String },
    /// `object_store` refused the assembled settings; `message` is scrubbed of secrets.
    #[error("{}: `{}`: cannot set up the {kind} store: {}", esc(.file), esc(.key), esc(.message))]
    Build {
        file: String,
        key: String,
        kind: StoreKind,
        message: String,
    },
}

/// What every check needs: the file's name for messages, the environment snapshot, and the
/// file's secrets to scrub from third-party messages.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) env: &'a Env,
    pub(super) secrets: Secrets,
}

impl Ctx<'_> {
    pub(super) fn missing(&self, key: &str, why: impl Into<String>) -> ConfigError {
        ConfigError::Missing {
            file: self.file.to_string(),
            key: key.to_string(),
            why: why.into(),
        }
    }

    pub(super) fn invalid(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    pub(super) fn refused(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Refused {
            file: self.file.to_string(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub(super) fn key_file(&self, key: &str, path: &Path, source: std::io::Error) -> ConfigError {
        ConfigError::KeyFile {
            file: self.file.to_string(),
            key: key.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }

    pub(super) fn build_error(
        &self,
        key: &str,
        kind: StoreKind,
        err: impl fmt::Display,
    ) -> ConfigError {
        ConfigError::Build {
            file: self.file.to_string(),
            key: key.to_string(),
            kind,
            message: self.secrets.scrub(err.to_string()),
        }
    }

    /// serde_yaml_ng renders `<path>: <message> at line L column C`; an unknown field becomes
    /// [`ConfigError::UnknownKey`] with the full dotted key.
    pub(super) fn yaml_error(&self, err: serde_yaml_ng::Error) -> ConfigError {
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
    pub(super) fn ignored(&self, key: &str, loud: bool, why: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::config::testkit::*;

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
}
