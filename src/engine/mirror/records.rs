//! Which version of each file the bucket holds, so a restart knows what to upload again.
//!
//! After every successful upload the mirror records the identity of the local file it read
//! (inode, size, mtime, ctime) and the content checksum. At start, a file whose identity no
//! longer matches its record — or that has no record — is uploaded again. `ctime` is the key:
//! applications cannot set it, and every write, truncate, chmod or rename moves it.
//!
//! The records live in memory and are written to `uploads.json` in the state directory
//! (temp file + rename, so a crash leaves the old or the new file, never a torn one). They
//! need no fsync: a lost record only means one more upload of the same bytes.
//!
//! A record also knows, when it can, which object version the upload made (its e_tag, the
//! owner it was uploaded with, and once a manifest has carried it, until when the bucket's clock
//! vouches for it): what the manifest writer (`publish.rs`) needs to describe the file to the
//! next mount without a HEAD. Any plain [`Records::set`] forgets that, so a record can never
//! pair one version's metadata with another's e_tag.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeSeed;
use serde::{Deserialize, Serialize};

use crate::escape::{esc, esc_display};
use crate::os::local::Stat;
use crate::os::state::StateDir;
use crate::os::{narrow, ns};
use crate::store::bucket::{CompactETag, CompactSha};

/// The local file an upload was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub mode: u32,
}

impl Identity {
    pub fn of(st: &Stat) -> Identity {
        Identity {
            ino: st.ino,
            size: st.size,
            mtime_ns: ns(st.mtime),
            ctime_ns: ns(st.ctime),
            mode: st.mode & 0o7777,
        }
    }
}

/// One path's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: Identity,
    /// Hex SHA-256 of what was uploaded (empty for a directory marker).
    pub sha256: String,
    pub dir: bool,
}

pub const FILE_NAME: &str = "uploads.json";

/// The object version an upload (or a fetch) left in the bucket, as a manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    /// Normalized e_tag the put returned (or the fetched object was listed with).
    pub e_tag: Option<String>,
    /// Owner the object's metadata carries.
    pub owner: Option<(u32, u32)>,
    /// Unix ns on the bucket's clock: the object's last-modified is at most this. `None` until
    /// a manifest carried the record (its own last-modified then becomes this).
    pub until_ns: Option<i128>,
}

/// A record as persisted: older files without the version fields load as well.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OnDisk {
    id: Identity,
    sha256: String,
    dir: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object: Option<ObjectVersion>,
}

/// A record as kept in memory, for 100,000 files and more: the checksum as 32 bytes instead
/// of 64 hex characters on the heap, times as `i64` nanoseconds (good until 2262), the e_tag
/// inline when it is an MD5. Converted from and to [`OnDisk`] one record at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    mode: u32,
    dir: bool,
    /// `None`: a directory marker's empty checksum.
    sha: Option<CompactSha>,
    object: Option<Object>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Object {
    e_tag: Option<CompactETag>,
    owner: Option<(u32, u32)>,
    /// When a manifest carried this version; [`NOT_PUBLISHED`] before (an `Option` would cost
    /// each record 8 bytes more).
    until_ns: i64,
}

const NOT_PUBLISHED: i64 = i64::MIN;

impl Object {
    fn until_ns(&self) -> Option<i64> {
        (self.until_ns != NOT_PUBLISHED).then_some(self.until_ns)
    }
}

impl Stored {
    fn new(rec: Record, object: Option<ObjectVersion>) -> Stored {
        Stored {
            ino: rec.id.ino,
            size: rec.id.size,
            mtime_ns: narrow(rec.id.mtime_ns),
            ctime_ns: narrow(rec.id.ctime_ns),
            mode: rec.id.mode,
            dir: rec.dir,
            sha: CompactSha::new(&rec.sha256),
            object: object.map(|o| Object {
                e_tag: o.e_tag.as_deref().map(CompactETag::new),
                owner: o.owner,
                until_ns: o.until_ns.map_or(NOT_PUBLISHED, narrow),
            }),
        }
    }

    fn id(&self) -> Identity {
        Identity {
            ino: self.ino,
            size: self.size,
            mtime_ns: self.mtime_ns.into(),
            ctime_ns: self.ctime_ns.into(),
            mode: self.mode,
        }
    }

