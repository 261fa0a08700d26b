//! Keeping the served directory and the bucket in step: what the bucket holds (index), changes
//! on their way up (mirror, journal, lease), files on their way down (fetch), and the bucket as
//! it was at a point in time (as_of).

pub mod as_of;
pub mod fetch;
pub mod index;
pub mod journal;
pub mod lease;
pub mod manifest;
pub mod mirror;
pub mod recover;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A time as the engine writes it down (manifest entries, upload records): nanoseconds since
/// the epoch, negative before it.
pub fn ns(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// [`ns`] read back.
pub fn from_ns(n: i128) -> SystemTime {
    if n >= 0 {
        UNIX_EPOCH + Duration::from_nanos(n as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs() as u64)
    }
}
