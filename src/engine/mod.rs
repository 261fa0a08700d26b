//! Keeping the served directory and the bucket in step: what the bucket holds (index), changes
//! on their way up (mirror, journal, lease), files on their way down (fetch), and the bucket as
//! it was at a point in time (as_of).

pub mod as_of;
pub mod fetch;
pub mod index;
pub mod journal;
pub mod lease;
pub mod mirror;
