//! Listing: the walk over the bucket's directories (one level at a time, flat below a wide
//! directory) and the way around keys `object_store` cannot represent.
//!
//! A walk rather than one flat listing: directory levels list in parallel, and a bad key
//! fails one level's page, not the whole listing.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use futures::TryStreamExt;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as Key;

use super::error::names_a_bad_key;
use super::{Bucket, BucketError, ObjectInfo, RESERVED, Result, azure_list, normalize_e_tag};
use crate::escape::esc;

/// Directory listings in flight at once while walking the bucket.
const LIST_CONCURRENCY: usize = 16;
/// A directory with more subdirectories than this is listed flat below it (see
/// [`Bucket::list`]): past this many, one request per subdirectory costs more than the pages of
/// a flat listing.
const FLAT_FANOUT: usize = 256;

/// How a listing gets past a key `object_store` cannot represent.
#[derive(Clone)]
pub enum Lister {
    /// The store listed with a page size and a start (S3, GCS).
    Paged(Arc<dyn PaginatedListStore>),
    /// Azure's List Blobs read raw (Azure has no start that every server honours).
    Azure(Arc<azure_list::AzureLister>),
}

impl std::fmt::Debug for Lister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lister::Paged(_) => "Lister::Paged",
            Lister::Azure(_) => "Lister::Azure",
        })
    }
}

/// What one listing request of a walk found.
struct Step {
    objects: Vec<object_store::ObjectMeta>,
    /// What is left to walk below it.
    next: Vec<Walk>,
    /// Keys left out because `object_store` cannot represent them (raw, full keys; ending in
    /// `/` for a directory part).
    skipped: Vec<String>,
}

