//! The commands: `etlfs mount` (wiring the layers below into a served mount), the one-shot
//! commands that compare a directory with its bucket without mounting, and `etlfs status`
//! (the client of a mount's status server).

pub mod mount;
pub mod oneshot;
pub mod status;