    fn sha256(&self) -> String {
        self.sha.as_ref().map(CompactSha::text).unwrap_or_default()
    }

    fn record(&self) -> Record {
        Record {
            id: self.id(),
            sha256: self.sha256(),
            dir: self.dir,
        }
    }

    fn object(&self) -> Option<ObjectVersion> {
        self.object.as_ref().map(|o| ObjectVersion {
            e_tag: o.e_tag.as_ref().map(CompactETag::text),
            owner: o.owner,
            until_ns: o.until_ns().map(i128::from),
        })
    }

    fn on_disk(&self) -> OnDisk {
        OnDisk {
            id: self.id(),
            sha256: self.sha256(),
            dir: self.dir,
            object: self.object(),
        }
    }
}

/// The record table.
#[derive(Debug)]
pub struct Records {
    state: Arc<StateDir>,
    map: Mutex<HashMap<Box<Path>, Stored>>,
    dirty: AtomicBool,
    /// Bumped by every change, so the manifest writer can tell whether it has news.
    generation: AtomicU64,
}

impl Records {
    pub fn load(state: Arc<StateDir>) -> io::Result<Records> {
        Records::load_expecting(state, 0)
    }

    /// Like [`Records::load`], with room for `expected` records made at once (for no more
    /// than the file can hold): a table grown by doubling holds its old and its new buckets at
    /// the same moment, half as much again as 100,000 records take, at a start's peak.
    pub fn load_expecting(state: Arc<StateDir>, expected: usize) -> io::Result<Records> {
        let path = state.path().join(FILE_NAME);
        // Read through a buffer, one record converted at a time: the file's bytes, or a table
        // of the on-disk form, would double what 100,000 records take while loading.
        let map = match state.open_read(FILE_NAME) {
            Ok(f) => {
                let fits = f.metadata()?.len() / MIN_RECORD_BYTES;
                let capacity = expected.min(usize::try_from(fits).unwrap_or(usize::MAX));
                let mut de = serde_json::Deserializer::from_reader(io::BufReader::with_capacity(
                    64 * 1024,
                    f,
                ));
                Sized(capacity)
                    .deserialize(&mut de)
                    .and_then(|map| de.end().map(|()| map))
                    .unwrap_or_else(|e| {
                        // A damaged record file costs re-uploads, never data: start over.
                        tracing::warn!(file = %esc(&path), error = %esc_display(&e), "upload records unreadable; every file will be checked against the bucket");
                        HashMap::new()
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Records {
            state,
            map: Mutex::new(map),
            dirty: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<Path>, Stored>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Something changed; `manifest`: something the manifest describes (a record with an
    /// object version came or went), which is all the generation counts.
    fn changed(&self, manifest: bool) {
        self.dirty.store(true, Ordering::Relaxed);
        if manifest {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, path: &Path) -> Option<Record> {
        self.lock().get(path).map(Stored::record)
    }

    /// Sets the record; what was known about the object version is forgotten.
    pub fn set(&self, path: &Path, rec: Record) {
        self.set_with_object(path, rec, None);
    }

    /// Sets the record of an upload (or a fetch) together with the object version it left.
    pub fn set_with_object(&self, path: &Path, rec: Record, object: Option<ObjectVersion>) {
        let described = object.is_some();
        let stored = Stored::new(rec, object);
        let old = self.lock().insert(path.into(), stored);
        self.changed(described || old.is_some_and(|o| o.object.is_some()));
    }

    /// Gives a record without a known object version the one `object` describes, if the
    /// record still is `expect` (same identity and checksum). For records that predate
    /// versions, and fetched files, whose version the index knew.
    pub fn adopt(&self, path: &Path, expect: &Record, object: ObjectVersion) -> bool {
        let mut map = self.lock();
        let Some(s) = map.get_mut(path) else {
            return false;
        };
        if s.object.is_some() || s.dir || s.record() != *expect {
            return false;
        }
        s.object = Stored::new(expect.clone(), Some(object)).object;
        drop(map);
        self.changed(true);
        true
    }

    /// A manifest that carried these records (path, e_tag) was written at `until_ns` (bucket
    /// clock): records still holding that version and no time yet get it.
    pub fn published(&self, carried: &[(PathBuf, Option<String>)], until_ns: i128) {
        let mut map = self.lock();
        let mut changed = false;
        for (path, e_tag) in carried {
            if let Some(o) = map.get_mut(path.as_path()).and_then(|s| s.object.as_mut()) {
                if o.until_ns().is_none() && o.e_tag == e_tag.as_deref().map(CompactETag::new) {
                    o.until_ns = narrow(until_ns);
                    changed = true;
                }
            }
        }
        drop(map);
        // Only a change is saved: a save needs disk space, which a full disk may not have.
        if changed {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Calls `f(path, identity, sha256, object)` for every file record whose object version
    /// is known, under the lock (one record's copy at a time).
    pub fn for_each_with_object(&self, mut f: impl FnMut(&Path, &Identity, &str, &ObjectVersion)) {
        let map = self.lock();
        for (p, s) in map.iter() {
            if let (false, Some(o)) = (s.dir, s.object()) {
                f(p, &s.id(), &s.sha256(), &o);
            }
        }
    }

    /// Changes so far (the manifest writer compares it with what it last wrote).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn remove(&self, path: &Path) {
        if let Some(old) = self.lock().remove(path) {
            self.changed(old.object.is_some());
        }
    }

    /// Removes every record at or below `dir`.
    pub fn remove_tree(&self, dir: &Path) {
        let mut map = self.lock();
        let (before, mut described) = (map.len(), false);
        map.retain(|p, s| {
            let gone = p.starts_with(dir);
            described |= gone && s.object.is_some();
            !gone
        });
        if map.len() != before {
            drop(map);
            self.changed(described);
        }
    }

    /// Paths with a record (for pruning at start).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().keys().map(|p| p.to_path_buf()).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Writes the table if it changed since the last save.
    pub fn save(&self) -> io::Result<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        // Streamed out under the lock: a copy of the table, or its JSON in memory, would
        // double what 100,000 records take (the lock is held for the ~0.1 s it takes).
        let res = self.state.write_atomic_with(FILE_NAME, |w| {
            let map = self.lock();
            serde_json::to_writer(w, &OnDiskMap(&map)).map_err(io::Error::other)
        });
        if res.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        res
    }
}

/// What [`Records::scan`] found in the file.
#[derive(Debug, Default)]
pub struct Scan {
    /// [`path_hash`] of each file whose record knows the object version it left.
    pub described: HashSet<u64>,
    /// Records in the file.
    pub records: usize,
}

/// A 64-bit hash of a path, for [`Scan::described`]: a set of these is a tenth of a set of the
/// paths. Two paths with one hash (about one chance in 10^9 with 100,000 records) only cost
/// one file its takeover of the index's version (see `core.rs`).
pub fn path_hash(path: &Path) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

impl Records {
    /// Reads the file in the state directory for which records know their object version,
    /// without building the table (nothing, if it is missing or damaged: the load then says
    /// so). A start over 100,000 local files uses it to drop the index's entries for them
    /// before the records are loaded, so that the two tables are never full at once.
    pub fn scan(state: &StateDir) -> Scan {
        let Ok(f) = state.open_read(FILE_NAME) else {
            return Scan::default();
        };
        let mut de =
            serde_json::Deserializer::from_reader(io::BufReader::with_capacity(64 * 1024, f));
        serde::Deserializer::deserialize_map(&mut de, ScanVisitor).unwrap_or_default()
    }
}

/// A record as [`Records::scan`] reads it: whether it is a file's, and knows its object.
#[derive(Deserialize)]
struct Brief {
    dir: bool,
    #[serde(default)]
    object: Option<serde::de::IgnoredAny>,
}

struct ScanVisitor;

impl<'de> serde::de::Visitor<'de> for ScanVisitor {
    type Value = Scan;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map of paths to upload records")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Scan, A::Error> {
        let mut scan = Scan::default();
        while let Some((p, b)) = m.next_entry::<PathBuf, Brief>()? {
            scan.records += 1;
            if !b.dir && b.object.is_some() {
                scan.described.insert(path_hash(&p));
            }
        }
        Ok(scan)
    }
}

/// The fewest bytes a record takes in the file (a one-byte path, zeros, no checksum), so that
/// a file of N bytes holds at most N / this records.
const MIN_RECORD_BYTES: u64 = 80;

/// Deserializes the table from the [`OnDisk`] form, one record converted at a time, into a
/// table made for this many records (JSON does not say how many a map has).
struct Sized(usize);

impl<'de> DeserializeSeed<'de> for Sized {
    type Value = HashMap<Box<Path>, Stored>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Sized {
    type Value = HashMap<Box<Path>, Stored>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map of paths to upload records")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut map = HashMap::with_capacity(m.size_hint().unwrap_or(self.0));
        while let Some((p, d)) = m.next_entry::<PathBuf, OnDisk>()? {
            let rec = Record {
                id: d.id,
                sha256: d.sha256,
                dir: d.dir,
            };
            map.insert(p.into_boxed_path(), Stored::new(rec, d.object));
        }
        Ok(map)
    }
}

/// Serializes the table in the [`OnDisk`] form, one record converted at a time.
struct OnDiskMap<'a>(&'a HashMap<Box<Path>, Stored>);

impl Serialize for OnDiskMap<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_map(self.0.iter().map(|(p, s)| (p, s.on_disk())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's entries are what a mount of 100,000 files spends its memory on.
    #[test]
    fn a_record_stays_small() {
        assert!(std::mem::size_of::<Stored>() <= 128);
    }

    fn rec(ino: u64) -> Record {
        Record {
            id: Identity {
                ino,
                size: 1,
                mtime_ns: 2,
                ctime_ns: 3,
                mode: 0o644,
            },
            sha256: "x".into(),
            dir: false,
        }
    }

    #[test]
    fn records_persist_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::load(Arc::new(StateDir::open(dir.path()).unwrap())).unwrap();
        r.set(Path::new("a/b"), rec(1));
        r.set(Path::new("a/c"), rec(2));
        r.set(Path::new("d"), rec(3));
        r.save().unwrap();
        let r = Records::load(Arc::new(StateDir::open(dir.path()).unwrap())).unwrap();
        assert_eq!(r.get(Path::new("a/b")), Some(rec(1)));
        r.remove_tree(Path::new("a"));
        assert_eq!(r.paths(), vec![PathBuf::from("d")]);
        r.save().unwrap();
        assert_eq!(
            Records::load(Arc::new(StateDir::open(dir.path()).unwrap()))
                .unwrap()
                .len(),
            1
        );
    }

    /// No record is shorter in the file than [`MIN_RECORD_BYTES`], so a load never sizes the
    /// table for fewer records than the file holds.
    #[test]
    fn no_record_is_shorter_than_the_bound() {
        let least = Record {
            id: Identity {
                ino: 0,
                size: 0,
                mtime_ns: 0,
                ctime_ns: 0,
                mode: 0,
            },
            sha256: String::new(),
            dir: true,
        };
        let one = HashMap::from([("a", Stored::new(least, None).on_disk())]);
        let bytes = serde_json::to_vec(&one).unwrap().len() as u64;
        // (less the braces around the map, and plus the comma between two records)
        assert!(bytes - 2 + 1 >= MIN_RECORD_BYTES, "{bytes}");
    }

    /// The table is made once, for the records expected, and never for more than the file can
    /// hold; the records are the same whatever was expected.
    #[test]
    fn the_table_is_sized_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = || Arc::new(StateDir::open(dir.path()).unwrap());
        let r = Records::load(state()).unwrap();
        let n = 3000;
        for i in 0..n {
            r.set(&PathBuf::from(format!("d/f{i}")), rec(i));
        }
        r.save().unwrap();
        let made_for = |n: usize| HashMap::<Box<Path>, Stored>::with_capacity(n).capacity();
        let sized = Records::load_expecting(state(), n as usize).unwrap();
        assert_eq!(sized.lock().capacity(), made_for(n as usize));
        let len = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        let bound = usize::try_from(len / MIN_RECORD_BYTES).unwrap();
        let over = Records::load_expecting(state(), 1_000_000).unwrap();
        assert!(over.lock().capacity() <= made_for(bound));
        let grown = Records::load(state()).unwrap();
        for loaded in [&sized, &over, &grown] {
            assert_eq!(loaded.len(), n as usize);
            assert_eq!(loaded.get(Path::new("d/f7")), Some(rec(7)));
        }
    }

    /// The scan finds the files whose records know their object version, counts every
    /// record, and finds nothing in a damaged or missing file.
    #[test]
    fn the_scan_finds_the_described_files() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(Records::scan(&state).records, 0);
        let r = Records::load(Arc::new(StateDir::open(dir.path()).unwrap())).unwrap();
        r.set_with_object(Path::new("a/known"), rec(1), Some(object("e")));
        r.set(Path::new("a/plain"), rec(2));
        let dir_rec = Record {
            dir: true,
            ..rec(3)
        };
        r.set_with_object(Path::new("a"), dir_rec, Some(object("d")));
        r.save().unwrap();
        let scan = Records::scan(&state);
        assert_eq!(scan.records, 3);
        let want: HashSet<u64> = [path_hash(Path::new("a/known"))].into();
        assert_eq!(scan.described, want);
        std::fs::write(dir.path().join(FILE_NAME), b"{\"a\": [").unwrap();
        assert!(Records::scan(&state).described.is_empty());
    }

    #[test]
    fn a_damaged_file_means_start_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        assert!(
            Records::load(Arc::new(StateDir::open(dir.path()).unwrap()))
                .unwrap()
                .is_empty()
        );
    }

    fn object(e_tag: &str) -> ObjectVersion {
        ObjectVersion {
            e_tag: Some(e_tag.into()),
            owner: Some((1, 2)),
            until_ns: None,
        }
    }

    fn with_object(r: &Records) -> Vec<(PathBuf, ObjectVersion)> {
        let mut out = Vec::new();
        r.for_each_with_object(|p, _, _, o| out.push((p.to_owned(), o.clone())));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn object_versions_persist_and_a_plain_set_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        // A file an older etlfs wrote: no versions at all.
        std::fs::write(
            dir.path().join(FILE_NAME),
            serde_json::to_vec(&HashMap::from([("old", rec(9))])).unwrap(),
        )
        .unwrap();
        let r = Records::load(Arc::new(StateDir::open(dir.path()).unwrap())).unwrap();
        assert_eq!(r.get(Path::new("old")), Some(rec(9)));
        let g = r.generation();
        r.set_with_object(Path::new("a"), rec(1), Some(object("ea")));
        r.set_with_object(Path::new("b"), rec(2), Some(object("eb")));
        assert!(r.generation() > g);
        r.published(
            &[
                (PathBuf::from("a"), Some("ea".into())),
                (PathBuf::from("b"), Some("other".into())),
            ],
            77,
        );
        r.save().unwrap();
        let r = Records::load(Arc::new(StateDir::open(dir.path()).unwrap())).unwrap();
        let got = with_object(&r);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.until_ns, Some(77));
        assert_eq!(got[1].1.until_ns, None, "another version was published");
        // A directory record changes nothing the manifest describes.
        let g = r.generation();
        r.set(
            Path::new("d"),
            Record {
                dir: true,
                ..rec(3)
            },
        );
        assert_eq!(r.generation(), g);
        r.set(Path::new("a"), rec(4));
        assert!(r.generation() > g);
        assert_eq!(with_object(&r).len(), 1);
    }

    #[test]
    fn adopt_only_takes_the_record_it_was_checked_against() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::load(Arc::new(StateDir::open(dir.path()).unwrap())).unwrap();
        r.set(Path::new("a"), rec(1));
        assert!(
            !r.adopt(Path::new("a"), &rec(2), object("e")),
            "not that record"
        );
        assert!(!r.adopt(Path::new("missing"), &rec(1), object("e")));
        assert!(r.adopt(Path::new("a"), &rec(1), object("e")));
        assert!(
            !r.adopt(Path::new("a"), &rec(1), object("f")),
            "has one already"
        );
        assert_eq!(with_object(&r), vec![(PathBuf::from("a"), object("e"))]);
    }
}
