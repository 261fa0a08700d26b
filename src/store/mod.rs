//! The bucket: the one door to `object_store` (bucket) and the configuration that opens it.

pub mod bucket;
pub mod config;
