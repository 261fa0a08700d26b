//! Reference-model test of the core, without FUSE: random sequences of what an application,
//! the bucket and the machine can do, checked against a model of what must be true.
//!
//! Each case drives the real overlay, mirror, fetcher and index — assembled exactly as
//! `etlfs mount` assembles them (`run.rs`), minus the kernel — over a temporary directory and
//! an in-memory bucket seen through the fault-injecting wrapper (`bucket::fault`). The steps:
//!
//! - **application**: open (creating, truncating), write at random offsets, ftruncate,
//!   truncate by path, close, fsync, read, rename (plain, `RENAME_NOREPLACE`,
//!   `RENAME_EXCHANGE`, files and directories, over existing files), unlink, mkdir, rmdir,
//!   hard links (a name of a file is one of several: writes through one show under all, each
//!   is an object of its own, and a lost disk brings them back as separate files). The
//!   namespace is tiny (names `a`, `b`, `c`, three levels deep) so that renames over existing
//!   files, rmdir of non-empty directories, renames into oneself and the like happen often.
//!   Before calling the overlay, the driver makes the checks the kernel's VFS makes (a rename
//!   onto itself never reaches a filesystem, an unlink of a directory is `EISDIR`, ...);
//! - **someone else**: puts an object under a fresh key (another tool, or a file written while
//!   etlfs was down: it shows up at the next start, as a bucket-only file), or deletes an
//!   object. The contract (README, doc/SEMANTICS.md) is one writer per key: another writer's
//!   object is the application's to use once etlfs shows it, and a file that exists locally
//!   wins over whatever happened to its object — it is uploaded again at the next start. An
//!   object deleted under a bucket-only file makes that file fail to open (`EIO`, never empty
//!   or partial bytes) and disappear at the next start;
//! - **the bucket**: fault phases (plain errors, timeouts, slow replies, requests carried out
//!   whose reply is lost, bodies cut half way; in mixes, per kind of request, and as "fail the
//!   next N") switched on and off;
//! - **the machine**: time passing (the mirror catches up), a crash (the runtime is torn
//!   down without a drain, as SIGKILL would: nothing more is written, the open handles die,
//!   what is on the local disk and in the journal stays), a crash between a removal's or
//!   rename's journal entry and its local operation, a clean restart (SIGTERM: the
//!   application's handles close, a short drain), and the loss of the local disk (after
//!   everything was drained: a new node).
//!
//! The model is what the application did, with POSIX semantics, on the operations that were
//! acknowledged. After every step the system must agree with it: the same result (or, for an
//! operation that needs a download while the bucket fails, `EIO`), the same bytes on every
//! read. Cheap invariants are checked as it goes: every object in the bucket is a version of
//! a file that the application once closed or fsynced (or the files held at a crash, or an
//! outside object) — never torn, never a mix — and after every start the namespace (names,
//! kinds, sizes) is exactly the model's: nothing removed comes back, nothing moved is lost.
//! At the end of each case (and before a disk loss) the bucket comes back (faults off),
//! everything is drained (SIGTERM, in half the cases: then the bucket must already be the
//! model, but for what someone else changed, before any start repairs anything), etlfs
//! restarts and drains again, and then the bucket must hold exactly the model: each file
//! under its key with identical bytes, a marker per directory, and nothing else; finally
//! every file is read back through the overlay.
//!
//! Not drawn: a file whose object someone else deleted renamed over another file (two writers
//! on one key).
//!
//! In the normal test run, [`model_fixed_seeds`] draws a few cases from each of a few fixed
//! seeds (about 25 s on two cores, busy or not: most of it is waiting for the mirror);
//! `cargo nextest run -E 'test(/^model::/)' --no-capture` shows its summary lines. The long
//! run, [`model`], is ignored: `cargo nextest run --run-ignored only -E 'test(=model::model)'
//! --no-capture` draws [`DEFAULT_CASES`] cases, `PROPTEST_CASES=500` more, and `MODEL_SEED=N`
//! (or `MODEL_SEED=4,5,6`, or `random`) from other seeds. `RUST_LOG=etlfs=debug` shows what
//! etlfs did, and `MODEL_TRACE=1` the model after every step. `scripts/model-nightly.sh` runs
//! the long run over many seeds, one process each. Failures shrink to a minimal sequence; each
//! one found so far is a plain `#[test]` at the end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etlfs::core::{Core, CoreOptions};
use etlfs::engine::events::Intent;
use etlfs::engine::fetch::Fetcher;
use etlfs::engine::index::Index;
use etlfs::engine::journal::{Journal, Source};
use etlfs::engine::mirror::{Mirror, MirrorOptions, Stats};
use etlfs::fs::overlay::{FileKind, Overlay, ROOT, SetAttr};
use etlfs::os::local::Creds;
use etlfs::os::state::StateDir;
use etlfs::store::bucket::Bucket;
use etlfs::store::bucket::fault::{Fault, FaultPlan, FaultyStore, Op as Req, Ops, Settings};
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use sha2::{Digest, Sha256};

/// The seed of the case generator unless `MODEL_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x6574_6c66_7331;

/// Cases per run unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 48;
/// Names the application uses at every level.
const NAMES: [&str; 3] = ["a", "b", "c"];
/// Deepest level a new name is made at.
const MAX_DEPTH: usize = 3;
/// The bucket prefix.
const PREFIX: &str = "etl";
/// The state directory, inside the served one (the default).
const STATE: &str = ".etlfs";
const ME: Creds = Creds { uid: 0, gid: 0 };
/// How long the final drains may take: failed operations wait out their backoff (which a
/// drain does not cut short) before they are tried again.
const SETTLE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Steps

/// A path, chosen when the step runs (so that any sequence makes sense, and shrinks well).
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// The k-th existing path (files and directories, sorted).
    Existing(u8),
    /// Name `NAMES[name]` in the k-th existing directory (root included) that is not too deep.
    New { dir: u8, name: u8 },
}

#[derive(Debug, Clone, Copy)]
enum RenameKind {
    Plain,
    NoReplace,
    Exchange,
}

#[derive(Debug, Clone)]
enum Step {
    /// `open`; with `write`, `O_RDWR|O_CREAT` (+`O_TRUNC` with `trunc`), else `O_RDONLY`.
    Open {
        at: Pick,
        write: bool,
        trunc: bool,
    },
    /// `pwrite` through the h-th writable handle.
    Write {
        h: u8,
        off: u16,
        len: u16,
    },
    /// `ftruncate` through the h-th writable handle.
    Ftruncate {
        h: u8,
        size: u16,
    },
    /// `truncate` by path.
    Truncate {
        at: Pick,
        size: u16,
    },
    /// `close` of the h-th handle.
    Close {
        h: u8,
    },
    /// `fsync` of the h-th handle.
    Fsync {
        h: u8,
    },
    /// open read-only, read everything, close.
    Read {
        at: Pick,
    },
    Rename {
        from: Pick,
        to: Pick,
        kind: RenameKind,
    },
    Unlink {
        at: Pick,
    },
    Mkdir {
        at: Pick,
    },
    Rmdir {
        at: Pick,
    },
    /// `link`: another name for a file.
    Link {
        from: Pick,
        to: Pick,
    },
    /// Someone else puts an object under a fresh key (`x<N>`, or `xd<N>/y` in a fresh
    /// directory).
    OutsidePut {
        nested: bool,
        len: u16,
    },
    /// Someone else deletes the object of the k-th file.
    OutsideDelete {
        at: u8,
    },
    /// The bucket starts failing (one of [`fault_mix`]).
    Faults {
        mix: u8,
    },
    /// The next `n` requests of one kind get one fault.
    FailNext {
        req: u8,
        n: u8,
        fault: u8,
    },
    /// The bucket is well again.
    FaultsOff,
    /// Time passes: the mirror catches up (until it is idle, half a second at most).
    Wait,
    /// SIGKILL and a new start over the same disk and bucket.
    Crash,
    /// SIGTERM (short drain) and a new start.
    Restart,
    /// SIGKILL between the journal's fdatasync and the local operation: the journal has a
    /// removal (or, with `to`, a rename, or with `exchange` too a `RENAME_EXCHANGE`) that
    /// never happened, of a local file or directory.
    CrashMidOp {
        at: Pick,
        to: Option<Pick>,
        exchange: bool,
    },
    /// Everything drained, then the local disk is lost: a new start over an empty directory.
    LoseDisk,
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        3 => any::<u8>().prop_map(Pick::Existing),
        2 => (any::<u8>(), 0..3u8).prop_map(|(dir, name)| Pick::New { dir, name }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    // (exchanges a little more often than applications make them: they are where a rename
    // is hardest to get right)
    let kind = prop_oneof![
        5 => Just(RenameKind::Plain),
        1 => Just(RenameKind::NoReplace),
        2 => Just(RenameKind::Exchange),
    ];
    prop_oneof![
        10 => (pick(), any::<bool>(), any::<bool>())
            .prop_map(|(at, w, trunc)| Step::Open { at, write: w || trunc, trunc }),
        10 => (any::<u8>(), 0..3000u16, 1..2000u16)
            .prop_map(|(h, off, len)| Step::Write { h, off, len }),
        2 => (any::<u8>(), 0..3000u16).prop_map(|(h, size)| Step::Ftruncate { h, size }),
        2 => (pick(), prop_oneof![Just(0u16), 1..3000u16])
            .prop_map(|(at, size)| Step::Truncate { at, size }),
        8 => any::<u8>().prop_map(|h| Step::Close { h }),
        3 => any::<u8>().prop_map(|h| Step::Fsync { h }),
        5 => pick().prop_map(|at| Step::Read { at }),
        8 => (pick(), pick(), kind).prop_map(|(from, to, kind)| Step::Rename { from, to, kind }),
        4 => pick().prop_map(|at| Step::Unlink { at }),
        5 => pick().prop_map(|at| Step::Mkdir { at }),
        4 => (pick(), pick()).prop_map(|(from, to)| Step::Link { from, to }),
        3 => pick().prop_map(|at| Step::Rmdir { at }),
        3 => (any::<bool>(), 0..3000u16)
            .prop_map(|(nested, len)| Step::OutsidePut { nested, len }),
        2 => any::<u8>().prop_map(|at| Step::OutsideDelete { at }),
        3 => (0..FAULT_MIXES).prop_map(|mix| Step::Faults { mix }),
        2 => (0..6u8, 1..4u8, 0..3u8)
            .prop_map(|(req, n, fault)| Step::FailNext { req, n, fault }),
        3 => Just(Step::FaultsOff),
        4 => Just(Step::Wait),
        2 => Just(Step::Crash),
        1 => Just(Step::Restart),
        1 => (pick(), proptest::option::of(pick()), any::<bool>())
            .prop_map(|(at, to, exchange)| Step::CrashMidOp { at, to, exchange }),
        1 => Just(Step::LoseDisk),
    ]
}

/// One case: the mirror's upload delay, the fault plan's seed, and the steps.
#[derive(Debug, Clone)]
struct Case {
    delay_ms: u64,
    seed: u64,
    /// Settling starts with a drain (SIGTERM); otherwise with a crash.
    drain_first: bool,
    /// The bucket fails from the start (one of [`fault_mix`]).
    faults: Option<u8>,
    steps: Vec<Step>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(0u64), Just(5), Just(40)],
        any::<u64>(),
        any::<bool>(),
        proptest::option::of(0..FAULT_MIXES),
        proptest::collection::vec(step(), 1..60),
    )
        .prop_map(|(delay_ms, seed, drain_first, faults, steps)| Case {
            delay_ms,
            seed,
            drain_first,
            faults,
            steps,
        })
}

