//! A crash-safe log of removals and renames that the bucket has not seen yet.
//!
//! Deleting an object is the one bucket operation that destroys data, so etlfs only deletes
//! what the application removed, and it must not forget a removal across a crash — otherwise a
//! deleted file would come back from the bucket after a lost volume. Each `unlink`, `rmdir` and
//! `rename` is therefore appended here and `fdatasync`ed *before* the local operation runs and
//! the application gets its answer. When the mirror has carried the intent out, a `done` line
//! follows (not synced: losing it only means doing an idempotent delete again).
//!
//! The intent is written before the local operation, so a crash in between leaves one that
//! never ran. A rename says what it moved (the inode of a local file or directory, or a file
//! only in the bucket), so that the next start can tell from the local disk whether it ran
//! and cancel it if not (`cli/mount.rs`); an older journal's renames lack it, and are guessed at.
//!
//! Format: one JSON object per line, `{"seq":N,"intent":{...}}` or `{"done":N}`, and
//! `{"seq":N,"step":K}` for the progress of an intent the mirror carries out in steps (an
//! exchange: redoing a step already done would swap back what it swapped), written durably
//! too. A torn last line (a crash in the middle of an append) is ignored on replay. When no
//! intent is pending the file is truncated, so it stays small.
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
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::escape::{esc, esc_display};
use crate::os::state::StateDir;

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
        /// What was renamed. `None` in journals of an etlfs that did not record it: their
        /// replay guesses from what is local (see `mirror/`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<Source>,
    },
    /// `rename` with `RENAME_EXCHANGE`: `a` and `b` (each with everything below it) swap
    /// places, atomically. One intent, not two renames: carried out one after the other, the
    /// second moves back in the bucket what the first moved.
    Exchange {
        #[serde(with = "raw_path")]
        a: PathBuf,
        #[serde(with = "raw_path")]
        b: PathBuf,
        /// Whether `a` (before the exchange) is a directory.
        a_dir: bool,
        b_dir: bool,
        /// The local inodes at `a` and `b` before the exchange.
        a_ino: u64,
        b_ino: u64,
    },
}

/// Where the objects of bucket-only files below `a` wait while an exchange of `a` and `b` is
/// carried out (journal sequence number `seq`), `rel` below `a`: a directory at the top of the
/// bucket, named for etlfs (`.etlfs` itself is reserved). The index of a start during the
/// exchange lists it, and the replay moves it to `b` as the mirror will.
pub fn exchange_stage(seq: u64, rel: &Path) -> PathBuf {
    let stage = PathBuf::from(format!(".etlfs-exchange-{seq}"));
    if rel.as_os_str().is_empty() {
        stage
    } else {
        stage.join(rel)
    }
}

/// What a rename moved, as the overlay saw it when it journaled the rename. It tells the
/// replay after a crash whether the local operation ran (the intent is journaled before it)
/// and whether an object of a file that is only in the bucket must move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A local file or directory: its inode. The rename ran unless the old name still leads
    /// to it.
    Local { ino: u64 },
    /// A file only in the bucket: its object moves to the new name. The only local operation
    /// is the removal of a local file it replaces (`replaced`, its inode): the rename ran
    /// unless the new name still leads to that.
    Bucket { replaced: Option<u64> },
}

/// A path in the journal, losslessly: a JSON string when it is UTF-8, else an array of its
/// bytes (`serde_json` refuses a `PathBuf` that is not UTF-8, which made every removal or
/// rename of such a name fail). Also the tombstones' (`engine/tombstones.rs`).
pub(crate) mod raw_path {
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
    Intent {
        seq: u64,
        intent: Intent,
    },
    Done {
        done: u64,
    },
    /// How far the mirror got with an intent it carries out in steps (an exchange): the
    /// steps before `step` are done in the bucket, `step` may be partly done.
    Step {
        seq: u64,
        step: u8,
    },
}

/// An intent not done yet, as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    pub intent: Intent,
    /// Progress of an intent carried out in steps ([`Journal::advance`]); 0: not started.
    pub step: u8,
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// Length of the file: every complete line, nothing torn.
    len: u64,
    /// Blocks are allocated up to here (see [`reserve`]).
    reserved_to: u64,
    next_seq: u64,
    pending: BTreeMap<u64, (Intent, u8)>,
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
    match crate::os::sys::fallocate(file.as_fd(), libc::FALLOC_FL_KEEP_SIZE, len, RESERVE) {
        Ok(()) => len + RESERVE,
        Err(_) => len,
    }
}

