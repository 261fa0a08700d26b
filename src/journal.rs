//! A crash-safe log of removals and renames that the bucket has not seen yet.
//!
//! Deleting an object is the one bucket operation that destroys data, so etlfs only deletes
//! what the application removed, and it must not forget a removal across a crash — otherwise a
//! deleted file would come back from the bucket after a lost volume. Each `unlink`, `rmdir` and
//! `rename` is therefore appended here and `fdatasync`ed *before* the local operation runs and
//! the application gets its answer. When the mirror has carried the intent out, a `done` line
//! follows (not synced: losing it only means doing an idempotent delete again).
//!
//! Format: one JSON object per line, `{"seq":N,"intent":{...}}` or `{"done":N}`. A torn last
//! line (a crash in the middle of an append) is ignored on replay. When no intent is pending
//! the file is truncated, so it stays small.
//!
//! Paths are whatever bytes the application named, not necessarily UTF-8: a removal or rename
//! of a name the bucket can never hold must still work locally, and a rename between such a
//! name and an ordinary one matters to the bucket (see `mirror/`). A UTF-8 path is written as
//! a JSON string (as in every journal before byte paths existed, so those replay unchanged),
//! any other as the array of its bytes ([`raw_path`]).
//!
//! A full disk must not break it. A failed append (ENOSPC after part of the line) is cut off
//! again, so the next line never merges with a torn one (which would hide it at replay), and
//! the operation is refused. And [`RESERVE`] bytes are kept allocated beyond the end of the
//! file, so that on a full disk the application can still delete files — each delete is an
//! append first.
//!
//! New and changed *files* need no journal entry: at every start the mirror rescans the
//! directory against its upload records and the bucket (see `mirror/`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::escape::{esc, esc_display};
use crate::state::StateDir;

/// What the application did that the bucket must follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// `unlink` (`dir: false`) or `rmdir` (`dir: true`) of a path.
    Remove {
        #[serde(with = "raw_path")]
        path: PathBuf,
        dir: bool,
    },
    /// `rename` of a file or a directory (everything below it moves).
    Rename {
        #[serde(with = "raw_path")]
        from: PathBuf,
        #[serde(with = "raw_path")]
        to: PathBuf,
        dir: bool,
    },
}

