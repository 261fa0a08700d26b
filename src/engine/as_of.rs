//! Points in time: the directory as the bucket held it at a given moment, rebuilt from the live
//! objects and the versions history kept (their keys and thinning are `bucket/history.rs`'s).
//! Used by `etlfs restore --as-of`, `etlfs verify --as-of` and `etlfs history`.
//!
//! For a path P and a time T, the candidates are P's kept versions that the bucket got at or
//! before T (`from <= T`) and the live object if its last-modified is at or before T; the one
//! the bucket got last wins (the live object on a tie: it is the newest). Then:
//! - the live object: P is that;
//! - a kept version replaced after T (`until > T`): P is that version;
//! - a kept version deleted at or before T: P did not exist at T;
//! - a kept version replaced at or before T: its successor was not kept (thinning keeps one
//!   version per path per interval), so P is this version — the nearest state before T that
//!   history has. A point in time is therefore exact at the times versions were kept, and
//!   otherwise at most one `--history-interval` older for a path rewritten more often;
//! - no candidate: P did not exist yet at T (or its history is past retention).
//!
//! Directories at T are the parents of the files at T and the directory markers the bucket
//! held at T. An empty directory removed since T is not brought back: markers have no history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use crate::engine::index::{Index, RemoteFile};
use crate::escape::esc;
use crate::store::bucket::history::{KeptVersion, Kind};
use crate::store::bucket::{Bucket, BucketError};

/// Kept versions whose metadata is read at once.
const META_CONCURRENCY: usize = 16;

/// Why a time given on the command line is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: not a point in time; give an RFC 3339 time (2026-12-07T03:20:00Z) or a duration ago (3h, 90min)",
    esc(.0)
)]
pub struct BadTime(pub String);

/// Parses `--as-of`: an RFC 3339 time, or a duration (humantime: `3h`, `1day 2h`) before now.
pub fn parse_as_of(s: &str) -> Result<SystemTime, BadTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let d = humantime::parse_duration(s).map_err(|_| BadTime(s.to_owned()))?;
    SystemTime::now()
        .checked_sub(d)
        .ok_or_else(|| BadTime(s.to_owned()))
}

/// Which version of a path a point in time shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Live,
    Kept(KeptVersion),
}

/// The rule of the module documentation, for every path: what exists at `t`.
pub fn resolve(
    live: &[(PathBuf, SystemTime)],
    kept: &[KeptVersion],
    t: SystemTime,
) -> BTreeMap<PathBuf, Choice> {
    // Per path: the best candidate so far, by (from, until); the live object's until is "never".
    let mut best: BTreeMap<&Path, (SystemTime, Option<SystemTime>, Option<&KeptVersion>)> =
        BTreeMap::new();
    for v in kept.iter().filter(|v| v.from <= t) {
        let cand = (v.from, Some(v.until), Some(v));
        best.entry(&v.rel)
            .and_modify(|b| {
                if later(&cand, b) {
                    *b = cand;
                }
            })
            .or_insert(cand);
    }
    for (rel, lm) in live.iter().filter(|(_, lm)| *lm <= t) {
        let cand = (*lm, None, None);
        best.entry(rel)
            .and_modify(|b| {
                if later(&cand, b) {
                    *b = cand;
                }
            })
            .or_insert(cand);
    }
    best.into_iter()
        .filter_map(|(rel, (_, until, v))| {
            let choice = match (v, until) {
                (None, _) => Choice::Live,
                (Some(v), Some(until)) if until > t || v.kind != Kind::Deleted => {
                    Choice::Kept(v.clone())
                }
                _ => return None,
            };
            Some((rel.to_owned(), choice))
        })
        .collect()
}

/// Whether candidate `a` was got by the bucket after `b` (the live object, `until: None`, wins
/// a tie).
fn later(
    a: &(SystemTime, Option<SystemTime>, Option<&KeptVersion>),
    b: &(SystemTime, Option<SystemTime>, Option<&KeptVersion>),
) -> bool {
    let key =
        |c: &(SystemTime, Option<SystemTime>, Option<&KeptVersion>)| (c.0, c.1.is_none(), c.1);
    key(a) > key(b)
}

