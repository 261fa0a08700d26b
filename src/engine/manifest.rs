//! The manifest: one compressed object (`<prefix>/.etlfs/manifest.v1.jsonl.gz`) with every
//! file's etlfs metadata and what identifies the object version it describes, so that a mount
//! over an empty directory learns 100,000 files from one listing and one GET instead of a HEAD
//! per object. This module owns its format, its writer and its reader, and the rule that says
//! whether an entry still describes a listed object ([`vouches`]).
//!
//! # The manifest is only a cache
//!
//! Nothing depends on it being fresh or even present: a missing, corrupt or other-format
//! manifest is logged and costs HEADs, never a failed mount, and an entry is used only if the
//! listing proves it still describes the object:
//! - the listed size is the entry's;
//! - the listed e_tag is the entry's, when both have one (S3 and GCS derive it from the bytes,
//!   Azure and FILESYSTEM change it on every write; s3s-fs lists none);
//! - the listed last-modified is not after the entry's `until`: the latest time, on the
//!   *bucket's* clock, at which the entry is known to describe the object. It is the listed
//!   last-modified of an object read at load, or — for an upload — the last-modified of the
//!   first manifest that carried it (absent in the entry: this manifest's own). A rewrite after
//!   that is newer, so an outside overwrite with the same size (no e_tag to tell), or a
//!   re-upload of the same bytes with a new mode or mtime (an S3 e_tag does not change), is
//!   caught; only clocks of the same bucket are compared. Buckets answer an object's time in
//!   whole seconds, so an entry vouched for by a manifest's time ends just *before* that second
//!   ([`manifest_until`]), and a writer puts the uploads it describes in an earlier second by
//!   waiting [`MANIFEST_SETTLE`] before its PUT.
//!
//! Format: gzip of JSON lines — a header `{"etlfs_manifest":1,...}`, one line per file
//! (`p` path, `s` size, `e` e_tag, `t` until in ns, `f` etlfs metadata or absent for an object
//! without it), and a trailer `{"end":N}` with the number of files. The gzip checksum and the
//! trailer make a truncated or damaged manifest visible; it is then ignored as a whole.
//! A reader sees the entries as they are decoded ([`read`]), so the decoded text never sits in
//! memory whole. Who writes it: the mirror (`mirror/publish.rs`) and `etlfs backup`, through
//! [`ManifestWriter`]; who reads it: the index's load.
//!

use std::borrow::Cow;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::index::{RemoteFile, Version};
use crate::os::{from_ns, ns};
use crate::store::bucket::{CompactETag, ManifestObject};

/// The manifest format this etlfs reads and writes (also part of its key).
const MANIFEST_FORMAT: u32 = 1;
/// A writer waits this long between taking its snapshot and the PUT when the manifest carries
/// entries vouched for by the manifest's own time: more than the one-second resolution of the
/// time a bucket reports for an object, so that time is not older than those uploads.
pub const MANIFEST_SETTLE: Duration = Duration::from_millis(1100);

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    etlfs_manifest: u32,
    /// `mount` or `backup`, for whoever reads it by hand.
    #[serde(default)]
    written_by: String,
}

/// The etlfs metadata of a manifest entry, borrowed for writing; read back as a [`FileMeta`]
/// (same field names).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EntryMeta<'a> {
    pub mtime_ns: i128,
    pub mode: u32,
    pub sha256: &'a str,
    pub owner: Option<(u32, u32)>,
}

#[derive(Debug, Serialize)]
struct EntryOut<'a> {
    p: &'a str,
    s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<i128>,
    #[serde(skip_serializing_if = "Option::is_none")]
    f: Option<EntryMeta<'a>>,
}

/// A manifest line as read: borrowed from the line where it can be.
#[derive(Debug, Deserialize)]
pub struct Entry<'a> {
    #[serde(rename = "p", borrow)]
    pub path: Cow<'a, str>,
    #[serde(rename = "s")]
    pub size: u64,
    #[serde(rename = "e", default)]
    pub e_tag: Option<String>,
    /// The entry's `until` in ns since the epoch; absent: the manifest's own time.
    #[serde(rename = "t", default)]
    pub until_ns: Option<i128>,
    /// Absent for an object without etlfs metadata.
    #[serde(rename = "f", default, borrow)]
    pub meta: Option<MetaIn<'a>>,
}

/// [`EntryMeta`] as read.
#[derive(Debug, Deserialize)]
pub struct MetaIn<'a> {
    pub mtime_ns: i128,
    pub mode: u32,
    #[serde(borrow)]
    pub sha256: Cow<'a, str>,
    #[serde(default)]
    pub owner: Option<(u32, u32)>,
}

#[derive(Debug, Deserialize)]
struct Trailer {
    end: u64,
}

/// Builds a manifest, compressing as it goes: the uncompressed text never exists whole.
pub struct ManifestWriter {
    gz: flate2::write::GzEncoder<Vec<u8>>,
    files: u64,
    line: Vec<u8>,
}

impl std::fmt::Debug for ManifestWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestWriter")
            .field("files", &self.files)
            .finish()
    }
}

