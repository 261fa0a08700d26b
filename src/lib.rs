//! etlfs: a FUSE filesystem mounted over a directory that serves it at native speed from the
//! local disk and (in the following steps) mirrors it to object storage.
//!
//! Module map and the rules between modules: `DESIGN.md` (shared with the team) and the
//! README. In short: `fuse` alone touches fuser replies, `sys` alone holds `unsafe`, and the
//! core (`overlay`) is testable without FUSE.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bucket;
pub mod config;
pub mod counters;
pub mod escape;
pub mod fetch;
pub mod fuse;
pub mod history;
pub mod index;
pub mod journal;
pub mod lease;
pub mod local;
pub mod mirror;
pub mod mountopts;
pub mod oneshot;
pub mod overlay;
pub mod run;
pub mod state;
pub mod status;
pub mod sys;
