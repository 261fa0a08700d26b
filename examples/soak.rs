//! The soak driver of `scripts/soak.sh` (read that script's header first: it sets everything
//! up and passes the flags below). One run of this program is one soak:
//!
//! - it runs `etlfs mount --local LOCAL MNT` on an S3 bucket, and restarts it all the time:
//!   SIGKILL at random moments and at chosen points inside an application operation (after
//!   `ftruncate(0)`, after the `write`, between a temp file's close and its `rename`, during a
//!   `rename`/`unlink`/`rmdir`/`mkdir`), and clean SIGTERM stops (drain, then the bucket must
//!   equal the local directory). Each run alternates at random between FUSE passthrough and
//!   daemon mode;
//! - it stops and starts (or pauses and resumes) the S3 front etlfs talks to;
//! - one workload thread runs, through the mount and as an unprivileged user, Kubecost's write
//!   pattern (`open(O_RDWR|O_CREAT, 0600)`, `flock(LOCK_EX)`, `ftruncate(0)`, one `write`,
//!   `flock(LOCK_UN)`, `close`) over a Kubecost-like tree, plus temp file + `rename` over,
//!   renames of files and directories, `RENAME_EXCHANGE`, unlinks, mkdirs, rmdirs, and reads
//!   and listings checked against its model;
//! - a sampler thread lists the bucket every second and reads every object version it has not
//!   seen yet, checking that each is one complete version the workload wrote (never torn, never
//!   empty, its `etlfs_sha256` metadata equal to its body);
//! - at the end: drain, then local directory == model, bucket == local directory byte for
//!   byte (no missing object, no extra one: nothing deleted came back), and a new node (etlfs
//!   over an empty directory on the same bucket) reads every file back equal to the model.
//!
//! # The model, and operations a crash interrupts
//!
//! Every file's content is `SOAK gen=G path=P pad=N sha256=H\n` followed by N pseudo-random
//! bytes (from G); H is the body's checksum, so a torn, mixed or empty object is recognised by
//! its content alone. The model holds what every path must contain. An operation that fails
//! while etlfs is being killed or restarted (the application sees `ENOTCONN`, or `EACCES` on
//! the bare mount point while nothing is mounted) leaves its outcome unknown: once the mount is
//! back, the workload walks the whole tree through it and accepts exactly the state before the
//! operation, the state after it, or — for a write — the file holding a prefix of the new
//! content (the application's own partial state: `ftruncate` ran, the `write` did not, or not
//! all of it). Anything else is a failure. A crash state so accepted (e.g. an empty file) is
//! also what the bucket may legitimately hold for that path afterwards, and only for it.
//! An error while etlfs was up and not being restarted is a failure too.
//!
//! The workload runs with the filesystem uid/gid of `--uid` (default 65534) and without
//! capabilities, and the mount point underneath is owned by root: while nothing is mounted
//! there, the workload cannot write behind etlfs' back.
//!
//! ```text
//! soak --etlfs BIN --mnt DIR --local DIR --mnt2 DIR --local2 DIR --work DIR --config FILE
//!      --prefix P --s3 URL --bucket B [--ctl CTL --front-port PORT] [--seconds N] [--seed S]
//!      [--rate OPS_PER_S] [--kill-every A,B] [--term-every A,B] [--outage-every A,B]
//!      [--outage-len A,B] [--upload-delay D] [--drain-timeout D] [--uid N] [--max-files N]
//!      [--mode passthrough|daemon|mixed]
//! ```
//! `--s3` is the S3 server itself (not the front that the outages stop): the checks read the
//! bucket through it. Intervals `A,B` are seconds, drawn uniformly.
//!
//! Build with `cargo build --release --example soak`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{Attribute, ObjectStore, ObjectStoreExt};
use rustix::fs::FlockOperation;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Args {
    etlfs: PathBuf,
    mnt: PathBuf,
    local: PathBuf,
    mnt2: PathBuf,
    local2: PathBuf,
    work: PathBuf,
    config: PathBuf,
    prefix: String,
    s3: String,
    bucket: String,
    ctl: Option<String>,
    front_port: Option<u16>,
    seconds: u64,
    seed: u64,
    rate: f64,
    kill_every: (f64, f64),
    term_every: (f64, f64),
    outage_every: (f64, f64),
    outage_len: (f64, f64),
    upload_delay: String,
    drain_timeout: String,
    uid: u32,
    max_files: usize,
    mode: String,
}