impl Step {
    fn objects(objects: Vec<object_store::ObjectMeta>) -> Step {
        Step {
            objects,
            next: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

/// The smallest listing start after `key` — and, for a directory part (ending in `/`), after
/// every key below it: start-after compares UTF-8 bytes, and no key below it goes past the
/// highest code point.
fn past(key: &str) -> String {
    if key.ends_with('/') {
        format!("{key}\u{10FFFF}")
    } else {
        key.to_owned()
    }
}

/// The raw key an `object_store` error about an unparsable key names.
fn bad_key_of(e: &object_store::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<object_store::path::Error>() {
            use object_store::path::Error as P;
            return match p {
                P::EmptySegment { path } | P::BadSegment { path, .. } => Some(path.clone()),
                P::NonUnicode { path, .. } => Some(path.clone()),
                _ => None,
            };
        }
        cur = e.source();
    }
    None
}

/// What is left to list while walking the bucket.
enum Walk {
    /// One directory level (`None`: the bucket's root): its objects and subdirectories.
    Level(Option<Key>),
    /// Everything deeper than that level, flat.
    Below(Option<Key>),
}

impl Walk {
    /// What is left below the level `prefix` once it is listed, with its subdirectories
    /// `dirs`: each of them, or one flat listing below it when there are more than
    /// [`FLAT_FANOUT`].
    fn after_level(prefix: Option<Key>, dirs: Vec<Key>) -> Vec<Walk> {
        if dirs.len() > FLAT_FANOUT {
            vec![Walk::Below(prefix)]
        } else {
            dirs.into_iter().map(|d| Walk::Level(Some(d))).collect()
        }
    }
}

impl Bucket {
    /// Every user object below `dir` (the whole bucket prefix for `None`), markers included.
    /// Keys that are not user paths are skipped, and etlfs' reserved `.etlfs/` is not even
    /// listed. A `dir` below which nothing can be a key ([`Bucket::can_hold_below`]) is
    /// refused with [`BucketError::BadKey`].
    ///
    /// The tree is walked one directory per request, [`LIST_CONCURRENCY`] at a time, rather
    /// than in one flat paginated listing: a flat listing is a chain of requests, each waiting
    /// for the previous page's continuation (100 round trips for 100,000 objects, and on
    /// servers such as s3s-fs every page rescans the whole bucket), while directories list side
    /// by side. A directory with more than [`FLAT_FANOUT`] subdirectories is listed flat below
    /// it instead, so a tree of many tiny directories costs at most about twice the pages of a
    /// flat listing, never one request per directory.
    ///
    /// A key `object_store` cannot represent (an empty, `.` or `..` segment, an ASCII control
    /// character) fails the whole page it is on. Such a level is then listed again around it
    /// ([`Bucket::with_paged_listing`]): on S3 and GCS with pages halved until the bad key
    /// stands alone, then listed past; on Azure read raw ([`azure_list`]). The key (or, for a
    /// bad directory part, everything below it) is left out and logged once, escaped; the
    /// number left out is what [`Bucket::list_each`] returns. On FILESYSTEM the listing fails,
    /// naming the key.
    pub async fn list(&self, dir: Option<&Path>) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        self.list_each(dir, |o| out.push(o)).await?;
        Ok(out)
    }

    /// [`Bucket::list`], handing each object to `each` as its page arrives rather than
    /// collecting them (a comparison with 100,000 objects then needs no list of them).
    /// Returns how many keys were left out because they cannot be listed.
    pub async fn list_each(
        &self,
        dir: Option<&Path>,
        mut each: impl FnMut(ObjectInfo),
    ) -> Result<u64> {
        let root = match dir {
            Some(d) => Some(self.key_below(d)?),
            None if self.prefix.is_empty() => None,
            None => Some(Key::parse(&self.prefix).expect("normalized prefix")),
        };
        let shown = root.as_ref().map(|k| k.to_string()).unwrap_or_default();
        let err = |source| BucketError::Store {
            op: "list",
            key: shown.clone(),
            cause: source,
        };
        let mut todo = vec![Walk::Level(root)];
        let mut inflight = futures::stream::FuturesUnordered::new();
        let mut skipped = 0;
        loop {
            while inflight.len() < LIST_CONCURRENCY {
                let Some(step) = todo.pop() else { break };
                inflight.push(self.list_step(step));
            }
            let Some(res) = futures::StreamExt::next(&mut inflight).await else {
                break;
            };
            let step = res.map_err(err)?;
            step.objects
                .into_iter()
                .filter_map(|m| self.info(m))
                .for_each(&mut each);
            todo.extend(step.next);
            skipped += step.skipped.len() as u64;
            self.note_skipped(step.skipped);
        }
        Ok(skipped)
    }

    /// Logs each key a listing left out, once per process.
    fn note_skipped(&self, keys: Vec<String>) {
        let mut seen = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            let below = if key.ends_with('/') {
                " (a directory part: everything below it)"
            } else {
                ""
            };
            if seen.insert(key.clone()) {
                tracing::warn!(
                    key = %esc(&key),
                    "bucket object not shown: its key cannot be a path (an empty, `.` or `..` \
                     segment, or an ASCII control character){below}; rename or remove it"
                );
            }
        }
    }