impl ManifestWriter {
    /// `written_by` says who wrote it (`mount`, `backup`), for a human reading it.
    pub fn new(written_by: &str) -> ManifestWriter {
        let mut w = ManifestWriter {
            // Fast compression: most of the text is hex checksums, which no level shrinks
            // much further, and a writer may hold a lock while it encodes.
            gz: flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()),
            files: 0,
            line: Vec::with_capacity(512),
        };
        let header = Header {
            etlfs_manifest: MANIFEST_FORMAT,
            written_by: written_by.to_owned(),
        };
        w.put_line(&header);
        w
    }

    fn put_line(&mut self, v: &impl Serialize) {
        self.line.clear();
        serde_json::to_writer(&mut self.line, v).expect("manifest lines serialize");
        self.line.push(b'\n');
        self.gz
            .write_all(&self.line)
            .expect("writing to memory does not fail");
    }

    /// Adds a file. `meta` is `None` for an object without etlfs metadata. Paths that are not
    /// UTF-8 cannot be keys and are skipped.
    pub fn add(&mut self, path: &Path, size: u64, version: &Version, meta: Option<EntryMeta<'_>>) {
        let Some(p) = path.to_str() else {
            return;
        };
        let entry = EntryOut {
            p,
            s: size,
            e: version.e_tag.as_deref(),
            t: version.until.map(ns),
            f: meta,
        };
        self.put_line(&entry);
        self.files += 1;
    }

    /// Adds a file as the index knows it.
    pub fn add_remote(&mut self, path: &Path, file: &RemoteFile, version: &Version) {
        let meta = file.sha256.as_deref().map(|sha256| EntryMeta {
            mtime_ns: ns(file.mtime),
            mode: file.mode,
            sha256,
            owner: file.owner,
        });
        self.add(path, file.size, version, meta);
    }

    pub fn files(&self) -> u64 {
        self.files
    }

    /// The compressed manifest.
    pub fn finish(mut self) -> Bytes {
        let trailer = serde_json::json!({ "end": self.files });
        self.put_line(&trailer);
        Bytes::from(self.gz.finish().expect("writing to memory does not fail"))
    }
}

/// The `until` a manifest's own time `written` gives the entries that have none: just before
/// it. Buckets report that time in whole seconds (rounded down), and so do some listings: an
/// object rewritten in the same second after the manifest then lists *at* that second, and
/// must not pass. The writer's [`MANIFEST_SETTLE`] puts the uploads a manifest describes in an
/// earlier second.
pub fn manifest_until(written: SystemTime) -> SystemTime {
    written - Duration::from_nanos(1)
}

/// Reads a manifest, handing each entry to `each` as it is decoded; returns how many there
/// were. An error (a damaged or truncated body, another format) means the manifest as a whole
/// cannot be trusted, and it comes only at the end for some damage (the gzip checksum, the
/// trailer): a caller that must not act on a manifest that turns out bad reads it twice, once
/// with `|_| ()`.
pub fn read(m: &ManifestObject, mut each: impl FnMut(Entry<'_>)) -> Result<u64, String> {
    let mut reader =
        std::io::BufReader::with_capacity(1 << 16, flate2::read::GzDecoder::new(&m.body[..]));
    let mut line = Vec::with_capacity(512);
    let mut next = |line: &mut Vec<u8>| -> Result<bool, String> {
        line.clear();
        let n = reader
            .read_until(b'\n', line)
            .map_err(|e| format!("decompressing: {e}"))?;
        Ok(n > 0)
    };
    if !next(&mut line)? {
        return Err("empty".into());
    }
    let header: Header = serde_json::from_slice(&line).map_err(|e| format!("header: {e}"))?;
    if header.etlfs_manifest != MANIFEST_FORMAT {
        return Err(format!(
            "format {} (this etlfs reads {MANIFEST_FORMAT})",
            header.etlfs_manifest
        ));
    }
    let mut entries = 0u64;
    loop {
        if !next(&mut line)? {
            return Err(format!("truncated after {entries} files (no trailer)"));
        }
        if line.starts_with(b"{\"end\":") {
            let t: Trailer = serde_json::from_slice(&line).map_err(|e| format!("trailer: {e}"))?;
            if t.end != entries {
                return Err(format!("trailer says {} files, found {entries}", t.end));
            }
            break;
        }
        let e: Entry<'_> =
            serde_json::from_slice(&line).map_err(|err| format!("line {}: {err}", entries + 2))?;
        entries += 1;
        each(e);
    }
    // The gzip checksum is only checked at the very end of the stream.
    if next(&mut line)? {
        return Err("data after the trailer".into());
    }
    Ok(entries)
}

/// Whether `entry`, in a manifest written at `written`, still describes an object listed with
/// `size`, `last_modified` and `e_tag`; if so, the `until` its version keeps.
pub fn vouches(
    entry: &Entry<'_>,
    written: SystemTime,
    size: u64,
    last_modified: SystemTime,
    e_tag: Option<&CompactETag>,
) -> Option<SystemTime> {
    let until = entry.until_ns.map_or(manifest_until(written), from_ns);
    let e_tag_ok = match (e_tag, &entry.e_tag) {
        (Some(listed), Some(recorded)) => *listed == CompactETag::new(recorded),
        _ => true,
    };
    (size == entry.size && last_modified <= until && e_tag_ok).then_some(until)
}
