//! The floor: Linux system calls (the only `unsafe` in etlfs), acting as a caller, the directory underneath the
//! mount, and the state directory.

pub mod creds;
pub mod local;
pub mod stat;
pub mod state;
pub mod sys;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A time as etlfs writes it down (object metadata, manifest entries, upload records): nanoseconds since
/// the epoch, negative before it.
pub fn ns(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// `n` in 64 bits (±292 years around 1970), saturating: for tables that keep many times.
pub fn narrow(n: i128) -> i64 {
    n.clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

/// [`ns`] read back.
pub fn from_ns(n: i128) -> SystemTime {
    if n >= 0 {
        UNIX_EPOCH + Duration::from_nanos(n as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs() as u64)
    }
}
