//! The commands: `etlfs mount` (wiring the layers below into a served mount) and the one-shot
//! commands that compare a directory with its bucket without mounting.

pub mod mount;
pub mod oneshot;
