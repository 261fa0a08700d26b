//! What every provider's schema shares: the two passes over the document's top level, and
//! values read the way Thanos (Go's yaml.v2) reads them.
//!
//! # Strict parsing
//!
//! Thanos parses S3, GCS and AZURE with `yaml.UnmarshalStrict`; OpenCost (Kubecost's open core)
//! forks those providers and parses S3 and GCS non-strictly, but every key it knows is also a
//! Thanos key. So etlfs reads the union strictly (`deny_unknown_fields` on every schema): every
//! file that either product documents loads, and a misspelt or misplaced key (`secret_kye`,
//! `prefix` inside `config`) stops the start with the key's path and line instead of silently
//! dropping a setting. Silently ignored settings are how backups end up disabled without a
//! trace. FILESYSTEM, which Thanos parses leniently, is strict here too: it is our own demo
//! type and a typo in it should not create a bucket somewhere unexpected.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, IgnoredAny};

use super::ConfigError;
use super::error::Ctx;

/// First pass: the top level, to learn `type` (and refuse unknown top-level keys).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "object-store.yaml")]
pub(super) struct Head {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    #[serde(rename = "config")]
    _config: Option<IgnoredAny>,
    pub(super) prefix: Option<String>,
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

/// The `config` mapping, typed by the provider's schema; serde_yaml_ng then reports
/// `config.<key>` paths with lines.
pub(super) fn provider_config<C: DeserializeOwned>(
    ctx: &Ctx,
    yaml: &str,
) -> Result<C, ConfigError> {
    let doc: Doc<C> = serde_yaml_ng::from_str(yaml).map_err(|e| ctx.yaml_error(e))?;
    doc.config
        .ok_or_else(|| ctx.missing("config", "the provider's settings (a mapping)"))
}

/// A boolean as Go's yaml.v2 reads one: also `yes`/`no`/`on`/`off`/`y`/`n` (YAML 1.1), which
/// serde_yaml_ng (YAML 1.2) would hand us as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flag(pub(super) bool);

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

/// An absent flag is false.
pub(super) fn flag(value: Option<Flag>) -> bool {
    value.is_some_and(|f| f.0)
}

/// Go treats an empty string like an absent key.
pub(super) fn nonempty(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
