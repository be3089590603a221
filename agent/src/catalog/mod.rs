//! The local SQLite catalog: the agent's durable memory.
//!
//! What it holds (schema in [`MIGRATIONS`], explained in docs/agent.md): the watched sources,
//! one row per file/folder/symlink with the metadata last seen and the version last committed,
//! the blob lists of committed versions, the blobs the server is known to hold (stamped with the
//! server's garbage-collection epoch), the queue of pending work, the history of scans (with a
//! resume checkpoint) and of jobs.
//!
//! Crash safety: every state change is one transaction (`BEGIN IMMEDIATE` … `COMMIT`) in WAL
//! mode, so a crash leaves either the state before or after it. A scan writes its changes in
//! batches together with its checkpoint; rows it did not see are parked in `scan_missing` and
//! become deletions only in the transaction that completes the scan.
//!
//! This module owns the [`Catalog`] handle (opening the file, connection settings: WAL,
//! `synchronous = NORMAL`, foreign keys on), the error type and the shared id types. The
//! tables are handled by sub-modules, one per table group, each adding its own `impl Catalog`
//! block; everything public is re-exported here, so callers only ever name `crate::catalog::X`:
//!
//! * `migrate` — the migration list (the schema) and `schema_migrations`;
//! * `sources` — `sources`;
//! * `files` — reads of `files` and `file_blobs`, the blob-list encoding;
//! * `scans` — `scans` and `scan_missing`, and the scan's writes to `files` and `queue`;
//! * `commits` — recording a committed backup job into `files`, `file_blobs` and `queue`;
//! * `server_blobs` — `server_blobs` and the server epoch in `agent_state`;
//! * `queue` — `queue`;
//! * `jobs` — `jobs`;
//! * `verify` — the consistency check;
//! * `lock` — the writer lock file.

mod commits;
mod files;
mod jobs;
mod lock;
mod migrate;
mod queue;
mod scans;
mod server_blobs;
mod sources;
mod verify;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

pub use commits::CommitEntry;
pub use files::{decode_blob_list, encode_blob_list, BlobRef, FileRecord, FileState, ScanRow};
pub use jobs::{JobRecord, JobStatus};
pub use lock::WriterLock;
pub use migrate::{latest_schema_version, Migration, MIGRATIONS};
pub use queue::{Priority, QueueItem, QueueReason};
pub use scans::{FileWrite, RunningScan, ScanBatch, ScanCompletion, ScanSession};
pub use sources::Source;
pub use verify::VerifyReport;

/// A source's id in the catalog.
pub type SourceId = i64;
/// A blob id (keyed BLAKE3 of a plaintext chunk): opaque 32 bytes here.
pub type BlobId = [u8; 32];

/// How long a writer waits for another connection's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Catalog errors.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SQLite failed.
    #[error("catalog database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The catalog was written by a newer agent.
    #[error("the catalog has schema version {found}, newer than this agent supports ({supported}); upgrade keepsake")]
    TooNew {
        /// Version found in the file.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// A row holds a value this build cannot interpret.
    #[error("corrupt catalog row: {0}")]
    Corrupt(String),
    /// The scan is no longer running (completed or abandoned by another process).
    #[error("scan {0} is not running any more")]
    ScanNotRunning(i64),
    /// File system error around the catalog file.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the writer lock.
    #[error("another keepsake process is updating the catalog (lock {0} is held)")]
    Locked(String),
}

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The catalog.
pub struct Catalog {
    conn: Connection,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Catalog> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| CatalogError::Io {
                path: parent.display().to_string(),
                source: e,
            })?;
        }
        let conn = Connection::open(path)?;
        let mut c = Catalog {
            conn,
            path: Some(path.to_path_buf()),
        };
        c.configure()?;
        c.migrate(MIGRATIONS)?;
        Ok(c)
    }

    /// An empty in-memory catalog (for a dry run with no catalog on disk, and tests).
    pub fn open_in_memory() -> Result<Catalog> {
        let conn = Connection::open_in_memory()?;
        let mut c = Catalog { conn, path: None };
        c.configure()?;
        c.migrate(MIGRATIONS)?;
        Ok(c)
    }

    /// The file this catalog lives in (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn configure(&mut self) -> Result<()> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: readers never block the writer and a commit is one append. synchronous=NORMAL:
        // in WAL mode a crash of the process never loses or corrupts a commit, and a power
        // cut can at worst roll back the last commits — everything the catalog holds can be
        // re-derived (a rescan) or replayed idempotently against the server, so the fsync per
        // commit that FULL costs buys nothing here (see docs/agent.md).
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if mode != "wal" && self.path.is_some() {
            tracing::warn!("catalog journal mode is {mode}, not wal");
        }
        self.conn.execute_batch(
            "PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -16384;
             PRAGMA temp_store = MEMORY;",
        )?;
        self.conn.set_prepared_statement_cache_capacity(64);
        Ok(())
    }

    /// Direct read access for diagnostics and tests.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}