/// The directory at a point in time.
#[derive(Debug, Default)]
pub struct PointInTime {
    pub files: BTreeMap<PathBuf, RemoteFile>,
    pub dirs: BTreeSet<PathBuf>,
}

/// What the bucket held at `t`: live files from `index` (loaded from the same bucket), kept
/// versions with the metadata copied with them.
pub async fn state_at(
    bucket: &Bucket,
    index: &Index,
    t: SystemTime,
) -> Result<PointInTime, BucketError> {
    let listed = bucket.list(None).await?;
    let kept = bucket.kept_versions(None).await?;
    let live: Vec<(PathBuf, SystemTime)> = listed
        .iter()
        .filter(|o| !o.is_dir_marker)
        .map(|o| (o.rel.clone(), o.last_modified))
        .collect();
    let mut out = PointInTime::default();
    let mut from_history = Vec::new();
    for (rel, choice) in resolve(&live, &kept, t) {
        match choice {
            Choice::Live => {
                // Not in the index: a key that cannot be a file here (logged by the load).
                if let Some(f) = index.file(&rel) {
                    out.files.insert(rel, f);
                }
            }
            Choice::Kept(v) => from_history.push(v),
        }
    }
    let metas: Vec<_> = futures::stream::iter(from_history)
        .map(|v| async move {
            let meta = bucket.kept_meta(&v).await;
            (v, meta)
        })
        .buffer_unordered(META_CONCURRENCY)
        .collect()
        .await;
    for (v, meta) in metas {
        let meta = meta?;
        let f = match meta {
            Some(m) => RemoteFile {
                size: v.size,
                mtime: m.mtime(),
                mode: m.mode,
                sha256: Some(m.sha256).filter(|s| !s.is_empty()),
                owner: m.owner,
                source: v.source(),
            },
            // Written by another tool: the defaults the index gives such objects.
            None => RemoteFile {
                size: v.size,
                mtime: v.from,
                mode: 0o644,
                sha256: None,
                owner: None,
                source: v.source(),
            },
        };
        out.files.insert(v.rel.clone(), f);
    }
    for o in listed
        .iter()
        .filter(|o| o.is_dir_marker && o.last_modified <= t)
    {
        out.dirs.insert(o.rel.clone());
    }
    let parents: Vec<PathBuf> = out
        .files
        .keys()
        .chain(out.dirs.iter())
        .flat_map(|p| p.ancestors().skip(1))
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    out.dirs.extend(parents);
    Ok(out)
}

/// The bucket index of a point-in-time mount (`mount --as-of`): the files of [`state_at`] as
/// bucket-only files, each fetched on first open from its live object or kept version.
/// Directories are those of the files (an empty directory of then is not shown).
pub async fn index_at(bucket: &Bucket, t: SystemTime) -> Result<Index, BucketError> {
    let live = Index::load(bucket).await?;
    let pit = state_at(bucket, &live, t).await?;
    let index = Index::default();
    for (rel, f) in pit.files {
        index.insert(&rel, f);
    }
    tracing::info!(
        as_of = %humantime::format_rfc3339_millis(t),
        files = index.len(),
        "serving a point in time, read-only"
    );
    Ok(index)
}

/// `etlfs history` for the whole bucket: when versions were kept, newest first, one line per
/// second with how many of each kind.
pub fn summary_lines(kept: &[KeptVersion]) -> Vec<String> {
    let mut by_second: BTreeMap<u64, [u64; 3]> = BTreeMap::new();
    for v in kept {
        let s = secs(v.until);
        let c = by_second.entry(s).or_default();
        c[match v.kind {
            Kind::Replaced => 0,
            Kind::ReplacedByEmpty => 1,
            Kind::Deleted => 2,
        }] += 1;
    }
    let mut out = Vec::new();
    if let Some(oldest) = kept.iter().map(|v| v.from).min() {
        out.push(format!(
            "oldest kept version: {} (points in time from there on can be restored)",
            humantime::format_rfc3339_seconds(oldest)
        ));
    } else {
        out.push("no kept versions: only the current state can be restored".to_owned());
    }
    for (s, [r, e, d]) in by_second.into_iter().rev() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        out.push(format!(
            "{}  {} kept: {r} replaced, {e} replaced by an empty file, {d} deleted",
            humantime::format_rfc3339_seconds(t),
            r + e + d
        ));
    }
    out
}

