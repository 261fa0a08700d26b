//! The io_uring transport (Linux ≥ 6.14, `fuse.enable_uring=Y`): one queue per possible CPU,
//! each served by its own thread with its own ring (optionally pinned to that CPU, as libfuse
//! does), `depth` entries per queue.
//!
//! An entry is a pair of buffers registered once with FUSE_IO_URING_CMD_REGISTER (an
//! `IORING_OP_URING_CMD` on the /dev/fuse descriptor, SQE128): a 288-byte header (in/out
//! header, the per-op struct, `fuse_uring_ent_in_out`) and a payload as large as the biggest
//! request. The kernel completes the command when it has put a request in the entry; the
//! answer goes back with FUSE_IO_URING_CMD_COMMIT_AND_FETCH, which also hands the entry back
//! for the next request: one `io_uring_enter` per request instead of a `read` and a `write`.
//!
//! The kernel queues a request on the queue of the CPU the calling application runs on, and
//! uses the ring only once every queue has an entry registered.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::squeue::Entry128;
use io_uring::{IoUring, opcode, types};

use crate::abi::*;
use crate::fs::{Fs, Reply, Req};
use crate::sys;

pub struct Config {
    pub depth: usize,
    pub payload_len: usize,
    pub pin: bool,
}

struct Ent {
    hdr: Vec<u8>,
    payload: Vec<u8>,
    /// iov[0] = header, iov[1] = payload: what REGISTER's `sqe->addr` points at.
    iov: Box<[libc::iovec; 2]>,
}

impl Ent {
    fn new(payload_len: usize) -> Ent {
        let mut hdr = vec![0u8; URING_HEADER_LEN];
        let mut payload = vec![0u8; payload_len];
        let iov = Box::new([
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            },
        ]);
        Ent { hdr, payload, iov }
    }
}

/// The 80-byte command area: `struct fuse_uring_cmd_req` { flags, commit_id, qid }.
fn cmd(qid: u16, commit_id: u64) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

fn register_sqe(fd: i32, qid: u16, e: &Ent, idx: usize) -> Entry128 {
    let sqe = opcode::UringCmd80::new(types::Fd(fd), FUSE_IO_URING_CMD_REGISTER)
        .cmd(cmd(qid, 0))
        .addr(Some(e.iov.as_ptr() as u64))
        .build()
        .user_data(idx as u64);
    sys::set_sqe_len(sqe, 2)
}

fn commit_sqe(fd: i32, qid: u16, commit_id: u64, idx: usize) -> Entry128 {
    opcode::UringCmd80::new(types::Fd(fd), FUSE_IO_URING_CMD_COMMIT_AND_FETCH)
        .cmd(cmd(qid, commit_id))
        .build()
        .user_data(idx as u64)
}

/// The queues the kernel makes: one per possible CPU (`num_possible_cpus()`).
pub fn nr_queues() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let last = s.trim().rsplit(['-', ',']).next().unwrap_or("0");
    last.parse::<usize>()
        .map(|n| n + 1)
        .map_err(io::Error::other)
}

/// Serves queue `qid` until unmount. An error names the command the kernel refused.
pub fn run_queue(fs: &Fs, dev: &File, qid: u16, cfg: &Config) -> io::Result<()> {
    if cfg.pin {
        let mut set = rustix::thread::CpuSet::new();
        set.set(qid as usize);
        rustix::thread::sched_setaffinity(None, &set)?;
    }
    let fd = dev.as_raw_fd();
    let depth = cfg.depth;
    let mut ring: IoUring<Entry128> = IoUring::builder()
        .setup_cqsize(2 * depth as u32)
        .build(depth as u32)?;
    let mut ents: Vec<Ent> = (0..depth).map(|_| Ent::new(cfg.payload_len)).collect();
    // Whether the entry's last command was REGISTER (for the error message).
    let mut registering = vec![true; depth];
    for (i, e) in ents.iter().enumerate() {
        sys::push(&mut ring, &register_sqe(fd, qid, e, i))?;
    }
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(depth);
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &done {
            let i = ud as usize;
            if res == -libc::EAGAIN && registering[i] {
                // FUSE_INIT not answered yet.
                sys::push(&mut ring, &register_sqe(fd, qid, &ents[i], i))?;
                continue;
            }
            if res == -libc::ENOTCONN || res == -libc::ECANCELED {
                return Ok(()); // unmounted: the kernel tears the entries down
            }
            if res < 0 {
                let what = if registering[i] {
                    "FUSE_IO_URING_CMD_REGISTER"
                } else {
                    "FUSE_IO_URING_CMD_COMMIT_AND_FETCH"
                };
                let err = io::Error::from_raw_os_error(-res);
                return Err(io::Error::other(format!("queue {qid}: {what}: {err}")));
            }
            registering[i] = false;
            let e = &mut ents[i];
            let h = InHeader::parse(&e.hdr[..IN_HEADER_LEN]);
            let commit_id = u64_at(&e.hdr, URING_ENT_IN_OUT + 8);
            let psz = (u32_at(&e.hdr, URING_ENT_IN_OUT + 16) as usize).min(e.payload.len());
            let a = arg0_len(h.opcode);
            let req = Req {
                h,
                arg: &e.hdr[URING_OP_IN..URING_OP_IN + a],
                rest: &e.payload[..psz],
            };
            fs.via_ring
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (error, body) = match fs.dispatch(&req) {
                Reply::None => (0, Vec::new()),
                Reply::Err(errno) => (-errno, Vec::new()),
                Reply::Ok(b) => (0, b.0),
            };
            e.payload[..body.len()].copy_from_slice(&body);
            out_header(&mut e.hdr, OUT_HEADER_LEN + body.len(), error, h.unique);
            put_u32(&mut e.hdr, URING_ENT_IN_OUT + 16, body.len() as u32);
            sys::push(&mut ring, &commit_sqe(fd, qid, commit_id, i))?;
        }
    }
}
