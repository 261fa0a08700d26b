//! The floor: Linux system calls (the only `unsafe` in etlfs), the directory underneath the
//! mount, and the state directory.

pub mod local;
pub mod state;
pub mod sys;
