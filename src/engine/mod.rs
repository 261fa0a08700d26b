//! Keeping the served directory and the bucket in step: what the bucket holds (index, and its
//! cache, the manifest), changes on their way up (events, mirror, journal, lease), files on
//! their way down (fetch), what a start reconciles (recover), removals that outlive the late
//! requests of a killed etlfs (tombstones), and the bucket as it was at a point in time
//! (as_of).

pub mod as_of;
pub mod events;
pub mod fetch;
pub mod index;
pub mod journal;
pub mod lease;
pub mod manifest;
pub mod mirror;
pub mod recover;
pub mod tombstones;
