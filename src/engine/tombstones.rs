//! Removals that must outlive the requests of a killed etlfs.
//!
//! A request that a killed etlfs had already sent (an upload, a copy) can still reach the
//! bucket after it died: the kernel delivers what was written to the socket, and the bucket, or
//! a proxy in front of it, may hold the request for a while. If the next etlfs meanwhile
//! carries out the removal of that file (an intent the journal kept, or a removal made just
//! after the start), the late request puts the object back, and nothing remembers the removal
//! any more: the start after that would list the object as a file only in the bucket and show
//! the removed file again.
//!
//! So for [`WINDOW`] after each start, every removal the mirror carries out in the bucket (a
//! removed file or directory, the old name of a rename) leaves a *tombstone* in the state
//! directory. The next start journals each tombstone as a removal again ([`replay_in`], before
//! anything looks at the listing): the index hides whatever the bucket shows there and the
//! mirror deletes it, unless something is local at that path by then. Tombstones older than
//! [`WINDOW`] are replayed once more and then forgotten; a request of a dead etlfs that lands
//! later than that is not guarded against.
//!
//! A tombstone is dropped as soon as the mirror itself writes at, above or below its path (an
//! upload, a directory marker, an object moved or copied there), *before* that write: from then
//! on an object there is this etlfs' own, and a replayed removal would delete it — a file only
//! in the bucket renamed onto a removed name, or a file uploaded and then evicted.
//!
//! Format: `tombstones.jsonl` in the state directory, JSON lines appended as things happen —
//! `{"intent":...,"at":seconds}` for a removal (the intent as the journal writes it) and
//! `{"written":path}` for a write that drops the tombstones at, above and below `path` —
//! rewritten compactly at each start. A removal's line is not synced (losing one loses only
//! the guard); a write's line is fdatasynced before the write, since a tombstone it failed to
//! drop would delete what etlfs wrote. Anything unreadable but a torn last line, or a failed
//! append, drops every tombstone: none at all is the safe side.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::engine::journal::Intent;
use crate::os::state::StateDir;

/// File name inside the state directory.
pub const FILE_NAME: &str = "tombstones.jsonl";

/// How long after a start removals leave tombstones, and how long a tombstone is kept: longer
/// than any bucket plausibly holds a request whose sender is gone.
pub const WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    /// A tombstone: always an [`Intent::Remove`], and when it was carried out (seconds since
    /// the epoch).
    Removed { intent: Intent, at: u64 },
    /// etlfs wrote at this path: the tombstones at, above and below it are gone.
    Written {
        #[serde(with = "crate::engine::journal::raw_path")]
        written: PathBuf,
    },
}

/// Path → (is a directory, when).
type Live = BTreeMap<PathBuf, (bool, u64)>;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn young(at: u64, now: u64) -> bool {
    now.saturating_sub(at) < WINDOW.as_secs()
}

/// Whether a write at `path` drops the tombstone at `t`.
fn covers(path: &Path, t: &Path) -> bool {
    path.starts_with(t) || t.starts_with(path)
}

/// Whether a write at `path` drops any tombstone: one at `path` or an ancestor, or one below
/// it (those sort right after `path`, paths comparing by components). Looked up, not scanned:
/// every upload asks, and a mass removal after a start leaves thousands.
fn any_covered(live: &Live, path: &Path) -> bool {
    use std::ops::Bound;
    path.ancestors().any(|a| live.contains_key(a))
        || live
            .range::<Path, _>((Bound::Excluded(path), Bound::Unbounded))
            .next()
            .is_some_and(|(t, _)| t.starts_with(path))
}

