//! A randomized workload through a real mount, then three views compared: the mount, the
//! directory underneath, and the bucket — each must equal a plain reference directory that got
//! the same operations. The operations are the ones third-party filesystem suites found bugs
//! in: hard links (written and removed through either name), renames of files and directories,
//! truncates and appends, O_DIRECT writes, shared-mmap writes, and Kubecost's own rewrite.
//!
//! Fixed seeds, so a failure is reproducible (`WORKLOAD_SEED=N` runs another one); both I/O
//! modes; a FILESYSTEM bucket and moto. Every wait is for a condition (the mirror idle on
//! /status), with a generous deadline.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, bucket};
use bucket::{Target, rt, snapshot, target, wait_for};
use common::Opts;

/// A small xorshift generator: the same seed, the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const DIRS: [&str; 4] = ["d0", "d1", "d1/sub", "d2"];
const NAMES: [&str; 6] = ["a", "b", "c", "e", "f", "g"];

/// One operation, applied the same way to the mount and to the reference directory.
#[derive(Debug, Clone)]
enum Op {
    /// Kubecost's rewrite: open, truncate, write, close.
    Rewrite(String, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, u64),
    Link(String, String),
    Rename(String, String),
    Unlink(String),
    /// `dd oflag=direct` of whole 4 KiB blocks at the start of the file.
    Direct(String, u8),
    /// A shared, writable mmap of the file's first byte (it must be at least 1 byte long).
    Mmap(String, u8),
    RenameDir(String, String),
}

fn random_path(rng: &mut Rng) -> String {
    format!(
        "{}/{}",
        DIRS[rng.below(DIRS.len())],
        NAMES[rng.below(NAMES.len())]
    )
}

fn random_op(rng: &mut Rng, i: usize) -> Op {
    let p = random_path(rng);
    let bytes = |rng: &mut Rng, n: usize| bucket::data(rng.next(), 1 + rng.below(n));
    match rng.below(20) {
        0..=4 => Op::Rewrite(p, bytes(rng, 9000)),
        5..=6 => Op::Append(p, bytes(rng, 300)),
        7 => Op::Truncate(p, rng.below(5000) as u64),
        8..=10 => Op::Link(p, random_path(rng)),
        11..=12 => Op::Rename(p, random_path(rng)),
        13..=14 => Op::Unlink(p),
        15..=16 => Op::Direct(p, i as u8),
        17..=18 => Op::Mmap(p, i as u8),
        _ => {
            let d = ["d0", "d2"][rng.below(2)];
            let e = if d == "d0" { "d2" } else { "d0" };
            Op::RenameDir(d.into(), e.into())
        }
    }
}

/// Applies `op` under `root`; what the filesystem answers (an error is fine: it must be the
/// same error on both sides).
fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |rel: &str| root.join(rel);
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    match op {
        Op::Rewrite(f, data) => bucket::kubecost_write(&p(f), data).map_err(errno),
        Op::Append(f, data) => {
            use std::io::Write;
            let mut file = fs::OpenOptions::new()
                .append(true)
                .open(p(f))
                .map_err(errno)?;
            file.write_all(data).map_err(errno)
        }
        Op::Truncate(f, len) => fs::OpenOptions::new()
            .write(true)
            .open(p(f))
            .and_then(|f| f.set_len(*len))
            .map_err(errno),
        Op::Link(a, b) => fs::hard_link(p(a), p(b)).map_err(errno),
        Op::Rename(a, b) | Op::RenameDir(a, b) => fs::rename(p(a), p(b)).map_err(errno),
        Op::Unlink(f) => fs::remove_file(p(f)).map_err(errno),
        Op::Direct(f, fill) => {
            fs::metadata(p(f)).map_err(errno)?;
            // dd with O_DIRECT writes whole aligned blocks without truncating.
            let block: Vec<u8> = vec![*fill; 4096];
            let src = tempfile::NamedTempFile::new().unwrap();
            fs::write(src.path(), &block).unwrap();
            let st = Command::new("dd")
                .arg(format!("if={}", src.path().display()))
                .arg(format!("of={}", p(f).display()))
                .args([
                    "bs=4096",
                    "count=1",
                    "oflag=direct",
                    "conv=notrunc",
                    "status=none",
                ])
                .status()
                .unwrap();
            if st.success() { Ok(()) } else { Err(-2) }
        }
        Op::Mmap(f, byte) => {
            let len = fs::metadata(p(f)).map_err(errno)?.len();
            if len == 0 {
                return Err(-3);
            }
            let script = "import mmap, os, sys\n\
                fd = os.open(sys.argv[1], os.O_RDWR)\n\
                m = mmap.mmap(fd, 1, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\n\
                m[0] = int(sys.argv[2])\n\
                m.flush()\n\
                m.close()\n\
                os.close(fd)\n";
            let st = Command::new("python3")
                .args(["-c", script])
                .arg(p(f))
                .arg(byte.to_string())
                .status()
                .unwrap();
            if st.success() { Ok(()) } else { Err(-4) }
        }
    }
}

