//! The classic transport: threads that `read(2)` a request from /dev/fuse and `write(2)` its
//! answer, as fuser (and so etlfs) does. Also used, in io_uring mode, for what the kernel
//! still sends through /dev/fuse there (FORGET, INTERRUPT), and for FUSE_INIT.

use std::fs::File;
use std::io::{self, Read, Write};

use crate::abi::*;
use crate::fs::{Fs, Reply, Req};

/// Largest request: a WRITE of `max_write` bytes plus its headers.
pub fn buf_len(max_write: usize) -> usize {
    max_write + 4096
}

/// Reads one request; `None` once the filesystem is unmounted.
pub fn read_req(dev: &File, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match (&*dev).read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) => match e.raw_os_error() {
                // ENOENT: the request was interrupted before we read it.
                Some(libc::ENOENT | libc::EINTR | libc::EAGAIN) => continue,
                Some(libc::ENODEV) => return Ok(None),
                _ => return Err(e),
            },
        }
    }
}

/// Splits a request read from /dev/fuse into header, fixed struct and the rest.
pub fn parse(msg: &[u8]) -> Req<'_> {
    let h = InHeader::parse(msg);
    let body = &msg[IN_HEADER_LEN..(h.len as usize).min(msg.len())];
    let a = arg0_len(h.opcode).min(body.len());
    Req {
        h,
        arg: &body[..a],
        rest: &body[a..],
    }
}

/// Writes an answer (header and body in one write, as the kernel requires).
pub fn send(dev: &File, unique: u64, reply: Reply) -> io::Result<()> {
    let (error, body) = match reply {
        Reply::None => return Ok(()),
        Reply::Err(e) => (-e, Vec::new()),
        Reply::Ok(b) => (0, b.0),
    };
    let mut msg = vec![0u8; OUT_HEADER_LEN + body.len()];
    let len = msg.len();
    out_header(&mut msg, len, error, unique);
    msg[OUT_HEADER_LEN..].copy_from_slice(&body);
    match (&*dev).write(&msg) {
        Ok(_) => Ok(()),
        // ENOENT: the request was interrupted meanwhile; nobody waits for the answer.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One worker thread's loop, until unmount.
pub fn run(fs: &Fs, dev: &File, max_write: usize) -> io::Result<()> {
    let mut buf = vec![0u8; buf_len(max_write)];
    while let Some(n) = read_req(dev, &mut buf)? {
        let req = parse(&buf[..n]);
        let unique = req.h.unique;
        let reply = fs.dispatch(&req);
        send(dev, unique, reply)?;
    }
    Ok(())
}
