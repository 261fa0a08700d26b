//! Prototype: FUSE over io_uring beside the classic /dev/fuse read/write loop, to measure
//! what the io_uring transport would gain etlfs (see doc/BENCHMARKS.md, "FUSE over
//! io_uring"). Not part of etlfs: a separate crate that cargo does not build with it, with
//! `unsafe` (in `sys.rs`) and without etlfs' error handling. Linux only, run as root.
//!
//! ```text
//! fuse-uring-proto classic|uring BACKING_DIR MOUNTPOINT [--threads N] [--depth N]
//!                  [--passthrough] [--no-pin]
//! ```
//!
//! Mounts a passthrough of BACKING_DIR on MOUNTPOINT (mount(2) with `fd=N`, as root, with
//! `default_permissions` like etlfs) and serves it until unmounted (`umount MOUNTPOINT`); then
//! prints how many requests of each kind it served, one `OPCODE COUNT` a line.
//! - `classic`: N threads (default 4, etlfs' default) reading /dev/fuse.
//! - `uring`: FUSE_OVER_IO_URING in the INIT reply, then one queue per CPU, each with N
//!   entries (`--depth`, default 8) and its own thread pinned to that CPU (`--no-pin`: not);
//!   one classic thread for what the kernel still sends through /dev/fuse (FORGET,
//!   INTERRUPT). Needs `/sys/module/fuse/parameters/enable_uring` = Y, without which the
//!   kernel does not offer FUSE_OVER_IO_URING in INIT and the prototype stops (a product
//!   would serve over /dev/fuse instead). If the kernel refuses a queue's REGISTER, the error
//!   names the command and errno, and the classic thread goes on serving everything (the
//!   kernel then falls back to /dev/fuse).
//! - `--passthrough`: files are opened as kernel backing files (FOPEN_PASSTHROUGH), so their
//!   reads and writes never reach the server, as in etlfs' default mode.

mod abi;
mod classic;
mod fs;
mod sys;
mod uring;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use abi::*;

/// Largest WRITE the kernel may send, and so the size of every payload buffer.
const MAX_WRITE: usize = 1 << 20;

struct Args {
    uring: bool,
    backing: PathBuf,
    mountpoint: PathBuf,
    threads: usize,
    depth: usize,
    passthrough: bool,
    pin: bool,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: fuse-uring-proto classic|uring BACKING_DIR MOUNTPOINT [--threads N] \
                 [--depth N] [--passthrough] [--no-pin]";
    let mut pos = Vec::new();
    let mut a = Args {
        uring: false,
        backing: PathBuf::new(),
        mountpoint: PathBuf::new(),
        threads: 4,
        depth: 8,
        passthrough: false,
        pin: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        let mut num = |what: &str| -> Result<usize, String> {
            let v = it.next().ok_or(format!("{what} needs a value\n{usage}"))?;
            v.parse().map_err(|_| format!("{what}: not a number: {v}"))
        };
        match s.as_str() {
            "--threads" => a.threads = num("--threads")?.max(1),
            "--depth" => a.depth = num("--depth")?.max(1),
            "--passthrough" => a.passthrough = true,
            "--no-pin" => a.pin = false,
            _ if s.starts_with("--") => return Err(format!("unknown option {s}\n{usage}")),
            _ => pos.push(s),
        }
    }
    let [mode, backing, mountpoint] =
        <[String; 3]>::try_from(pos).map_err(|_| usage.to_string())?;
    a.uring = match mode.as_str() {
        "classic" => false,
        "uring" => true,
        _ => return Err(format!("unknown transport {mode}\n{usage}")),
    };
    a.backing = backing.into();
    a.mountpoint = mountpoint.into();
    Ok(a)
}

fn mount(dev: &File, mountpoint: &PathBuf) -> io::Result<()> {
    use rustix::mount::MountFlags;
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions",
        dev.as_raw_fd()
    );
    let data = std::ffi::CString::new(data).map_err(io::Error::other)?;
    rustix::mount::mount(
        "uringproto",
        mountpoint,
        "fuse.uringproto",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )?;
    Ok(())
}

