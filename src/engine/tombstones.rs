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
//! Format: `tombstones.json` in the state directory, a JSON array of `{"intent": ..., "at":
//! seconds}` (the intent as the journal writes a removal), replaced atomically on each change.
//! Few entries: only removals within minutes of a start.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::engine::journal::Intent;
use crate::escape::esc;
use crate::os::state::StateDir;

/// File name inside the state directory.
pub const FILE_NAME: &str = "tombstones.json";

/// How long after a start removals leave tombstones, and how long a tombstone is kept: longer
/// than any bucket plausibly holds a request whose sender is gone.
pub const WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// Always a [`Intent::Remove`].
    intent: Intent,
    /// When the removal was carried out, in seconds since the epoch.
    at: u64,
}

/// The tombstones of this run (see the module doc).
#[derive(Debug)]
pub struct Tombstones {
    state: std::sync::Arc<StateDir>,
    /// Removals carried out before this leave tombstones.
    until: Instant,
    /// Path → (is a directory, when).
    live: Mutex<BTreeMap<PathBuf, (bool, u64)>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read(state: &StateDir) -> io::Result<Vec<Entry>> {
    match state.read(FILE_NAME) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn young(at: u64, now: u64) -> bool {
    now.saturating_sub(at) < WINDOW.as_secs()
}

/// At a start, before the journal's pending intents are applied to the listing: journals a
/// removal for every tombstone the last run left (durably), then keeps only the tombstones
/// younger than [`WINDOW`]. A crash in between journals them again next time: a removal
/// carried out twice is one removal.
pub fn replay_in(state: &StateDir) -> io::Result<usize> {
    let entries = read(state)?;
    if entries.is_empty() {
        return Ok(0);
    }
    let intents: Vec<Intent> = entries.iter().map(|e| e.intent.clone()).collect();
    crate::engine::journal::append_in(state, &intents)?;
    let now = now_secs();
    let kept: Vec<&Entry> = entries.iter().filter(|e| young(e.at, now)).collect();
    write(state, &kept)?;
    Ok(entries.len())
}

fn write(state: &StateDir, entries: &[&Entry]) -> io::Result<()> {
    let bytes = serde_json::to_vec(entries).map_err(io::Error::other)?;
    state.write_atomic(FILE_NAME, &bytes)
}

impl Tombstones {
    /// The tombstones [`replay_in`] kept, for a run started now.
    pub fn open(state: std::sync::Arc<StateDir>) -> Tombstones {
        let live = match read(&state) {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|e| match e.intent {
                    Intent::Remove { path, dir } => Some((path, (dir, e.at))),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                warn!(error = %e, "cannot read the tombstones of the last run");
                BTreeMap::new()
            }
        };
        Tombstones {
            state,
            until: Instant::now() + WINDOW,
            live: Mutex::new(live),
        }
    }

    /// The mirror deleted what the bucket held at `path` (a file, or a directory with
    /// everything below it): within [`WINDOW`] of the start, a tombstone.
    pub fn removed(&self, path: &Path, dir: bool) {
        if Instant::now() >= self.until {
            return;
        }
        let mut live = self.lock();
        live.insert(path.to_path_buf(), (dir, now_secs()));
        self.save(&live);
    }

    /// The mirror is about to write the object at `path`: tombstones at it, above it (a
    /// removed directory) and below it go first.
    pub fn writing(&self, path: &Path) {
        let mut live = self.lock();
        if live.is_empty() {
            return;
        }
        let before = live.len();
        live.retain(|t, _| !(path.starts_with(t) || t.starts_with(path)));
        if live.len() != before {
            self.save(&live);
        }
    }

    fn save(&self, live: &BTreeMap<PathBuf, (bool, u64)>) {
        let entries: Vec<Entry> = live
            .iter()
            .map(|(path, (dir, at))| Entry {
                intent: Intent::Remove {
                    path: path.clone(),
                    dir: *dir,
                },
                at: *at,
            })
            .collect();
        if let Err(e) = write(&self.state, &entries.iter().collect::<Vec<_>>()) {
            // Losing a tombstone only loses the guard against a dead etlfs' late request.
            warn!(error = %e, file = %esc(FILE_NAME), "cannot save the tombstones");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, (bool, u64)>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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

        assert_eq!(replay_in(&state).unwrap(), 1);
        let pending: Vec<Intent> = crate::engine::journal::pending_in(&state)
            .unwrap()
            .into_iter()
            .map(|p| p.intent)
            .collect();
        assert_eq!(pending, [remove("a/x", false)]);
        // Young, so kept for the next run too.
        let next = Tombstones::open(Arc::clone(&state));
        assert_eq!(next.lock().len(), 1);
    }

    /// Tombstones older than the window are replayed once more, then forgotten.
    #[test]
    fn old_tombstones_are_replayed_once_then_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let old = Entry {
            intent: remove("gone", false),
            at: now_secs() - WINDOW.as_secs() - 1,
        };
        write(&state, &[&old]).unwrap();
        assert_eq!(replay_in(&state).unwrap(), 1);
        assert_eq!(crate::engine::journal::pending_in(&state).unwrap().len(), 1);
        assert!(read(&state).unwrap().is_empty());
        assert_eq!(replay_in(&state).unwrap(), 0);
    }
}