    /// One request of [`Bucket::list`]: the objects it found, and what is left to walk.
    async fn list_step(&self, step: Walk) -> object_store::Result<Step> {
        match step {
            Walk::Level(prefix) => {
                let res = match self.store.list_with_delimiter(prefix.as_ref()).await {
                    Ok(res) => res,
                    Err(e) if names_a_bad_key(&e) => {
                        match &self.paged {
                            Some(Lister::Paged(paged)) => {
                                return self.list_around_bad_keys(&**paged, prefix, true).await;
                            }
                            Some(Lister::Azure(raw)) => {
                                return self.list_raw(raw, prefix, true).await;
                            }
                            None => {}
                        }
                        // A flat listing of the subtree fails too, but names the whole key
                        // rather than the directory part (which says less).
                        let all = self.store.list(prefix.as_ref()).try_collect().await?;
                        return Ok(Step::objects(all));
                    }
                    Err(e) => return Err(e),
                };
                let dirs: Vec<Key> = res
                    .common_prefixes
                    .into_iter()
                    .filter(|d| !self.is_reserved_dir(d))
                    .collect();
                let next = Walk::after_level(prefix, dirs);
                Ok(Step {
                    objects: res.objects,
                    next,
                    skipped: Vec::new(),
                })
            }
            Walk::Below(prefix) => {
                // The level itself was listed already: keep what is deeper.
                let depth = prefix.as_ref().map_or(0, |p| p.parts().count()) + 1;
                let mut step = match self.store.list(prefix.as_ref()).try_collect().await {
                    Ok(all) => Step::objects(all),
                    Err(e) if names_a_bad_key(&e) => match &self.paged {
                        Some(Lister::Paged(paged)) => {
                            self.list_around_bad_keys(&**paged, prefix, false).await?
                        }
                        Some(Lister::Azure(raw)) => self.list_raw(raw, prefix, false).await?,
                        None => return Err(e),
                    },
                    Err(e) => return Err(e),
                };
                step.objects.retain(|m| m.location.parts().count() > depth);
                Ok(step)
            }
        }
    }

