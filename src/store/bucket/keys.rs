//! Keys: how a relative path becomes an object key (and back), and which paths cannot be one.
//!
//! The mapping is verbatim (`<prefix>/<relative path>`) so that plain tools read the bucket;
//! every refusal lives here, so that "can this path be in the bucket?" has one answer.

use std::path::{Component, Path, PathBuf};

use object_store::path::Path as Key;

use super::{Bucket, BucketError, DIR_MARKER, MAX_KEY_LEN, RESERVED, Result};

impl Bucket {
    pub(super) fn join(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// The key of a relative path. Refuses anything that could not come back as the same path.
    pub fn key(&self, rel: &Path) -> Result<Key> {
        let key = self.key_below(rel)?;
        if rel.file_name().is_some_and(|n| n == DIR_MARKER) {
            // Its key would read back as the marker of the directory it is in.
            return Err(BucketError::BadKey {
                path: rel.to_owned(),
                reason: "the name .etlfs-dir is reserved for etlfs' directory markers",
            });
        }
        Ok(key)
    }

    /// Whether `rel` can be a key: a path refused here is never in the bucket, so there is
    /// nothing to delete, move or copy for it.
    pub fn can_hold(&self, rel: &Path) -> bool {
        self.key(rel).is_ok()
    }

    /// Whether anything at or below the directory `dir` can be a key. Every rule of
    /// [`Bucket::key`] that refuses a path refuses everything below it too (a name that is
    /// not UTF-8 or holds a control character, `.`, `..`, the reserved top level, a key too
    /// long), except the marker name: a directory named `.etlfs-dir` has no marker, but what
    /// it holds is mirrored.
    pub fn can_hold_below(&self, dir: &Path) -> bool {
        self.key_below(dir).is_ok()
    }

    /// The key of `rel` by every rule of [`Bucket::key`] but the marker name: as a file's key,
    /// or the prefix of every key below the directory `rel`.
    pub(super) fn key_below(&self, rel: &Path) -> Result<Key> {
        let bad = |reason| BucketError::BadKey {
            path: rel.to_owned(),
            reason,
        };
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(s) => {
                    parts.push(s.to_str().ok_or_else(|| bad("not valid UTF-8"))?)
                }
                Component::CurDir | Component::ParentDir => return Err(bad("contains . or ..")),
                Component::RootDir | Component::Prefix(_) => return Err(bad("absolute path")),
            }
        }
        if parts.is_empty() {
            return Err(bad("empty path"));
        }
        if parts[0] == RESERVED {
            return Err(bad("the top-level name .etlfs is reserved for etlfs"));
        }
        if parts
            .iter()
            .any(|p| p.chars().any(|c| c.is_ascii_control()))
        {
            // (object_store refuses them in keys: newlines, tabs, NUL, DEL, ...)
            return Err(bad("contains an ASCII control character"));
        }
        let key =
            Key::parse(self.join(&parts.join("/"))).map_err(|_| bad("not a valid object key"))?;
        if key.as_ref().len() > MAX_KEY_LEN {
            return Err(bad(
                "the key would be longer than the 1024 bytes object stores allow",
            ));
        }
        Ok(key)
    }

    pub(super) fn marker_key(&self, dir: &Path) -> Result<Key> {
        let k = self.key(dir)?;
        Ok(Key::parse(format!("{k}/{DIR_MARKER}")).expect("a valid key plus a valid segment"))
    }

    pub(super) fn meta_key(&self, rel: &Path) -> Result<Key> {
        let k = self.key(rel)?;
        let rel_key = k
            .as_ref()
            .strip_prefix(&format!("{}/", self.prefix))
            .unwrap_or(k.as_ref());
        Ok(Key::parse(self.join(&format!("{RESERVED}/meta/{rel_key}"))).expect("valid segments"))
    }

    /// The relative path of a key under our prefix, or `None` for keys that are not user
    /// files (reserved objects, keys outside the prefix). Markers map to their directory.
    pub fn rel_of(&self, key: &Key) -> Option<(PathBuf, bool)> {
        let s = key.as_ref();
        let rel = if self.prefix.is_empty() {
            s
        } else {
            s.strip_prefix(&self.prefix)?.strip_prefix('/')?
        };
        if rel.is_empty() || rel == RESERVED || rel.starts_with(&format!("{RESERVED}/")) {
            return None;
        }
        match rel.strip_suffix(DIR_MARKER) {
            Some("") => None,
            Some(dir) if dir.ends_with('/') => Some((PathBuf::from(&dir[..dir.len() - 1]), true)),
            _ => Some((PathBuf::from(rel), false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use object_store::path::Path as Key;

    use crate::escape::esc;
    use crate::store::bucket::BucketError;
    use crate::store::bucket::tests::bucket;

    #[test]
    fn keys_are_prefix_plus_relative_path_verbatim() {
        let b = bucket("/etl//", true);
        assert_eq!(
            b.key(Path::new("bingen/allocations/1d/1704110400-1704196800"))
                .unwrap()
                .as_ref(),
            "etl/bingen/allocations/1d/1704110400-1704196800"
        );
        assert_eq!(
            b.key(Path::new("a b/c[1]~*.x")).unwrap().as_ref(),
            "etl/a b/c[1]~*.x"
        );
        assert_eq!(bucket("", true).key(Path::new("x")).unwrap().as_ref(), "x");
    }

    #[test]
    fn keys_that_could_not_map_back_are_refused() {
        let b = bucket("p", true);
        use std::os::unix::ffi::OsStrExt;
        for bad in ["", "../x", "a/../b", "/abs", ".etlfs/x", ".etlfs"] {
            let e = b.key(Path::new(bad)).unwrap_err();
            assert!(matches!(e, BucketError::BadKey { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains(&esc(bad).to_string()), "{e}");
        }
        let not_utf8 = Path::new(std::ffi::OsStr::from_bytes(b"a\xff"));
        assert!(b.key(not_utf8).unwrap_err().to_string().contains("UTF-8"));
        // `.etlfs` deeper down is an ordinary name.
        assert!(b.key(Path::new("d/.etlfs")).is_ok());
    }

    #[test]
    fn what_cannot_be_a_key_has_nothing_below_it_but_for_the_marker_name() {
        use std::os::unix::ffi::OsStrExt;
        let b = bucket("p", true);
        let raw = |s: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(s));
        for bad in [
            raw(b"caf\xe9"),
            raw(b"d\xff/x"),
            "tab\there".into(),
            "nl\n/x".into(),
            ".etlfs".into(),
            "a/../b".into(),
            PathBuf::from("x".repeat(1030)),
        ] {
            assert!(!b.can_hold(&bad), "{bad:?}");
            assert!(!b.can_hold_below(&bad), "{bad:?}");
            assert!(!b.can_hold(&bad.join("below")), "{bad:?}");
        }
        // A directory named like the marker has none, but what it holds is mirrored.
        assert!(!b.can_hold(Path::new("d/.etlfs-dir")));
        assert!(b.can_hold_below(Path::new("d/.etlfs-dir")));
        assert!(b.can_hold(Path::new("d/.etlfs-dir/x")));
        assert!(b.can_hold(Path::new("d/x")) && b.can_hold_below(Path::new("d")));
    }

    #[test]
    fn rel_of_inverts_key_and_skips_foreign_keys() {
        let b = bucket("etl", true);
        let k = b.key(Path::new("a/b")).unwrap();
        assert_eq!(b.rel_of(&k), Some((PathBuf::from("a/b"), false)));
        assert_eq!(
            b.rel_of(&b.marker_key(Path::new("a")).unwrap()),
            Some((PathBuf::from("a"), true))
        );
        assert_eq!(b.rel_of(&Key::parse("other/x").unwrap()), None);
        assert_eq!(b.rel_of(&Key::parse("etlx/x").unwrap()), None);
        assert_eq!(b.rel_of(&Key::parse("etl/.etlfs/meta/x").unwrap()), None);
    }
}
