//! The kernel's face: the FUSE adapter, the overlay it drives, and the `-o` mount options.

pub mod fuse;
pub mod mountopts;
pub mod overlay;
