//! The Keepsake agent (`keepsake`): change detection, local catalog, backup pipeline, upload and
//! restore.
//!
//! Modules, each named after what it owns, in the order a backup passes through them:
//!
//! * [`home`] — the agent's home folder: every file name in it, the machine's credentials, the
//!   cached policy, and the one place that opens the catalog.
//! * [`exclude`] — the exclusion rules: one `config` layering built-in defaults, the server's
//!   organisation/machine/source rules, the local file and flags; the matcher answers "which rule
//!   matched and why".
//! * [`entry`] — what a file-system entry is: kind, catalog key, the one stat fingerprint.
//! * [`detect`] — what changed: the streaming scanner of a source root, the stat fingerprint,
//!   the plan (scan merged with the catalog) and the file-system watcher.
//! * [`backup`] — the one orchestrator of a backup run (classify, wedding-critical pass, main
//!   pass), to the server or to a local sink.
//! * [`pipeline`] — read, chunk, hash, dedup, seal and emit file contents; the job delta.
//! * [`upload`] — packs and deltas sent to the server, resumable.
//! * [`client`] — the HTTP client of the server's API, with failover across server URLs.
//! * [`catalog`] — the local SQLite catalog (schema, migrations, crash-safe writes).
//! * [`restore`] — restoring a recovery point (or part of it) into a folder, never outside it.
//! * [`recovery`] — recovery requests made centrally and executed here: space check, restore,
//!   validation, progress and logs to the server; restore drills.
//! * [`enroll`] — enrolling this machine with an organisation.
//! * [`daemon`] — `keepsake run`: the real-time loop, schedules, offline queue, heartbeat.
//! * [`cli`] — the `keepsake` command line, one file per command.
//! * [`relpath`] — paths relative to a source root as raw OS bytes.
//! * [`test_hooks`] — the environment hooks of the end-to-end tests, read only in builds with the
//!   `test-hooks` feature.
//! * [`units`] — byte sizes for people.
#![warn(missing_docs)]

pub mod backup;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod detect;
pub mod enroll;
pub mod entry;
pub mod exclude;
pub mod home;
pub mod pipeline;
pub mod recovery;
pub mod relpath;
pub mod restore;
pub mod test_hooks;
pub mod units;
pub mod upload;