/// Every regular file under `root` (skipping `.etlfs`), relative path → bytes.
fn files_of(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if rel.as_os_str().is_empty() && name == ".etlfs" {
                continue;
            }
            let r = rel.join(&name);
            if e.file_type().unwrap().is_dir() {
                stack.push(r);
            } else {
                out.insert(
                    r.to_str().unwrap().to_owned(),
                    fs::read(root.join(&r)).unwrap(),
                );
            }
        }
    }
    out
}

/// Runs a seeded workload through a mount on `kind`, `passthrough` or not, and compares.
fn workload(kind: &str, passthrough: bool, seed: u64) {
    let t: Target = target(kind);
    let port = common::free_port();
    let mut opts = Opts::default().separate_local().listen(port);
    if !passthrough {
        opts = opts.arg("--no-passthrough");
    }
    let (mut m, _cfg) = bucket::mount_on(&t, "50ms", opts);
    let reference = tempfile::tempdir().unwrap();
    for d in DIRS {
        fs::create_dir_all(m.path(d)).unwrap();
        fs::create_dir_all(reference.path().join(d)).unwrap();
    }
    let mut rng = Rng(seed.max(1));
    let mut log = Vec::new();
    for i in 0..150 {
        let op = random_op(&mut rng, i);
        let got = apply(&m.mnt, &op);
        let want = apply(reference.path(), &op);
        log.push(format!("{op:?} -> {got:?}"));
        assert_eq!(
            got,
            want,
            "op {i} {op:?} differs from the reference\n{}",
            log.join("\n")
        );
    }
    let want = files_of(reference.path());
    assert_eq!(
        files_of(&m.mnt),
        want,
        "the mount differs\n{}",
        log.join("\n")
    );
    assert_eq!(files_of(&m.local), want, "the directory underneath differs");

    // The bucket converges on exactly the files (the mirror uploads after its delay).
    let store = t.store();
    let files = |s: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        s.iter()
            .filter(|(k, _)| !k.ends_with(".etlfs-dir"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let snap = wait_for(&rt(), &*store, None, 120, |s| files(s) == want);
    let bucket_files = files(&snap);
    let differ: Vec<&String> = want
        .keys()
        .chain(bucket_files.keys())
        .filter(|k| want.get(*k) != bucket_files.get(*k))
        .collect();
    assert!(
        differ.is_empty(),
        "{} paths differ between the bucket and the mount: {differ:?}\n{}\n{}",
        differ.len(),
        log.join("\n"),
        m.log()
    );
    // ... and stays so: nothing pending that could still change it.
    let idle = bucket::poll(60, || {
        common::http_get(port, "/status")
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
            .is_some_and(|v| v["pending"]["changes"] == 0)
    });
    assert!(idle, "the mirror never went idle\n{}", m.log());
    assert_eq!(files(&snapshot(&rt(), &*store, None)), want);
    assert!(m.stop().success(), "{}", m.log());
}

fn seeds() -> Vec<u64> {
    match std::env::var("WORKLOAD_SEED") {
        Ok(s) => vec![s.parse().expect("WORKLOAD_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    }
}

#[test]
fn workload_filesystem_passthrough() {
    for seed in seeds() {
        workload("filesystem", true, seed);
    }
}

#[test]
fn workload_filesystem_daemon_mode() {
    for seed in seeds() {
        workload("filesystem", false, seed);
    }
}

#[test]
fn workload_s3_passthrough() {
    for seed in seeds() {
        workload("s3", true, seed);
    }
}