/// The tombstones the file holds (none if it is damaged: see the module doc).
fn read(state: &StateDir) -> io::Result<Live> {
    let bytes = match state.read(FILE_NAME) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Live::new()),
        Err(e) => return Err(e),
    };
    let mut live = Live::new();
    let mut lines = bytes.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Line>(line) {
            Ok(Line::Removed {
                intent: Intent::Remove { path, dir },
                at,
            }) => {
                live.insert(path, (dir, at));
            }
            Ok(Line::Written { written }) => live.retain(|t, _| !covers(&written, t)),
            // A torn last line: a crash in the middle of an append.
            Err(_) if lines.peek().is_none_or(|l| l.is_empty()) => {}
            _ => {
                warn!("the tombstones file is damaged; dropping every tombstone");
                return Ok(Live::new());
            }
        }
    }
    Ok(live)
}

fn removed_line(path: &Path, dir: bool, at: u64) -> Line {
    Line::Removed {
        intent: Intent::Remove {
            path: path.to_path_buf(),
            dir,
        },
        at,
    }
}

/// At a start, before the journal's pending intents are applied to the listing: journals a
/// removal for every tombstone the last run left (durably), then keeps only the tombstones
/// younger than [`WINDOW`]. A crash in between journals them again next time: a removal
/// carried out twice is one removal. Returns how many were journaled.
pub fn replay_in(state: &StateDir) -> io::Result<usize> {
    let live = read(state)?;
    if live.is_empty() {
        return match state.remove_file(FILE_NAME) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(0),
        };
    }
    let intents: Vec<Intent> = live
        .iter()
        .map(|(path, (dir, _))| Intent::Remove {
            path: path.clone(),
            dir: *dir,
        })
        .collect();
    crate::engine::journal::append_in(state, &intents)?;
    let now = now_secs();
    let mut out = Vec::new();
    for (path, (dir, at)) in &live {
        if young(*at, now) {
            serde_json::to_writer(&mut out, &removed_line(path, *dir, *at))
                .map_err(io::Error::other)?;
            out.push(b'\n');
        }
    }
    state.write_atomic(FILE_NAME, &out)?;
    Ok(intents.len())
}

/// The tombstones of this run (see the module doc).
#[derive(Debug)]
pub struct Tombstones {
    state: Arc<StateDir>,
    /// Removals carried out before this leave tombstones.
    until: Instant,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    live: Live,
    /// The file, open for appending; `None` once an append failed (no more tombstones).
    file: Option<File>,
}

impl Tombstones {
    /// The tombstones [`replay_in`] kept, for a run started now.
    pub fn open(state: Arc<StateDir>) -> Tombstones {
        let opened = read(&state).and_then(|live| Ok((live, state.open_append(FILE_NAME)?)));
        let inner = match opened {
            Ok((live, file)) => Inner {
                live,
                file: Some(file),
            },
            Err(e) => {
                warn!(error = %e, "cannot open the tombstones file; removals leave none this run");
                Inner {
                    live: Live::new(),
                    file: None,
                }
            }
        };
        Tombstones {
            state,
            until: Instant::now() + WINDOW,
            inner: Mutex::new(inner),
        }
    }

    /// The mirror deleted what the bucket held at `path` (a file, or a directory with
    /// everything below it): within [`WINDOW`] of the start, a tombstone.
    pub fn removed(&self, path: &Path, dir: bool) {
        if Instant::now() >= self.until {
            return;
        }
        let mut inner = self.lock();
        let at = now_secs();
        if inner.append(&removed_line(path, dir, at), false) {
            inner.live.insert(path.to_path_buf(), (dir, at));
        }
        self.give_up_if_failed(&mut inner);
    }

    /// The mirror is about to write the object at `path`: tombstones at it, above it (a
    /// removed directory) and below it go first, durably.
    pub fn writing(&self, path: &Path) {
        let mut inner = self.lock();
        if !any_covered(&inner.live, path) {
            return;
        }
        let line = Line::Written {
            written: path.to_path_buf(),
        };
        if inner.append(&line, true) {
            inner.live.retain(|t, _| !covers(path, t));
        }
        self.give_up_if_failed(&mut inner);
    }