const FAULT_MIXES: u8 = 8;

/// The fault phases a case can switch on.
fn fault_mix(mix: u8) -> Settings {
    let base = Settings {
        delay: Duration::from_millis(15),
        hang: Duration::from_millis(60),
        ..Settings::default()
    };
    match mix {
        0 => Settings { error: 0.3, ..base },
        1 => Settings {
            lost_reply: 0.3,
            error: 0.1,
            ..base
        },
        2 => Settings {
            timeout: 0.2,
            ..base
        },
        3 => Settings { slow: 0.5, ..base },
        4 => Settings {
            cut: 0.3,
            error: 0.1,
            ..base
        },
        5 => Settings {
            error: 0.1,
            timeout: 0.05,
            slow: 0.1,
            lost_reply: 0.1,
            cut: 0.1,
            ..base
        },
        6 => Settings {
            ops: Ops::of(&[Req::Delete, Req::Copy]),
            error: 0.4,
            lost_reply: 0.2,
            ..base
        },
        // An outage: nothing answers.
        _ => Settings { error: 1.0, ..base },
    }
}

fn fail_next_of(req: u8, fault: u8) -> (Ops, Fault) {
    let ops = match req {
        0 => Ops::of(&[Req::Put]),
        1 => Ops::of(&[Req::Delete]),
        2 => Ops::of(&[Req::Copy]),
        3 => Ops::of(&[Req::Get, Req::Head]),
        4 => Ops::of(&[Req::List]),
        _ => Ops::ALL,
    };
    let fault = match fault {
        0 => Fault::Error,
        1 => Fault::LostReply,
        _ => Fault::Timeout,
    };
    (ops, fault)
}

// ---------------------------------------------------------------------------------------------
// The model

type Id = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    File(Id),
}

#[derive(Debug, Clone)]
struct FileState {
    data: Vec<u8>,
    /// On the local disk; otherwise only in the bucket, downloaded by the first open.
    resident: bool,
    /// Bucket-only, and someone else deleted its object: every open fails until the next
    /// start, which no longer shows it.
    vanished: bool,
    /// Still exactly an object someone else put, at its key, untouched by the application
    /// (only such a file's object can vanish: any other key has etlfs as its writer).
    outside: bool,
}

#[derive(Debug, Clone, Copy)]
struct Handle {
    fh: u64,
    ino: u64,
    id: Id,
    writable: bool,
}

/// What the system must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    Err(i32),
    /// Success, or `EIO` while faults are on: the operation downloads a bucket-only file.
    Fetch,
}

#[derive(Debug, Default)]
struct Model {
    /// Every path but the root.
    tree: BTreeMap<PathBuf, Node>,
    files: HashMap<Id, FileState>,
    next_id: Id,
    handles: Vec<Handle>,
    /// SHA-256 of every version the bucket may hold.
    versions: HashSet<[u8; 32]>,
    /// Outside objects not shown yet (until the next start).
    pending_outside: Vec<(PathBuf, Vec<u8>)>,
    next_outside: u32,
    /// Local files an object of which someone else deleted since the last start: the next
    /// start uploads them again, not a drain before it.
    lost_objects: HashSet<Id>,
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn depth(p: &Path) -> usize {
    p.components().count()
}

impl Model {
    fn new_file(&mut self, data: Vec<u8>, resident: bool, outside: bool) -> Id {
        self.next_id += 1;
        self.files.insert(
            self.next_id,
            FileState {
                data,
                resident,
                vanished: false,
                outside,
            },
        );
        self.next_id
    }

    fn publish(&mut self, id: Id) {
        let h = sha(&self.files[&id].data);
        self.versions.insert(h);
    }

    fn writers(&self, id: Id) -> usize {
        self.handles
            .iter()
            .filter(|h| h.id == id && h.writable)
            .count()
    }

    /// The node at `p`, after checking that every ancestor is a directory.
    fn lookup(&self, p: &Path) -> Result<Option<Node>, i32> {
        let mut anc = p.parent();
        let mut chain = Vec::new();
        while let Some(a) = anc.filter(|a| !a.as_os_str().is_empty()) {
            chain.push(a);
            anc = a.parent();
        }
        for a in chain.into_iter().rev() {
            match self.tree.get(a) {
                None => return Err(libc::ENOENT),
                Some(Node::File(_)) => return Err(libc::ENOTDIR),
                Some(Node::Dir) => {}
            }
        }
        Ok(self.tree.get(p).copied())
    }

    fn has_children(&self, dir: &Path) -> bool {
        self.tree.keys().any(|p| p.parent() == Some(dir))
    }

    /// Resolves a [`Pick`] against the current tree.
    fn pick(&self, p: Pick) -> PathBuf {
        match p {
            Pick::Existing(k) if !self.tree.is_empty() => self
                .tree
                .keys()
                .nth(k as usize % self.tree.len())
                .expect("in range")
                .clone(),
            Pick::Existing(k) => PathBuf::from(NAMES[k as usize % NAMES.len()]),
            Pick::New { dir, name } => {
                let mut dirs = vec![PathBuf::new()];
                dirs.extend(
                    self.tree
                        .iter()
                        .filter(|(p, n)| **n == Node::Dir && depth(p) < MAX_DEPTH)
                        .map(|(p, _)| p.clone()),
                );
                dirs[dir as usize % dirs.len()].join(NAMES[name as usize % NAMES.len()])
            }
        }
    }

    /// The tree and the handles, for `MODEL_TRACE`.
    fn show(&self) -> String {
        let mut s = String::new();
        for (p, n) in &self.tree {
            let _ = match n {
                Node::Dir => writeln!(s, "    {}/", p.display()),
                Node::File(id) => {
                    let f = &self.files[id];
                    writeln!(
                        s,
                        "    {} #{id} {} bytes {:02x?}{}{}{}",
                        p.display(),
                        f.data.len(),
                        &sha(&f.data)[..3],
                        if f.resident { "" } else { " bucket-only" },
                        if f.vanished { " vanished" } else { "" },
                        if f.outside { " outside" } else { "" },
                    )
                }
            };
        }
        for h in &self.handles {
            let _ = writeln!(
                s,
                "    handle #{} {}",
                h.id,
                if h.writable { "rw" } else { "r" }
            );
        }
        s
    }

    /// Moves the subtree at `from` to `to` (which is free).
    fn move_tree(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, Node)> = self
            .tree
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, n)| (p.clone(), *n))
            .collect();
        for (p, _) in &moved {
            self.tree.remove(p);
        }
        for (p, n) in moved {
            let rest = p.strip_prefix(from).expect("below from");
            let new = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            if let Node::File(id) = n {
                // The application moved it: etlfs is its writer now.
                self.files.get_mut(&id).expect("known").outside = false;
            }
            self.tree.insert(new, n);
        }
    }

    /// The bucket knows no hard links: every name of a file past the first becomes a file of
    /// its own, with the same bytes (what a restore from the bucket gives).
    fn unlink_names(&mut self) {
        let mut seen = HashSet::new();
        let paths: Vec<(PathBuf, Id)> = self
            .tree
            .iter()
            .filter_map(|(p, n)| match n {
                Node::File(id) => Some((p.clone(), *id)),
                Node::Dir => None,
            })
            .collect();
        for (p, id) in paths {
            if !seen.insert(id) {
                let f = self.files[&id].clone();
                // (an object etlfs wrote: the application made the name)
                let copy = self.new_file(f.data, f.resident, false);
                self.tree.insert(p, Node::File(copy));
            }
        }
    }

    /// A new start: handles are gone, outside objects show up, vanished files are gone.
    fn restarted(&mut self) {
        self.handles.clear();
        self.lost_objects.clear();
        let ids: Vec<Id> = self
            .tree
            .values()
            .filter_map(|n| match n {
                Node::File(id) => Some(*id),
                Node::Dir => None,
            })
            .collect();
        // A crash leaves the files as they are on disk; the next start uploads them so.
        for id in &ids {
            if self.files[id].resident {
                self.publish(*id);
            }
        }
        let gone: Vec<PathBuf> = self
            .tree
            .iter()
            .filter(|(_, n)| matches!(n, Node::File(id) if self.files[id].vanished))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.tree.remove(&p);
        }
        for (p, data) in std::mem::take(&mut self.pending_outside) {
            if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                self.tree.insert(parent.to_path_buf(), Node::Dir);
            }
            let id = self.new_file(data, false, true);
            self.tree.insert(p, Node::File(id));
        }
        let live: HashSet<Id> = self
            .tree
            .values()
            .filter_map(|n| match n {
                Node::File(id) => Some(*id),
                Node::Dir => None,
            })
            .collect();
        self.files.retain(|id, _| live.contains(id));
    }
}

