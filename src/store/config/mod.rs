//! Bucket configuration: the Thanos-style `object-store.yaml` (the file Kubecost mounts from its
//! `kubecost-thanos` secret) read, validated and turned into a ready [`ObjectStore`].
//!
//! The file has three top-level keys: `type` (S3, GCS, AZURE or FILESYSTEM, case-insensitive),
//! `config` (the provider's own mapping) and an optional `prefix`. For every key of the S3, GCS
//! and AZURE schemas this module decides whether it is **mapped** onto an `object_store`
//! builder, **refused** (an error that names the key and says why) or **ignored** (it has no
//! behavioural effect for etlfs: a `debug!` line, or a `warn!` when the user asked for
//! something we will not do), and builds the store. Refusal is for keys whose effect we cannot
//! reproduce and whose absence would change what ends up in the bucket or who can read it
//! (SigV2, ACL headers, mTLS, an SSE-KMS context...); keys that only tune Go's transport or
//! minio's upload strategy are ignored with a log line. The per-key table with the reasons is
//! `doc/CONFIGURATION.md`.
//!
//! Nothing here touches the network: the builders are lazy and the first request is made by
//! `store::bucket`. The prefix is returned, not applied, because the caller joins it with
//! `--prefix`.
//!
//! This file is the public face (what callers use) and the top level of the document; the
//! rest is one file per concern:
//!
//! - `schema.rs`: the two passes over the document, strict parsing, YAML 1.1 booleans;
//! - `error.rs`: [`ConfigError`] and how every check names the file and the key;
//! - `env.rs`: the environment snapshot the credential chains read, and `$(NAME)`;
//! - `secrets.rs`: the scrubber that keeps secret values out of every message;
//! - `duration.rs`: Go/Prometheus durations;
//! - `client.rs`: `http_config`, timeouts and retries, shared by the providers;
//! - `s3/`, `gcs.rs`, `azure/`, `filesystem.rs`: one per `type`.

mod azure;
mod client;
mod duration;
mod env;
mod error;
mod filesystem;
mod gcs;
mod s3;
mod schema;
mod secrets;
#[cfg(test)]
mod testkit;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use object_store::ObjectStore;
use tracing::warn;

use self::env::Env;
pub use self::error::ConfigError;
use self::error::Ctx;
use self::filesystem::{FsYaml, build_filesystem};
use self::schema::{Head, nonempty, provider_config};
use self::secrets::Secrets;
use crate::escape::esc;
use crate::store::bucket::Lister;

const MIB: u64 = 1024 * 1024;
/// Thanos' S3 `part_size` default (its README says 128 MiB; the code says 64).
pub const DEFAULT_PART_SIZE: u64 = 64 * MIB;
/// S3 and GCS (XML API) refuse multipart parts below 5 MiB, except the last one.
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// The S3 limit for one part (and for one single PUT).
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// What [`filesystem`] reports as its "file" in errors.
const EMBEDDED_SOURCE: &str = "embedded default bucket";

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
    /// The short form for messages about the bucket itself (`S3 bucket `b` at https://...`).
    pub target: String,
    /// Create the bucket when a request finds it missing (AZURE `storage_create_container`,
    /// true unless set false, as in Thanos).
    pub create_missing: bool,
    /// The URL requests go to (S3: the endpoint, with the bucket in the host when
    /// virtual-hosted; GCS: the base URL; AZURE: the account URL), `None` for FILESYSTEM.
    /// Never carries credentials.
    pub endpoint: Option<String>,
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
            .field("target", &self.target)
            .field("endpoint", &self.endpoint)
            .field("create_missing", &self.create_missing)
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

/// [`parse`] over an explicit environment (tests pass their own).
fn parse_with_env(yaml: &str, source: &str, env: &Env) -> Result<BucketConfig, ConfigError> {
    // Thanos substitutes `$(NAME)` in the whole text before parsing it (see `env.rs`).
    let yaml = &env
        .expand(yaml)
        .map_err(|name| ConfigError::UnsetVariable {
            file: source.to_string(),
            name,
        })?;
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
        "S3" => s3::build_s3(&ctx, provider_config(&ctx, yaml)?),
        "GCS" => gcs::build_gcs(&ctx, provider_config(&ctx, yaml)?),
        "AZURE" => azure::build_azure(&ctx, provider_config(&ctx, yaml)?),
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

/// A part size from the file: 0 means the default; outside what S3/GCS multipart accept it is
/// clamped, with a warning.
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

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

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

    #[test]
    fn dollar_paren_variables_are_expanded_and_an_unset_one_is_named() {
        let yaml = "type: S3\nconfig:\n  bucket: $(BUCKET)\n  endpoint: minio:9000\n  \
                    access_key: ak\n  secret_key: $(SECRET)\n";
        let vars = env(&[("BUCKET", "etl-backups"), ("SECRET", SENTINEL)]);
        let cfg = parse_with_env(yaml, FILE, &vars).unwrap();
        assert!(cfg.describe.contains("`etl-backups`"), "{}", cfg.describe);
        let e = parse_with_env(yaml, FILE, &env(&[("SECRET", "x")])).unwrap_err();
        assert!(matches!(e, ConfigError::UnsetVariable { .. }), "{e}");
        let message = e.to_string();
        assert!(message.starts_with(FILE), "{message}");
        assert!(
            message.contains("unset environment variable \"BUCKET\""),
            "{message}"
        );
        // A secret that came from the environment is kept out of messages like any other.
        let broken = format!("{yaml}  bogus: 1\n");
        let e = parse_with_env(&broken, FILE, &vars).unwrap_err();
        assert!(e.to_string().contains("config.bogus"), "{e}");
        assert!(!e.to_string().contains(SENTINEL), "{e}");
    }

    /// Kubecost's documented examples (tests/fixtures/kubecost) load as they are; where a
    /// placeholder cannot be a credential at all, with only that placeholder replaced, and the
    /// placeholder itself is blamed by its key. (tests/it/bucket_config.rs runs them against
    /// the test servers.)
    #[test]
    fn kubecost_documented_examples_load() {
        let s3 = ok(include_str!("../../../tests/fixtures/kubecost/s3.yaml"));
        assert!(
            s3.describe.contains("region us-west-2")
                && s3.describe.contains("on writes: x-amz-acl"),
            "{}",
            s3.describe
        );
        assert_eq!(s3.prefix, "");
        ok(include_str!("../../../tests/fixtures/kubecost/storj.yaml"));
        let azure = include_str!("../../../tests/fixtures/kubecost/azure.yaml");
        assert!(err(azure).to_string().contains("config.storage_account"));
        let cfg = ok(&azure
            .replace("<STORAGE_ACCOUNT>", "kubecost")
            .replace("<STORAGE_ACCOUNT_KEY>", SENTINEL));
        assert!(
            cfg.target
                .contains("`my-bucket` at https://kubecost.blob.core.windows.net"),
            "{}",
            cfg.target
        );
        assert!(cfg.create_missing, "Thanos' default");
        let gcs = include_str!("../../../tests/fixtures/kubecost/gcs.yaml");
        assert!(err(gcs).to_string().contains("config.service_account"));
        let start = gcs.find("  service_account: |-\n").unwrap();
        let end = gcs.find("prefix:").unwrap();
        let swapped = format!(
            "{}  service_account: '{FAKE_GCS_SA}'\n{}",
            &gcs[..start],
            &gcs[end..]
        );
        ok(&swapped);
    }

    /// Every YAML example in doc/CONFIGURATION.md loads (with an empty environment).
    #[test]
    fn documented_examples_parse() {
        let doc = include_str!("../../../doc/CONFIGURATION.md");
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
}