fn parse_args() -> Result<Args, String> {
    let mut m: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let Some(name) = k.strip_prefix("--") else {
            return Err(format!("unexpected argument {k:?}"));
        };
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        m.insert(name.to_owned(), v);
    }
    let req = |k: &str| {
        m.get(k)
            .cloned()
            .ok_or_else(|| format!("--{k} is required"))
    };
    let opt = |k: &str, d: &str| m.get(k).cloned().unwrap_or_else(|| d.to_owned());
    let num = |k: &str, d: &str| -> Result<f64, String> {
        opt(k, d)
            .parse()
            .map_err(|_| format!("--{k}: not a number"))
    };
    let range = |k: &str, d: &str| -> Result<(f64, f64), String> {
        let s = opt(k, d);
        let (a, b) = s
            .split_once(',')
            .ok_or_else(|| format!("--{k} {s}: expected A,B"))?;
        let (a, b): (f64, f64) = (
            a.parse().map_err(|_| format!("--{k}: not a number"))?,
            b.parse().map_err(|_| format!("--{k}: not a number"))?,
        );
        if !(0.0..=b).contains(&a) {
            return Err(format!("--{k} {s}: need 0 <= A <= B"));
        }
        Ok((a, b))
    };
    let seed = match m.get("seed") {
        Some(s) => s.parse().map_err(|_| "--seed: not a number".to_owned())?,
        None => {
            let mut b = [0u8; 8];
            File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut b))
                .map_err(|e| e.to_string())?;
            u64::from_le_bytes(b) % 1_000_000_000
        }
    };
    let mode = opt("mode", "mixed");
    if !["passthrough", "daemon", "mixed"].contains(&mode.as_str()) {
        return Err(format!("--mode {mode}: one of passthrough, daemon, mixed"));
    }
    Ok(Args {
        etlfs: req("etlfs")?.into(),
        mnt: req("mnt")?.into(),
        local: req("local")?.into(),
        mnt2: req("mnt2")?.into(),
        local2: req("local2")?.into(),
        work: req("work")?.into(),
        config: req("config")?.into(),
        prefix: req("prefix")?,
        s3: req("s3")?,
        bucket: req("bucket")?,
        ctl: m.get("ctl").cloned(),
        front_port: match m.get("front-port") {
            Some(p) => Some(
                p.parse()
                    .map_err(|_| "--front-port: not a port".to_owned())?,
            ),
            None => None,
        },
        seconds: num("seconds", "600")? as u64,
        seed,
        rate: num("rate", "40")?,
        kill_every: range("kill-every", "6,16")?,
        term_every: range("term-every", "25,50")?,
        outage_every: range("outage-every", "8,20")?,
        outage_len: range("outage-len", "1,6")?,
        upload_delay: opt("upload-delay", "200ms"),
        drain_timeout: opt("drain-timeout", "90s"),
        uid: num("uid", "65534")? as u32,
        max_files: num("max-files", "150")? as usize,
        mode,
    })
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast, and the same sequence for the same seed everywhere.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn between(&mut self, (a, b): (f64, f64)) -> f64 {
        a + (b - a) * self.unit()
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// File contents: self-describing versions
// ---------------------------------------------------------------------------------------------

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The pseudo-random body of generation `ver`.
fn body(ver: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(ver.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&r.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Generation `ver` of the file first written at `path`, with `pad` bytes of body.
fn content(ver: u64, path: &str, pad: usize) -> Vec<u8> {
    let b = body(ver, pad);
    let mut out = format!(
        "SOAK gen={ver} path={path} pad={pad} sha256={}\n",
        sha_hex(&b)
    )
    .into_bytes();
    out.extend_from_slice(&b);
    out
}

/// `(ver, path, pad)` if `data` is one complete, self-consistent version.
fn parse_version(data: &[u8]) -> Option<(u64, String, usize)> {
    let nl = data.iter().take(4096).position(|&c| c == b'\n')?;
    let head = std::str::from_utf8(&data[..nl]).ok()?;
    let rest = head.strip_prefix("SOAK gen=")?;
    let (ver, rest) = rest.split_once(" path=")?;
    let (path, rest) = rest.rsplit_once(" pad=")?;
    let (pad, sha) = rest.split_once(" sha256=")?;
    let (ver, pad): (u64, usize) = (ver.parse().ok()?, pad.parse().ok()?);
    let b = &data[nl + 1..];
    (b.len() == pad && sha_hex(b) == sha).then(|| (ver, path.to_owned(), pad))
}

/// A short description of some bytes, for failure messages.
fn describe(data: &[u8]) -> String {
    match parse_version(data) {
        Some((g, p, _)) => format!("{} bytes, gen {g} (first written at {p})", data.len()),
        None if data.is_empty() => "EMPTY".to_owned(),
        None => {
            let head: String = String::from_utf8_lossy(&data[..data.len().min(60)])
                .chars()
                .map(|c| if c.is_control() { '.' } else { c })
                .collect();
            format!(
                "{} bytes, NOT a complete version (starts {head:?})",
                data.len()
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state between the threads
// ---------------------------------------------------------------------------------------------

/// Points inside an application operation where a targeted SIGKILL can be fired.
const P_OPEN: u8 = 1; // kubecost write: after open + flock, before ftruncate
const P_TRUNC: u8 = 2; // after ftruncate(0), before the write
const P_WRITE: u8 = 3; // after the write, before unlock + close
const P_TMP: u8 = 4; // temp file closed, before the rename over
const P_META: u8 = 5; // during rename / unlink / rmdir / mkdir (fired 0-3 ms before the call)
const POINTS: [&str; 6] = [
    "random",
    "open",
    "ftruncate",
    "write",
    "tmp-rename",
    "metadata-op",
];

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    kc_writes: AtomicU64,
    kc_reads: AtomicU64,
    tmp_renames: AtomicU64,
    renames: AtomicU64,
    exchanges: AtomicU64,
    dir_renames: AtomicU64,
    unlinks: AtomicU64,
    mkdirs: AtomicU64,
    rmdirs: AtomicU64,
    listings: AtomicU64,
    bytes_written: AtomicU64,
    slow_writes: AtomicU64,
    interrupted: AtomicU64,
    resolved_old: AtomicU64,
    resolved_new: AtomicU64,
    resolved_partial: AtomicU64,
    tree_checks: AtomicU64,
    etlfs_runs: AtomicU64,
    runs_passthrough: AtomicU64,
    kills: [AtomicU64; 6],
    terms: AtomicU64,
    clean_stop_checks: AtomicU64,
    outages_stop: AtomicU64,
    outages_pause: AtomicU64,
    outage_ms: AtomicU64,
    samples: AtomicU64,
    sample_rounds: AtomicU64,
    crash_states_sampled: AtomicU64,
    torn_sampled: AtomicU64,
    bad_meta_sampled: AtomicU64,
    unknown_sampled: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

struct Shared {
    stop: AtomicBool,
    /// Bumped before every kill/stop of etlfs and after every restart.
    epoch: AtomicU64,
    up: Mutex<bool>,
    up_cv: Condvar,
    pid: AtomicI32,
    /// A targeted kill the workload should fire at this point (0: none).
    kill_arm: AtomicU8,
    kill_fired: AtomicBool,
    failures: Mutex<Vec<String>>,
    c: Counters,
    /// ver -> (path first written at, pad): every version the workload ever wrote.
    registry: Mutex<HashMap<u64, (String, usize)>>,
    /// path -> gens whose prefixes (empty included) may legitimately be in the bucket there:
    /// writes that a crash interrupted, or that ran while etlfs restarted.
    allow: Mutex<HashMap<String, HashSet<u64>>>,
    t0: Instant,
    /// events.log, opened by root before the workload thread gives up its privileges.
    events: Mutex<Option<File>>,
    /// ops.log: every workload operation and how it ended.
    ops: Mutex<Option<File>>,
}

impl Shared {
    fn fail(&self, msg: String) {
        let t = self.t0.elapsed().as_secs_f64();
        let line = format!("[{t:7.2}s] FAILURE: {msg}");
        eprintln!("{line}");
        self.log_line(&line);
        self.failures.lock().unwrap().push(msg);
    }
    fn failed(&self) -> usize {
        self.failures.lock().unwrap().len()
    }
    fn event(&self, msg: &str) {
        let t = self.t0.elapsed().as_secs_f64();
        self.log_line(&format!("[{t:7.2}s] {msg}"));
    }
    fn op_line(&self, what: &str, res: &str) {
        if let Some(f) = self.ops.lock().unwrap().as_mut() {
            let t = self.t0.elapsed().as_secs_f64();
            let _ = writeln!(f, "[{t:7.2}s] {what}: {res}");
        }
    }
    fn log_line(&self, line: &str) {
        if let Some(f) = self.events.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
    fn is_up(&self) -> bool {
        *self.up.lock().unwrap()
    }
    fn set_up(&self, v: bool) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        *self.up.lock().unwrap() = v;
        self.up_cv.notify_all();
    }
    /// Waits until the mount is up; false after `timeout`.
    fn wait_up(&self, timeout: Duration) -> bool {
        let g = self.up.lock().unwrap();
        let (g, _) = self
            .up_cv
            .wait_timeout_while(g, timeout, |up| !*up)
            .unwrap();
        *g
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    /// Sleeps up to `d`, returning early (false) when the soak is stopping.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stopping() {
                return false;
            }
            thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
        }
        true
    }
    /// SIGKILL etlfs now (a targeted kill), marking the mount down first.
    fn fire_kill(&self) {
        let pid = self.pid.load(Ordering::SeqCst);
        *self.up.lock().unwrap() = false;
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) with a PID we spawned and have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.kill_fired.store(true, Ordering::SeqCst);
    }
    fn allow(&self, path: &str, ver: u64) {
        self.allow
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .insert(ver);
    }
}

// ---------------------------------------------------------------------------------------------
// Trees: the model, and what a walk finds
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Node {
    Dir,
    File {
        data: Arc<Vec<u8>>,
        /// Set when the content is a crash state: a prefix of this generation.
        crash_of: Option<u64>,
    },
}

type Tree = BTreeMap<String, Node>;

fn file(data: Vec<u8>) -> Node {
    Node::File {
        data: Arc::new(data),
        crash_of: None,
    }
}

fn same(a: &Node, b: &Node) -> bool {
    match (a, b) {
        (Node::Dir, Node::Dir) => true,
        (Node::File { data: x, .. }, Node::File { data: y, .. }) => x == y,
        _ => false,
    }
}

fn node_desc(n: Option<&Node>) -> String {
    match n {
        None => "absent".into(),
        Some(Node::Dir) => "a directory".into(),
        Some(Node::File { data, .. }) => format!("a file of {}", describe(data)),
    }
}

/// The differences between `want` and `got` (at most `limit` lines).
fn diff(want: &Tree, got: &Tree, limit: usize) -> Vec<String> {
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (w, g) = (want.get(k), got.get(k));
        let eq = match (w, g) {
            (Some(a), Some(b)) => same(a, b),
            _ => false,
        };
        if !eq {
            out.push(format!("{k}: want {}, got {}", node_desc(w), node_desc(g)));
            if out.len() >= limit {
                out.push("...".into());
                break;
            }
        }
    }
    out
}

fn tree_eq(a: &Tree, b: &Tree) -> bool {
    a.len() == b.len() && a.iter().all(|(k, n)| b.get(k).is_some_and(|m| same(n, m)))
}

/// Walks `root`. Through the mount, files are read as Kubecost reads them (`flock(LOCK_SH)` +
/// whole read); `skip` is a top-level name to leave out (etlfs' state directory).
fn walk(root: &Path, skip: Option<&str>) -> io::Result<Tree> {
    let mut out = Tree::new();
    walk_into(root, "", skip, &mut out)?;
    Ok(out)
}

fn walk_into(dir: &Path, rel: &str, skip: Option<&str>, out: &mut Tree) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().into_string().map_err(|n| {
            io::Error::other(format!(
                "a name that is not UTF-8: {n:?} in {}",
                dir.display()
            ))
        })?;
        if rel.is_empty() && Some(name.as_str()) == skip {
            continue;
        }
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = e.file_type()?;
        if ft.is_dir() {
            out.insert(r.clone(), Node::Dir);
            walk_into(&e.path(), &r, skip, out)?;
        } else if ft.is_file() {
            out.insert(r, file(kc_read(&e.path())?));
        } else {
            return Err(io::Error::other(format!(
                "{r}: unexpected file type {ft:?}"
            )));
        }
    }
    Ok(())
}

/// Kubecost's read: open, flock(LOCK_SH), read everything, unlock, close.
fn kc_read(p: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(p)?;
    rustix::fs::flock(&f, FlockOperation::LockShared)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    rustix::fs::flock(&f, FlockOperation::Unlock)?;
    close_checked(f)?;
    Ok(v)
}

/// close(2), with its error (a FUSE flush can fail) instead of dropping it.
fn close_checked(f: File) -> io::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just taken out of an owned File: nothing else closes it.
    if unsafe { libc::close(fd) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

fn base(p: &str) -> &str {
    p.rsplit_once('/').map_or(p, |(_, b)| b)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn under(p: &str, dir: &str) -> bool {
    p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/'
}

// ---------------------------------------------------------------------------------------------
// The bucket, read through the S3 server itself
// ---------------------------------------------------------------------------------------------

struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

/// One object: its body and the `etlfs_sha256` it carries.
struct Obj {
    body: Vec<u8>,
    sha_meta: Option<String>,
}

/// What a bucket listing holds: files (relative path -> object) and directory markers.
struct Snapshot {
    files: BTreeMap<String, Obj>,
    dirs: BTreeSet<String>,
    bad_markers: Vec<String>,
}

const MARKER: &str = ".etlfs-dir";

impl Bucket {
    fn new(a: &Args) -> Bucket {
        let store = AmazonS3Builder::new()
            .with_endpoint(&a.s3)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region("us-east-1")
            .with_bucket_name(&a.bucket)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("building the S3 client");
        Bucket {
            store: Arc::new(store),
            prefix: a.prefix.clone(),
        }
    }

    /// The relative path of a key: `Some((rel, is_marker))`, or None for etlfs' own keys.
    fn rel(&self, key: &str) -> Option<(String, bool)> {
        let rel = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        if rel == ".etlfs" || rel.starts_with(".etlfs/") {
            return None;
        }
        if rel == MARKER {
            return Some((String::new(), true));
        }
        match rel.strip_suffix(MARKER).and_then(|d| d.strip_suffix('/')) {
            Some(d) => Some((d.to_owned(), true)),
            None => Some((rel.to_owned(), false)),
        }
    }

    async fn list(&self) -> object_store::Result<Vec<object_store::ObjectMeta>> {
        let p = Key::from(self.prefix.as_str());
        self.store.list(Some(&p)).try_collect().await
    }

    async fn get(&self, key: &Key) -> object_store::Result<Obj> {
        let r = self.store.get(key).await?;
        let sha_meta = r
            .attributes
            .get(&Attribute::Metadata("etlfs_sha256".into()))
            .map(|v| v.as_ref().to_owned());
        let body = r.bytes().await?.to_vec();
        Ok(Obj { body, sha_meta })
    }

    async fn snapshot(&self) -> object_store::Result<Snapshot> {
        let mut s = Snapshot {
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
            bad_markers: Vec::new(),
        };
        for m in self.list().await? {
            let Some((rel, marker)) = self.rel(m.location.as_ref()) else {
                continue;
            };
            if marker {
                if m.size != 0 {
                    s.bad_markers
                        .push(format!("{} has {} bytes", m.location, m.size));
                }
                if !rel.is_empty() {
                    s.dirs.insert(rel);
                }
                continue;
            }
            match self.get(&m.location).await {
                Ok(o) => {
                    s.files.insert(rel, o);
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(s)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Compares the bucket with a tree (the local directory or the model): the same files with
/// the same bytes, a marker for every directory and none for a directory that is not there,
/// every object's `etlfs_sha256` equal to its body. Returns the differences.
fn compare_bucket(b: &Bucket, want: &Tree) -> Result<Vec<String>, String> {
    let snap = runtime()
        .block_on(b.snapshot())
        .map_err(|e| format!("reading the bucket: {e}"))?;
    let mut out = snap.bad_markers.clone();
    for (p, n) in want {
        match n {
            Node::Dir => {
                if !snap.dirs.contains(p) {
                    out.push(format!("directory {p}: no marker in the bucket"));
                }
            }
            Node::File { data, .. } => match snap.files.get(p) {
                None => out.push(format!(
                    "{p}: MISSING from the bucket (want {})",
                    describe(data)
                )),
                Some(o) if o.body != **data => out.push(format!(
                    "{p}: bucket holds {}, local has {}",
                    describe(&o.body),
                    describe(data)
                )),
                Some(_) => {}
            },
        }
    }
    for (p, o) in &snap.files {
        if !matches!(want.get(p), Some(Node::File { .. })) {
            out.push(format!(
                "{p}: in the bucket ({}) but not a file locally ({}): a deleted or moved file came back",
                describe(&o.body),
                node_desc(want.get(p))
            ));
        }
        let sha = sha_hex(&o.body);
        if o.sha_meta.as_deref() != Some(sha.as_str()) {
            out.push(format!(
                "{p}: etlfs_sha256 metadata {:?} but the body's sha256 is {sha}",
                o.sha_meta
            ));
        }
    }
    for d in &snap.dirs {
        if !matches!(want.get(d), Some(Node::Dir)) {
            out.push(format!(
                "{d}/{MARKER}: marker of a directory that is not there ({})",
                node_desc(want.get(d))
            ));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// etlfs runs
// ---------------------------------------------------------------------------------------------

fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4) == Some(&want.as_ref())
    })
}

struct Etlfs {
    a: Args,
    sh: Arc<Shared>,
    child: Option<Child>,
    run: u64,
    log: PathBuf,
    mode_rng: Rng,
}

/// `etlfs mount` serving `local` at `mnt` on the soak's bucket.
fn mount_args(a: &Args, local: &Path, mnt: &Path, passthrough: bool) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "mount".into(),
        "--local".into(),
        local.into(),
        "--config".into(),
        a.config.clone().into(),
        "--prefix".into(),
        a.prefix.clone().into(),
        "--upload-delay".into(),
        a.upload_delay.clone().into(),
        "--drain-timeout".into(),
        a.drain_timeout.clone().into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    if !passthrough {
        v.push("--no-passthrough".into());
    }
    v.push(mnt.into());
    v
}

impl Etlfs {
    /// Starts a run over the soak's directory and waits until the mount answers.
    fn start(&mut self) -> Result<(), String> {
        let passthrough = match self.a.mode.as_str() {
            "passthrough" => true,
            "daemon" => false,
            _ => self.mode_rng.chance(0.5),
        };
        self.run += 1;
        inc(&self.sh.c.etlfs_runs);
        if passthrough {
            inc(&self.sh.c.runs_passthrough);
        }
        self.log = self.a.work.join(format!("etlfs-{:03}.log", self.run));
        let args = mount_args(&self.a, &self.a.local, &self.a.mnt, passthrough);
        let child = spawn_etlfs(&self.a, &args, &self.log)?;
        self.sh.pid.store(child.id() as i32, Ordering::SeqCst);
        let _ = fs::write(self.a.work.join("etlfs.pid"), format!("{}\n", child.id()));
        self.child = Some(child);
        self.sh.event(&format!(
            "etlfs run {} started (pid {}, {}), log {}",
            self.run,
            self.sh.pid.load(Ordering::SeqCst),
            if passthrough {
                "passthrough"
            } else {
                "daemon mode"
            },
            self.log.display()
        ));
        wait_mounted(
            self.child.as_mut().unwrap(),
            &self.a.mnt,
            &self.log,
            Duration::from_secs(180),
        )?;
        self.sh.set_up(true);
        Ok(())
    }

    /// Waits for the current run to exit (after a signal), up to `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                self.sh.pid.store(0, Ordering::SeqCst);
                let _ = fs::remove_file(self.a.work.join("etlfs.pid"));
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether the drain uploaded everything.
    fn term(&mut self, what: &str) -> Result<bool, String> {
        self.sh.set_up(false);
        self.signal(libc::SIGTERM);
        match self.wait_exit(Duration::from_secs(300)) {
            None => {
                self.signal(libc::SIGKILL);
                self.wait_exit(Duration::from_secs(10));
                Err(format!(
                    "{what}: etlfs run {} did not stop within 300 s after SIGTERM (log {})",
                    self.run,
                    self.log.display()
                ))
            }
            Some(st) if !st.success() => Err(format!(
                "{what}: etlfs run {} exited with {st} after SIGTERM (log {})",
                self.run,
                self.log.display()
            )),
            Some(_) => {
                if is_mounted(&self.a.mnt) {
                    return Err(format!(
                        "{what}: {} still mounted after etlfs exited",
                        self.a.mnt.display()
                    ));
                }
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                Ok(log.contains("all changes are in the bucket"))
            }
        }
    }

    fn kill(&mut self) {
        self.sh.set_up(false);
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(30));
    }
}

fn spawn_etlfs(a: &Args, args: &[OsString], log: &Path) -> Result<Child, String> {
    let logf = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new(&a.etlfs)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("SOAK_ETLFS_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env_remove("ETLFS_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", a.etlfs.display()))
}

fn tail(log: &Path, n: usize) -> String {
    let s = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until `mnt` is a mount that answers (a dead mount fails every access).
fn wait_mounted(
    child: &mut Child,
    mnt: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let end = Instant::now() + timeout;
    loop {
        if is_mounted(mnt) && fs::read_dir(mnt).is_ok() {
            // The fresh mount is the top one once the dead one is detached: check it is FUSE.
            if let Ok(st) = rustix::fs::statfs(mnt) {
                if st.f_type == 0x6573_5546 {
                    return Ok(());
                }
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "etlfs exited ({st}) before mounting; log {}:\n{}",
                log.display(),
                tail(log, 30)
            ));
        }
        if Instant::now() > end {
            return Err(format!(
                "etlfs did not mount within {timeout:?}; log {}:\n{}",
                log.display(),
                tail(log, 30)
            ));
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// The process chaos: SIGKILL (random or targeted) and SIGTERM restarts, until stopped. Leaves
/// etlfs running and mounted.
fn process_chaos(mut e: Etlfs, bucket: Arc<Bucket>, seed: u64) -> Etlfs {
    let sh = Arc::clone(&e.sh);
    let a = e.a.clone();
    let mut rng = Rng::new(seed);
    let mut next_term = Instant::now() + Duration::from_secs_f64(rng.between(a.term_every));
    let kill_every = a.kill_every;
    while !sh.stopping() && sh.failed() < 20 {
        if !sh.sleep(Duration::from_secs_f64(rng.between(kill_every))) {
            break;
        }
        if Instant::now() >= next_term {
            next_term = Instant::now() + Duration::from_secs_f64(rng.between(a.term_every));
            inc(&sh.c.terms);
            sh.event(&format!("SIGTERM etlfs run {} (clean stop)", e.run));
            match e.term("clean stop") {
                Err(msg) => sh.fail(msg),
                Ok(false) => sh.event("drain did not finish (outage?): no bucket check this time"),
                Ok(true) => {
                    // Nothing can change now: the bucket must equal the local directory.
                    let check = walk(&a.local, Some(".etlfs"))
                        .map_err(|err| format!("walking {}: {err}", a.local.display()))
                        .and_then(|t| compare_bucket(&bucket, &t));
                    match check {
                        Ok(d) if d.is_empty() => {
                            inc(&sh.c.clean_stop_checks);
                            sh.event("after the drain: bucket == local directory");
                        }
                        Ok(d) => sh.fail(format!(
                            "after the clean stop of run {} (drain complete) the bucket differs from the local directory:\n  {}",
                            e.run,
                            d.join("\n  ")
                        )),
                        Err(msg) => sh.fail(msg),
                    }
                }
            }
        } else {
            let point = if rng.chance(0.35) {
                0
            } else {
                1 + rng.below(5) as u8
            };
            let mut fired_at = 0;
            if point != 0 {
                sh.kill_fired.store(false, Ordering::SeqCst);
                sh.kill_arm.store(point, Ordering::SeqCst);
                let end = Instant::now() + Duration::from_secs(10);
                while Instant::now() < end
                    && !sh.kill_fired.load(Ordering::SeqCst)
                    && !sh.stopping()
                {
                    thread::sleep(Duration::from_millis(5));
                }
                if sh
                    .kill_arm
                    .compare_exchange(point, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    // The workload took it: wait until it has actually sent the signal.
                    while !sh.kill_fired.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(1));
                    }
                    fired_at = point;
                }
            }
            if fired_at == 0 {
                e.kill();
            } else {
                e.wait_exit(Duration::from_secs(30));
            }
            inc(&sh.c.kills[fired_at as usize]);
            sh.event(&format!(
                "SIGKILL etlfs run {} ({})",
                e.run, POINTS[fired_at as usize]
            ));
            // The dead mount stays a while (the application sees ENOTCONN).
            sh.sleep(Duration::from_secs_f64(rng.between((0.0, 2.0))));
        }
        if let Err(msg) = e.start() {
            sh.fail(msg);
            break;
        }
    }
    if e.child.is_none() {
        if let Err(msg) = e.start() {
            sh.fail(msg);
        }
    }
    e
}

// ---------------------------------------------------------------------------------------------
// S3 outages
// ---------------------------------------------------------------------------------------------

fn ctl(ctl: &str, cmd: &str, port: u16) -> Result<(), String> {
    let out = Command::new(ctl)
        .args([cmd, &port.to_string()])
        .output()
        .map_err(|e| format!("{ctl}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{ctl} {cmd} {port}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn s3_chaos(sh: Arc<Shared>, a: Args, seed: u64) {
    let (Some(c), Some(port)) = (a.ctl.clone(), a.front_port) else {
        return;
    };
    let mut rng = Rng::new(seed);
    while !sh.stopping() && sh.failed() < 20 {
        if !sh.sleep(Duration::from_secs_f64(rng.between(a.outage_every))) {
            break;
        }
        let pause = rng.chance(0.25);
        let len = Duration::from_secs_f64(rng.between(a.outage_len));
        let (down, up) = if pause {
            ("pause", "resume")
        } else {
            ("stop", "start")
        };
        let t = Instant::now();
        if let Err(msg) = ctl(&c, down, port) {
            sh.fail(msg);
            break;
        }
        sh.event(&format!("S3 front {down} for {:.1} s", len.as_secs_f64()));
        thread::sleep(len);
        if let Err(msg) = ctl(&c, up, port) {
            sh.fail(msg);
            break;
        }
        sh.c.outage_ms
            .fetch_add(t.elapsed().as_millis() as u64, Ordering::Relaxed);
        inc(if pause {
            &sh.c.outages_pause
        } else {
            &sh.c.outages_stop
        });
        sh.event(&format!("S3 front {up}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The bucket sampler
// ---------------------------------------------------------------------------------------------

/// Objects that were not a complete version when sampled: judged at the end, when the
/// allowances (crash states) are final.
type Suspects = Vec<(String, Vec<u8>)>;

fn sampler(sh: Arc<Shared>, bucket: Arc<Bucket>, done: Arc<AtomicBool>) -> Suspects {
    let rt = runtime();
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let mut suspects = Suspects::new();
    let mut rng = Rng::new(7);
    while !done.load(Ordering::SeqCst) {
        let t = Instant::now();
        rt.block_on(async {
            let Ok(list) = bucket.list().await else {
                return;
            };
            inc(&sh.c.sample_rounds);
            let mut todo = Vec::new();
            for m in list {
                let Some((rel, marker)) = bucket.rel(m.location.as_ref()) else {
                    continue;
                };
                if marker {
                    if m.size != 0 {
                        sh.fail(format!("marker {} has {} bytes", m.location, m.size));
                    }
                    continue;
                }
                if seen.get(&rel) != Some(&m.e_tag) {
                    todo.push((rel, m));
                }
            }
            // Bounded work per round: a random subset when a lot changed.
            while todo.len() > 150 {
                let i = rng.below(todo.len() as u64) as usize;
                todo.swap_remove(i);
            }
            for (rel, m) in todo {
                let Ok(o) = bucket.get(&m.location).await else {
                    continue; // deleted (or moved) since the listing
                };
                seen.insert(rel.clone(), m.e_tag.clone());
                inc(&sh.c.samples);
                let sha = sha_hex(&o.body);
                if o.sha_meta.as_deref() != Some(sha.as_str()) {
                    inc(&sh.c.bad_meta_sampled);
                    sh.fail(format!(
                        "sampled {rel}: etlfs_sha256 metadata {:?} but the body ({}) has sha256 {sha}",
                        o.sha_meta,
                        describe(&o.body)
                    ));
                }
                match parse_version(&o.body) {
                    Some((ver, path, pad)) => {
                        let known = sh.registry.lock().unwrap().get(&ver).cloned();
                        if known != Some((path.clone(), pad)) {
                            inc(&sh.c.unknown_sampled);
                            sh.fail(format!("sampled {rel}: gen {ver} ({path}, {pad}) was never written"));
                        }
                    }
                    None => suspects.push((rel, o.body)),
                }
            }
        });
        let spent = t.elapsed();
        thread::sleep(Duration::from_millis(1000).saturating_sub(spent));
    }
    suspects
}

/// Whether `body` at `path` is a crash state the workload saw happen (or could have).
fn allowed_crash_state(sh: &Shared, path: &str, body: &[u8]) -> bool {
    let gens: Vec<u64> = sh
        .allow
        .lock()
        .unwrap()
        .get(path)
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    let reg = sh.registry.lock().unwrap();
    gens.iter().any(|g| {
        reg.get(g).is_some_and(|(p, pad)| {
            let c = content(*g, p, *pad);
            c.len() >= body.len() && c[..body.len()] == *body
        })
    })
}

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

const KINDS: [&str; 2] = ["allocations", "assets"];
const RESOLUTIONS: [(&str, u64); 4] = [("1h", 3600), ("1d", 86400), ("1w", 604_800), ("10m", 600)];
const WINDOWS: u64 = 6;

struct Workload {
    sh: Arc<Shared>,
    a: Args,
    rng: Rng,
    model: Tree,
    next_gen: u64,
    next_name: u64,
    last_check: Instant,
}

/// How an operation that a crash interrupted may have ended.
struct Outcomes {
    post: Tree,
    /// For a write: (path, ver): the file may hold any prefix of ver's content.
    prefix: Option<(String, u64)>,
}

impl Workload {
    fn abs(&self, rel: &str) -> PathBuf {
        self.a.mnt.join(rel)
    }

    fn files(&self) -> Vec<String> {
        self.model
            .iter()
            .filter(|(_, n)| matches!(n, Node::File { .. }))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn dirs(&self) -> Vec<String> {
        self.model
            .iter()
            .filter(|(_, n)| matches!(n, Node::Dir))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn children(&self, dir: &str) -> Vec<String> {
        self.model
            .keys()
            .filter(|k| parent(k) == dir)
            .cloned()
            .collect()
    }

    fn new_name(&mut self, stem: &str) -> String {
        self.next_name += 1;
        format!("{stem}{}", self.next_name)
    }

    /// A new version for `path` (registered before it is written).
    fn version(&mut self, path: &str) -> (u64, Vec<u8>) {
        self.next_gen += 1;
        let ver = self.next_gen;
        let pad = match self.rng.below(100) {
            0..60 => self.rng.below(8 << 10),
            60..90 => (8 << 10) + self.rng.below(56 << 10),
            90..98 => (64 << 10) + self.rng.below(192 << 10),
            _ => (256 << 10) + self.rng.below(768 << 10),
        } as usize;
        self.sh
            .registry
            .lock()
            .unwrap()
            .insert(ver, (path.to_owned(), pad));
        (ver, content(ver, path, pad))
    }

    /// A targeted kill, if the chaos thread armed one for this point.
    fn kill_point(&mut self, point: u8) {
        if self.sh.kill_arm.load(Ordering::SeqCst) != point {
            return;
        }
        if self
            .sh
            .kill_arm
            .compare_exchange(point, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        if point == P_META {
            // Fired from another thread 0-3 ms from now: it may land before, during or after
            // the call that follows.
            let sh = Arc::clone(&self.sh);
            let us = self.rng.below(3000);
            thread::spawn(move || {
                thread::sleep(Duration::from_micros(us));
                sh.fire_kill();
            });
        } else {
            self.sh.fire_kill();
        }
    }

    /// Runs one step of an operation; on error, waits for the mount and settles the outcome.
    /// Returns whether the step succeeded (the model is updated either way).
    fn step(
        &mut self,
        what: &str,
        outcomes: Outcomes,
        f: impl FnOnce(&mut Self) -> io::Result<()>,
    ) -> bool {
        let e0 = self.sh.epoch.load(Ordering::SeqCst);
        let up0 = self.sh.is_up();
        inc(&self.sh.c.ops);
        let res = f(self);
        self.sh.op_line(
            what,
            &match &res {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("ERROR {e}"),
            },
        );
        match res {
            Ok(()) => {
                if self.sh.epoch.load(Ordering::SeqCst) != e0 {
                    // Done, but etlfs restarted meanwhile: the new run may have seen the file
                    // half-written (it did not know it was open).
                    if let Some((p, g)) = &outcomes.prefix {
                        self.sh.allow(p, *g);
                    }
                }
                self.model = outcomes.post;
                true
            }
            Err(err) => {
                let chaos = !up0 || !self.sh.is_up() || self.sh.epoch.load(Ordering::SeqCst) != e0;
                if !chaos {
                    self.sh.fail(format!(
                        "{what}: {err} (etlfs was up and not being restarted)"
                    ));
                }
                self.settle(what, &err, outcomes);
                false
            }
        }
    }

    /// Walks the mount once it is back, retrying across further restarts.
    fn walk_mount(&mut self) -> Option<Tree> {
        let end = Instant::now() + Duration::from_secs(600);
        while Instant::now() < end {
            if !self.sh.wait_up(Duration::from_secs(5)) {
                continue;
            }
            let e0 = self.sh.epoch.load(Ordering::SeqCst);
            match walk(&self.a.mnt, None) {
                Ok(t) => return Some(t),
                Err(err) => {
                    if self.sh.is_up() && self.sh.epoch.load(Ordering::SeqCst) == e0 {
                        self.sh
                            .fail(format!("walking the mount: {err} (etlfs was up)"));
                        return None;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        self.sh
            .fail("the mount did not come back within 600 s".into());
        None
    }

    /// An operation failed (etlfs was being killed): find out how it ended.
    fn settle(&mut self, what: &str, err: &io::Error, o: Outcomes) {
        inc(&self.sh.c.interrupted);
        let Some(actual) = self.walk_mount() else {
            return;
        };
        if tree_eq(&actual, &self.model) {
            inc(&self.sh.c.resolved_old);
            self.sh.event(&format!("{what} failed ({err}): not done"));
            return;
        }
        if tree_eq(&actual, &o.post) {
            inc(&self.sh.c.resolved_new);
            self.sh.event(&format!("{what} failed ({err}): done"));
            self.model = o.post;
            return;
        }
        if let Some((p, ver)) = &o.prefix {
            let want = match o.post.get(p) {
                Some(Node::File { data, .. }) => Arc::clone(data),
                _ => unreachable!("a prefix outcome names a file of the post state"),
            };
            let rest_same = {
                let mut a2 = actual.clone();
                let mut p2 = o.post.clone();
                a2.remove(p);
                p2.remove(p);
                tree_eq(&a2, &p2)
            };
            if let (true, Some(Node::File { data, .. })) = (rest_same, actual.get(p)) {
                if data.len() <= want.len() && want[..data.len()] == data[..] {
                    inc(&self.sh.c.resolved_partial);
                    self.sh.event(&format!(
                        "{what} failed ({err}): {p} holds {} of {} bytes (the write was cut)",
                        data.len(),
                        want.len()
                    ));
                    self.sh.allow(p, *ver);
                    let data = Arc::clone(data);
                    self.model = o.post;
                    self.model.insert(
                        p.clone(),
                        Node::File {
                            data,
                            crash_of: Some(*ver),
                        },
                    );
                    return;
                }
            }
        }
        self.sh.fail(format!(
            "{what} failed ({err}); afterwards the tree is neither the state before nor after it.\n  vs before:\n    {}\n  vs after:\n    {}",
            diff(&self.model, &actual, 10).join("\n    "),
            diff(&o.post, &actual, 10).join("\n    ")
        ));
        // Go on from what is there, to see what else happens.
        self.model = actual;
    }

    /// Moves a model entry (and everything under it) to a new name.
    fn moved(&self, t: &Tree, from: &str, to: &str) -> Tree {
        let mut out = Tree::new();
        for (k, n) in t {
            let nk = if k == from {
                to.to_owned()
            } else if under(k, from) {
                format!("{to}{}", &k[from.len()..])
            } else {
                k.clone()
            };
            if let Node::File {
                crash_of: Some(g), ..
            } = n
            {
                if nk != *k {
                    self.sh.allow(&nk, *g);
                }
            }
            out.insert(nk, n.clone());
        }
        out
    }

    fn ensure_dir(&mut self, dir: &str) -> bool {
        if dir.is_empty() || matches!(self.model.get(dir), Some(Node::Dir)) {
            return true;
        }
        if !self.ensure_dir(parent(dir)) {
            return false;
        }
        self.mkdir(dir)
    }

    fn mkdir(&mut self, dir: &str) -> bool {
        let mut post = self.model.clone();
        post.insert(dir.to_owned(), Node::Dir);
        inc(&self.sh.c.mkdirs);
        let abs = self.abs(dir);
        self.step(
            &format!("mkdir {dir}"),
            Outcomes { post, prefix: None },
            |w| {
                w.kill_point(P_META);
                fs::DirBuilder::new().mode(0o755).create(&abs)
            },
        )
    }

    /// Kubecost's write of a new version of `path`.
    fn kc_write(&mut self, path: &str) {
        if !self.ensure_dir(parent(path)) {
            return;
        }
        let (ver, data) = self.version(path);
        let mut post = self.model.clone();
        post.insert(path.to_owned(), file(data.clone()));
        let slow = self
            .rng
            .chance(0.06)
            .then(|| Duration::from_millis(300 + self.rng.below(500)));
        let chunks = if data.len() > 64 && self.rng.chance(0.1) {
            let a = 1 + self.rng.below(data.len() as u64 - 1) as usize;
            vec![a, data.len() - a]
        } else {
            vec![data.len()]
        };
        if slow.is_some() {
            inc(&self.sh.c.slow_writes);
        }
        inc(&self.sh.c.kc_writes);
        self.sh
            .c
            .bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let abs = self.abs(path);
        self.step(
            &format!("kubecost write of {path} (gen {ver})"),
            Outcomes {
                post,
                prefix: Some((path.to_owned(), ver)),
            },
            |w| {
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&abs)?;
                rustix::fs::flock(&f, FlockOperation::LockExclusive)?;
                w.kill_point(P_OPEN);
                f.set_len(0)?;
                w.kill_point(P_TRUNC);
                if let Some(d) = slow {
                    // Open for writing and empty: etlfs must not upload this state.
                    thread::sleep(d);
                }
                let mut off = 0;
                for (i, len) in chunks.iter().enumerate() {
                    if i > 0 {
                        thread::sleep(Duration::from_millis(50 + w.rng.below(250)));
                    }
                    let n = f.write(&data[off..off + len])?;
                    if n != *len {
                        return Err(io::Error::other(format!("short write: {n} of {len}")));
                    }
                    off += len;
                }
                w.kill_point(P_WRITE);
                rustix::fs::flock(&f, FlockOperation::Unlock)?;
                close_checked(f)
            },
        );
    }

    fn kc_read_check(&mut self, path: &str) {
        inc(&self.sh.c.kc_reads);
        let abs = self.abs(path);
        let want = match self.model.get(path) {
            Some(Node::File { data, .. }) => Arc::clone(data),
            _ => return,
        };
        let post = self.model.clone();
        let mut got = None;
        let (e0, up0) = (self.sh.epoch.load(Ordering::SeqCst), self.sh.is_up());
        let ok = self.step(
            &format!("read of {path}"),
            Outcomes { post, prefix: None },
            |_| {
                got = Some(kc_read(&abs)?);
                Ok(())
            },
        );
        if let (true, Some(g)) = (ok, got) {
            if g != *want {
                let msg = format!(
                    "reading {path} through the mount: got {}, want {}",
                    describe(&g),
                    describe(&want)
                );
                self.wrong_answer(e0, up0, &format!("read of {path}"), msg);
            }
        }
    }

    /// A read or listing answered, but not what the model holds: a failure, unless etlfs was
    /// being stopped or killed meanwhile (the mount point then shows the bare directory
    /// underneath for a moment, empty): then the tree is checked once the mount is back.
    fn wrong_answer(&mut self, e0: u64, up0: bool, what: &str, msg: String) {
        let chaos = !up0 || !self.sh.is_up() || self.sh.epoch.load(Ordering::SeqCst) != e0;
        if !chaos {
            self.sh.fail(msg);
            return;
        }
        let post = self.model.clone();
        let err = io::Error::other(format!("answered while etlfs was stopping: {msg}"));
        self.settle(what, &err, Outcomes { post, prefix: None });
    }

    fn list_check(&mut self, dir: &str) {
        inc(&self.sh.c.listings);
        let abs = self.abs(dir);
        let want: BTreeSet<String> = self
            .children(dir)
            .iter()
            .map(|c| base(c).to_owned())
            .collect();
        let post = self.model.clone();
        let mut got = BTreeSet::new();
        let (e0, up0) = (self.sh.epoch.load(Ordering::SeqCst), self.sh.is_up());
        let ok = self.step(
            &format!("readdir {dir:?}"),
            Outcomes { post, prefix: None },
            |_| {
                for e in fs::read_dir(&abs)? {
                    got.insert(e?.file_name().to_string_lossy().into_owned());
                }
                Ok(())
            },
        );
        if ok && got != want {
            let msg = format!("readdir {dir:?}: got {got:?}, want {want:?}");
            self.wrong_answer(e0, up0, &format!("readdir {dir:?}"), msg);
        }
    }

    /// Temp file + rename over `target` (which may or may not exist).
    fn tmp_rename(&mut self, target: &str) {
        if !self.ensure_dir(parent(target)) {
            return;
        }
        inc(&self.sh.c.tmp_renames);
        let tmp = join(
            parent(target),
            &format!(".{}.tmp{}", base(target), self.next_gen + 1),
        );
        let (ver, data) = self.version(target);
        self.sh
            .c
            .bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut post = self.model.clone();
        post.insert(tmp.clone(), file(data.clone()));
        let abs_tmp = self.abs(&tmp);
        let ok = self.step(
            &format!("write of temp file {tmp} (gen {ver})"),
            Outcomes {
                post,
                prefix: Some((tmp.clone(), ver)),
            },
            |_| {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    .open(&abs_tmp)?;
                f.write_all(&data)?;
                close_checked(f)
            },
        );
        if !ok {
            return; // the temp file (if any) is in the model; a later unlink may take it
        }
        self.kill_point(P_TMP);
        let mut base_tree = self.model.clone();
        base_tree.remove(target);
        let post = self.moved(&base_tree, &tmp, target);
        self.rename_step(&tmp, target, post, "rename over");
    }

    fn rename_step(&mut self, from: &str, to: &str, post: Tree, what: &str) -> bool {
        let (a, b) = (self.abs(from), self.abs(to));
        self.step(
            &format!("{what} {from} -> {to}"),
            Outcomes { post, prefix: None },
            |w| {
                w.kill_point(P_META);
                fs::rename(&a, &b)
            },
        )
    }

    fn rename_file(&mut self) {
        let files = self.files();
        if files.is_empty() {
            return;
        }
        let src = self.rng.pick(&files).clone();
        let dirs = self.dirs();
        let to = match self.rng.below(10) {
            0..5 if !dirs.is_empty() => {
                let d = self.rng.pick(&dirs).clone();
                join(&d, &self.new_name("f"))
            }
            5..8 if files.len() > 1 => {
                let mut t = self.rng.pick(&files).clone();
                while t == src {
                    t = self.rng.pick(&files).clone();
                }
                t
            }
            _ => join(parent(&src), &self.new_name("f")),
        };
        inc(&self.sh.c.renames);
        let mut base_tree = self.model.clone();
        base_tree.remove(&to);
        let post = self.moved(&base_tree, &src, &to);
        self.rename_step(&src, &to, post, "rename");
    }

    fn exchange(&mut self) {
        let files = self.files();
        if files.len() < 2 {
            return;
        }
        let a = self.rng.pick(&files).clone();
        let mut b = self.rng.pick(&files).clone();
        while b == a {
            b = self.rng.pick(&files).clone();
        }
        inc(&self.sh.c.exchanges);
        let mut post = self.model.clone();
        let (na, nb) = (post[&a].clone(), post[&b].clone());
        for (path, n) in [(&a, &nb), (&b, &na)] {
            if let Node::File {
                crash_of: Some(g), ..
            } = n
            {
                self.sh.allow(path, *g);
            }
        }
        post.insert(a.clone(), nb);
        post.insert(b.clone(), na);
        let (pa, pb) = (self.abs(&a), self.abs(&b));
        self.step(
            &format!("RENAME_EXCHANGE {a} <-> {b}"),
            Outcomes { post, prefix: None },
            |w| {
                w.kill_point(P_META);
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &pa,
                    rustix::fs::CWD,
                    &pb,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .map_err(io::Error::from)
            },
        );
    }

    fn unlink(&mut self, path: &str) -> bool {
        inc(&self.sh.c.unlinks);
        let mut post = self.model.clone();
        post.remove(path);
        let abs = self.abs(path);
        self.step(
            &format!("unlink {path}"),
            Outcomes { post, prefix: None },
            |w| {
                w.kill_point(P_META);
                fs::remove_file(&abs)
            },
        )
    }

    fn rename_dir(&mut self) {
        let dirs = self.dirs();
        let candidates: Vec<String> = dirs
            .iter()
            .filter(|d| d.as_str() != "misc" && d.as_str() != "bingen")
            .filter(|d| d.starts_with("misc/") || self.rng.chance(0.3))
            .cloned()
            .collect();
        if candidates.is_empty() {
            return;
        }
        let src = self.rng.pick(&candidates).clone();
        let dests: Vec<String> = dirs
            .iter()
            .filter(|d| **d != src && !under(d, &src) && !under(&src, d))
            .cloned()
            .collect();
        // Over an empty directory now and then (allowed by rename(2)), else a new name.
        let empty: Vec<String> = dests
            .iter()
            .filter(|d| self.children(d).is_empty() && d.starts_with("misc/"))
            .cloned()
            .collect();
        let to = if !empty.is_empty() && self.rng.chance(0.15) {
            self.rng.pick(&empty).clone()
        } else {
            let mut parents = vec!["misc".to_owned()];
            parents.extend(
                dests
                    .iter()
                    .filter(|d| d.starts_with("misc/") && !under(d, &src))
                    .cloned(),
            );
            let p = self.rng.pick(&parents).clone();
            if p == src || under(&p, &src) {
                return;
            }
            join(&p, &self.new_name("d"))
        };
        if to.matches('/').count() > 5 {
            return;
        }
        inc(&self.sh.c.dir_renames);
        let mut base_tree = self.model.clone();
        base_tree.remove(&to);
        let post = self.moved(&base_tree, &src, &to);
        self.rename_step(&src, &to, post, "rename directory");
    }

    fn rmdir(&mut self) {
        let dirs = self.dirs();
        let candidates: Vec<String> = dirs
            .iter()
            .filter(|d| d.as_str() != "misc" && d.as_str() != "bingen")
            .filter(|d| {
                let ch = self.children(d);
                ch.len() <= 5
                    && ch
                        .iter()
                        .all(|c| matches!(self.model.get(c), Some(Node::File { .. })))
            })
            .cloned()
            .collect();
        if candidates.is_empty() {
            return;
        }
        let d = self.rng.pick(&candidates).clone();
        for c in self.children(&d) {
            if !self.unlink(&c) && self.model.contains_key(&c) {
                return;
            }
        }
        if !self.children(&d).is_empty() {
            return;
        }
        inc(&self.sh.c.rmdirs);
        let mut post = self.model.clone();
        post.remove(&d);
        let abs = self.abs(&d);
        self.step(
            &format!("rmdir {d}"),
            Outcomes { post, prefix: None },
            |w| {
                w.kill_point(P_META);
                fs::remove_dir(&abs)
            },
        );
    }

    fn kubecost_path(&mut self) -> String {
        let kind = *self.rng.pick(&KINDS);
        let (res, secs) = *self.rng.pick(&RESOLUTIONS);
        let i = self.rng.below(WINDOWS);
        let start = 1_704_067_200 + i * secs;
        format!("bingen/{kind}/{res}/{start}-{}", start + secs)
    }

    fn misc_dir(&mut self) -> String {
        let dirs: Vec<String> = self
            .dirs()
            .into_iter()
            .filter(|d| d == "misc" || d.starts_with("misc/"))
            .collect();
        if dirs.is_empty() {
            "misc".into()
        } else {
            self.rng.pick(&dirs).clone()
        }
    }

    fn one_op(&mut self) {
        let nfiles = self.files().len();
        let full = nfiles >= self.a.max_files;
        let many_dirs = self.dirs().len() >= 40;
        // (weight, op)
        let table: [(u64, u8); 11] = [
            (if full { 30 } else { 46 }, 0), // kubecost write (existing paths only when full)
            (8, 1),                          // kubecost read, checked
            (if full { 2 } else { 8 }, 2),   // temp file + rename over
            (7, 3),                          // rename a file
            (2, 4),                          // RENAME_EXCHANGE
            (if full { 30 } else { 7 }, 5),  // unlink
            (if many_dirs { 0 } else { 5 }, 6), // mkdir
            (3, 7),                          // rename a directory
            (if full || many_dirs { 12 } else { 4 }, 8), // empty a directory and rmdir it
            (3, 9),                          // readdir, checked
            (if full { 0 } else { 7 }, 10),  // kubecost write of a file in misc/
        ];
        let total: u64 = table.iter().map(|(w, _)| w).sum();
        let mut x = self.rng.below(total);
        let mut op = 0;
        for (w, o) in table {
            if x < w {
                op = o;
                break;
            }
            x -= w;
        }
        let files = self.files();
        match op {
            0 => {
                let mut p = self.kubecost_path();
                if full && !self.model.contains_key(&p) {
                    if files.is_empty() {
                        return;
                    }
                    p = self.rng.pick(&files).clone();
                }
                if matches!(self.model.get(&p), Some(Node::Dir)) || self.blocked(&p) {
                    return;
                }
                self.kc_write(&p);
            }
            1 if !files.is_empty() => {
                let p = self.rng.pick(&files).clone();
                self.kc_read_check(&p);
            }
            2 => {
                let p = if self.rng.chance(0.5) && !files.is_empty() {
                    self.rng.pick(&files).clone()
                } else {
                    let d = self.misc_dir();
                    join(&d, &self.new_name("t"))
                };
                if !self.blocked(&p) {
                    self.tmp_rename(&p);
                }
            }
            3 => self.rename_file(),
            4 => self.exchange(),
            5 if !files.is_empty() => {
                let p = self.rng.pick(&files).clone();
                self.unlink(&p);
            }
            6 => {
                let d = self.misc_dir();
                let n = join(&d, &self.new_name("d"));
                if n.matches('/').count() <= 4 && self.ensure_dir(&d) {
                    self.mkdir(&n);
                }
            }
            7 => self.rename_dir(),
            8 => self.rmdir(),
            9 => {
                let mut dirs = self.dirs();
                dirs.push(String::new());
                let d = self.rng.pick(&dirs).clone();
                self.list_check(&d);
            }
            10 => {
                let d = self.misc_dir();
                let p = join(&d, &self.new_name("f"));
                self.kc_write(&p);
            }
            _ => {}
        }
    }

    /// Whether some ancestor of `p` is a file (renames can put a file where a directory was).
    fn blocked(&self, p: &str) -> bool {
        let mut d = parent(p);
        while !d.is_empty() {
            if matches!(self.model.get(d), Some(Node::File { .. })) {
                return true;
            }
            d = parent(d);
        }
        false
    }

    /// The whole tree through the mount must equal the model (when nothing is being killed).
    fn full_check(&mut self, what: &str) -> bool {
        let e0 = self.sh.epoch.load(Ordering::SeqCst);
        if !self.sh.is_up() {
            return false;
        }
        match walk(&self.a.mnt, None) {
            Ok(t) => {
                let d = diff(&self.model, &t, 20);
                if d.is_empty() {
                    inc(&self.sh.c.tree_checks);
                } else {
                    self.sh.fail(format!(
                        "{what}: the tree through the mount differs from the model:\n  {}",
                        d.join("\n  ")
                    ));
                    self.model = t;
                }
                true
            }
            Err(err) => {
                if self.sh.is_up() && self.sh.epoch.load(Ordering::SeqCst) == e0 {
                    self.sh
                        .fail(format!("{what}: walking the mount: {err} (etlfs was up)"));
                }
                false
            }
        }
    }

    fn run(mut self) -> (Tree, Option<String>) {
        // Writes go through the mount as an unprivileged user (per-thread filesystem ids; the
        // capabilities that would bypass permissions go with the switch away from uid 0).
        // SAFETY: setfsgid/setfsuid only change this thread's filesystem ids.
        unsafe {
            libc::setfsgid(self.a.uid);
            libc::setfsuid(self.a.uid);
        }
        // The mount point underneath is root's: nothing can be written there behind etlfs.
        let probe = self.a.work.join("fsuid-probe");
        if File::create(&probe).is_ok() {
            let _ = fs::remove_file(&probe);
            return (
                self.model,
                Some("the workload thread can still write as root".into()),
            );
        }
        self.sh.wait_up(Duration::from_secs(60));
        if !self.ensure_dir("misc") || !self.ensure_dir("bingen") {
            self.sh
                .fail("could not create the first directories".into());
        }
        while !self.sh.stopping() && self.sh.failed() < 20 {
            self.one_op();
            if self.last_check.elapsed() > Duration::from_secs(20) {
                self.last_check = Instant::now();
                self.full_check("periodic check");
            }
            let gap = -(1.0 - self.rng.unit()).ln() / self.a.rate;
            thread::sleep(Duration::from_secs_f64(gap.min(2.0)));
        }
        // Final: wait for the mount (the chaos leaves it up) and compare everything.
        let end = Instant::now() + Duration::from_secs(240);
        while Instant::now() < end {
            if self.sh.wait_up(Duration::from_secs(10)) && self.full_check("final check") {
                return (self.model, None);
            }
            thread::sleep(Duration::from_millis(200));
        }
        (
            self.model,
            Some("the final walk through the mount never succeeded".into()),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

/// Stops whatever is left (a panic, an early failure): no process, no mount stays behind.
struct Cleanup {
    sh: Arc<Shared>,
    mounts: Vec<PathBuf>,
    extra_pid: Arc<AtomicI32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in [
            self.sh.pid.load(Ordering::SeqCst),
            self.extra_pid.load(Ordering::SeqCst),
        ] {
            if pid > 0 {
                // SAFETY: kill(2) on a child of ours.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                thread::sleep(Duration::from_secs(2));
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for m in &self.mounts {
            if is_mounted(m) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

fn check_dir_empty(p: &Path) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if fs::read_dir(p)
        .map_err(|e| format!("{}: {e}", p.display()))?
        .next()
        .is_some()
    {
        return Err(format!("{} is not empty", p.display()));
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    for p in [&a.mnt, &a.local, &a.mnt2, &a.local2] {
        if let Err(e) = check_dir_empty(p) {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    }
    // The served directory belongs to the workload's user; the mount point stays root's.
    if let Err(e) = std::os::unix::fs::chown(&a.local, Some(a.uid), Some(a.uid)) {
        eprintln!("soak: chown {}: {e}", a.local.display());
        return ExitCode::from(2);
    }
    println!(
        "soak: seed {} ({} s, {} ops/s, mode {}); SOAK_SEED={} replays the same choices",
        a.seed, a.seconds, a.rate, a.mode, a.seed
    );
    println!(
        "soak: work directory {} (etlfs logs, events.log)",
        a.work.display()
    );

    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        epoch: AtomicU64::new(0),
        up: Mutex::new(false),
        up_cv: Condvar::new(),
        pid: AtomicI32::new(0),
        kill_arm: AtomicU8::new(0),
        kill_fired: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
        c: Counters::default(),
        registry: Mutex::new(HashMap::new()),
        allow: Mutex::new(HashMap::new()),
        t0: Instant::now(),
        events: Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(a.work.join("events.log"))
                .ok(),
        ),
        ops: Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(a.work.join("ops.log"))
                .ok(),
        ),
    });
    let extra_pid = Arc::new(AtomicI32::new(0));
    let _cleanup = Cleanup {
        sh: Arc::clone(&sh),
        mounts: vec![a.mnt.clone(), a.mnt2.clone()],
        extra_pid: Arc::clone(&extra_pid),
    };
    let bucket = Arc::new(Bucket::new(&a));
    let mut master = Rng::new(a.seed);

    let mut e = Etlfs {
        a: a.clone(),
        sh: Arc::clone(&sh),
        child: None,
        run: 0,
        log: PathBuf::new(),
        mode_rng: Rng::new(master.next()),
    };
    if let Err(msg) = e.start() {
        eprintln!("soak: the first start failed: {msg}");
        return ExitCode::from(1);
    }

    let sampler_done = Arc::new(AtomicBool::new(false));
    let sampler_t = {
        let (sh, b, d) = (
            Arc::clone(&sh),
            Arc::clone(&bucket),
            Arc::clone(&sampler_done),
        );
        thread::spawn(move || sampler(sh, b, d))
    };
    let work_t = {
        let w = Workload {
            sh: Arc::clone(&sh),
            a: a.clone(),
            rng: Rng::new(master.next()),
            model: Tree::new(),
            next_gen: 0,
            next_name: 0,
            last_check: Instant::now(),
        };
        thread::spawn(move || w.run())
    };
    let proc_t = {
        let (b, s) = (Arc::clone(&bucket), master.next());
        thread::spawn(move || process_chaos(e, b, s))
    };
    let s3_t = {
        let (sh, a, s) = (Arc::clone(&sh), a.clone(), master.next());
        thread::spawn(move || s3_chaos(sh, a, s))
    };

    // Let it run, with a line of progress every 30 s.
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let mut next_report = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end && sh.failed() < 20 && !work_t.is_finished() {
        thread::sleep(Duration::from_millis(200));
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            let k: u64 = sh.c.kills.iter().map(get).sum();
            println!(
                "soak: {:4.0} s: {} ops, {} SIGKILL, {} SIGTERM, {} outages, {} objects sampled, {} failures",
                sh.t0.elapsed().as_secs_f64(),
                get(&sh.c.ops),
                k,
                get(&sh.c.terms),
                get(&sh.c.outages_stop) + get(&sh.c.outages_pause),
                get(&sh.c.samples),
                sh.failed()
            );
        }
    }
    println!("soak: stopping the chaos, then drain and final checks");
    sh.stop.store(true, Ordering::SeqCst);
    if let Err(p) = s3_t.join() {
        sh.fail(format!("the S3 chaos thread panicked: {p:?}"));
    }
    // Whatever happened, the front must be up for the drain.
    if let (Some(c), Some(port)) = (&a.ctl, a.front_port) {
        if let Err(msg) = ctl(c, "start", port) {
            sh.fail(msg);
        }
    }
    let mut e = match proc_t.join() {
        Ok(e) => e,
        Err(p) => {
            sh.fail(format!("the process chaos thread panicked: {p:?}"));
            return summary(&a, &sh, None);
        }
    };
    let model = match work_t.join() {
        Ok((m, None)) => m,
        Ok((m, Some(msg))) => {
            sh.fail(msg);
            m
        }
        Err(p) => {
            sh.fail(format!("the workload thread panicked: {p:?}"));
            e.kill();
            return summary(&a, &sh, None);
        }
    };

    // The drain: SIGTERM with the front up; everything must be in the bucket when it exits.
    sh.event("final SIGTERM (drain)");
    let t = Instant::now();
    match e.term("final stop") {
        Ok(true) => println!(
            "soak: final drain done in {:.1} s",
            t.elapsed().as_secs_f64()
        ),
        Ok(false) => sh.fail(format!(
            "the final drain did not finish (log {})",
            e.log.display()
        )),
        Err(msg) => sh.fail(msg),
    }
    thread::sleep(Duration::from_millis(1500)); // a last sampling round
    sampler_done.store(true, Ordering::SeqCst);
    let suspects = sampler_t.join().unwrap_or_else(|p| {
        sh.fail(format!("the sampler panicked: {p:?}"));
        Vec::new()
    });
    for (path, b) in &suspects {
        if allowed_crash_state(&sh, path, b) {
            inc(&sh.c.crash_states_sampled);
        } else {
            inc(&sh.c.torn_sampled);
            sh.fail(format!(
                "sampled {path}: {} — not a version the application ever closed, and no crash left it there",
                describe(b)
            ));
        }
    }

    let mut stats = Final::default();
    // Local directory == model.
    match walk(&a.local, Some(".etlfs")) {
        Ok(local) => {
            let d = diff(&model, &local, 20);
            if !d.is_empty() {
                sh.fail(format!(
                    "the local directory differs from the model:\n  {}",
                    d.join("\n  ")
                ));
                stats.lost += d.len();
            }
            stats.files = model
                .values()
                .filter(|n| matches!(n, Node::File { .. }))
                .count();
            stats.dirs = model.values().filter(|n| matches!(n, Node::Dir)).count();
            stats.bytes = model
                .values()
                .map(|n| match n {
                    Node::File { data, .. } => data.len() as u64,
                    Node::Dir => 0,
                })
                .sum();
            // Bucket == local directory.
            match compare_bucket(&bucket, &local) {
                Ok(d) if d.is_empty() => stats.bucket_ok = true,
                Ok(d) => {
                    stats.lost += d.len();
                    sh.fail(format!(
                        "after the drain the bucket differs from the local directory:\n  {}",
                        d.join("\n  ")
                    ));
                }
                Err(msg) => sh.fail(msg),
            }
        }
        Err(err) => sh.fail(format!("walking {}: {err}", a.local.display())),
    }

    // A new node: etlfs over an empty directory on the same bucket shows the model.
    match new_node(&a, &sh, &extra_pid, &model) {
        Ok(n) => {
            stats.restored = n;
            // It must not have changed the bucket either.
            match compare_bucket(&bucket, &model) {
                Ok(d) if d.is_empty() => {}
                Ok(d) => sh.fail(format!(
                    "after the new node the bucket differs from the model:\n  {}",
                    d.join("\n  ")
                )),
                Err(msg) => sh.fail(msg),
            }
        }
        Err(msg) => {
            stats.lost += 1;
            sh.fail(msg)
        }
    }
    summary(&a, &sh, Some(stats))
}

#[derive(Default)]
struct Final {
    files: usize,
    dirs: usize,
    bytes: u64,
    bucket_ok: bool,
    restored: usize,
    lost: usize,
}

/// Mounts etlfs over an empty directory on the same bucket and reads everything back.
fn new_node(a: &Args, sh: &Shared, pid: &AtomicI32, model: &Tree) -> Result<usize, String> {
    let log = a.work.join("etlfs-new-node.log");
    let args = mount_args(a, &a.local2, &a.mnt2, true);
    let mut child = spawn_etlfs(a, &args, &log)?;
    pid.store(child.id() as i32, Ordering::SeqCst);
    let res = (|| {
        wait_mounted(&mut child, &a.mnt2, &log, Duration::from_secs(120))?;
        let t = Instant::now();
        let got = walk(&a.mnt2, None).map_err(|err| {
            format!(
                "new node: walking {}: {err} (log {})",
                a.mnt2.display(),
                log.display()
            )
        })?;
        let d = diff(model, &got, 20);
        if !d.is_empty() {
            return Err(format!(
                "new node: the restored tree differs from the model:\n  {}",
                d.join("\n  ")
            ));
        }
        sh.event(&format!(
            "new node: {} entries restored in {:.1} s",
            got.len(),
            t.elapsed().as_secs_f64()
        ));
        Ok(got
            .values()
            .filter(|n| matches!(n, Node::File { .. }))
            .count())
    })();
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(120);
    let st = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    pid.store(0, Ordering::SeqCst);
    let n = res?;
    match st {
        Some(s) if s.success() => Ok(n),
        other => Err(format!(
            "new node: etlfs did not stop cleanly ({other:?}; log {})",
            log.display()
        )),
    }
}

fn summary(a: &Args, sh: &Shared, f: Option<Final>) -> ExitCode {
    let c = &sh.c;
    let kills: u64 = c.kills.iter().map(get).sum();
    let targeted: Vec<String> = (1..POINTS.len())
        .map(|i| format!("{} {}", get(&c.kills[i]), POINTS[i]))
        .collect();
    let failures = sh.failures.lock().unwrap().clone();
    println!();
    println!(
        "== etlfs soak: seed {}, {} s of chaos, {:.0} s in all ==",
        a.seed,
        a.seconds,
        sh.t0.elapsed().as_secs_f64()
    );
    println!(
        "operations:   {} ({} Kubecost writes, {} temp+rename, {} renames, {} exchanges, {} directory renames, {} unlinks, {} mkdirs, {} rmdirs, {} reads and {} listings checked); {:.1} MiB written; {} writes held open and empty for 0.3-0.8 s",
        get(&c.ops),
        get(&c.kc_writes),
        get(&c.tmp_renames),
        get(&c.renames),
        get(&c.exchanges),
        get(&c.dir_renames),
        get(&c.unlinks),
        get(&c.mkdirs),
        get(&c.rmdirs),
        get(&c.kc_reads),
        get(&c.listings),
        get(&c.bytes_written) as f64 / (1 << 20) as f64,
        get(&c.slow_writes)
    );
    println!(
        "etlfs runs:   {} ({} passthrough, {} daemon mode); crashes survived: {} SIGKILL ({} at random moments, targeted: {}); {} SIGTERM clean restarts, {} followed by bucket == local",
        get(&c.etlfs_runs),
        get(&c.runs_passthrough),
        get(&c.etlfs_runs) - get(&c.runs_passthrough),
        kills,
        get(&c.kills[0]),
        targeted.join(", "),
        get(&c.terms),
        get(&c.clean_stop_checks)
    );
    println!(
        "S3 faults:    {} outages ({} stop/start, {} pause/resume), {:.0} s without S3",
        get(&c.outages_stop) + get(&c.outages_pause),
        get(&c.outages_stop),
        get(&c.outages_pause),
        get(&c.outage_ms) as f64 / 1000.0
    );
    println!(
        "interrupted:  {} operations failed under a crash (afterwards: {} not done, {} done, {} file cut short by the crash)",
        get(&c.interrupted),
        get(&c.resolved_old),
        get(&c.resolved_new),
        get(&c.resolved_partial)
    );
    println!(
        "bucket:       {} object versions sampled in {} listings during the run: {} torn or empty, {} with etlfs_sha256 not matching the body, {} never written by the application; {} crash states the application itself left (allowed at their path)",
        get(&c.samples),
        get(&c.sample_rounds),
        get(&c.torn_sampled),
        get(&c.bad_meta_sampled),
        get(&c.unknown_sampled),
        get(&c.crash_states_sampled)
    );
    println!(
        "checks:       {} full walks through the mount equal to the model",
        get(&c.tree_checks)
    );
    if let Some(f) = &f {
        println!(
            "final:        local == model ({} files, {} directories, {:.1} MiB); bucket == local byte for byte: {}; new node restored {} files equal to the model",
            f.files,
            f.dirs,
            f.bytes as f64 / (1 << 20) as f64,
            if f.bucket_ok { "yes" } else { "NO" },
            f.restored
        );
        println!("data lost:    {}", f.lost);
    }
    if failures.is_empty() && f.is_some() {
        println!("RESULT: PASS");
        ExitCode::SUCCESS
    } else {
        println!(
            "RESULT: FAIL ({} failures; replay with SOAK_SEED={}; logs in {})",
            failures.len(),
            a.seed,
            a.work.display()
        );
        for m in failures.iter().take(20) {
            println!("  - {m}");
        }
        ExitCode::from(1)
    }
}