// ---------------------------------------------------------------------------------------------
// The system: etlfs assembled as `etlfs mount` does it, without the kernel

struct Env {
    rt: tokio::runtime::Runtime,
    mirror: Arc<Mirror>,
    fetcher: Arc<Fetcher>,
    ov: Arc<Overlay>,
}

impl Env {
    /// What `etlfs mount` does before it mounts: load the index (waiting for the bucket), then
    /// open the core as every start does ([`Core::open`]).
    fn start(
        root: &Path,
        store: &Arc<dyn ObjectStore>,
        plan: &FaultPlan,
        opts: MirrorOptions,
    ) -> Result<Env, String> {
        fs::create_dir_all(root.join(STATE)).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let bucket = Bucket::new(Arc::clone(store), PREFIX, true, vec![]);
        let mut tries = 0;
        let index = loop {
            match rt.block_on(Index::load(&bucket)) {
                Ok(i) => break i,
                Err(e) => {
                    tries += 1;
                    if tries == 20 {
                        // The outage ends (the mount would wait for it, forever if need be).
                        plan.off();
                    }
                    if tries > 40 {
                        return Err(format!("the index does not load without faults: {e}"));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        let state = Arc::new(StateDir::open(&root.join(STATE)).map_err(|e| e.to_string())?);
        let core = Core::open(
            bucket,
            root,
            state,
            &root.join(STATE),
            index,
            CoreOptions {
                hidden: Some(STATE.into()),
                mirror: opts,
                fetch_concurrency: 8,
                policy: Default::default(),
                fd_budget: None,
                max_local_bytes: None,
            },
            rt.handle(),
        )
        .map_err(|e| e.to_string())?;
        let Core {
            mirror,
            fetcher,
            overlay: ov,
            ..
        } = core;
        Ok(Env {
            rt,
            mirror,
            fetcher,
            ov,
        })
    }

    fn drain(&self, timeout: Duration) -> bool {
        self.rt.block_on(self.mirror.drain(timeout))
    }

    /// SIGKILL: every task stops where it is; nothing is saved, nothing more is sent.
    fn kill(self) {
        let Env {
            rt,
            mirror,
            fetcher,
            ov,
        } = self;
        // Tasks stop at their next await; waiting for the runtime's threads to leave the one
        // they are in makes the kill come a moment later, never has them go on writing (the
        // journal, the bucket) beside the next start, which no killed process can do.
        rt.shutdown_timeout(Duration::from_secs(10));
        drop(ov);
        drop(fetcher);
        drop(mirror);
    }
}

// ---------------------------------------------------------------------------------------------
// Totals over all cases, for the summary line

#[derive(Default)]
struct Totals {
    cases: AtomicU64,
    steps: AtomicU64,
    skipped: AtomicU64,
    crashes: AtomicU64,
    restarts: AtomicU64,
    disk_losses: AtomicU64,
    outside_puts: AtomicU64,
    outside_deletes: AtomicU64,
    /// `RENAME_EXCHANGE`s with a directory on one side at least.
    dir_exchanges: AtomicU64,
    /// Renames and exchanges that moved a file only in the bucket (or a directory with one).
    bucket_only_moves: AtomicU64,
    /// Removals, renames and exchanges journaled, and then a crash before they ran.
    never_ran: AtomicU64,
    fetch_eio: AtomicU64,
    requests: AtomicU64,
    faults: AtomicU64,
    slow: AtomicU64,
    lost_replies: AtomicU64,
    objects_checked: AtomicU64,
    ms_start: AtomicU64,
    ms_settle: AtomicU64,
    ms_wait: AtomicU64,
    ms_restart: AtomicU64,
}

impl Totals {
    /// Back to zero, for the next seed's summary.
    fn reset(&self) {
        for c in [
            &self.cases,
            &self.steps,
            &self.skipped,
            &self.crashes,
            &self.restarts,
            &self.disk_losses,
            &self.outside_puts,
            &self.outside_deletes,
            &self.dir_exchanges,
            &self.bucket_only_moves,
            &self.never_ran,
            &self.fetch_eio,
            &self.requests,
            &self.faults,
            &self.slow,
            &self.lost_replies,
            &self.objects_checked,
            &self.ms_start,
            &self.ms_settle,
            &self.ms_wait,
            &self.ms_restart,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

static TOTALS: std::sync::LazyLock<Totals> = std::sync::LazyLock::new(Totals::default);

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// The driver

struct Run {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    inner: Arc<InMemory>,
    store: Arc<dyn ObjectStore>,
    plan: Arc<FaultPlan>,
    opts: MirrorOptions,
    env: Option<Env>,
    model: Model,
    seed: u64,
    drain_first: bool,
    step_no: u64,
    /// Faults could be injected during this step (a "fail the next N" is used up by it).
    faulty: bool,
}

fn errno(e: etlfs::fs::overlay::OverlayError) -> i32 {
    e.errno()
}

fn split(p: &Path) -> (PathBuf, &OsStr) {
    (
        p.parent().map(Path::to_path_buf).unwrap_or_default(),
        p.file_name().expect("a path with a name"),
    )
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Run {
    fn new(case: &Case) -> Result<Run, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = tmp.path().join("d");
        fs::create_dir(&root).map_err(|e| e.to_string())?;
        let inner = Arc::new(InMemory::new());
        let plan = FaultPlan::new(case.seed);
        if let Some(mix) = case.faults {
            plan.set(fault_mix(mix));
        }
        let store: Arc<dyn ObjectStore> = Arc::new(FaultyStore::new(
            Arc::clone(&inner) as Arc<dyn ObjectStore>,
            Arc::clone(&plan),
        ));
        let opts = MirrorOptions {
            upload_delay: Duration::from_millis(case.delay_ms),
            upload_max_delay: Duration::from_secs(30),
            concurrency: 4,
            nothing_local: false,
        };
        let env = Env::start(&root, &store, &plan, opts)?;
        Ok(Run {
            _tmp: tmp,
            root,
            inner,
            store,
            plan,
            opts,
            env: Some(env),
            model: Model::default(),
            seed: case.seed,
            drain_first: case.drain_first,
            step_no: 0,
            faulty: false,
        })
    }

    fn ov(&self) -> &Overlay {
        &self.env.as_ref().expect("running").ov
    }

    /// Fresh bytes no earlier write had (so every version is told apart).
    fn bytes(&self, len: usize) -> Vec<u8> {
        let mut x = splitmix(self.seed ^ (self.step_no << 20));
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x = splitmix(x);
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// The node id and kind at `p`, by lookups from the root as the kernel makes them.
    fn resolve(&self, p: &Path) -> Result<(u64, FileKind, u64), i32> {
        let mut cur = (ROOT, FileKind::Dir, 0);
        for c in p.components() {
            let e = self.ov().lookup(cur.0, c.as_os_str()).map_err(errno)?;
            cur = (e.ino, e.attr.kind, e.attr.size);
        }
        Ok(cur)
    }

    /// Compares an outcome with the expectation. Returns whether the operation took effect.
    fn check<T>(&self, what: &str, expect: Expect, got: &Result<T, i32>) -> Result<bool, String> {
        match (expect, got) {
            (Expect::Ok | Expect::Fetch, Ok(_)) => Ok(true),
            (Expect::Err(want), Err(e)) if *e == want => Ok(false),
            (Expect::Fetch, Err(e)) if *e == libc::EIO && self.faulty => {
                add(&TOTALS.fetch_eio, 1);
                Ok(false)
            }
            (want, Err(e)) => Err(format!(
                "{what}: expected {want:?}, got errno {e} ({})",
                std::io::Error::from_raw_os_error(*e)
            )),
            (want, Ok(_)) => Err(format!("{what}: expected {want:?}, got success")),
        }
    }

    /// What an operation on the existing file `id` that needs its bytes expects.
    fn fetch_expect(&self, id: Id) -> Expect {
        let f = &self.model.files[&id];
        if f.vanished {
            Expect::Err(libc::EIO)
        } else if f.resident {
            Expect::Ok
        } else {
            Expect::Fetch
        }
    }

    fn handle(&self, h: u8, writable: bool) -> Option<(usize, Handle)> {
        let candidates: Vec<(usize, Handle)> = self
            .model
            .handles
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, x)| x.writable || !writable)
            .collect();
        (!candidates.is_empty()).then(|| candidates[h as usize % candidates.len()])
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        self.step_no += 1;
        self.faulty = self.plan.is_on();
        add(&TOTALS.steps, 1);
        match *step {
            Step::Open { at, write, trunc } => self.open(self.model.pick(at), write, trunc),
            Step::Write { h, off, len } => {
                let Some((_, hd)) = self.handle(h, true) else {
                    return self.skip();
                };
                let data = self.bytes(len as usize);
                let got = self.ov().write(hd.fh, u64::from(off), &data).map_err(errno);
                self.check("write", Expect::Ok, &got)?;
                let f = self.model.files.get_mut(&hd.id).expect("open file");
                let end = off as usize + data.len();
                if f.data.len() < end {
                    f.data.resize(end, 0);
                }
                f.data[off as usize..end].copy_from_slice(&data);
                Ok(())
            }
            Step::Ftruncate { h, size } => {
                let Some((_, hd)) = self.handle(h, true) else {
                    return self.skip();
                };
                let set = SetAttr {
                    size: Some(u64::from(size)),
                    ..Default::default()
                };
                let got = self
                    .ov()
                    .blocking(|o| o.setattr(hd.ino, Some(hd.fh), set))
                    .map_err(errno);
                self.check("ftruncate", Expect::Ok, &got)?;
                let f = self.model.files.get_mut(&hd.id).expect("open file");
                f.data.resize(size as usize, 0);
                Ok(())
            }
            Step::Truncate { at, size } => self.truncate(self.model.pick(at), size),
            Step::Close { h } => {
                let Some((i, hd)) = self.handle(h, false) else {
                    return self.skip();
                };
                self.close(i, hd)
            }
            Step::Fsync { h } => {
                let Some((_, hd)) = self.handle(h, false) else {
                    return self.skip();
                };
                let got = self.ov().fsync(hd.fh, false).map_err(errno);
                self.check("fsync", Expect::Ok, &got)?;
                self.model.publish(hd.id);
                Ok(())
            }
            Step::Read { at } => self.read(self.model.pick(at)),
            Step::Rename { from, to, kind } => {
                self.rename(self.model.pick(from), self.model.pick(to), kind)
            }
            Step::Unlink { at } => self.remove(self.model.pick(at), false),
            Step::Rmdir { at } => self.remove(self.model.pick(at), true),
            Step::Mkdir { at } => self.mkdir(self.model.pick(at)),
            Step::Link { from, to } => self.link(self.model.pick(from), self.model.pick(to)),
            Step::OutsidePut { nested, len } => {
                self.model.next_outside += 1;
                let n = self.model.next_outside;
                let p = if nested {
                    PathBuf::from(format!("xd{n}/y"))
                } else {
                    PathBuf::from(format!("x{n}"))
                };
                let data = self.bytes(len as usize);
                let key = Key::parse(format!("{PREFIX}/{}", p.display())).expect("a key");
                block(self.inner.put(&key, data.clone().into()))
                    .map_err(|e| format!("outside put: {e}"))?;
                self.model.versions.insert(sha(&data));
                self.model.pending_outside.push((p, data));
                add(&TOTALS.outside_puts, 1);
                Ok(())
            }
            Step::OutsideDelete { at } => {
                let files: Vec<(PathBuf, Id)> = self
                    .model
                    .tree
                    .iter()
                    .filter_map(|(p, n)| match n {
                        Node::File(id) => Some((p.clone(), *id)),
                        Node::Dir => None,
                    })
                    .collect();
                if files.is_empty() {
                    return self.skip();
                }
                let (p, id) = &files[at as usize % files.len()];
                let f = &self.model.files[id];
                // The other writer deletes its own object (the file then vanishes), or any
                // object of a local file (which wins: it is uploaded again at the next start).
                let vanishes = f.outside && !f.resident && !f.vanished;
                if !(vanishes || f.resident) {
                    return self.skip();
                }
                let key = Key::parse(format!("{PREFIX}/{}", p.display())).expect("a key");
                block(self.inner.delete(&key)).map_err(|e| format!("outside delete: {e}"))?;
                // A file the application never opened may be local all the same: an open of
                // another bucket-only file reads its directory ahead. Once the downloads in
                // flight are over, the disk says which.
                let local = vanishes && {
                    self.fetches_settled()?;
                    fs::symlink_metadata(self.root.join(p)).is_ok()
                };
                let f = self.model.files.get_mut(id).expect("known");
                if vanishes && !local {
                    f.vanished = true;
                } else {
                    f.resident = true;
                    self.model.lost_objects.insert(*id);
                }
                add(&TOTALS.outside_deletes, 1);
                Ok(())
            }
            Step::Faults { mix } => {
                self.plan.set(fault_mix(mix));
                Ok(())
            }
            Step::FailNext { req, n, fault } => {
                let (ops, fault) = fail_next_of(req, fault);
                self.plan.fail_next(ops, u32::from(n), fault);
                Ok(())
            }
            Step::FaultsOff => {
                self.plan.off();
                Ok(())
            }
            Step::Wait => {
                let t = Instant::now();
                self.idle_within(Duration::from_millis(500));
                add(&TOTALS.ms_wait, t.elapsed().as_millis() as u64);
                Ok(())
            }
            Step::Crash => {
                add(&TOTALS.crashes, 1);
                self.env.take().expect("running").kill();
                self.start()
            }
            Step::CrashMidOp { at, to, exchange } => {
                let p = self.model.pick(at);
                let Some(node) = self.model.tree.get(&p).copied() else {
                    return self.skip();
                };
                // Only operations that do something on the local disk: for a bucket-only file
                // the journaled intent *is* the operation (and an rmdir of a directory that is
                // not empty is refused before anything is journaled).
                let local = |n: Node| match n {
                    Node::File(id) => self.model.files[&id].resident,
                    Node::Dir => true,
                };
                let dir = node == Node::Dir;
                if !local(node) || (to.is_none() && dir && self.model.has_children(&p)) {
                    return self.skip();
                }
                let ino = |q: &Path| {
                    use std::os::unix::fs::MetadataExt;
                    fs::symlink_metadata(self.root.join(q)).map(|m| m.ino())
                };
                let intent = match to.map(|t| self.model.pick(t)) {
                    Some(to) if to == p => return self.skip(),
                    Some(to) if exchange => {
                        // RENAME_EXCHANGE of two local names, neither below the other (as the
                        // kernel checks before anything is journaled).
                        let Some(other) = self.model.tree.get(&to).copied() else {
                            return self.skip();
                        };
                        if !local(other) || to.starts_with(&p) || p.starts_with(&to) {
                            return self.skip();
                        }
                        Intent::Exchange {
                            a_ino: ino(&p).map_err(|e| e.to_string())?,
                            b_ino: ino(&to).map_err(|e| e.to_string())?,
                            a: p,
                            b: to,
                            a_dir: dir,
                            b_dir: other == Node::Dir,
                        }
                    }
                    Some(to) => Intent::Rename {
                        source: Some(Source::Local {
                            ino: ino(&p).map_err(|e| e.to_string())?,
                        }),
                        from: p,
                        to,
                        dir,
                    },
                    None => Intent::Remove { path: p, dir },
                };
                add(&TOTALS.crashes, 1);
                add(&TOTALS.never_ran, 1);
                self.env.take().expect("running").kill();
                let state = StateDir::open(&self.root.join(STATE)).map_err(|e| e.to_string())?;
                let (journal, _) = Journal::open(&state).map_err(|e| e.to_string())?;
                journal.append(intent).map_err(|e| e.to_string())?;
                drop(journal);
                self.start()
            }
            Step::Restart => {
                add(&TOTALS.restarts, 1);
                self.release_all()?;
                let env = self.env.take().expect("running");
                // SIGTERM: a short drain (it may not finish while the bucket fails).
                let t = Instant::now();
                env.drain(Duration::from_millis(500));
                add(&TOTALS.ms_restart, t.elapsed().as_millis() as u64);
                env.kill();
                self.start()
            }
            Step::LoseDisk => {
                add(&TOTALS.disk_losses, 1);
                self.settle()?;
                self.env.take().expect("running").kill();
                fs::remove_dir_all(&self.root).map_err(|e| e.to_string())?;
                fs::create_dir(&self.root).map_err(|e| e.to_string())?;
                for f in self.model.files.values_mut() {
                    f.resident = false;
                }
                self.model.unlink_names();
                self.start()
            }
        }
    }

    /// Waits until no download is queued or running.
    fn fetches_settled(&self) -> Result<(), String> {
        let fetcher = &self.env.as_ref().expect("running").fetcher;
        let deadline = Instant::now() + SETTLE;
        loop {
            let d = fetcher.progress().queue;
            if d.open + d.readahead + d.prefetch + d.running == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("downloads still going after {SETTLE:?}: {d:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn skip(&self) -> Result<(), String> {
        add(&TOTALS.skipped, 1);
        Ok(())
    }

    /// A new start over the same disk and bucket; the model follows, and the namespace must
    /// be exactly the model's right away.
    fn start(&mut self) -> Result<(), String> {
        let t = Instant::now();
        self.model.restarted();
        self.env = Some(Env::start(&self.root, &self.store, &self.plan, self.opts)?);
        add(&TOTALS.ms_start, t.elapsed().as_millis() as u64);
        self.check_namespace("after a start")
    }

    fn open(&mut self, p: PathBuf, write: bool, trunc: bool) -> Result<(), String> {
        let expect = match self.model.lookup(&p) {
            Err(e) => Expect::Err(e),
            Ok(Some(Node::Dir)) => return self.skip(),
            Ok(Some(Node::File(_))) if trunc => Expect::Ok,
            Ok(Some(Node::File(id))) => self.fetch_expect(id),
            Ok(None) if write => Expect::Ok,
            Ok(None) => Expect::Err(libc::ENOENT),
        };
        let (parent, name) = split(&p);
        let got = (|| {
            let (pino, ..) = self.resolve(&parent)?;
            match self.ov().lookup(pino, name) {
                Ok(e) if e.attr.kind == FileKind::Dir => Err(libc::EISDIR),
                Ok(e) => {
                    let flags = match (write, trunc) {
                        (false, _) => libc::O_RDONLY,
                        (true, false) => libc::O_RDWR,
                        (true, true) => libc::O_RDWR | libc::O_TRUNC,
                    };
                    let o = self
                        .ov()
                        .blocking(|o| o.open(e.ino, flags))
                        .map_err(errno)?;
                    Ok((o.fh, e.ino, false))
                }
                Err(e) if e.errno() == libc::ENOENT && write => {
                    let (e, o) = self
                        .ov()
                        .create(pino, name, 0o644, libc::O_RDWR, ME)
                        .map_err(errno)?;
                    Ok((o.fh, e.ino, true))
                }
                Err(e) => Err(e.errno()),
            }
        })();
        if !self.check(&format!("open {}", p.display()), expect, &got)? {
            return Ok(());
        }
        let (fh, ino, created) = got.expect("checked");
        let id = if created {
            let id = self.model.new_file(Vec::new(), true, false);
            self.model.tree.insert(p, Node::File(id));
            id
        } else {
            let Some(Node::File(id)) = self.model.tree.get(&p).copied() else {
                return Err(format!("open {}: not a file in the model", p.display()));
            };
            let f = self.model.files.get_mut(&id).expect("known");
            f.resident = true;
            f.vanished = false;
            if write {
                f.outside = false;
            }
            if trunc {
                f.data.clear();
            }
            id
        };
        self.model.handles.push(Handle {
            fh,
            ino,
            id,
            writable: write,
        });
        Ok(())
    }

    fn close(&mut self, i: usize, hd: Handle) -> Result<(), String> {
        let got = self.ov().release(hd.fh).map_err(errno);
        self.check("close", Expect::Ok, &got)?;
        self.model.handles.remove(i);
        if hd.writable && self.model.writers(hd.id) == 0 {
            self.model.publish(hd.id);
        }
        Ok(())
    }

    /// The application exits: every handle closes.
    fn release_all(&mut self) -> Result<(), String> {
        while let Some(hd) = self.model.handles.last().copied() {
            self.close(self.model.handles.len() - 1, hd)?;
        }
        Ok(())
    }

    fn truncate(&mut self, p: PathBuf, size: u16) -> Result<(), String> {
        let expect = match self.model.lookup(&p) {
            Err(e) => Expect::Err(e),
            Ok(None) => Expect::Err(libc::ENOENT),
            Ok(Some(Node::Dir)) => return self.skip(),
            Ok(Some(Node::File(_))) if size == 0 => Expect::Ok,
            Ok(Some(Node::File(id))) => self.fetch_expect(id),
        };
        let got = self.resolve(&p).and_then(|(ino, kind, _)| {
            if kind == FileKind::Dir {
                return Err(libc::EISDIR);
            }
            let set = SetAttr {
                size: Some(u64::from(size)),
                ..Default::default()
            };
            self.ov()
                .blocking(|o| o.setattr(ino, None, set))
                .map_err(errno)
        });
        if !self.check(&format!("truncate {}", p.display()), expect, &got)? {
            return Ok(());
        }
        let Some(Node::File(id)) = self.model.tree.get(&p).copied() else {
            return Err(format!("truncate {}: not a file in the model", p.display()));
        };
        let f = self.model.files.get_mut(&id).expect("known");
        f.data.resize(size as usize, 0);
        (f.resident, f.vanished, f.outside) = (true, false, false);
        if self.model.writers(id) == 0 {
            self.model.publish(id);
        }
        Ok(())
    }

    fn read(&mut self, p: PathBuf) -> Result<(), String> {
        let (expect, id) = match self.model.lookup(&p) {
            Err(e) => (Expect::Err(e), None),
            Ok(None) => (Expect::Err(libc::ENOENT), None),
            Ok(Some(Node::Dir)) => return self.skip(),
            Ok(Some(Node::File(id))) => (self.fetch_expect(id), Some(id)),
        };
        let got = self.resolve(&p).and_then(|(ino, kind, _)| {
            if kind == FileKind::Dir {
                return Err(libc::EISDIR);
            }
            self.read_all(ino)
        });
        if !self.check(&format!("read {}", p.display()), expect, &got)? {
            return Ok(());
        }
        let (id, data) = (id.expect("a file"), got.expect("checked"));
        let f = self.model.files.get_mut(&id).expect("known");
        f.resident = true;
        if data != f.data {
            return Err(format!(
                "read {}: {} bytes differ from the model's {} bytes",
                p.display(),
                data.len(),
                f.data.len()
            ));
        }
        Ok(())
    }

    fn read_all(&self, ino: u64) -> Result<Vec<u8>, i32> {
        let o = self
            .ov()
            .blocking(|o| o.open(ino, libc::O_RDONLY))
            .map_err(errno)?;
        let mut out = Vec::new();
        loop {
            let chunk = self
                .ov()
                .read(o.fh, out.len() as u64, 65536)
                .map_err(errno)?;
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        self.ov().release(o.fh).map_err(errno)?;
        Ok(out)
    }

    fn mkdir(&mut self, p: PathBuf) -> Result<(), String> {
        let expect = match self.model.lookup(&p) {
            Err(e) => Expect::Err(e),
            Ok(Some(_)) => Expect::Err(libc::EEXIST),
            Ok(None) => Expect::Ok,
        };
        let (parent, name) = split(&p);
        let got = self.resolve(&parent).and_then(|(pino, ..)| {
            // The VFS looks the name up first: an existing one (bucket-only too) is EEXIST.
            match self.ov().lookup(pino, name) {
                Ok(_) => return Err(libc::EEXIST),
                Err(e) if e.errno() != libc::ENOENT => return Err(e.errno()),
                Err(_) => {}
            }
            self.ov().mkdir(pino, name, 0o755, ME).map_err(errno)
        });
        if self.check(&format!("mkdir {}", p.display()), expect, &got)? {
            self.model.tree.insert(p, Node::Dir);
        }
        Ok(())
    }

    fn link(&mut self, from: PathBuf, to: PathBuf) -> Result<(), String> {
        // In the order the VFS checks: the source, the new name's directory, the new name,
        // then that the source is no directory.
        let expect = match (self.model.lookup(&from), self.model.lookup(&to)) {
            (Err(e), _) => Expect::Err(e),
            (Ok(None), _) => Expect::Err(libc::ENOENT),
            (_, Err(e)) => Expect::Err(e),
            (_, Ok(Some(_))) => Expect::Err(libc::EEXIST),
            (Ok(Some(Node::Dir)), _) => Expect::Err(libc::EPERM),
            (Ok(Some(Node::File(id))), Ok(None)) => self.fetch_expect(id),
        };
        let (parent, name) = split(&to);
        let got = self.resolve(&from).and_then(|(ino, kind, _)| {
            let (pino, ..) = self.resolve(&parent)?;
            match self.ov().lookup(pino, name) {
                Ok(_) => return Err(libc::EEXIST),
                Err(e) if e.errno() != libc::ENOENT => return Err(e.errno()),
                Err(_) => {}
            }
            if kind == FileKind::Dir {
                return Err(libc::EPERM);
            }
            self.ov()
                .blocking(|o| o.link(ino, pino, name))
                .map_err(errno)
        });
        let what = format!("link {} -> {}", from.display(), to.display());
        if !self.check(&what, expect, &got)? {
            return Ok(());
        }
        let Some(Node::File(id)) = self.model.tree.get(&from).copied() else {
            return Err(format!("{what}: not a file in the model"));
        };
        self.model.files.get_mut(&id).expect("known").resident = true;
        self.model.tree.insert(to, Node::File(id));
        Ok(())
    }

    fn remove(&mut self, p: PathBuf, dir: bool) -> Result<(), String> {
        let expect = match (self.model.lookup(&p), dir) {
            (Err(e), _) => Expect::Err(e),
            (Ok(None), _) => Expect::Err(libc::ENOENT),
            (Ok(Some(Node::Dir)), false) => Expect::Err(libc::EISDIR),
            (Ok(Some(Node::File(_))), true) => Expect::Err(libc::ENOTDIR),
            (Ok(Some(Node::Dir)), true) if self.model.has_children(&p) => {
                Expect::Err(libc::ENOTEMPTY)
            }
            (Ok(Some(_)), _) => Expect::Ok,
        };
        let (parent, name) = split(&p);
        let got = self.resolve(&parent).and_then(|(pino, ..)| {
            let e = self.ov().lookup(pino, name).map_err(errno)?;
            match (e.attr.kind == FileKind::Dir, dir) {
                // The VFS answers these itself.
                (true, false) => Err(libc::EISDIR),
                (false, true) => Err(libc::ENOTDIR),
                (_, false) => self.ov().unlink(pino, name).map_err(errno),
                (_, true) => self.ov().rmdir(pino, name).map_err(errno),
            }
        });
        let what = format!("{} {}", if dir { "rmdir" } else { "unlink" }, p.display());
        if self.check(&what, expect, &got)? {
            self.model.tree.remove(&p);
        }
        Ok(())
    }

    fn rename(&mut self, from: PathBuf, to: PathBuf, kind: RenameKind) -> Result<(), String> {
        if from == to {
            // The VFS never passes a rename onto itself down.
            return self.skip();
        }
        let vanished = |p: &Path| {
            self.model.tree.iter().any(|(q, n)| {
                q.starts_with(p) && matches!(n, Node::File(id) if self.model.files[id].vanished)
            })
        };
        if vanished(&from) && self.model.tree.contains_key(&to) {
            // A file whose object someone else deleted, renamed over another: the replaced
            // file's object stays (no copy can overwrite it, and the source being gone reads
            // as "moved already"). Two writers on one key; outside the contract.
            return self.skip();
        }
        let expect = self.rename_expect(&from, &to, kind);
        let flags = match kind {
            RenameKind::Plain => 0,
            RenameKind::NoReplace => libc::RENAME_NOREPLACE,
            RenameKind::Exchange => libc::RENAME_EXCHANGE,
        };
        let got = (|| {
            let (fp, fname) = split(&from);
            let (tp, tname) = split(&to);
            let (fpino, ..) = self.resolve(&fp)?;
            let src = self.ov().lookup(fpino, fname).map_err(errno)?;
            let (tpino, ..) = self.resolve(&tp)?;
            let dst = match self.ov().lookup(tpino, tname) {
                Ok(e) => Some(e),
                Err(e) if e.errno() == libc::ENOENT => None,
                Err(e) => return Err(e.errno()),
            };
            // What the VFS checks before a filesystem sees the rename.
            let src_dir = src.attr.kind == FileKind::Dir;
            let dst_dir = dst.is_some_and(|d| d.attr.kind == FileKind::Dir);
            match kind {
                RenameKind::NoReplace if dst.is_some() => return Err(libc::EEXIST),
                RenameKind::Exchange if dst.is_none() => return Err(libc::ENOENT),
                _ => {}
            }
            if to.starts_with(&from) {
                return Err(libc::EINVAL);
            }
            if from.starts_with(&to) {
                return Err(match kind {
                    RenameKind::Exchange => libc::EINVAL,
                    _ => libc::ENOTEMPTY,
                });
            }
            if dst.is_some_and(|d| d.ino == src.ino) {
                // Two names of one file: the VFS does nothing, successfully.
                return Ok(());
            }
            if let (Some(_), false) = (dst, matches!(kind, RenameKind::Exchange)) {
                if src_dir && !dst_dir {
                    return Err(libc::ENOTDIR);
                }
                if !src_dir && dst_dir {
                    return Err(libc::EISDIR);
                }
            }
            self.ov()
                .blocking(|o| o.rename(fpino, fname, tpino, tname, flags))
                .map_err(errno)
        })();
        let what = format!("rename({kind:?}) {} -> {}", from.display(), to.display());
        if !self.check(&what, expect, &got)? {
            return Ok(());
        }
        let m = &self.model;
        let bucket_only_at = |p: &Path| {
            m.tree.iter().any(|(q, n)| {
                q.starts_with(p) && matches!(n, Node::File(id) if !m.files[id].resident)
            })
        };
        let exchange = matches!(kind, RenameKind::Exchange);
        if bucket_only_at(&from) || (exchange && bucket_only_at(&to)) {
            add(&TOTALS.bucket_only_moves, 1);
        }
        if exchange
            && [&from, &to]
                .iter()
                .any(|p| m.tree.get(*p) == Some(&Node::Dir))
        {
            add(&TOTALS.dir_exchanges, 1);
        }
        let m = &mut self.model;
        let src = m.tree[&from];
        let dst = m.tree.get(&to).copied();
        if matches!(src, Node::File(_)) && dst == Some(src) {
            return Ok(()); // two names of one file
        }
        let fetched = |m: &mut Model, n: Option<Node>| {
            if let Some(Node::File(id)) = n {
                let f = m.files.get_mut(&id).expect("known");
                (f.resident, f.outside) = (true, false);
            }
        };
        match kind {
            RenameKind::Exchange => {
                fetched(m, Some(src));
                fetched(m, dst);
                let tmp = PathBuf::from("\u{1}swap");
                m.move_tree(&to, &tmp);
                m.move_tree(&from, &to);
                m.move_tree(&tmp, &from);
            }
            _ => {
                if matches!(kind, RenameKind::NoReplace) {
                    fetched(m, Some(src));
                }
                if dst.is_some() {
                    m.tree.remove(&to);
                }
                m.move_tree(&from, &to);
            }
        }
        Ok(())
    }

    fn rename_expect(&self, from: &Path, to: &Path, kind: RenameKind) -> Expect {
        let m = &self.model;
        let src = match m.lookup(from) {
            Err(e) => return Expect::Err(e),
            Ok(None) => return Expect::Err(libc::ENOENT),
            Ok(Some(n)) => n,
        };
        let dst = match m.lookup(to) {
            Err(e) => return Expect::Err(e),
            Ok(n) => n,
        };
        match kind {
            RenameKind::NoReplace if dst.is_some() => return Expect::Err(libc::EEXIST),
            RenameKind::Exchange if dst.is_none() => return Expect::Err(libc::ENOENT),
            _ => {}
        }
        if to.starts_with(from) {
            return Expect::Err(libc::EINVAL);
        }
        if from.starts_with(to) {
            return Expect::Err(match kind {
                RenameKind::Exchange => libc::EINVAL,
                _ => libc::ENOTEMPTY,
            });
        }
        let exchange = matches!(kind, RenameKind::Exchange);
        if matches!(src, Node::File(_)) && dst == Some(src) {
            return Expect::Ok; // two names of one file: nothing to do
        }
        match (src, dst) {
            (Node::Dir, Some(Node::File(_))) if !exchange => return Expect::Err(libc::ENOTDIR),
            (Node::File(_), Some(Node::Dir)) if !exchange => return Expect::Err(libc::EISDIR),
            (Node::Dir, Some(Node::Dir)) if !exchange && m.has_children(to) => {
                return Expect::Err(libc::ENOTEMPTY);
            }
            _ => {}
        }
        // A plain rename moves a bucket-only file without its bytes; the flags need them.
        let mut expect = Expect::Ok;
        let mut needs = Vec::new();
        if !matches!(kind, RenameKind::Plain) {
            needs.push(src);
        }
        if exchange {
            needs.extend(dst);
        }
        for n in needs {
            if let Node::File(id) = n {
                match self.fetch_expect(id) {
                    Expect::Ok => {}
                    e @ Expect::Err(_) => return e,
                    Expect::Fetch => expect = Expect::Fetch,
                }
            }
        }
        expect
    }

    /// Everything in the bucket under the prefix (etlfs' own `.etlfs/` aside): key → bytes.
    fn bucket(&self) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let prefix = Key::parse(PREFIX).expect("a key");
        let reserved = format!("{PREFIX}/{STATE}/");
        let metas: Vec<_> = block(self.inner.list(Some(&prefix)).try_collect::<Vec<_>>())
            .map_err(|e| format!("listing: {e}"))?;
        let mut out = BTreeMap::new();
        for m in metas {
            let k = m.location.to_string();
            if k.starts_with(&reserved) {
                continue;
            }
            // (deleted between the listing and the read: fine)
            if let Ok(r) = block(self.inner.get(&m.location)) {
                if let Ok(b) = block(r.bytes()) {
                    out.insert(k[PREFIX.len() + 1..].to_owned(), b.to_vec());
                }
            }
        }
        Ok(out)
    }

    /// Every object is a version the application published (or someone else put).
    fn check_no_torn_objects(&self) -> Result<(), String> {
        for (k, body) in self.bucket()? {
            if k.ends_with("/.etlfs-dir") && body.is_empty() {
                continue;
            }
            add(&TOTALS.objects_checked, 1);
            if !self.model.versions.contains(&sha(&body)) {
                return Err(format!(
                    "object {k} ({} bytes) is no version the application closed or fsynced: \
                     torn or mixed",
                    body.len()
                ));
            }
        }
        Ok(())
    }

    /// The namespace through the overlay: path → (is a directory, size of a file).
    fn namespace(&self) -> Result<BTreeMap<PathBuf, (bool, u64)>, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![(PathBuf::new(), ROOT)];
        while let Some((dir, ino)) = todo.pop() {
            let ov = self.ov();
            let fh = ov
                .opendir(ino)
                .map_err(|e| format!("opendir {dir:?}: {e}"))?;
            let items = ov
                .readdir(ino, fh, 0)
                .map_err(|e| format!("readdir {dir:?}: {e}"))?;
            ov.releasedir(fh).map_err(|e| e.to_string())?;
            for it in items {
                if it.name == "." || it.name == ".." {
                    continue;
                }
                let p = dir.join(&it.name);
                let e = ov
                    .lookup(ino, &it.name)
                    .map_err(|e| format!("lookup of listed {}: {e}", p.display()))?;
                let is_dir = e.attr.kind == FileKind::Dir;
                if is_dir {
                    todo.push((p.clone(), e.ino));
                }
                out.insert(p, (is_dir, if is_dir { 0 } else { e.attr.size }));
            }
        }
        Ok(out)
    }

    fn check_namespace(&self, when: &str) -> Result<(), String> {
        let got = self.namespace()?;
        let want: BTreeMap<PathBuf, (bool, u64)> = self
            .model
            .tree
            .iter()
            .map(|(p, n)| {
                let v = match n {
                    Node::Dir => (true, 0),
                    Node::File(id) => (false, self.model.files[id].data.len() as u64),
                };
                (p.clone(), v)
            })
            .collect();
        if got != want {
            return Err(format!(
                "namespace {when} differs from the model:\n{}",
                diff(&want, &got)
            ));
        }
        Ok(())
    }

    /// The bucket back, the application gone, everything drained, a restart, a drain: then the
    /// bucket must be exactly the model.
    fn settle(&mut self) -> Result<(), String> {
        let t = Instant::now();
        self.plan.off();
        self.release_all()?;
        let env = self.env.take().expect("running");
        // SIGTERM now that the bucket is back: the backlog drains. (Or SIGKILL: the next
        // start's replay and reconcile must do it all.)
        if self.drain_first && !env.drain(SETTLE) {
            return Err(format!(
                "not drained within {SETTLE:?} of the bucket's return"
            ));
        }
        if self.drain_first {
            self.check_drained()?;
        }
        env.kill();
        self.start()?;
        self.quiesce()?;
        add(&TOTALS.ms_settle, t.elapsed().as_millis() as u64);
        let got = self.bucket()?;
        let mut want = BTreeMap::new();
        for (p, n) in &self.model.tree {
            match n {
                Node::Dir => want.insert(format!("{}/.etlfs-dir", p.display()), Vec::new()),
                Node::File(id) => {
                    want.insert(p.display().to_string(), self.model.files[id].data.clone())
                }
            };
        }
        if got != want {
            let short = |m: &BTreeMap<String, Vec<u8>>| -> BTreeMap<PathBuf, (bool, u64)> {
                m.iter()
                    .map(|(k, v)| (PathBuf::from(k), (false, v.len() as u64)))
                    .collect()
            };
            let mut msg = diff(&short(&want), &short(&got));
            for (k, v) in &want {
                if got.get(k).is_some_and(|g| g != v) {
                    let _ = writeln!(msg, "  {k}: other bytes of the same size");
                }
            }
            return Err(format!("the settled bucket differs from the model:\n{msg}"));
        }
        Ok(())
    }

    /// After a drain said everything is in the bucket, before any start repairs anything: the
    /// bucket is the model, every name of every file with the bytes it has now and nothing
    /// removed left (but what someone else changed: objects deleted under local files, which
    /// the next start uploads again, and objects put that the next start shows).
    fn check_drained(&self) -> Result<(), String> {
        let m = &self.model;
        let got = self.bucket()?;
        let mut want = BTreeMap::new();
        let mut either = HashSet::new();
        for (p, n) in &m.tree {
            let key = p.display().to_string();
            match n {
                Node::Dir => {
                    want.insert(format!("{key}/.etlfs-dir"), Vec::new());
                }
                Node::File(id) if m.files[id].vanished => {}
                Node::File(id) if m.lost_objects.contains(id) => {
                    either.insert(key);
                }
                Node::File(id) => {
                    want.insert(key, m.files[id].data.clone());
                }
            }
        }
        for (p, data) in &m.pending_outside {
            want.insert(p.display().to_string(), data.clone());
            if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                either.insert(format!("{}/.etlfs-dir", d.display()));
            }
        }
        let got: BTreeMap<String, Vec<u8>> = got
            .into_iter()
            .filter(|(k, _)| !either.contains(k))
            .collect();
        if got != want {
            let short = |m: &BTreeMap<String, Vec<u8>>| -> BTreeMap<PathBuf, (bool, u64)> {
                m.iter()
                    .map(|(k, v)| (PathBuf::from(k), (false, v.len() as u64)))
                    .collect()
            };
            let mut msg = diff(&short(&want), &short(&got));
            for (k, v) in &want {
                if got.get(k).is_some_and(|g| g != v) {
                    let _ = writeln!(msg, "  {k}: other bytes of the same size");
                }
            }
            return Err(format!("the drained bucket differs from the model:\n{msg}"));
        }
        Ok(())
    }

    /// Waits until the mirror has reconciled and has nothing left to do, at most `limit`.
    /// Returns whether it got there. (Not a drain: a drain also writes the manifest, which
    /// waits more than a second.)
    fn idle_within(&self, limit: Duration) -> bool {
        let mirror = &self.env.as_ref().expect("running").mirror;
        let stats = mirror.stats();
        let deadline = Instant::now() + limit;
        let mut calm = 0;
        while calm < 3 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
            let idle = Stats::get(&stats.reconciled) == 1
                && Stats::get(&stats.pending) == 0
                && mirror.journal_pending() == 0;
            calm = if idle { calm + 1 } else { 0 };
        }
        true
    }

    fn quiesce(&self) -> Result<(), String> {
        if self.idle_within(SETTLE) {
            return Ok(());
        }
        let mirror = &self.env.as_ref().expect("running").mirror;
        Err(format!(
            "not idle within {SETTLE:?} after a restart: {} pending, {} intents",
            Stats::get(&mirror.stats().pending),
            mirror.journal_pending()
        ))
    }

    /// Every file reads back through the overlay as the model has it.
    fn check_contents(&mut self) -> Result<(), String> {
        let files: Vec<(PathBuf, Id)> = self
            .model
            .tree
            .iter()
            .filter_map(|(p, n)| match n {
                Node::File(id) => Some((p.clone(), *id)),
                Node::Dir => None,
            })
            .collect();
        for (p, id) in files {
            let got = self.resolve(&p).and_then(|(ino, ..)| self.read_all(ino));
            match got {
                Ok(d) if d == self.model.files[&id].data => {}
                Ok(d) => {
                    return Err(format!(
                        "{} reads {} bytes, not the model's {}",
                        p.display(),
                        d.len(),
                        self.model.files[&id].data.len()
                    ));
                }
                Err(e) => return Err(format!("{} does not read back: errno {e}", p.display())),
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), String> {
        self.settle()?;
        self.check_contents()?;
        let c = self.plan.counts();
        add(&TOTALS.requests, c.requests);
        add(&TOTALS.faults, c.failures());
        add(&TOTALS.slow, c.slow);
        add(&TOTALS.lost_replies, c.lost_replies);
        if let Some(env) = self.env.take() {
            env.kill();
        }
        Ok(())
    }
}

/// Paths only in `want`, only in `got`, or different.
fn diff(want: &BTreeMap<PathBuf, (bool, u64)>, got: &BTreeMap<PathBuf, (bool, u64)>) -> String {
    let mut s = String::new();
    for (p, w) in want {
        match got.get(p) {
            None => {
                let _ = writeln!(s, "  missing: {} {w:?}", p.display());
            }
            Some(g) if g != w => {
                let _ = writeln!(s, "  differs: {} want {w:?} got {g:?}", p.display());
            }
            Some(_) => {}
        }
    }
    for (p, g) in got {
        if !want.contains_key(p) {
            let _ = writeln!(s, "  extra:   {} {g:?}", p.display());
        }
    }
    s
}

/// Runs a future on a small runtime of its own (the bucket as someone else sees it).
fn block<F: std::future::Future>(f: F) -> F::Output {
    static RT: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    });
    RT.block_on(f)
}

fn init_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// Runs one case to its end; the error names the step that went wrong.
fn run_case(case: &Case) -> Result<(), String> {
    init_log();
    add(&TOTALS.cases, 1);
    let mut run = Run::new(case)?;
    let trace = std::env::var_os("MODEL_TRACE").is_some();
    for (i, step) in case.steps.iter().enumerate() {
        run.step(step)
            .and_then(|()| run.check_no_torn_objects())
            .map_err(|e| format!("step {i} {step:?}: {e}"))?;
        if trace {
            eprintln!("{i} {step:?}\n{}", run.model.show());
        }
    }
    run.finish().map_err(|e| format!("at the end: {e}"))
}

/// Runs `cases` cases drawn from the generator seeded with `rng_seed`, prints the totals, and
/// panics with the minimal failing case if one fails (shrinking it for at most `shrink`).
fn run_model(rng_seed: RngSeed, cases: u32, shrink: Duration) {
    let config = Config {
        cases,
        rng_seed,
        failure_persistence: None,
        max_shrink_time: u32::try_from(shrink.as_millis()).unwrap_or(u32::MAX),
        ..Config::default()
    };
    TOTALS.reset();
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let res = runner.run(&case(), |c| run_case(&c).map_err(TestCaseError::fail));
    let t = &*TOTALS;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "model ({rng_seed:?}): {} cases ({} steps, {} of them no-ops), {} crashes ({} between a \
         journal entry and its operation), {} restarts, {} disk losses, {} outside puts, {} \
         outside deletes, {} renames moving bucket-only files, {} exchanges of directories; \
         bucket: {} requests, {} failed by injected faults ({} lost replies), {} slow; {} \
         opens failed with EIO during faults; {} objects checked for tearing; {:.1?}",
        get(&t.cases),
        get(&t.steps),
        get(&t.skipped),
        get(&t.crashes),
        get(&t.never_ran),
        get(&t.restarts),
        get(&t.disk_losses),
        get(&t.outside_puts),
        get(&t.outside_deletes),
        get(&t.bucket_only_moves),
        get(&t.dir_exchanges),
        get(&t.requests),
        get(&t.faults),
        get(&t.lost_replies),
        get(&t.slow),
        get(&t.fetch_eio),
        get(&t.objects_checked),
        started.elapsed(),
    );
    println!(
        "time: start {} ms, settle {} ms, wait {} ms, restart drains {} ms",
        get(&t.ms_start),
        get(&t.ms_settle),
        get(&t.ms_wait),
        get(&t.ms_restart)
    );
    match res {
        Ok(()) => {}
        Err(TestError::Fail(why, case)) => {
            panic!("{why}\nminimal failing case:\n{case:?}")
        }
        Err(e) => panic!("{e}"),
    }
}

/// Generator seeds [`model_fixed_seeds`] runs in the normal test run, [`CI_CASES`] cases
/// each. Each passed every time in repeated runs, alone and on two cores kept busy by
/// `stress-ng --cpu 2`: its steps race real threads (the mirror, fetches, timers), so a seed
/// that fails once is a bug (or a flaw of the model) to understand, not one to replace.
const CI_SEEDS: [u64; 3] = [4, 16, 27];
/// Cases per seed in [`model_fixed_seeds`].
const CI_CASES: u32 = 12;

/// The randomized run in the normal test run: a few fixed seeds, a few cases each (well
/// under a minute on two busy cores), so that CI draws the same cases every time and still
/// sees every kind of step, crashes and fault phases included.
#[test]
fn model_fixed_seeds() {
    for seed in CI_SEEDS {
        run_model(RngSeed::Fixed(seed), CI_CASES, Duration::from_secs(60));
    }
}

/// The long randomized run, for exploration: not in the default run. Run it with
/// `cargo nextest run --run-ignored only -E 'test(=model::model)' --no-capture`
/// (servers are not needed). It draws [`DEFAULT_CASES`] cases from [`DEFAULT_SEED`];
/// `PROPTEST_CASES=500` draws more, `MODEL_SEED=N` (or several, `MODEL_SEED=4,5,6`) draws from
/// other seeds, `MODEL_SEED=random` from a new one each time. Its steps race real threads, so
/// a failure may take a few runs to show again, and its shrinking may not reproduce it
/// (the case it started from is printed then). Every failure it finds is pinned as one of the
/// plain tests below, which do run in CI.
#[test]
#[ignore = "long randomized run; see the doc comment"]
fn model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let seeds: Vec<RngSeed> = match std::env::var("MODEL_SEED").ok().as_deref() {
        None => vec![RngSeed::Fixed(DEFAULT_SEED)],
        Some("random") => vec![RngSeed::Random],
        Some(v) => v
            .split(',')
            .map(|s| RngSeed::Fixed(s.trim().parse().expect("MODEL_SEED: numbers or `random`")))
            .collect(),
    };
    for seed in seeds {
        run_model(seed, cases, Duration::from_secs(300));
    }
}

// ---------------------------------------------------------------------------------------------
// Shrunk failures, kept as plain tests

fn check(case: Case) {
    if let Err(e) = run_case(&case) {
        panic!("{e}\n{case:?}");
    }
}

use Pick::{Existing, New};

/// A directory renamed away (or removed) and a *file* made at its old path before the mirror
/// carried the rename out: the directory's marker stayed in the bucket, because "the path
/// exists locally", so a restore showed a directory there and refused the file.
#[test]
fn a_file_taking_a_moved_directory_s_name_drops_its_marker() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::Mkdir {
                at: New { dir: 0, name: 2 },
            },
            Step::Wait,
            // (the bucket fails while the rename is new, so the file comes first for sure)
            Step::Faults { mix: 7 },
            Step::Rename {
                from: Existing(0),
                to: New { dir: 0, name: 1 },
                kind: RenameKind::Plain,
            },
            Step::Open {
                at: New { dir: 0, name: 2 },
                write: true,
                trunc: false,
            },
            Step::Close { h: 0 },
            Step::FaultsOff,
        ],
    });
}