    /// Lists `prefix` (one level with `by_level`, else everything below it) through Azure's
    /// raw listing, leaving out the names that cannot be keys.
    async fn list_raw(
        &self,
        raw: &azure_list::AzureLister,
        prefix: Option<Key>,
        by_level: bool,
    ) -> object_store::Result<Step> {
        let raw_prefix = prefix.as_ref().map(|p| format!("{p}/"));
        let mut step = Step::objects(Vec::new());
        let mut dirs = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .requests
                .time_list(raw.page(raw_prefix.as_deref(), by_level, marker.as_deref()))
                .await?;
            for b in page.blobs {
                match Key::parse(&b.name) {
                    Ok(location) => step.objects.push(object_store::ObjectMeta {
                        location,
                        last_modified: b.last_modified,
                        size: b.size,
                        e_tag: b.e_tag,
                        version: None,
                    }),
                    Err(_) => step.skipped.push(b.name),
                }
            }
            for p in page.prefixes {
                match Key::parse(&p) {
                    Ok(d) if !self.is_reserved_dir(&d) => dirs.push(d),
                    Ok(_) => {}
                    Err(_) => step.skipped.push(p),
                }
            }
            match page.next {
                Some(m) if marker.as_deref() != Some(&m) => marker = Some(m),
                _ => break,
            }
        }
        step.next = Walk::after_level(prefix, dirs);
        Ok(step)
    }

    /// Lists `prefix` (one level with `by_level`, else everything below it) page by page,
    /// getting past keys `object_store` cannot parse: a page that fails on one is asked for
    /// again at half the size from the same start, until the bad key is alone on its page; it
    /// is then left out, and the listing goes on after it (after everything below it, for a
    /// bad directory part). Costs about twenty requests per bad key; none when there is none,
    /// as this is only called once a listing failed on one.
    async fn list_around_bad_keys(
        &self,
        paged: &dyn PaginatedListStore,
        prefix: Option<Key>,
        by_level: bool,
    ) -> object_store::Result<Step> {
        const PAGE: usize = 1000;
        let raw_prefix = prefix.as_ref().map(|p| format!("{p}/"));
        let mut step = Step::objects(Vec::new());
        let mut dirs = Vec::new();
        let mut offset: Option<String> = None;
        let mut page = PAGE;
        // The last failure on a key object_store cannot parse.
        let mut last_bad: Option<object_store::Error> = None;
        loop {
            let opts = PaginatedListOptions {
                offset: offset.clone(),
                delimiter: by_level.then_some("/".into()),
                max_keys: Some(page),
                ..Default::default()
            };
            let listed = paged.list_paginated(raw_prefix.as_deref(), opts);
            let res = match self.requests.time_list(listed).await {
                Ok(res) => res,
                Err(e) if names_a_bad_key(&e) && page > 1 => {
                    page /= 2;
                    last_bad = Some(e);
                    continue;
                }
                Err(e) => match bad_key_of(&e) {
                    Some(key) if names_a_bad_key(&e) => {
                        let next = past(&key);
                        if offset.as_ref().is_some_and(|o| *o >= next) {
                            return Err(e); // no way forward: never loop
                        }
                        step.skipped.push(key);
                        offset = Some(next);
                        page = PAGE;
                        last_bad = Some(e);
                        continue;
                    }
                    _ => return Err(e),
                },
            };
            let mut last: Option<String> = None;
            for d in res.result.common_prefixes {
                let next = past(&format!("{d}/"));
                last = last.max(Some(next));
                if !self.is_reserved_dir(&d) {
                    dirs.push(d);
                }
            }
            for o in res.result.objects {
                last = last.max(Some(o.location.to_string()));
                step.objects.push(o);
            }
            if res.page_token.is_none() {
                break;
            }
            match last {
                Some(l) if offset.as_ref().is_none_or(|o| l > *o) => offset = Some(l),
                // A page that moved nothing forward: the store did not start where asked
                // (Azurite ignores `startFrom`). Never loop, and never pass off what was
                // listed as the whole level: fail on the key that could not be got past.
                _ => match last_bad {
                    Some(e) => return Err(e),
                    None => break,
                },
            }
            page = (page * 2).min(PAGE);
        }
        step.next = Walk::after_level(prefix, dirs);
        Ok(step)
    }

    /// Whether `dir` (a listed common prefix) is etlfs' reserved namespace at the top.
    fn is_reserved_dir(&self, dir: &Key) -> bool {
        let s = dir.as_ref();
        let rel = if self.prefix.is_empty() {
            Some(s)
        } else {
            s.strip_prefix(&self.prefix)
                .and_then(|r| r.strip_prefix('/'))
        };
        rel == Some(RESERVED)
    }

    fn info(&self, m: object_store::ObjectMeta) -> Option<ObjectInfo> {
        let (rel, is_dir_marker) = self.rel_of(&m.location)?;
        Some(ObjectInfo {
            rel,
            size: m.size,
            last_modified: SystemTime::from(m.last_modified),
            is_dir_marker,
            e_tag: m.e_tag.as_deref().map(normalize_e_tag),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;
    use crate::store::bucket::FileMeta;

    #[tokio::test]
    async fn the_walk_lists_what_a_flat_listing_would() {
        let store = Arc::new(InMemory::new());
        let b = Bucket::new(store.clone(), "etl", true, vec![]);
        let meta = FileMeta {
            mtime_ns: 0,
            mode: 0o644,
            sha256: String::new(),
            owner: None,
        };
        let mut want = Vec::new();
        // More subdirectories than FLAT_FANOUT below one directory, with files at every level.
        for i in 0..FLAT_FANOUT + 5 {
            want.push(format!("wide/d{i}/f"));
            want.push(format!("wide/d{i}/sub/g"));
        }
        want.extend(["top", "wide/level", "deep/a/b/c/f"].map(String::from));
        for rel in &want {
            b.put_bytes(Path::new(rel), Bytes::new(), &meta)
                .await
                .unwrap();
        }
        b.put_dir_marker(Path::new("empty")).await.unwrap();
        for k in [
            "etl/.etlfs/meta/top",
            "etl/.etlfs/manifest.v1.jsonl.gz",
            "etlx/y",
            "z",
        ] {
            store.put(&Key::from(k), PutPayload::new()).await.unwrap();
        }
        let mut got: Vec<String> = b
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.shown())
            .collect();
        got.sort();
        want.push("empty/".into());
        want.sort();
        assert_eq!(got, want);
        let mut below: Vec<_> = b
            .list(Some(Path::new("deep/a")))
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.rel)
            .collect();
        below.sort();
        assert_eq!(below, [PathBuf::from("deep/a/b/c/f")]);
    }
}
