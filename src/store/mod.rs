//! The bucket: the one door to `object_store` (bucket), the configuration that opens it, and
//! the one routine that uploads a local file (upload).

pub mod bucket;
pub mod config;
pub mod upload;