/// A file removed and a *directory* made at its path before the mirror deleted the object:
/// the object stayed ("the path exists locally"), and came back as the file once the
/// directory was removed too.
#[test]
fn a_directory_taking_a_removed_file_s_name_does_not_keep_the_file() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::Open {
                at: New { dir: 0, name: 2 },
                write: true,
                trunc: false,
            },
            Step::Close { h: 0 },
            Step::Wait,
            Step::Faults { mix: 7 },
            Step::Unlink { at: Existing(0) },
            Step::Mkdir {
                at: New { dir: 0, name: 2 },
            },
            Step::FaultsOff,
            Step::Wait,
            Step::Rmdir { at: Existing(0) },
        ],
    });
}

/// A file removed while the bucket was down, then a crash: the next start listed the bucket
/// (which still had the object) before replaying the journal, so the removed file was back in
/// the namespace as a bucket-only file — and an open downloaded it for good.
#[test]
fn a_file_removed_before_a_crash_stays_removed() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::Open {
                at: New { dir: 0, name: 0 },
                write: true,
                trunc: false,
            },
            Step::Close { h: 0 },
            Step::Wait,
            Step::Faults { mix: 7 },
            Step::Unlink { at: Existing(0) },
            Step::Crash,
        ],
    });
}

/// An fsync vouches for the state it flushed. The upload it asked for ran later (up to the
/// mirror's coalescing time), took the file as it was then — with writes made after the fsync,
/// while the writer still had it open — and published a state the application never closed
/// nor fsynced.
#[test]
fn an_fsync_publishes_the_fsynced_state_not_later_writes() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::Open {
                at: New { dir: 0, name: 0 },
                write: true,
                trunc: false,
            },
            // (the first wakes the mirror; the second waits out its coalescing time)
            Step::Fsync { h: 0 },
            Step::Fsync { h: 0 },
            Step::Write {
                h: 0,
                off: 0,
                len: 116,
            },
            Step::Wait,
        ],
    });
}

