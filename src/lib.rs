//! etlfs: a FUSE filesystem mounted over a directory that serves it at native speed from the
//! local disk, mirrors every change to an object-storage bucket and fetches what is missing
//! locally from that bucket.
//!
//! The folders are the layers, each importing only from the ones below it
//! (`doc/ARCHITECTURE.md` walks through them):
//!
//! - [`cli`]: the commands — `mount`, and `backup`/`restore`/`verify`/`history`;
//! - [`ops`]: operating a mount — the status server, its metrics and recent events;
//! - [`fs`]: the kernel's face — the FUSE adapter (the only module that sees fuser's
//!   requests and replies) and the overlay it drives;
//! - [`engine`]: keeping the directory and the bucket in step — mirror, fetch, index, journal,
//!   lease, points in time;
//! - [`store`]: the bucket — the only layer that imports `object_store` — and its configuration;
//! - [`os`]: the floor — system calls (the only `unsafe`), the served directory, the state
//!   directory.
//!
//! [`counters`] and [`escape`] are used by every layer.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod core;
pub mod counters;
pub mod engine;
pub mod escape;
pub mod fs;
pub mod ops;
pub mod os;
pub mod store;
