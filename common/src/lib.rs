//! Keepsake's shared format and wire types.
//!
//! Nothing in this crate does IO beyond `std::io::Read`/`Write` streams: no tokio, no HTTP, no SQL.

pub mod api;