/// A directory renamed over a directory that is empty on the local disk but holds files only
/// in the bucket: the rename succeeded (the local directory was empty), merged the two in the
/// namespace, and the mirror's copy of the moved directory's files overwrote the bucket-only
/// files of the same name. POSIX says `ENOTEMPTY`, as `rmdir` of it already did.
#[test]
fn a_rename_over_a_directory_with_bucket_only_files_is_enotempty() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            // xd1/y and xd2/y, shown after the restart as bucket-only files.
            Step::OutsidePut {
                nested: true,
                len: 10,
            },
            Step::OutsidePut {
                nested: true,
                len: 20,
            },
            Step::Crash,
            Step::Rename {
                from: Existing(2),
                to: Existing(0),
                kind: RenameKind::Plain,
            },
        ],
    });
}

/// A file that was only in the bucket, opened for writing: the overlay told the mirror the
/// writer's node id, which for such a file is a synthetic number, not the local inode the
/// mirror checks. So the mirror saw no writer, and a rename's upload published the file half
/// written.
#[test]
fn a_restored_file_open_for_writing_is_not_published() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::OutsidePut {
                nested: false,
                len: 10,
            },
            Step::Crash,
            Step::Open {
                at: Existing(0),
                write: true,
                trunc: true,
            },
            Step::Write {
                h: 0,
                off: 5,
                len: 20,
            },
            Step::Rename {
                from: Existing(0),
                to: New { dir: 0, name: 0 },
                kind: RenameKind::Plain,
            },
            Step::Wait,
        ],
    });
}