/// `etlfs history PATH`: the versions of one path, those replaced by an empty file first (the
/// likely victims of a crash mid-rewrite), then the others, newest first; then the live object.
pub fn path_lines(
    bucket: &Bucket,
    mut kept: Vec<KeptVersion>,
    live: Option<(u64, SystemTime)>,
) -> Vec<String> {
    kept.sort_by(|a, b| {
        (b.kind == Kind::ReplacedByEmpty, b.until).cmp(&(a.kind == Kind::ReplacedByEmpty, a.until))
    });
    let mut out: Vec<String> = kept
        .iter()
        .map(|v| {
            format!(
                "{}  from {} until {}  {} bytes  {}",
                v.kind.describe(),
                humantime::format_rfc3339_millis(v.from),
                humantime::format_rfc3339_millis(v.until),
                v.size,
                esc(&bucket.source_key_name(&v.source()))
            )
        })
        .collect();
    match live {
        Some((size, lm)) => out.push(format!(
            "current  from {}  {size} bytes",
            humantime::format_rfc3339_millis(lm)
        )),
        None if out.is_empty() => {
            out.push("no kept versions, and no such file in the bucket now".to_owned())
        }
        None => out.push("current  none (deleted)".to_owned()),
    }
    out
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn v(rel: &str, from: u64, until: u64, kind: Kind) -> KeptVersion {
        KeptVersion {
            rel: rel.into(),
            from: at(from),
            until: at(until),
            kind,
            size: 1,
            name: format!("{from}-{until}"),
        }
    }

    fn names(m: &BTreeMap<PathBuf, Choice>) -> Vec<String> {
        m.iter()
            .map(|(p, c)| match c {
                Choice::Live => format!("{}=live", p.display()),
                Choice::Kept(v) => format!("{}={}", p.display(), v.name),
            })
            .collect()
    }

    #[test]
    fn a_point_in_time_picks_what_the_bucket_held_then() {
        let live = vec![
            ("rewritten".into(), at(200)),
            ("created_later".into(), at(300)),
            ("untouched".into(), at(50)),
            ("recreated".into(), at(250)),
        ];
        let kept = vec![
            v("rewritten", 100, 200, Kind::Replaced),
            v("deleted", 100, 180, Kind::Deleted),
            v("recreated", 10, 120, Kind::Deleted),
            v("thinned", 100, 140, Kind::Replaced),
        ];
        assert_eq!(
            names(&resolve(&live, &kept, at(150))),
            [
                "deleted=100-180",
                "rewritten=100-200",
                "thinned=100-140",
                "untouched=live"
            ]
        );
        assert_eq!(
            names(&resolve(&live, &kept, at(400))),
            [
                "created_later=live",
                "recreated=live",
                "rewritten=live",
                "thinned=100-140",
                "untouched=live"
            ]
        );
        assert_eq!(
            names(&resolve(&live, &kept, at(110))),
            [
                "deleted=100-180",
                "recreated=10-120",
                "rewritten=100-200",
                "thinned=100-140",
                "untouched=live"
            ]
        );
        assert!(resolve(&live, &kept, at(5)).is_empty());
    }

    #[test]
    fn as_of_takes_rfc3339_or_a_duration_ago() {
        assert_eq!(
            parse_as_of("2026-12-07T03:20:00Z").unwrap(),
            humantime::parse_rfc3339("2026-12-07T03:20:00Z").unwrap()
        );
        let t = parse_as_of("3h").unwrap();
        let ago = SystemTime::now().duration_since(t).unwrap();
        assert!(ago >= Duration::from_secs(3 * 3600) && ago < Duration::from_secs(3 * 3600 + 60));
        let e = parse_as_of("yesterday\n").unwrap_err().to_string();
        assert!(e.contains("\\n") && e.contains("RFC 3339"), "{e}");
    }
}