/// Reads FUSE_INIT from /dev/fuse and answers it; returns the flags agreed on.
fn init(dev: &File, a: &Args) -> io::Result<u64> {
    let mut buf = vec![0u8; classic::buf_len(MAX_WRITE)];
    let n = classic::read_req(dev, &mut buf)?.ok_or(io::Error::other("unmounted before INIT"))?;
    let req = classic::parse(&buf[..n]);
    if req.h.opcode != FUSE_INIT || req.arg.len() < 16 {
        return Err(io::Error::other(format!(
            "first request is opcode {}",
            req.h.opcode
        )));
    }
    let (major, minor, readahead) = (u32_at(req.arg, 0), u32_at(req.arg, 4), u32_at(req.arg, 8));
    let mut offered = u32_at(req.arg, 12) as u64;
    if offered & FUSE_INIT_EXT != 0 && req.arg.len() >= 20 {
        offered |= (u32_at(req.arg, 16) as u64) << 32;
    }
    if major != 7 || minor < 42 {
        return Err(io::Error::other(format!(
            "kernel FUSE ABI {major}.{minor}, need 7.42+"
        )));
    }
    let mut want = FUSE_ASYNC_READ
        | FUSE_ATOMIC_O_TRUNC
        | FUSE_BIG_WRITES
        | FUSE_PARALLEL_DIROPS
        | FUSE_MAX_PAGES
        | FUSE_INIT_EXT;
    if a.passthrough {
        want |= FUSE_PASSTHROUGH;
    }
    if a.uring {
        want |= FUSE_OVER_IO_URING;
    }
    let flags = want & offered;
    for (f, what) in [
        (FUSE_PASSTHROUGH, "FUSE_PASSTHROUGH"),
        (FUSE_OVER_IO_URING, "FUSE_OVER_IO_URING"),
    ] {
        if want & f != 0 && flags & f == 0 {
            return Err(io::Error::other(format!(
                "the kernel does not offer {what}"
            )));
        }
    }
    let mut b = Body::default();
    b.u32(7).u32(minor.min(44)).u32(readahead).u32(flags as u32);
    b.u16(16).u16(12); // max_background, congestion_threshold (fuser's defaults)
    b.u32(MAX_WRITE as u32).u32(1); // max_write, time_gran
    b.u16((MAX_WRITE / 4096) as u16).u16(0); // max_pages, map_alignment
    b.u32((flags >> 32) as u32);
    b.u32(if a.passthrough { 2 } else { 0 }); // max_stack_depth
    b.zeros(24); // request_timeout, unused
    classic::send(dev, req.h.unique, fs::Reply::Ok(b))?;
    eprintln!("INIT: kernel ABI 7.{minor}, flags {flags:#x}");
    Ok(flags)
}

fn run(a: Args) -> io::Result<String> {
    let dev = File::options().read(true).write(true).open("/dev/fuse")?;
    mount(&dev, &a.mountpoint)?;
    if let Err(e) = init(&dev, &a) {
        let _ = rustix::mount::unmount(&a.mountpoint, rustix::mount::UnmountFlags::DETACH);
        return Err(e);
    }
    let ioctl_dev = if a.passthrough {
        Some(dev.try_clone()?)
    } else {
        None
    };
    let fs = Arc::new(fs::Fs::new(a.backing.clone(), ioctl_dev)?);
    let dev = Arc::new(dev);
    let mut threads = Vec::new();
    let classic_threads = if a.uring { 1 } else { a.threads };
    for _ in 0..classic_threads {
        let (fs, dev) = (Arc::clone(&fs), Arc::clone(&dev));
        threads.push(std::thread::spawn(move || {
            classic::run(&fs, &dev, MAX_WRITE)
        }));
    }
    if a.uring {
        let cfg = Arc::new(uring::Config {
            depth: a.depth,
            payload_len: MAX_WRITE,
            pin: a.pin,
        });
        for qid in 0..uring::nr_queues()? {
            let (fs, dev, cfg) = (Arc::clone(&fs), Arc::clone(&dev), Arc::clone(&cfg));
            threads.push(std::thread::spawn(move || {
                let r = uring::run_queue(&fs, &dev, qid as u16, &cfg);
                if let Err(e) = &r {
                    eprintln!("io_uring refused ({e}); /dev/fuse serves on");
                }
                Ok(())
            }));
        }
    }
    let mut first_err = None;
    for t in threads {
        if let Err(e) = t.join().map_err(|_| io::Error::other("thread panicked"))? {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(fs.report()),
    }
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(a) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fuse-uring-proto: {e}");
            ExitCode::FAILURE
        }
    }
}
