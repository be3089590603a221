//! The Keepsake agent (`keepsake`): change detection, local catalog, backup pipeline, upload and
//! restore.
//!
//! Modules, each named after what it owns:
//!
//! * [`exclude`] — the exclusion matcher (gitignore semantics over layered rule sources, marker
//!   files, size limit), answering "which rule matched and why".
//! * [`scan`] — the streaming scanner of one source root.
//! * [`catalog`] — the local SQLite catalog (schema, migrations, crash-safe writes).
//! * [`plan`] — scan merged with catalog: what changed since the last committed state.
//! * [`pipeline`] — the backup pipeline: read, chunk, hash, dedup, seal, emit; the job delta.
//! * [`restore`] — restoring a recovery point (or part of it) into a folder.
//! * [`recovery`] — recovery requests made centrally and executed here: space check, restore,
//!   validation, progress and logs to the server; restore drills.
//! * [`cli`] — the `keepsake` command line.
//! * [`relpath`] — paths relative to a source root as raw OS bytes.
//! * [`units`] — byte sizes for people.
#![warn(missing_docs)]

pub mod backup;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod detect;
pub mod enroll;
pub mod exclude;
pub mod home;
pub mod pipeline;
pub mod recovery;
pub mod relpath;
pub mod restore;
pub mod units;
pub mod upload;