/// An exchange of directories pending at a crash: `RENAME_EXCHANGE` was journaled as two
/// renames (b -> a, a -> b), which the start applied to the index one after the other, so the
/// directory listed under one side moved there and back again, and a directory was made
/// locally where the application has none (here b/b; a/b was gone). It is one intent now,
/// applied as one swap.
#[test]
fn an_exchange_of_directories_pending_at_a_crash_keeps_both_sides() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::Mkdir {
                at: New { dir: 0, name: 1 },
            },
            Step::Mkdir {
                at: New { dir: 0, name: 0 },
            },
            Step::Mkdir {
                at: New { dir: 2, name: 1 },
            },
            Step::Wait,
            Step::Faults { mix: 7 },
            Step::Rename {
                from: Existing(0),
                to: Existing(1),
                kind: RenameKind::Exchange,
            },
            Step::Crash,
        ],
    });
}

/// An exchange of directories holding bucket-only files: the mirror carried out the two
/// renames of an exchange one after the other; the first moved xd2's bucket-only files into
/// xd1 (over xd1's own), the second moved everything in xd1 to xd2, so one directory's files
/// were lost in the bucket (and, until the next start, the namespace showed the bucket-only
/// files on the side they were before the exchange). The files were then fetched before any
/// exchange; now they stay bucket-only, and the mirror swaps their objects.
#[test]
fn an_exchange_of_directories_with_bucket_only_files_swaps_them() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::OutsidePut {
                nested: true,
                len: 10,
            },
            Step::OutsidePut {
                nested: true,
                len: 20,
            },
            Step::Restart,
            Step::Rename {
                from: Existing(0),
                to: Existing(2),
                kind: RenameKind::Exchange,
            },
            Step::Wait,
            Step::Read { at: Existing(1) },
        ],
    });
}

