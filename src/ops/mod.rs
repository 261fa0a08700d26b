//! Operating a mount: the status server (`/status`, `/metrics`) and what it reports.

pub mod status;
