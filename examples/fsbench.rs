//! Filesystem workload driver for `scripts/bench.sh`.
//!
//! Runs one workload against a directory and prints the elapsed wall time of the timed part,
//! in seconds, as a single number on stdout. Setup (making directories, building names, filling
//! buffers) and checks happen outside the timed part. Nothing is fsync'ed.
//!
//! ```text
//! fsbench seqwrite FILE SIZE_MIB [BLOCK_KIB]   create+truncate FILE, write SIZE_MIB in blocks, close
//! fsbench seqread  FILE [BLOCK_KIB]            open FILE, read it to the end in blocks, close
//! fsbench create   DIR N SIZE                  create+write SIZE bytes+close DIR/f00000..f{N-1}
//! fsbench stat     DIR N                       stat DIR/f00000..f{N-1}
//! fsbench kubecost DIR N SIZE CYCLES           CYCLES passes over DIR/k00000..k{N-1}, each file:
//!                                              open(O_RDWR|O_CREAT, 0600), flock(LOCK_EX),
//!                                              ftruncate(0), lseek(0), one write of SIZE bytes,
//!                                              flock(LOCK_UN), close
//! ```
//!
//! Build with `cargo build --release --example fsbench`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use rustix::fs::{FlockOperation, flock};

type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "usage: fsbench seqwrite FILE SIZE_MIB [BLOCK_KIB]
       fsbench seqread FILE [BLOCK_KIB]
       fsbench create DIR N SIZE
       fsbench stat DIR N
       fsbench kubecost DIR N SIZE CYCLES";

fn num(args: &[String], i: usize, what: &str) -> Result<usize> {
    let s = args
        .get(i)
        .ok_or_else(|| format!("missing {what}\n{USAGE}"))?;
    s.parse().map_err(|_| format!("{what}: not a number: {s}"))
}

fn opt_num(args: &[String], i: usize, what: &str, default: usize) -> Result<usize> {
    if args.len() > i {
        num(args, i, what)
    } else {
        Ok(default)
    }
}

fn path(args: &[String], i: usize, what: &str) -> Result<PathBuf> {
    args.get(i)
        .map(PathBuf::from)
        .ok_or_else(|| format!("missing {what}\n{USAGE}"))
}

fn ctx<T>(r: std::io::Result<T>, what: &str, p: &Path) -> Result<T> {
    r.map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// A buffer of `len` bytes with a non-trivial pattern (no all-zero blocks).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 12)) as u8 | 1)
        .collect()
}

fn names(dir: &Path, prefix: &str, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| dir.join(format!("{prefix}{i:05}")))
        .collect()
}

fn seqwrite(file: &Path, size_mib: usize, block_kib: usize) -> Result<f64> {
    if let Some(parent) = file.parent() {
        ctx(fs::create_dir_all(parent), "mkdir", parent)?;
    }
    let block = pattern(block_kib * 1024);
    let total = size_mib * 1024 * 1024;
    let start = Instant::now();
    let mut f = ctx(File::create(file), "create", file)?;
    let mut done = 0;
    while done < total {
        let n = block.len().min(total - done);
        ctx(f.write_all(&block[..n]), "write", file)?;
        done += n;
    }
    drop(f); // close is part of the timed work
    let secs = start.elapsed().as_secs_f64();
    let len = ctx(fs::metadata(file), "stat", file)?.len();
    if len != total as u64 {
        return Err(format!("{}: size {len}, expected {total}", file.display()));
    }
    Ok(secs)
}

fn seqread(file: &Path, block_kib: usize) -> Result<f64> {
    let expect = ctx(fs::metadata(file), "stat", file)?.len();
    let mut buf = vec![0u8; block_kib * 1024];
    let start = Instant::now();
    let mut f = ctx(File::open(file), "open", file)?;
    let mut total = 0u64;
    loop {
        let n = ctx(f.read(&mut buf), "read", file)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    drop(f);
    let secs = start.elapsed().as_secs_f64();
    if total != expect {
        return Err(format!(
            "{}: read {total} bytes, expected {expect}",
            file.display()
        ));
    }
    Ok(secs)
}

fn create(dir: &Path, n: usize, size: usize) -> Result<f64> {
    ctx(fs::create_dir_all(dir), "mkdir", dir)?;
    let files = names(dir, "f", n);
    let data = pattern(size);
    let start = Instant::now();
    for p in &files {
        let mut f = ctx(
            OpenOptions::new().write(true).create_new(true).open(p),
            "create",
            p,
        )?;
        ctx(f.write_all(&data), "write", p)?;
        drop(f);
    }
    Ok(start.elapsed().as_secs_f64())
}

fn stat(dir: &Path, n: usize) -> Result<f64> {
    let files = names(dir, "f", n);
    let start = Instant::now();
    let mut bytes = 0u64;
    for p in &files {
        bytes += ctx(fs::metadata(p), "stat", p)?.len();
    }
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(bytes);
    Ok(secs)
}

fn kubecost(dir: &Path, n: usize, size: usize, cycles: usize) -> Result<f64> {
    ctx(fs::create_dir_all(dir), "mkdir", dir)?;
    let files = names(dir, "k", n);
    let data = pattern(size);
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).mode(0o600);
    let start = Instant::now();
    for _ in 0..cycles {
        for p in &files {
            let mut f = ctx(opts.open(p), "open", p)?;
            ctx(
                flock(&f, FlockOperation::LockExclusive).map_err(Into::into),
                "flock(LOCK_EX)",
                p,
            )?;
            ctx(f.set_len(0), "ftruncate", p)?;
            ctx(f.seek(SeekFrom::Start(0)), "lseek", p)?;
            // One write(2) of the whole buffer, as the application does.
            let w = ctx(f.write(&data), "write", p)?;
            if w != data.len() {
                return Err(format!(
                    "{}: short write {w} of {}",
                    p.display(),
                    data.len()
                ));
            }
            ctx(
                flock(&f, FlockOperation::Unlock).map_err(Into::into),
                "flock(LOCK_UN)",
                p,
            )?;
            drop(f);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for p in &files {
        let len = ctx(fs::metadata(p), "stat", p)?.len();
        if len != size as u64 {
            return Err(format!("{}: size {len}, expected {size}", p.display()));
        }
    }
    Ok(secs)
}

fn run(args: &[String]) -> Result<f64> {
    match args.first().map(String::as_str) {
        Some("seqwrite") => seqwrite(
            &path(args, 1, "FILE")?,
            num(args, 2, "SIZE_MIB")?,
            opt_num(args, 3, "BLOCK_KIB", 1024)?,
        ),
        Some("seqread") => seqread(
            &path(args, 1, "FILE")?,
            opt_num(args, 2, "BLOCK_KIB", 1024)?,
        ),
        Some("create") => create(
            &path(args, 1, "DIR")?,
            num(args, 2, "N")?,
            num(args, 3, "SIZE")?,
        ),
        Some("stat") => stat(&path(args, 1, "DIR")?, num(args, 2, "N")?),
        Some("kubecost") => kubecost(
            &path(args, 1, "DIR")?,
            num(args, 2, "N")?,
            num(args, 3, "SIZE")?,
            num(args, 4, "CYCLES")?,
        ),
        _ => Err(USAGE.to_string()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(secs) => {
            println!("{secs:.6}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fsbench: {e}");
            ExitCode::FAILURE
        }
    }
}
