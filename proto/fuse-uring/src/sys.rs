//! Every `unsafe` of the prototype: the FUSE passthrough ioctls, and the SQE fields the
//! `io-uring` crate's `UringCmd80` builder cannot set.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use io_uring::squeue::Entry128;

/// `_IOW(229, 1, struct fuse_backing_map)`, `_IOW(229, 2, uint32_t)`.
const FUSE_DEV_IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// Registers `fd` as a backing file of the FUSE connection; returns its backing id.
pub fn backing_open(dev: BorrowedFd, fd: RawFd) -> io::Result<i32> {
    let map = BackingMap {
        fd,
        flags: 0,
        padding: 0,
    };
    // SAFETY: the ioctl reads a `struct fuse_backing_map` that lives across the call.
    let id = unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_OPEN, &map) };
    if id < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(id)
    }
}

pub fn backing_close(dev: BorrowedFd, id: i32) -> io::Result<()> {
    let id = id as u32;
    // SAFETY: the ioctl reads a `uint32_t` that lives across the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_CLOSE, &id) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `sqe->len` (offset 24 of `struct io_uring_sqe`), which FUSE's REGISTER command
/// requires to be 2 (the iovec count) and `UringCmd80` leaves at 0.
pub fn set_sqe_len(e: Entry128, len: u32) -> Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)]` (a 64-byte `io_uring_sqe` then 64 bytes of command),
    // 128 bytes with no padding and no invalid bit patterns, so it round-trips through bytes.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
    raw[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], Entry128>(raw) }
}

/// Queues `e` on the ring's submission queue.
///
/// The caller promises what `push` requires: every buffer the entry points at (the iovec
/// array of a REGISTER, and the header and payload buffers it names, which the kernel keeps
/// using for the entry's whole life) stays valid until the kernel has released the entry,
/// i.e. until the queue's teardown completion (or the ring's drop).
pub fn push(ring: &mut io_uring::IoUring<Entry128>, e: &Entry128) -> io::Result<()> {
    // SAFETY: see above; the ring has room (one slot per entry, each entry in flight once).
    unsafe { ring.submission().push(e) }.map_err(|_| io::Error::other("submission queue full"))
}
