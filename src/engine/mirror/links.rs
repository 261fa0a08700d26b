//! The names of local files that have several hard links, as far as the mirror has seen them.
//!
//! Every name of a file is an object of its own, so a change to the file must be uploaded
//! under each of its names. The overlay reports every name the kernel used since the mount;
//! this registry adds the names the kernel never used (links made before the mount, or known
//! to an inode the kernel has forgotten since): the start's reconcile notes every file it
//! walks past with more than one link, and every sync notes the file it looked at. When an
//! inode changes, its noted names are synced with the names the overlay reported.
//!
//! Only files with several links are kept, so the registry is empty for most trees. An entry
//! can go stale (the name was removed, renamed or reused): that costs one sync of the path at
//! most, which looks at what is there now and uploads nothing that is already in the bucket;
//! the sync forgets the name when it finds it gone or no longer a link of several.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::os::local::Stat;

#[derive(Debug, Default)]
struct Inner {
    by_ino: HashMap<u64, Vec<PathBuf>>,
    by_path: HashMap<PathBuf, u64>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Links {
    inner: Mutex<Inner>,
}

impl Links {
    /// `path` was just seen as `st`: noted if it is a file with several links. A file with
    /// one link has no other name, so whatever was noted for its inode is stale.
    pub fn note(&self, path: &Path, st: &Stat) {
        let several = st.is_file() && st.nlink > 1;
        let mut t = self.lock();
        if t.by_path.is_empty() && !several {
            return; // (every tree without hard links)
        }
        if let Some(ino) = t.by_path.remove(path) {
            Self::unlink(&mut t, ino, path);
        }
        if several {
            t.by_path.insert(path.to_owned(), st.ino);
            t.by_ino.entry(st.ino).or_default().push(path.to_owned());
        } else if st.is_file() {
            for p in t.by_ino.remove(&st.ino).unwrap_or_default() {
                t.by_path.remove(&p);
            }
        }
    }

    /// `path` is not a name of a file with several links (any more).
    pub fn gone(&self, path: &Path) {
        let mut t = self.lock();
        if let Some(ino) = t.by_path.remove(path) {
            Self::unlink(&mut t, ino, path);
        }
    }

    /// `paths` (names of the local inode `ino`) and every other name noted for it, each once.
    pub fn with_names(&self, ino: u64, paths: &[PathBuf]) -> Vec<PathBuf> {
        let mut all = paths.to_vec();
        let t = self.lock();
        if let Some(names) = t.by_ino.get(&ino) {
            all.extend(names.iter().filter(|p| !paths.contains(p)).cloned());
        }
        all
    }

    fn unlink(t: &mut Inner, ino: u64, path: &Path) {
        if let Some(names) = t.by_ino.get_mut(&ino) {
            names.retain(|p| p != path);
            if names.is_empty() {
                t.by_ino.remove(&ino);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data, consistent at every step: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_of(path: &Path) -> Stat {
        Stat::from_file(&std::fs::File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn names_of_linked_files_are_kept_until_they_go() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("c"),
        );
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&c, b"y").unwrap();
        let links = Links::default();
        links.note(&a, &stat_of(&a));
        links.note(&c, &stat_of(&c));
        let ino = stat_of(&a).ino;
        assert_eq!(
            links.with_names(ino, &[]),
            Vec::<PathBuf>::new(),
            "one link"
        );

        std::fs::hard_link(&a, &b).unwrap();
        links.note(&a, &stat_of(&a));
        links.note(&b, &stat_of(&b));
        links.note(&b, &stat_of(&b));
        assert_eq!(links.with_names(ino, &[]), vec![a.clone(), b.clone()]);
        assert_eq!(
            links.with_names(ino, std::slice::from_ref(&b)),
            vec![b.clone(), a.clone()],
            "each name once"
        );

        // A name reused by another file moves to that file's inode.
        std::fs::remove_file(&b).unwrap();
        std::fs::hard_link(&c, &b).unwrap();
        links.note(&b, &stat_of(&b));
        assert_eq!(links.with_names(ino, &[]), vec![a.clone()]);
        assert_eq!(links.with_names(stat_of(&c).ino, &[]), vec![b.clone()]);

        // One link left: nothing noted for the inode any more.
        links.note(&a, &stat_of(&a));
        assert_eq!(links.with_names(ino, &[]), Vec::<PathBuf>::new());
        links.gone(&b);
        assert_eq!(
            links.with_names(stat_of(&c).ino, &[]),
            Vec::<PathBuf>::new()
        );
        assert!(links.lock().by_path.is_empty() && links.lock().by_ino.is_empty());
    }
}
