//! The few pieces of the kernel's FUSE protocol (`include/uapi/linux/fuse.h`, ABI 7.42+) this
//! prototype speaks: opcodes, flags, and byte-level readers and writers of the structs.
//!
//! Structs are read and written field by field at their C offsets (all fields are naturally
//! aligned, native-endian), so no `unsafe` casts are needed.

pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_FORGET: u32 = 2;
pub const FUSE_GETATTR: u32 = 3;
pub const FUSE_SETATTR: u32 = 4;
pub const FUSE_MKDIR: u32 = 9;
pub const FUSE_UNLINK: u32 = 10;
pub const FUSE_RMDIR: u32 = 11;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_READ: u32 = 15;
pub const FUSE_WRITE: u32 = 16;
pub const FUSE_STATFS: u32 = 17;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_FSYNC: u32 = 20;
pub const FUSE_SETXATTR: u32 = 21;
pub const FUSE_GETXATTR: u32 = 22;
pub const FUSE_LISTXATTR: u32 = 23;
pub const FUSE_REMOVEXATTR: u32 = 24;
pub const FUSE_FLUSH: u32 = 25;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_OPENDIR: u32 = 27;
pub const FUSE_READDIR: u32 = 28;
pub const FUSE_RELEASEDIR: u32 = 29;
pub const FUSE_ACCESS: u32 = 34;
pub const FUSE_CREATE: u32 = 35;
pub const FUSE_INTERRUPT: u32 = 36;
pub const FUSE_DESTROY: u32 = 38;
pub const FUSE_BATCH_FORGET: u32 = 42;

/// Names for the request counts printed at exit.
pub fn op_name(op: u32) -> &'static str {
    match op {
        FUSE_LOOKUP => "LOOKUP",
        FUSE_FORGET => "FORGET",
        FUSE_GETATTR => "GETATTR",
        FUSE_SETATTR => "SETATTR",
        FUSE_MKDIR => "MKDIR",
        FUSE_UNLINK => "UNLINK",
        FUSE_RMDIR => "RMDIR",
        FUSE_OPEN => "OPEN",
        FUSE_READ => "READ",
        FUSE_WRITE => "WRITE",
        FUSE_STATFS => "STATFS",
        FUSE_RELEASE => "RELEASE",
        FUSE_FSYNC => "FSYNC",
        FUSE_SETXATTR => "SETXATTR",
        FUSE_GETXATTR => "GETXATTR",
        FUSE_LISTXATTR => "LISTXATTR",
        FUSE_REMOVEXATTR => "REMOVEXATTR",
        FUSE_FLUSH => "FLUSH",
        FUSE_INIT => "INIT",
        FUSE_OPENDIR => "OPENDIR",
        FUSE_READDIR => "READDIR",
        FUSE_RELEASEDIR => "RELEASEDIR",
        FUSE_ACCESS => "ACCESS",
        FUSE_CREATE => "CREATE",
        FUSE_INTERRUPT => "INTERRUPT",
        FUSE_DESTROY => "DESTROY",
        FUSE_BATCH_FORGET => "BATCH_FORGET",
        _ => "other",
    }
}

// FUSE_INIT flags (the high 32 bits go in `flags2`, valid with FUSE_INIT_EXT).
pub const FUSE_ASYNC_READ: u64 = 1 << 0;
pub const FUSE_ATOMIC_O_TRUNC: u64 = 1 << 3;
pub const FUSE_BIG_WRITES: u64 = 1 << 5;
pub const FUSE_PARALLEL_DIROPS: u64 = 1 << 18;
pub const FUSE_MAX_PAGES: u64 = 1 << 22;
pub const FUSE_INIT_EXT: u64 = 1 << 30;
pub const FUSE_PASSTHROUGH: u64 = 1 << 37;
pub const FUSE_OVER_IO_URING: u64 = 1 << 41;

// SETATTR `valid` bits.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_FH: u32 = 1 << 6;

/// `fuse_open_out.open_flags`: the kernel does the file's I/O on the registered backing file.
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// `struct fuse_in_header` (40 bytes) and `struct fuse_out_header` (16 bytes).
pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

// io_uring: `struct fuse_uring_req_header` is in_out[128], op_in[128], then
// `struct fuse_uring_ent_in_out` { flags u64, commit_id u64, payload_sz u32, padding u32,
// reserved u64 }.
pub const URING_OP_IN: usize = 128;
pub const URING_ENT_IN_OUT: usize = 256;
pub const URING_HEADER_LEN: usize = 288;
pub const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
pub const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// Size of the fixed per-opcode struct that precedes names and data (`in_args[0]`): through
/// /dev/fuse it follows the in-header in the same buffer, through io_uring it arrives in the
/// header buffer's `op_in`, and the rest in the payload buffer.
pub fn arg0_len(op: u32) -> usize {
    match op {
        FUSE_FORGET | FUSE_INTERRUPT => 8,
        FUSE_GETATTR => 16,
        FUSE_SETATTR => 88,
        FUSE_MKDIR => 8,
        FUSE_OPEN | FUSE_OPENDIR => 8,
        FUSE_READ | FUSE_READDIR => 40,
        FUSE_WRITE => 40,
        FUSE_RELEASE | FUSE_RELEASEDIR | FUSE_FLUSH => 24,
        FUSE_FSYNC => 16,
        FUSE_GETXATTR | FUSE_LISTXATTR => 8,
        FUSE_ACCESS => 8,
        FUSE_CREATE => 16,
        FUSE_INIT => 64,
        FUSE_BATCH_FORGET => 8,
        FUSE_SETXATTR => 16,
        _ => 0, // LOOKUP, UNLINK, RMDIR (a name only), STATFS, DESTROY (nothing)
    }
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}

pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// The parsed `fuse_in_header`.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
}

impl InHeader {
    pub fn parse(b: &[u8]) -> InHeader {
        InHeader {
            len: u32_at(b, 0),
            opcode: u32_at(b, 4),
            unique: u64_at(b, 8),
            nodeid: u64_at(b, 16),
        }
    }
}

/// Writes a `fuse_out_header` into the first 16 bytes of `b`.
pub fn out_header(b: &mut [u8], len: usize, error: i32, unique: u64) {
    put_u32(b, 0, len as u32);
    b[4..8].copy_from_slice(&error.to_ne_bytes());
    put_u64(b, 8, unique);
}

/// A little-endian-free (native) byte builder for reply bodies.
#[derive(Default)]
pub struct Body(pub Vec<u8>);

impl Body {
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}