    /// After a failed append, the file may end in a partial line that the next append would
    /// run into: remove it, and keep no tombstone for the rest of the run.
    fn give_up_if_failed(&self, inner: &mut Inner) {
        if inner.file.is_none() && !inner.live.is_empty() {
            inner.live.clear();
            if let Err(e) = self.state.remove_file(FILE_NAME) {
                warn!(error = %e, "cannot remove the tombstones file");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Appends `line` (synced if `sync`); `false`, and no file any more, if that failed.
    fn append(&mut self, line: &Line, sync: bool) -> bool {
        let Some(file) = &mut self.file else {
            return false;
        };
        let res = serde_json::to_vec(line)
            .map_err(io::Error::other)
            .and_then(|mut bytes| {
                bytes.push(b'\n');
                file.write_all(&bytes)
            })
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        if let Err(e) = res {
            warn!(error = %e, "cannot append to the tombstones file; removals leave none this run");
            self.file = None;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remove(path: &str, dir: bool) -> Intent {
        Intent::Remove {
            path: PathBuf::from(path),
            dir,
        }
    }

    /// A removal leaves a tombstone; the next start journals it as a removal; a write at,
    /// above or below it drops it first.
    #[test]
    fn tombstones_are_replayed_and_dropped_by_writes() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(StateDir::open(dir.path()).unwrap());
        let t = Tombstones::open(Arc::clone(&state));
        t.removed(Path::new("a/x"), false);
        t.removed(Path::new("d"), true);
        t.removed(Path::new("k/y"), false);
        t.writing(Path::new("d/new/file")); // below a removed directory
        t.writing(Path::new("k")); // above a removed file
        t.writing(Path::new("a/xx")); // a sibling: not a match
        drop(t);

        assert_eq!(replay_in(&state).unwrap(), 1);
        let pending: Vec<Intent> = crate::engine::journal::pending_in(&state)
            .unwrap()
            .into_iter()
            .map(|p| p.intent)
            .collect();
        assert_eq!(pending, [remove("a/x", false)]);
        // Young, so kept for the next run too.
        let next = Tombstones::open(Arc::clone(&state));
        assert_eq!(next.lock().live.len(), 1);
    }

    /// The lookup finds what a scan would.
    #[test]
    fn any_covered_matches_a_scan() {
        let live: Live = ["a/b", "a/bc/d", "x", "m/n/o"]
            .iter()
            .map(|p| (PathBuf::from(p), (false, 0)))
            .collect();
        for p in [
            "a", "a/b", "a/b/c", "a/bb", "a/bc", "a/bc/d/e", "b", "x/y", "m", "m/n", "m/nn", "",
        ] {
            let scan = live.keys().any(|t| covers(Path::new(p), t));
            assert_eq!(any_covered(&live, Path::new(p)), scan, "{p}");
        }
    }

    /// Tombstones older than the window are replayed once more, then forgotten.
    #[test]
    fn old_tombstones_are_replayed_once_then_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let old = removed_line(Path::new("gone"), false, now_secs() - WINDOW.as_secs() - 1);
        let mut text = serde_json::to_vec(&old).unwrap();
        text.push(b'\n');
        state.write_atomic(FILE_NAME, &text).unwrap();
        assert_eq!(replay_in(&state).unwrap(), 1);
        assert_eq!(crate::engine::journal::pending_in(&state).unwrap().len(), 1);
        assert!(read(&state).unwrap().is_empty());
        assert_eq!(replay_in(&state).unwrap(), 0);
    }

    /// A torn last line is ignored; damage anywhere else drops every tombstone.
    #[test]
    fn a_damaged_file_keeps_no_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut good =
            serde_json::to_vec(&removed_line(Path::new("a"), false, now_secs())).unwrap();
        good.push(b'\n');
        let torn = [&good[..], b"{\"intent\":{\"op\":\"rem"].concat();
        state.write_atomic(FILE_NAME, &torn).unwrap();
        assert_eq!(read(&state).unwrap().len(), 1);
        let damaged = [b"{\"intent\":{\"op\":\"rem\n", &good[..]].concat();
        state.write_atomic(FILE_NAME, &damaged).unwrap();
        assert!(read(&state).unwrap().is_empty());
    }
}
