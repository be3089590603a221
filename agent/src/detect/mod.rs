//! Change detection: what changed in a source since its last committed backup.
//!
//! * [`watch`] — filesystem notifications: which source changed, and when the notifications
//!   cannot be trusted so the source must be rescanned (the daemon's trigger);
//! * [`scan`] — the streaming walk of one source root through the exclusion matcher;
//! * [`plan`] — the walk merged with the catalog: new, modified, unchanged, deleted;
//! * [`Stat`] — the one stat fingerprint that says "same version" to all of them (it lives in
//!   `crate::entry` with the entry types, which the catalog uses too).
//!
//! The plan is what a backup feeds to the pipeline (`crate::backup`). Crash behaviour is the
//! plan's: its catalog writes are batched transactions with a checkpoint, and a killed scan is
//! resumed by the next run; the watcher and the scanner hold no durable state.

pub mod plan;
pub mod scan;
pub mod watch;

pub use crate::entry::Stat;