/// SIGKILL inside a rename of a directory holding bucket-only files: the intent is journaled
/// before the local rename; killed in between, the rename never happened locally, but the
/// replay moved the bucket-only objects to the new name anyway. The start showed them under
/// the old name (their objects gone: EIO), the next one under a new directory. The start now
/// cancels an intent whose operation never ran.
#[test]
fn a_directory_rename_that_never_ran_moves_nothing() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::OutsidePut {
                nested: true,
                len: 10,
            },
            Step::Crash,
            Step::CrashMidOp {
                at: Existing(0),
                to: Some(New { dir: 0, name: 0 }),
                exchange: false,
            },
            Step::Wait,
            Step::Crash,
        ],
    });
}

/// A new file where a bucket-only file was renamed from, before the mirror carried the rename
/// out (here while the bucket is out): the mirror took a local file at the old name for "the
/// renamed file was local", so it neither copied the object to the new name nor deleted it;
/// the new file's upload then overwrote it, and the renamed file was lost (the next start no
/// longer showed it). Across a crash, the start's replay made the same mistake. The intent
/// says now that the file was bucket-only.
#[test]
fn a_file_made_where_a_bucket_only_file_was_renamed_from_keeps_it() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::Open {
                at: New { dir: 0, name: 2 },
                write: true,
                trunc: true,
            },
            Step::LoseDisk,
            Step::Faults { mix: 7 },
            Step::Rename {
                from: Existing(0),
                to: New { dir: 0, name: 0 },
                kind: RenameKind::Plain,
            },
            Step::Open {
                at: New { dir: 0, name: 2 },
                write: true,
                trunc: true,
            },
            Step::FaultsOff,
            Step::Wait,
        ],
    });
}

