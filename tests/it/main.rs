//! The integration tests, one binary (one link of the library per build), one module per area
//! of the product. Most run the real `etlfs` binary over real FUSE mounts against the object
//! storage test servers on 127.0.0.1 (scripts/servers.sh, started by scripts/test.sh); the
//! shared fixture is in [`common`]. Select an area with a filter on the module path, e.g.
//! `cargo nextest run -E 'test(/^mount::/)'`.
//!
//! nextest runs each test in a process of its own. Plain `cargo test` runs them as threads of
//! one process, which is safe too: no test changes what a process shares (environment,
//! working directory, signal handlers, umask); the reference model's runtime and log subscriber
//! are statics only [`model`] uses.

mod common;

mod availability;
mod bucket_config;
mod bucket_errors;
mod cli;
mod deploy;
mod docs;
mod enospc;
mod evict;
mod fetch;
mod helper;
mod history;
mod inputs;
mod manifest;
mod mirror;
mod model;
mod monitoring;
mod mount;
mod names;
mod oneshot;
mod perm;
mod pjdfstest;
mod priority;
mod restore;
mod secrets;
mod servers;
mod soak;
mod status;
mod status_page;
mod trust;
mod workload;
