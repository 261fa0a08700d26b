//! FILESYSTEM: a bucket in a local directory (Thanos' demo type, and etlfs' embedded default
//! when no `--config` is given).

use std::path::Path;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use serde::Deserialize;

use super::error::Ctx;
use super::{BucketConfig, ConfigError, StoreKind, UploadTuning};

/// `providers/filesystem/filesystem.go` `Config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename = "FILESYSTEM config")]
pub(super) struct FsYaml {
    pub(super) directory: Option<String>,
}

/// The store over `dir` (made absolute, created if missing); `key` is blamed for errors.
pub(super) fn build_filesystem(
    ctx: &Ctx,
    dir: &Path,
    key: &str,
) -> Result<BucketConfig, ConfigError> {
    // Thanos makes the path absolute against the working directory (filepath.Abs).
    let dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| ctx.key_file(key, dir, e))?
            .join(dir)
    };
    std::fs::create_dir_all(&dir).map_err(|e| ctx.key_file(key, &dir, e))?;
    let store = LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| ctx.build_error(key, StoreKind::Filesystem, e))?
        // Thanos removes empty parent directories on delete.
        .with_automatic_cleanup(true)
        // The bucket is the backup: make each put durable before reporting it done.
        .with_fsync(true);
    Ok(BucketConfig {
        kind: StoreKind::Filesystem,
        store: Arc::new(store),
        paged: None,
        prefix: String::new(),
        user_metadata: false,
        extra_metadata: Vec::new(),
        describe: format!("FILESYSTEM directory {}", dir.display()),
        target: format!("FILESYSTEM directory {}", dir.display()),
        endpoint: None,
        create_missing: false,
        upload: UploadTuning::default(),
    })
}

#[cfg(test)]
mod tests {
    use crate::store::config::testkit::*;
    use crate::store::config::{StoreKind, filesystem};

    #[test]
    fn filesystem_type() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = dir.path().join("a/b/bucket");
        let cfg = ok(&format!(
            "type: FILESYSTEM\nconfig:\n  directory: {}\n",
            bucket.display()
        ));
        assert_eq!(cfg.kind, StoreKind::Filesystem);
        assert!(bucket.is_dir(), "the directory is created");
        assert!(!cfg.user_metadata);
        assert_eq!(cfg.endpoint, None);
        assert!(
            cfg.describe.contains(&bucket.display().to_string()),
            "{}",
            cfg.describe
        );

        let e = err("type: FILESYSTEM\nconfig: {}\n");
        assert!(e.to_string().contains("config.directory"), "{e}");
        let e = err("type: FILESYSTEM\nconfig:\n  directory: /tmp/x\n  dir: /tmp/y\n");
        assert!(e.to_string().contains("config.dir"), "{e}");

        let default = filesystem(&dir.path().join("embedded")).unwrap();
        assert_eq!(default.kind, StoreKind::Filesystem);
        assert!(dir.path().join("embedded").is_dir());
        assert!(!default.user_metadata);
        assert_eq!(default.prefix, "");
    }
}