/// A write through one name of a file with two (made through the mount) must reach the object
/// of the other as well, before any start: only a restart's reconcile used to upload it.
#[test]
fn a_write_through_one_name_reaches_the_other_names_object() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::Open {
                at: New { dir: 0, name: 0 },
                write: true,
                trunc: false,
            },
            Step::Write {
                h: 0,
                off: 0,
                len: 10,
            },
            Step::Close { h: 0 },
            Step::Link {
                from: Existing(0),
                to: New { dir: 0, name: 1 },
            },
            Step::Wait,
            Step::Open {
                at: Existing(0),
                write: true,
                trunc: false,
            },
            Step::Write {
                h: 0,
                off: 0,
                len: 20,
            },
            Step::Close { h: 0 },
        ],
    });
}

/// The same for links made before the start: the overlay only ever hears of the name the
/// application uses; the other one's object must follow all the same. And the name looked up
/// last going does not orphan the first.
#[test]
fn a_write_reaches_the_names_made_before_the_start() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::Mkdir {
                at: New { dir: 0, name: 2 },
            },
            Step::Open {
                at: New { dir: 0, name: 0 },
                write: true,
                trunc: false,
            },
            Step::Write {
                h: 0,
                off: 0,
                len: 10,
            },
            Step::Close { h: 0 },
            // a -> c/b
            Step::Link {
                from: Existing(0),
                to: New { dir: 1, name: 1 },
            },
            Step::Restart,
            Step::Open {
                at: Existing(0),
                write: true,
                trunc: false,
            },
            Step::Write {
                h: 0,
                off: 5,
                len: 20,
            },
            Step::Close { h: 0 },
            Step::Wait,
            // A link made while a is open (c/a, the name last looked up) goes again: the
            // write still reaches a, and c/b, which the overlay never heard of since the start.
            Step::Open {
                at: Existing(0),
                write: true,
                trunc: false,
            },
            Step::Link {
                from: Existing(0),
                to: New { dir: 1, name: 0 },
            },
            Step::Unlink { at: Existing(2) },
            Step::Write {
                h: 0,
                off: 0,
                len: 30,
            },
            Step::Close { h: 0 },
        ],
    });
}

/// A file rename killed before it ran, and then the file removed, all before the mirror
/// replayed the rename (here: it waits behind a removal the bucket refuses twice). The
/// replay took a file absent under both names for one that was only in the bucket, and copied
/// its object to the new name: a file the application never had came back from the bucket.
/// (Found as a flaky failure of the randomized run under load.) The start now cancels an
/// intent whose operation never ran.
#[test]
fn a_file_rename_that_never_ran_copies_nothing() {
    check(Case {
        delay_ms: 0,
        seed: 1,
        drain_first: true,
        faults: None,
        steps: vec![
            Step::Open {
                at: New { dir: 0, name: 2 },
                write: true,
                trunc: false,
            },
            Step::Close { h: 0 },
            Step::Open {
                at: New { dir: 0, name: 0 },
                write: true,
                trunc: false,
            },
            Step::Close { h: 0 },
            Step::Wait,
            // The next three deletes fail: c's removal is still pending at the crash, and
            // waits out two more failures after it.
            Step::FailNext {
                req: 1,
                n: 3,
                fault: 0,
            },
            Step::Unlink { at: Existing(1) },
            // mv a b, killed before it ran
            Step::CrashMidOp {
                at: Existing(0),
                to: Some(New { dir: 0, name: 1 }),
                exchange: false,
            },
            Step::Unlink { at: Existing(0) },
            Step::Wait,
        ],
    });
}

/// Someone else deletes the object of a bucket-only file that is local all the same: an
/// open of another bucket-only file of its directory read it ahead. The local file wins (it is
/// uploaded again at the next start), as for any local file; the model took it for a file that
/// vanishes.
#[test]
fn an_outside_delete_under_a_file_read_ahead_keeps_it() {
    check(Case {
        delay_ms: 0,
        seed: 0,
        drain_first: false,
        faults: None,
        steps: vec![
            Step::OutsidePut {
                nested: false,
                len: 0,
            },
            Step::Open {
                at: Existing(45),
                write: true,
                trunc: false,
            },
            Step::OutsidePut {
                nested: false,
                len: 1,
            },
            Step::LoseDisk,
            // x2, which reads x1 ahead
            Step::Open {
                at: Existing(8),
                write: false,
                trunc: false,
            },
            Step::OutsideDelete { at: 222 },
        ],
    });
}