impl Inner {
    /// Appends one whole line, or nothing: a partial write is cut off again.
    /// Writes `intent`'s line under the next sequence number, which it returns (neither
    /// synced nor counted yet).
    fn write_intent(&mut self, intent: &Intent) -> io::Result<u64> {
        let seq = self.next_seq;
        let mut line = serde_json::to_vec(&Line::Intent {
            seq,
            intent: intent.clone(),
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        self.write_line(&line)?;
        Ok(seq)
    }

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
/// before it shows the directory (see `cli/mount.rs`).
pub fn pending_in(state: &StateDir) -> io::Result<Vec<Pending>> {
    Ok(read_pending(state)?
        .0
        .into_iter()
        .map(|(seq, (intent, step))| Pending { seq, intent, step })
        .collect())
}

/// Cancels pending intents of the journal in `state` whose local operation never ran (a
/// crash came between the journal and the operation), durably: they must not be carried
/// out at this start nor at any later one, whatever happens locally meanwhile.
pub fn cancel_in(state: &StateDir, seqs: &[u64]) -> io::Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    let (journal, _) = Journal::open(state)?;
    for seq in seqs {
        journal.done(*seq)?;
    }
    journal.lock().file.sync_data()
}

/// Journals `intents` in `state` durably, without a local operation: removals a start makes
/// on its own account (see `engine/tombstones.rs`), carried out as any pending intent.
/// All written, then synced once (a mass removal leaves thousands).
pub fn append_in(state: &StateDir, intents: &[Intent]) -> io::Result<()> {
    let (journal, _) = Journal::open(state)?;
    let mut inner = journal.lock();
    for intent in intents {
        let seq = inner.write_intent(intent)?;
        inner.next_seq += 1;
        inner.pending.insert(seq, (intent.clone(), 0));
    }
    inner.file.sync_data()
}

/// The intents not done yet (with their progress), by sequence number, and the highest
/// sequence number seen.
type Read = (BTreeMap<u64, (Intent, u8)>, u64);

fn read_pending(state: &StateDir) -> io::Result<Read> {
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
                pending.insert(seq, (intent, 0));
            }
            Ok(Line::Done { done }) => {
                pending.remove(&done);
            }
            Ok(Line::Step { seq, step }) => {
                if let Some((_, at)) = pending.get_mut(&seq) {
                    *at = step;
                }
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
        let replay: Vec<_> = pending.iter().map(|(s, (i, _))| (*s, i.clone())).collect();
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
        let seq = inner.write_intent(&intent)?;
        inner.file.sync_data()?;
        inner.next_seq += 1;
        inner.pending.insert(seq, (intent, 0));
        Ok(seq)
    }

    /// Records durably that the steps of intent `seq` before `step` are done in the bucket
    /// (see [`Line::Step`]): a replay after a crash goes on from there, never redoes them.
    pub fn advance(&self, seq: u64, step: u8) -> io::Result<()> {
        let mut inner = self.lock();
        let Some((_, at)) = inner.pending.get_mut(&seq) else {
            return Ok(());
        };
        *at = step;
        let mut line = serde_json::to_vec(&Line::Step { seq, step }).map_err(io::Error::other)?;
        line.push(b'\n');
        inner.write_line(&line)?;
        inner.file.sync_data()
    }

    /// The progress of the pending intent `seq` ([`Journal::advance`]; 0 if none).
    pub fn step(&self, seq: u64) -> u8 {
        self.lock().pending.get(&seq).map_or(0, |(_, step)| *step)
    }

    /// Marks an intent as carried out (or cancelled because the local operation failed). It
    /// leaves [`Journal::pending_intents`] at once, even when its line cannot be written.
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

    /// The intents not done yet, in order, as this process knows them: an intent leaves
    /// this set when [`Journal::done`] is called for it, even if its `done` line could not be
    /// written.
    pub fn pending_intents(&self) -> Vec<Pending> {
        self.lock()
            .pending
            .iter()
            .map(|(seq, (intent, step))| Pending {
                seq: *seq,
                intent: intent.clone(),
                step: *step,
            })
            .collect()
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
                source: Some(Source::Local { ino: 7 }),
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
                    source: None,
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
                source: Some(Source::Bucket { replaced: None }),
            },
            Intent::Rename {
                from: "utf8 \u{2713}".into(),
                to: raw(b"\x80"),
                dir: true,
                source: Some(Source::Local { ino: 3 }),
            },
            Intent::Exchange {
                a: raw(b"e\xff"),
                b: "f".into(),
                a_dir: true,
                b_dir: false,
                a_ino: 11,
                b_ino: 12,
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

    /// The progress of an intent carried out in steps survives a reopen (and a later intent
    /// or a done line does not disturb it); a step line of an intent already done is moot.
    #[test]
    fn steps_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let (j, _) = Journal::open(&state).unwrap();
        let ex = Intent::Exchange {
            a: "a".into(),
            b: "b".into(),
            a_dir: true,
            b_dir: true,
            a_ino: 1,
            b_ino: 2,
        };
        let x = j.append(ex.clone()).unwrap();
        let r = j.append(rm("r")).unwrap();
        assert_eq!(j.step(x), 0);
        j.advance(x, 1).unwrap();
        j.advance(x, 2).unwrap();
        j.done(r).unwrap();
        j.advance(r, 1).unwrap();
        assert_eq!(j.step(x), 2);
        drop(j);
        let want = vec![Pending {
            seq: x,
            intent: ex,
            step: 2,
        }];
        assert_eq!(pending_in(&state).unwrap(), want);
        let (j, replay) = Journal::open(&state).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(j.step(x), 2);
    }

    /// A cancelled intent is gone for good, the others stay in order.
    #[test]
    fn cancelled_intents_do_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let (j, _) = Journal::open(&state).unwrap();
        let a = j.append(rm("a")).unwrap();
        let b = j.append(rm("b")).unwrap();
        let c = j.append(rm("c")).unwrap();
        drop(j);
        cancel_in(&state, &[b]).unwrap();
        let seqs: Vec<u64> = pending_in(&state).unwrap().iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![a, c]);
        let (_, replay) = Journal::open(&state).unwrap();
        assert_eq!(replay, vec![(a, rm("a")), (c, rm("c"))]);
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
        let small = crate::os::state::tests::SmallTmpfs::new();
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