/// A path in the journal, losslessly: a JSON string when it is UTF-8, else an array of its
/// bytes (`serde_json` refuses a `PathBuf` that is not UTF-8, which made every removal or
/// rename of such a name fail).
mod raw_path {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(path: &Path, ser: S) -> Result<S::Ok, S::Error> {
        match path.to_str() {
            Some(text) => ser.serialize_str(text),
            None => ser.collect_seq(path.as_os_str().as_bytes()),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<PathBuf, D::Error> {
        Ok(match Repr::deserialize(de)? {
            Repr::Text(text) => PathBuf::from(text),
            Repr::Bytes(bytes) => PathBuf::from(OsString::from_vec(bytes)),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Intent { seq: u64, intent: Intent },
    Done { done: u64 },
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// Length of the file: every complete line, nothing torn.
    len: u64,
    /// Blocks are allocated up to here (see [`reserve`]).
    reserved_to: u64,
    next_seq: u64,
    pending: BTreeMap<u64, Intent>,
}

/// The journal file in the state directory.
#[derive(Debug)]
pub struct Journal {
    inner: Mutex<Inner>,
}

/// Bytes kept allocated past the end of the journal (several hundred intents).
pub const RESERVE: u64 = 64 * 1024;

/// Allocates [`RESERVE`] bytes past `len` without changing the size, where the filesystem can
/// (others just go without). Returns where the allocation ends.
fn reserve(file: &File, len: u64) -> u64 {
    use std::os::fd::AsFd;
    match crate::sys::fallocate(file.as_fd(), libc::FALLOC_FL_KEEP_SIZE, len, RESERVE) {
        Ok(()) => len + RESERVE,
        Err(_) => len,
    }
}

impl Inner {
    /// Appends one whole line, or nothing: a partial write is cut off again.
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match self.file.write_all(line) {
            Ok(()) => {
                self.len += line.len() as u64;
                if self.len + RESERVE / 2 > self.reserved_to {
                    // Top the reserve up while there may still be room.
                    self.reserved_to = self.reserved_to.max(reserve(&self.file, self.len));
                }
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.file.set_len(self.len) {
                    tracing::error!(error = %cut, "could not cut a partly written journal line off");
                }
                Err(e)
            }
        }
    }
}

/// File name inside the state directory.
pub const FILE_NAME: &str = "journal.jsonl";

/// The intents of the journal in `state` that were not done, in order, read without opening
/// the journal for writing: a starting mount applies them to what the bucket listing showed
/// before it shows the directory (see `run.rs`).
pub fn pending_in(state: &StateDir) -> io::Result<Vec<Intent>> {
    Ok(read_pending(state)?.0.into_values().collect())
}

/// The intents not done yet, by sequence number, and the highest sequence number seen.
fn read_pending(state: &StateDir) -> io::Result<(BTreeMap<u64, Intent>, u64)> {
    let path = state.path().join(FILE_NAME);
    let mut pending = BTreeMap::new();
    let mut max_seq = 0;
    let existing = match state.read(FILE_NAME) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    for line in existing.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Line>(line) {
            Ok(Line::Intent { seq, intent }) => {
                max_seq = max_seq.max(seq);
                pending.insert(seq, intent);
            }
            Ok(Line::Done { done }) => {
                pending.remove(&done);
            }
            // Only the last line can be torn; anything else unparsable is skipped rather than
            // losing the intents after it.
            Err(e) => {
                // serde's message can quote the damaged bytes (a name in the line).
                tracing::warn!(file = %esc(&path), error = %esc_display(&e), "skipping a damaged journal line")
            }
        }
    }
    Ok((pending, max_seq))
}

impl Journal {
    /// Opens (or creates) the journal and returns the intents that were not done, in order.
    pub fn open(state: &StateDir) -> io::Result<(Journal, Vec<(u64, Intent)>)> {
        let (pending, max_seq) = read_pending(state)?;
        let file = state.open_append(FILE_NAME)?;
        let len = file.metadata()?.len();
        let reserved_to = reserve(&file, len);
        let replay: Vec<_> = pending.iter().map(|(s, i)| (*s, i.clone())).collect();
        let journal = Journal {
            inner: Mutex::new(Inner {
                file,
                len,
                reserved_to,
                next_seq: max_seq + 1,
                pending,
            }),
        };
        Ok((journal, replay))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an intent durably (written and `fdatasync`ed) and returns its sequence number.
    pub fn append(&self, intent: Intent) -> io::Result<u64> {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        let mut line = serde_json::to_vec(&Line::Intent {
            seq,
            intent: intent.clone(),
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        inner.write_line(&line)?;
        inner.file.sync_data()?;
        inner.next_seq += 1;
        inner.pending.insert(seq, intent);
        Ok(seq)
    }

    /// Marks an intent as carried out (or cancelled because the local operation failed).
    pub fn done(&self, seq: u64) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.pending.remove(&seq).is_none() {
            return Ok(());
        }
        if inner.pending.is_empty() {
            // Nothing pending: start afresh instead of growing forever.
            inner.file.set_len(0)?;
            inner.len = 0;
            inner.reserved_to = reserve(&inner.file, 0);
            return Ok(());
        }
        let mut line = serde_json::to_vec(&Line::Done { done: seq }).map_err(io::Error::other)?;
        line.push(b'\n');
        inner.write_line(&line)
    }

    /// Intents not yet done.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Size of the journal file in bytes.
    pub fn size(&self) -> u64 {
        self.lock().file.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rm(p: &str) -> Intent {
        Intent::Remove {
            path: p.into(),
            dir: false,
        }
    }

    #[test]
    fn pending_intents_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (j, replay) = Journal::open(&StateDir::open(dir.path()).unwrap()).unwrap();
        assert!(replay.is_empty());
        let a = j.append(rm("a")).unwrap();
        let b = j
            .append(Intent::Rename {
                from: "x".into(),
                to: "y".into(),
                dir: true,
            })
            .unwrap();
        let c = j.append(rm("c")).unwrap();
        j.done(b).unwrap();
        drop(j);
        let (j, replay) = Journal::open(&StateDir::open(dir.path()).unwrap()).unwrap();
        assert_eq!(replay, vec![(a, rm("a")), (c, rm("c"))]);
        // sequence numbers keep growing after a reopen
        assert!(j.append(rm("d")).unwrap() > c);
    }

    /// Any byte string is a name: intents about names that are not UTF-8 (or hold control
    /// characters) are written and replayed exactly, UTF-8 paths are written as strings as
    /// before, and a journal an older etlfs wrote replays unchanged.
    #[test]
    fn paths_of_any_bytes_survive_a_reopen_and_old_lines_still_read() {
        use std::os::unix::ffi::OsStrExt;
        let raw = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
        let dir = tempfile::tempdir().unwrap();
        // Written by an etlfs before byte paths: the same form a UTF-8 path still takes.
        std::fs::write(
            dir.path().join(FILE_NAME),
            concat!(
                r#"{"seq":1,"intent":{"op":"remove","path":"old/a","dir":false}}"#,
                "\n",
                r#"{"seq":2,"intent":{"op":"rename","from":"x","to":"y","dir":true}}"#,
                "\n",
            ),
        )
        .unwrap();
        let (j, replay) = Journal::open(&StateDir::open(dir.path()).unwrap()).unwrap();
        let old = vec![
            (1, rm("old/a")),
            (
                2,
                Intent::Rename {
                    from: "x".into(),
                    to: "y".into(),
                    dir: true,
                },
            ),
        ];
        assert_eq!(replay, old);
        let odd = [
            Intent::Remove {
                path: raw(b"d\xff/caf\xe9"),
                dir: true,
            },
            Intent::Rename {
                from: raw(b"a\xff"),
                to: raw(b"tab\tnew\nline \xe2\x9c\x93"),
                dir: false,
            },
            Intent::Rename {
                from: "utf8 \u{2713}".into(),
                to: raw(b"\x80"),
                dir: true,
            },
        ];
        let mut want = old;
        for i in &odd {
            want.push((j.append(i.clone()).unwrap(), i.clone()));
        }
        drop(j);
        let text = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        let text = String::from_utf8(text).expect("the journal stays UTF-8 JSON");
        assert!(
            text.contains(r#""path":[100,255,47,99,97,102,233]"#),
            "{text}"
        );
        assert!(text.contains(r#""from":"utf8 ✓""#), "{text}");
        let (_, replay) = Journal::open(&StateDir::open(dir.path()).unwrap()).unwrap();
        assert_eq!(replay, want);
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(&StateDir::open(dir.path()).unwrap()).unwrap();
        j.append(rm("a")).unwrap();
        drop(j);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        f.write_all(br#"{"seq":2,"intent":{"op":"remo"#).unwrap();
        drop(f);
        let (_, replay) = Journal::open(&StateDir::open(dir.path()).unwrap()).unwrap();
        assert_eq!(replay.len(), 1);
    }

    #[test]
    fn the_file_is_emptied_when_nothing_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(&StateDir::open(dir.path()).unwrap()).unwrap();
        let a = j.append(rm("a")).unwrap();
        assert!(j.size() > 0);
        j.done(a).unwrap();
        assert_eq!(j.size(), 0);
        assert_eq!(j.pending(), 0);
        let (_, replay) = Journal::open(&StateDir::open(dir.path()).unwrap()).unwrap();
        assert!(replay.is_empty());
    }

    /// On a full disk an append that only partly fits is cut off again: the file holds whole
    /// lines only, so the next append cannot merge with a torn one, and a reopen replays every
    /// acknowledged intent. (A tiny tmpfs: deterministic, and a line straddles its end.)
    #[test]
    fn a_partial_append_on_a_full_disk_is_cut_off() {
        let small = crate::state::tests::SmallTmpfs::new();
        let dir = small.path().to_owned();
        let (j, _) = Journal::open(&StateDir::open(&dir).unwrap()).unwrap();
        let mut acked = Vec::new();
        let err = loop {
            let p = format!("some/longer/path/name/{:05}", acked.len());
            match j.append(rm(&p)) {
                Ok(seq) => acked.push((seq, rm(&p))),
                Err(e) => break e,
            }
            assert!(acked.len() < 10_000, "never full");
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        let bytes = std::fs::read(dir.join(FILE_NAME)).unwrap();
        assert_eq!(bytes.last(), Some(&b'\n'), "a torn line was left behind");
        drop(j);
        let (_, replay) = Journal::open(&StateDir::open(&dir).unwrap()).unwrap();
        assert_eq!(replay, acked);
    }
}
