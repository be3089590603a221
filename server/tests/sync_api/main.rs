//! The sync protocol from the server's side, over real HTTP on 127.0.0.1 with real PostgreSQL and
//! real storage: enrolment, keys, blob upload into packs, job deltas and commits, browsing and
//! blob reads — and every refusal: hostile bodies, other organisations, append-only agents.

#[path = "../sync_support/mod.rs"]
mod sync_support;

mod enrolment;
mod refusals;
mod round_trip;
mod storage;
