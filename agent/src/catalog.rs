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

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::relpath::{bytes_to_path, os_bytes, RelPath};
use crate::scan::{catalog_key, Entry, EntryKind};

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

/// One versioned schema migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version number, strictly increasing from 1.
    pub version: i64,
    /// Short name.
    pub name: &'static str,
    /// SQL run in one transaction.
    pub sql: &'static str,
    /// Run with foreign-key enforcement off (SQLite's recipe for rebuilding a table that others
    /// reference: dropping it would otherwise cascade); the keys are checked before the commit.
    pub foreign_keys_off: bool,
}

/// The catalog's migrations, applied in order on open.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: r#"
CREATE TABLE sources (
    id                        INTEGER PRIMARY KEY,
    root                      BLOB NOT NULL UNIQUE,
    root_display              TEXT NOT NULL,
    label                     TEXT,
    server_source_id          TEXT,
    created_at                INTEGER NOT NULL,
    last_completed_generation INTEGER
);

CREATE TABLE files (
    source_id          INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    path               BLOB NOT NULL,
    kind               INTEGER NOT NULL CHECK (kind IN (0, 1, 2)),
    size               INTEGER NOT NULL,
    mtime_ns           INTEGER NOT NULL,
    ctime_ns           INTEGER NOT NULL,
    inode              INTEGER NOT NULL,
    device             INTEGER NOT NULL,
    mode               INTEGER NOT NULL,
    symlink_target     BLOB,
    content_hash       BLOB CHECK (content_hash IS NULL OR length(content_hash) = 32),
    state              TEXT NOT NULL
                       CHECK (state IN ('pending', 'uploaded', 'committed', 'deleted', 'error')),
    changed_generation INTEGER NOT NULL,
    committed_seq      INTEGER,
    error              TEXT,
    PRIMARY KEY (source_id, path),
    CHECK (state NOT IN ('committed', 'deleted') OR committed_seq IS NOT NULL)
) WITHOUT ROWID;

CREATE TABLE file_blobs (
    source_id INTEGER NOT NULL,
    path      BLOB NOT NULL,
    blobs     BLOB NOT NULL,
    PRIMARY KEY (source_id, path),
    FOREIGN KEY (source_id, path) REFERENCES files(source_id, path) ON DELETE CASCADE
);

CREATE TABLE server_blobs (
    blob_id       BLOB PRIMARY KEY CHECK (length(blob_id) = 32),
    plaintext_len INTEGER NOT NULL,
    server_epoch  INTEGER NOT NULL,
    confirmed_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE agent_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO agent_state (key, value) VALUES ('server_gc_epoch', '0');

CREATE TABLE queue (
    source_id       INTEGER NOT NULL,
    path            BLOB NOT NULL,
    reason          TEXT NOT NULL CHECK (reason IN ('new', 'modified', 'deleted')),
    priority        INTEGER NOT NULL,
    enqueued_at     INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    PRIMARY KEY (source_id, path),
    FOREIGN KEY (source_id, path) REFERENCES files(source_id, path) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX queue_due ON queue (priority, next_attempt_at);

CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    source_id   INTEGER REFERENCES sources(id) ON DELETE SET NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    status      TEXT NOT NULL CHECK (status IN
                ('running', 'completed', 'completed_with_errors', 'failed', 'interrupted')),
    counters    TEXT,
    error       TEXT
);

CREATE TABLE scans (
    id           INTEGER PRIMARY KEY,
    source_id    INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    generation   INTEGER NOT NULL,
    job_id       INTEGER REFERENCES jobs(id),
    status       TEXT NOT NULL CHECK (status IN ('running', 'completed', 'abandoned')),
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    resume_after BLOB,
    counters     TEXT,
    UNIQUE (source_id, generation)
);
CREATE UNIQUE INDEX scans_one_running ON scans (source_id) WHERE status = 'running';

CREATE TABLE scan_missing (
    scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
    path    BLOB NOT NULL,
    PRIMARY KEY (scan_id, path)
) WITHOUT ROWID;
"#,
        foreign_keys_off: false,
    },
    // Named pipes are recorded (kind 3). SQLite cannot change a CHECK constraint in place, so
    // the table is rebuilt with its rows.
    Migration {
        version: 2,
        name: "named pipes",
        sql: r#"
CREATE TABLE files_v2 (
    source_id          INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    path               BLOB NOT NULL,
    kind               INTEGER NOT NULL CHECK (kind IN (0, 1, 2, 3)),
    size               INTEGER NOT NULL,
    mtime_ns           INTEGER NOT NULL,
    ctime_ns           INTEGER NOT NULL,
    inode              INTEGER NOT NULL,
    device             INTEGER NOT NULL,
    mode               INTEGER NOT NULL,
    symlink_target     BLOB,
    content_hash       BLOB CHECK (content_hash IS NULL OR length(content_hash) = 32),
    state              TEXT NOT NULL
                       CHECK (state IN ('pending', 'uploaded', 'committed', 'deleted', 'error')),
    changed_generation INTEGER NOT NULL,
    committed_seq      INTEGER,
    error              TEXT,
    PRIMARY KEY (source_id, path),
    CHECK (state NOT IN ('committed', 'deleted') OR committed_seq IS NOT NULL)
) WITHOUT ROWID;
INSERT INTO files_v2 SELECT * FROM files;
DROP TABLE files;
ALTER TABLE files_v2 RENAME TO files;
"#,
        foreign_keys_off: true,
    },
];

/// The newest schema version this build knows.
pub fn latest_schema_version() -> i64 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A watched root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// Catalog id.
    pub id: SourceId,
    /// Root path (canonical).
    pub root: PathBuf,
    /// Label for people.
    pub label: Option<String>,
    /// The server's id for this source, once registered.
    pub server_source_id: Option<String>,
    /// Generation of the last completed scan.
    pub last_completed_generation: Option<i64>,
}

/// Backup state of a catalog row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Seen with metadata that no committed version has; needs backing up.
    Pending,
    /// Its blobs are on the server; the delta referencing them is not committed yet.
    Uploaded,
    /// The last committed version matches the metadata last seen.
    Committed,
    /// Gone from disk (seen missing by a completed scan); the deletion is not committed yet.
    Deleted,
    /// The last backup attempt failed (see `error` and the queue's attempts).
    Error,
}

impl FileState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Pending => "pending",
            FileState::Uploaded => "uploaded",
            FileState::Committed => "committed",
            FileState::Deleted => "deleted",
            FileState::Error => "error",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<FileState> {
        Some(match s {
            "pending" => FileState::Pending,
            "uploaded" => FileState::Uploaded,
            "committed" => FileState::Committed,
            "deleted" => FileState::Deleted,
            "error" => FileState::Error,
            _ => return None,
        })
    }
}

/// One catalog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Catalog key: the relative path's bytes, with a trailing `/` for a folder.
    pub key: Vec<u8>,
    /// File, folder or symlink.
    pub kind: EntryKind,
    /// Size last seen.
    pub size: u64,
    /// mtime last seen (ns).
    pub mtime_ns: i64,
    /// ctime last seen (ns).
    pub ctime_ns: i64,
    /// Inode last seen.
    pub inode: u64,
    /// Device last seen.
    pub device: u64,
    /// Mode last seen.
    pub mode: u32,
    /// Symlink target last seen.
    pub symlink_target: Option<Vec<u8>>,
    /// Content hash of the committed version (opaque 32 bytes).
    pub content_hash: Option<[u8; 32]>,
    /// Backup state.
    pub state: FileState,
    /// Scan generation that last wrote this row's metadata.
    pub changed_generation: i64,
    /// Sequence number of the job that committed the current committed version.
    pub committed_seq: Option<i64>,
    /// Last error.
    pub error: Option<String>,
}

impl FileRecord {
    /// The relative path (the key without a folder's trailing `/`).
    pub fn rel(&self) -> RelPath {
        let k = self.key.strip_suffix(b"/").unwrap_or(&self.key);
        RelPath::from_bytes(k.to_vec()).unwrap_or_default()
    }

    /// Whether `e` looks unchanged: same kind, size, mtime, ctime and inode (and symlink
    /// target). The device number is not compared: it can change when a NAS share or a USB
    /// disk is mounted again, which must not force a full re-read.
    pub fn same_metadata(&self, e: &Entry) -> bool {
        metadata_matches(
            self.kind,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            self.inode,
            self.symlink_target.as_deref(),
            e,
        )
    }

    /// Whether a version of this path has been committed to the server.
    pub fn has_committed_version(&self) -> bool {
        self.committed_seq.is_some()
    }
}

fn metadata_matches(
    kind: EntryKind,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    target: Option<&[u8]>,
    e: &Entry,
) -> bool {
    kind == e.kind
        && size == e.size
        && mtime_ns == e.mtime_ns
        && ctime_ns == e.ctime_ns
        && inode == e.inode
        && (kind != EntryKind::Symlink || target == e.symlink_target.as_deref())
}

/// The part of a catalog row a rescan compares (lighter than [`FileRecord`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRow {
    /// Catalog key.
    pub key: Vec<u8>,
    /// Kind.
    pub kind: EntryKind,
    /// Size last seen.
    pub size: u64,
    /// mtime last seen.
    pub mtime_ns: i64,
    /// ctime last seen.
    pub ctime_ns: i64,
    /// Inode last seen.
    pub inode: u64,
    /// Symlink target last seen.
    pub symlink_target: Option<Vec<u8>>,
    /// Backup state.
    pub state: FileState,
    /// Sequence of the committing job, if any version was committed.
    pub committed_seq: Option<i64>,
}

impl ScanRow {
    /// See [`FileRecord::same_metadata`].
    pub fn same_metadata(&self, e: &Entry) -> bool {
        metadata_matches(
            self.kind,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            self.inode,
            self.symlink_target.as_deref(),
            e,
        )
    }

    /// Whether a version was committed.
    pub fn has_committed_version(&self) -> bool {
        self.committed_seq.is_some()
    }

    /// The relative path.
    pub fn rel(&self) -> RelPath {
        let k = self.key.strip_suffix(b"/").unwrap_or(&self.key);
        RelPath::from_bytes(k.to_vec()).unwrap_or_default()
    }
}

/// One blob of a file's content: its id and plaintext length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    /// Blob id.
    pub id: BlobId,
    /// Plaintext length of the chunk.
    pub len: u64,
}

const BLOB_LIST_VERSION: u8 = 1;

/// Encodes an ordered blob list: a version byte, then per blob the 32-byte id and the length
/// as an unsigned LEB128 varint (1–3 bytes for typical chunk sizes).
pub fn encode_blob_list(blobs: &[BlobRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + blobs.len() * 35);
    out.push(BLOB_LIST_VERSION);
    for b in blobs {
        out.extend_from_slice(&b.id);
        let mut v = b.len;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

/// Decodes [`encode_blob_list`]'s format.
pub fn decode_blob_list(mut data: &[u8]) -> Result<Vec<BlobRef>> {
    let bad = |why: &str| CatalogError::Corrupt(format!("blob list: {why}"));
    let (&version, rest) = data.split_first().ok_or_else(|| bad("empty"))?;
    if version != BLOB_LIST_VERSION {
        return Err(bad("unknown version"));
    }
    data = rest;
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 32 {
            return Err(bad("truncated id"));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&data[..32]);
        data = &data[32..];
        let mut len: u64 = 0;
        let mut shift = 0u32;
        loop {
            let (&byte, rest) = data.split_first().ok_or_else(|| bad("truncated length"))?;
            data = rest;
            if shift >= 64 || (shift == 63 && byte > 1) {
                return Err(bad("length overflows"));
            }
            len |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        out.push(BlobRef { id, len });
    }
    Ok(out)
}

/// Why a path is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueReason {
    /// Never backed up.
    New,
    /// Changed since the committed version.
    Modified,
    /// Gone; the deletion must be committed.
    Deleted,
}

impl QueueReason {
    fn as_str(self) -> &'static str {
        match self {
            QueueReason::New => "new",
            QueueReason::Modified => "modified",
            QueueReason::Deleted => "deleted",
        }
    }
    fn parse(s: &str) -> Option<QueueReason> {
        Some(match s {
            "new" => QueueReason::New,
            "modified" => QueueReason::Modified,
            "deleted" => QueueReason::Deleted,
            _ => return None,
        })
    }
}

/// Priority classes: lower runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Wedding-critical data (e.g. a wedding's folders in the days around it).
    Critical = 0,
    /// Everything else.
    Normal = 1,
    /// Background catch-up.
    Low = 2,
}

impl Priority {
    fn from_i64(v: i64) -> Priority {
        match v {
            0 => Priority::Critical,
            2 => Priority::Low,
            _ => Priority::Normal,
        }
    }
}

/// A queued piece of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueItem {
    /// Source.
    pub source_id: SourceId,
    /// Catalog key.
    pub key: Vec<u8>,
    /// Why.
    pub reason: QueueReason,
    /// Priority class.
    pub priority: Priority,
    /// When it was (last) enqueued, ms since the epoch.
    pub enqueued_at: i64,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Not before this time (ms since the epoch).
    pub next_attempt_at: i64,
    /// Last failure.
    pub last_error: Option<String>,
}

/// Status of a job in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Still running (or the process died; see `Interrupted`).
    Running,
    /// Finished cleanly.
    Completed,
    /// Finished, but some paths had errors.
    CompletedWithErrors,
    /// Failed.
    Failed,
    /// The process stopped before finishing (found on restart).
    Interrupted,
}

impl JobStatus {
    fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::CompletedWithErrors => "completed_with_errors",
            JobStatus::Failed => "failed",
            JobStatus::Interrupted => "interrupted",
        }
    }
    fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "completed_with_errors" => JobStatus::CompletedWithErrors,
            "failed" => JobStatus::Failed,
            "interrupted" => JobStatus::Interrupted,
            _ => return None,
        })
    }
}

/// A job in the local history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    /// Job id.
    pub id: i64,
    /// Kind (`scan`, later `backup`, `restore`).
    pub kind: String,
    /// Source, if any.
    pub source_id: Option<SourceId>,
    /// Start, ms since the epoch.
    pub started_at: i64,
    /// End, ms since the epoch.
    pub finished_at: Option<i64>,
    /// Status.
    pub status: JobStatus,
    /// Counters (JSON).
    pub counters: Option<String>,
    /// Error text.
    pub error: Option<String>,
}

/// A scan in progress, as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanSession {
    /// Scan id.
    pub scan_id: i64,
    /// Source.
    pub source_id: SourceId,
    /// Scan generation (1, 2, … per source).
    pub generation: i64,
    /// Job recording this run.
    pub job_id: i64,
    /// Where an interrupted run stopped: keys up to it are done.
    pub resume_after: Option<Vec<u8>>,
    /// True if this continues an interrupted scan.
    pub resumed: bool,
    /// Counters saved by the interrupted run (JSON).
    pub saved_counters: Option<String>,
}

/// A scan recorded as running (possibly by a process that died).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningScan {
    /// Scan id.
    pub scan_id: i64,
    /// Generation.
    pub generation: i64,
    /// The job of the run that last worked on it.
    pub job_id: Option<i64>,
    /// Checkpoint: keys up to it are done.
    pub resume_after: Option<Vec<u8>>,
    /// Saved counters (JSON).
    pub counters: Option<String>,
}

impl RunningScan {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunningScan> {
        Ok(RunningScan {
            scan_id: r.get(0)?,
            generation: r.get(1)?,
            job_id: r.get(2)?,
            resume_after: r.get(3)?,
            counters: r.get(4)?,
        })
    }
}

/// Metadata to record for a new or changed path.
#[derive(Debug, Clone)]
pub struct FileWrite {
    /// What the scanner saw.
    pub entry: Entry,
    /// Queue reason (new or modified).
    pub reason: QueueReason,
}

/// One batch of a scan's changes, written in one transaction with the checkpoint.
#[derive(Debug, Clone, Default)]
pub struct ScanBatch {
    /// New or changed rows.
    pub writes: Vec<FileWrite>,
    /// Keys of rows in state `deleted` seen again unchanged (back to `committed`).
    pub revived: Vec<Vec<u8>>,
    /// Keys of rows not seen by this scan (deletions once the scan completes).
    pub missing: Vec<Vec<u8>>,
    /// Every key up to this one has been handled.
    pub checkpoint: Option<Vec<u8>>,
    /// Running counters (JSON) saved for a resumed run.
    pub counters: String,
}

impl ScanBatch {
    /// True if nothing but the checkpoint would be written.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.revived.is_empty() && self.missing.is_empty()
    }
}

/// Result of completing a scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanCompletion {
    /// Rows with a committed version marked `deleted` (deletions to commit).
    pub deleted: u64,
    /// Rows never committed that were simply removed.
    pub dropped: u64,
}

/// What a backup commit recorded for one path.
#[derive(Debug, Clone)]
pub enum CommitEntry {
    /// A version of the file was committed. The metadata is what the pipeline saw when it
    /// read the file: if the catalog has seen newer metadata since, the row stays pending.
    Version {
        /// Catalog key.
        key: Vec<u8>,
        /// Metadata read with the content.
        size: u64,
        /// mtime read with the content.
        mtime_ns: i64,
        /// ctime read with the content.
        ctime_ns: i64,
        /// inode read with the content.
        inode: u64,
        /// Content hash (opaque).
        content_hash: Option<[u8; 32]>,
        /// Ordered blobs.
        blobs: Vec<BlobRef>,
    },
    /// The deletion of the path was committed.
    Deletion {
        /// Catalog key.
        key: Vec<u8>,
    },
}

/// Result of [`Catalog::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Problems found (empty when the catalog is consistent).
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
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

const FILE_COLUMNS: &str =
    "path, kind, size, mtime_ns, ctime_ns, inode, device, mode, symlink_target, \
     content_hash, state, changed_generation, committed_seq, error";

fn record_from_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<std::result::Result<FileRecord, String>> {
    let key: Vec<u8> = row.get(0)?;
    let kind: i64 = row.get(1)?;
    let hash: Option<Vec<u8>> = row.get(9)?;
    let state_ref = row.get_ref(10)?;
    let state_text = state_ref.as_str().unwrap_or("");
    let Some(kind) = EntryKind::from_code(kind) else {
        return Ok(Err(format!("unknown kind {kind}")));
    };
    let Some(state) = FileState::parse(state_text) else {
        return Ok(Err(format!("unknown state {state_text:?}")));
    };
    let content_hash = match hash {
        None => None,
        Some(h) => match <[u8; 32]>::try_from(h.as_slice()) {
            Ok(a) => Some(a),
            Err(_) => return Ok(Err("content hash is not 32 bytes".to_string())),
        },
    };
    Ok(Ok(FileRecord {
        key,
        kind,
        size: row.get::<_, i64>(2)? as u64,
        mtime_ns: row.get(3)?,
        ctime_ns: row.get(4)?,
        inode: row.get::<_, i64>(5)? as u64,
        device: row.get::<_, i64>(6)? as u64,
        mode: row.get::<_, i64>(7)? as u32,
        symlink_target: row.get(8)?,
        content_hash,
        state,
        changed_generation: row.get(11)?,
        committed_seq: row.get(12)?,
        error: row.get(13)?,
    }))
}

fn path_bytes(p: &Path) -> Vec<u8> {
    os_bytes(p.as_os_str()).into_owned()
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

    /// Applies `migrations` not yet recorded in `schema_migrations`, each in its own
    /// transaction. Refuses a catalog newer than the list.
    pub fn migrate(&mut self, migrations: &[Migration]) -> Result<()> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at INTEGER NOT NULL
             )",
        )?;
        let supported = migrations.last().map(|m| m.version).unwrap_or(0);
        let current = self.schema_version()?;
        if current > supported {
            return Err(CatalogError::TooNew {
                found: current,
                supported,
            });
        }
        if current == supported {
            return Ok(());
        }
        for m in migrations {
            if m.foreign_keys_off {
                // Has no effect inside a transaction, so it is set before.
                self.conn.execute_batch("PRAGMA foreign_keys = OFF")?;
            }
            let applied = self.apply(m, supported);
            if m.foreign_keys_off {
                self.conn.execute_batch("PRAGMA foreign_keys = ON")?;
            }
            applied?;
        }
        let current = self.schema_version()?;
        if current > supported {
            return Err(CatalogError::TooNew {
                found: current,
                supported,
            });
        }
        Ok(())
    }

    /// Applies one migration in its own transaction unless it is recorded already.
    fn apply(&mut self, m: &Migration, supported: i64) -> Result<()> {
        {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )?;
            if current > supported {
                return Err(CatalogError::TooNew {
                    found: current,
                    supported,
                });
            }
            if m.version <= current {
                return Ok(());
            }
            tracing::info!(
                version = m.version,
                name = m.name,
                "applying catalog migration"
            );
            tx.execute_batch(m.sql)?;
            if m.foreign_keys_off {
                let broken: i64 =
                    tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                        r.get(0)
                    })?;
                if broken > 0 {
                    return Err(CatalogError::Corrupt(format!(
                        "migration {} left {broken} broken reference(s); not applied",
                        m.version
                    )));
                }
            }
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![m.version, m.name, now_ms()],
            )?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The highest applied migration.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?)
    }

    /// Direct read access for diagnostics and tests.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    // ---- sources -------------------------------------------------------------------------

    fn source_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Source> {
        let root: Vec<u8> = row.get(1)?;
        Ok(Source {
            id: row.get(0)?,
            root: bytes_to_path(&root).into_owned(),
            label: row.get(2)?,
            server_source_id: row.get(3)?,
            last_completed_generation: row.get(4)?,
        })
    }

    /// The source whose root is exactly `root`.
    pub fn source_by_root(&self, root: &Path) -> Result<Option<Source>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, root, label, server_source_id, last_completed_generation FROM sources WHERE root = ?1",
        )?;
        Ok(st
            .query_row([path_bytes(root)], Self::source_from_row)
            .optional()?)
    }

    /// All sources.
    pub fn sources(&self) -> Result<Vec<Source>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, root, label, server_source_id, last_completed_generation FROM sources ORDER BY id",
        )?;
        let rows = st.query_map([], Self::source_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The source for `root`, created if needed.
    pub fn ensure_source(&mut self, root: &Path, label: Option<&str>) -> Result<Source> {
        if let Some(s) = self.source_by_root(root)? {
            return Ok(s);
        }
        self.conn.execute(
            "INSERT INTO sources (root, root_display, label, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (root) DO NOTHING",
            params![
                path_bytes(root),
                root.display().to_string(),
                label,
                now_ms()
            ],
        )?;
        self.source_by_root(root)?
            .ok_or_else(|| CatalogError::Corrupt("source vanished after insert".to_string()))
    }

    /// Records the server's id for a source.
    pub fn set_server_source_id(&mut self, source: SourceId, server_id: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE sources SET server_source_id = ?2 WHERE id = ?1",
            params![source, server_id],
        )?;
        Ok(())
    }

    // ---- files ---------------------------------------------------------------------------

    /// The row for exactly this catalog key.
    pub fn lookup_key(&self, source: SourceId, key: &[u8]) -> Result<Option<FileRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE source_id = ?1 AND path = ?2"
        ))?;
        match st
            .query_row(params![source, key], record_from_row)
            .optional()?
        {
            None => Ok(None),
            Some(Ok(r)) => Ok(Some(r)),
            Some(Err(why)) => Err(CatalogError::Corrupt(why)),
        }
    }

    /// The row for a relative path (a file or symlink, else a folder of that name).
    pub fn lookup(&self, source: SourceId, rel: &RelPath) -> Result<Option<FileRecord>> {
        if let Some(r) = self.lookup_key(source, &catalog_key(rel, false))? {
            return Ok(Some(r));
        }
        self.lookup_key(source, &catalog_key(rel, true))
    }

    /// Up to `limit` rows with keys greater than `after`, in key order (a page of a merge).
    pub fn records_after(
        &self,
        source: SourceId,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<FileRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE source_id = ?1 AND path > ?2 ORDER BY path LIMIT ?3"
        ))?;
        let rows = st.query_map(params![source, after, limit as i64], record_from_row)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for r in rows {
            out.push(r?.map_err(CatalogError::Corrupt)?);
        }
        Ok(out)
    }

    /// Up to `limit` rows (the compared columns only) with keys greater than `after`, in key
    /// order: one page of a rescan's merge.
    pub fn scan_rows_after(
        &self,
        source: SourceId,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<ScanRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT path, kind, size, mtime_ns, ctime_ns, inode, symlink_target, state, committed_seq
             FROM files WHERE source_id = ?1 AND path > ?2 ORDER BY path LIMIT ?3",
        )?;
        let mut rows = st.query(params![source, after, limit as i64])?;
        let mut out = Vec::with_capacity(limit.min(4096));
        while let Some(r) = rows.next()? {
            let kind: i64 = r.get(1)?;
            let kind = EntryKind::from_code(kind)
                .ok_or_else(|| CatalogError::Corrupt(format!("unknown kind {kind}")))?;
            let state_ref = r.get_ref(7)?;
            let state_text = state_ref.as_str().unwrap_or("");
            let state = FileState::parse(state_text)
                .ok_or_else(|| CatalogError::Corrupt(format!("unknown state {state_text:?}")))?;
            out.push(ScanRow {
                key: r.get(0)?,
                kind,
                size: r.get::<_, i64>(2)? as u64,
                mtime_ns: r.get(3)?,
                ctime_ns: r.get(4)?,
                inode: r.get::<_, i64>(5)? as u64,
                symlink_target: r.get(6)?,
                state,
                committed_seq: r.get(8)?,
            });
        }
        Ok(out)
    }

    /// Number of rows of a source, optionally only in one state.
    pub fn count_files(&self, source: SourceId, state: Option<FileState>) -> Result<u64> {
        let n: i64 = match state {
            None => self.conn.query_row(
                "SELECT count(*) FROM files WHERE source_id = ?1",
                [source],
                |r| r.get(0),
            )?,
            Some(s) => self.conn.query_row(
                "SELECT count(*) FROM files WHERE source_id = ?1 AND state = ?2",
                params![source, s.as_str()],
                |r| r.get(0),
            )?,
        };
        Ok(n as u64)
    }

    /// The blob list of the committed version of a path.
    pub fn blob_list(&self, source: SourceId, key: &[u8]) -> Result<Option<Vec<BlobRef>>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT blobs FROM file_blobs WHERE source_id = ?1 AND path = ?2")?;
        let data: Option<Vec<u8>> = st
            .query_row(params![source, key], |r| r.get(0))
            .optional()?;
        data.map(|d| decode_blob_list(&d)).transpose()
    }

    // ---- scans ---------------------------------------------------------------------------

    /// Starts a scan of `source`, or continues the one an earlier process left running.
    pub fn begin_scan(&mut self, source: SourceId) -> Result<ScanSession> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let running = tx
            .query_row(
                "SELECT id, generation, job_id, resume_after, counters FROM scans
                 WHERE source_id = ?1 AND status = 'running'",
                [source],
                RunningScan::from_row,
            )
            .optional()?;
        let session = match running {
            Some(RunningScan {
                scan_id,
                generation,
                job_id: old_job,
                resume_after,
                counters,
            }) => {
                if let Some(j) = old_job {
                    tx.execute(
                        "UPDATE jobs SET status = 'interrupted', finished_at = ?2 WHERE id = ?1 AND status = 'running'",
                        params![j, now],
                    )?;
                }
                tx.execute(
                    "INSERT INTO jobs (kind, source_id, started_at, status) VALUES ('scan', ?1, ?2, 'running')",
                    params![source, now],
                )?;
                let job_id = tx.last_insert_rowid();
                tx.execute(
                    "UPDATE scans SET job_id = ?2 WHERE id = ?1",
                    params![scan_id, job_id],
                )?;
                ScanSession {
                    scan_id,
                    source_id: source,
                    generation,
                    job_id,
                    resume_after,
                    resumed: true,
                    saved_counters: counters,
                }
            }
            None => {
                let generation: i64 = tx.query_row(
                    "SELECT COALESCE(MAX(generation), 0) + 1 FROM scans WHERE source_id = ?1",
                    [source],
                    |r| r.get(0),
                )?;
                tx.execute(
                    "INSERT INTO jobs (kind, source_id, started_at, status) VALUES ('scan', ?1, ?2, 'running')",
                    params![source, now],
                )?;
                let job_id = tx.last_insert_rowid();
                tx.execute(
                    "INSERT INTO scans (source_id, generation, job_id, status, started_at)
                     VALUES (?1, ?2, ?3, 'running', ?4)",
                    params![source, generation, job_id, now],
                )?;
                ScanSession {
                    scan_id: tx.last_insert_rowid(),
                    source_id: source,
                    generation,
                    job_id,
                    resume_after: None,
                    resumed: false,
                    saved_counters: None,
                }
            }
        };
        tx.commit()?;
        Ok(session)
    }

    /// Writes one batch of a running scan (changes, revivals, missing keys, checkpoint) in
    /// one transaction.
    pub fn apply_scan_batch(&mut self, scan: &ScanSession, batch: &ScanBatch) -> Result<()> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO files (source_id, path, kind, size, mtime_ns, ctime_ns, inode, device, mode,
                                    symlink_target, state, changed_generation)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', ?11)
                 ON CONFLICT (source_id, path) DO UPDATE SET
                     kind = excluded.kind, size = excluded.size, mtime_ns = excluded.mtime_ns,
                     ctime_ns = excluded.ctime_ns, inode = excluded.inode, device = excluded.device,
                     mode = excluded.mode, symlink_target = excluded.symlink_target,
                     state = 'pending', changed_generation = excluded.changed_generation,
                     error = NULL",
            )?;
            let mut enqueue = tx.prepare_cached(
                "INSERT INTO queue (source_id, path, reason, priority, enqueued_at, attempts, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?5)
                 ON CONFLICT (source_id, path) DO UPDATE SET
                     reason = excluded.reason, priority = min(queue.priority, excluded.priority),
                     enqueued_at = excluded.enqueued_at, attempts = 0,
                     next_attempt_at = excluded.next_attempt_at, last_error = NULL",
            )?;
            for w in &batch.writes {
                let e = &w.entry;
                let key = e.key();
                upsert.execute(params![
                    scan.source_id,
                    key,
                    e.kind.code(),
                    e.size as i64,
                    e.mtime_ns,
                    e.ctime_ns,
                    e.inode as i64,
                    e.device as i64,
                    i64::from(e.mode),
                    e.symlink_target,
                    scan.generation,
                ])?;
                enqueue.execute(params![
                    scan.source_id,
                    key,
                    w.reason.as_str(),
                    Priority::Normal as i64,
                    now
                ])?;
            }
            let mut revive = tx.prepare_cached(
                "UPDATE files SET state = 'committed' WHERE source_id = ?1 AND path = ?2 AND state = 'deleted'",
            )?;
            let mut unqueue = tx.prepare_cached(
                "DELETE FROM queue WHERE source_id = ?1 AND path = ?2 AND reason = 'deleted'",
            )?;
            for k in &batch.revived {
                revive.execute(params![scan.source_id, k])?;
                unqueue.execute(params![scan.source_id, k])?;
            }
            let mut missing = tx.prepare_cached(
                "INSERT OR IGNORE INTO scan_missing (scan_id, path) VALUES (?1, ?2)",
            )?;
            for k in &batch.missing {
                missing.execute(params![scan.scan_id, k])?;
            }
            let n = tx
                .prepare_cached(
                    "UPDATE scans SET resume_after = COALESCE(?2, resume_after), counters = ?3
                 WHERE id = ?1 AND status = 'running'",
                )?
                .execute(params![scan.scan_id, batch.checkpoint, batch.counters])?;
            if n != 1 {
                return Err(CatalogError::ScanNotRunning(scan.scan_id));
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Completes a scan: rows it did not see become deletions (or vanish if they were never
    /// committed), the scan is marked completed and its job finished — one transaction.
    pub fn complete_scan(
        &mut self,
        scan: &ScanSession,
        counters: &str,
        job_status: JobStatus,
    ) -> Result<ScanCompletion> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let still_running: bool = tx
            .query_row(
                "SELECT status = 'running' FROM scans WHERE id = ?1",
                [scan.scan_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false);
        if !still_running {
            return Err(CatalogError::ScanNotRunning(scan.scan_id));
        }
        let deleted = tx.execute(
            "UPDATE files SET state = 'deleted', changed_generation = ?3
             WHERE source_id = ?1 AND committed_seq IS NOT NULL
               AND path IN (SELECT path FROM scan_missing WHERE scan_id = ?2)",
            params![scan.source_id, scan.scan_id, scan.generation],
        )?;
        tx.execute(
            "INSERT INTO queue (source_id, path, reason, priority, enqueued_at, attempts, next_attempt_at)
             SELECT source_id, path, 'deleted', ?3, ?4, 0, ?4 FROM files
             WHERE source_id = ?1 AND state = 'deleted'
               AND path IN (SELECT path FROM scan_missing WHERE scan_id = ?2)
             ON CONFLICT (source_id, path) DO UPDATE SET
                 reason = 'deleted', enqueued_at = excluded.enqueued_at, attempts = 0,
                 next_attempt_at = excluded.next_attempt_at, last_error = NULL",
            params![scan.source_id, scan.scan_id, Priority::Normal as i64, now],
        )?;
        let dropped = tx.execute(
            "DELETE FROM files WHERE source_id = ?1 AND committed_seq IS NULL
               AND path IN (SELECT path FROM scan_missing WHERE scan_id = ?2)",
            params![scan.source_id, scan.scan_id],
        )?;
        tx.execute(
            "DELETE FROM scan_missing WHERE scan_id = ?1",
            [scan.scan_id],
        )?;
        tx.execute(
            "UPDATE scans SET status = 'completed', finished_at = ?2, resume_after = NULL, counters = ?3
             WHERE id = ?1",
            params![scan.scan_id, now, counters],
        )?;
        tx.execute(
            "UPDATE sources SET last_completed_generation = ?2 WHERE id = ?1",
            params![scan.source_id, scan.generation],
        )?;
        tx.execute(
            "UPDATE jobs SET status = ?2, finished_at = ?3, counters = ?4 WHERE id = ?1",
            params![scan.job_id, job_status.as_str(), now, counters],
        )?;
        tx.commit()?;
        Ok(ScanCompletion {
            deleted: deleted as u64,
            dropped: dropped as u64,
        })
    }

    /// Gives up an interrupted scan of `source` (the next scan starts from the beginning).
    /// Returns whether there was one.
    pub fn abandon_running_scan(&mut self, source: SourceId) -> Result<bool> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let running: Option<(i64, Option<i64>)> = tx
            .query_row(
                "SELECT id, job_id FROM scans WHERE source_id = ?1 AND status = 'running'",
                [source],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((scan_id, job)) = running else {
            return Ok(false);
        };
        tx.execute("DELETE FROM scan_missing WHERE scan_id = ?1", [scan_id])?;
        tx.execute(
            "UPDATE scans SET status = 'abandoned', finished_at = ?2 WHERE id = ?1",
            params![scan_id, now],
        )?;
        if let Some(j) = job {
            tx.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?2 WHERE id = ?1 AND status = 'running'",
                params![j, now],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// The running (or interrupted) scan of a source, if any.
    pub fn running_scan(&self, source: SourceId) -> Result<Option<RunningScan>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, generation, job_id, resume_after, counters FROM scans
                 WHERE source_id = ?1 AND status = 'running'",
                [source],
                RunningScan::from_row,
            )
            .optional()?)
    }

    // ---- commits -------------------------------------------------------------------------

    /// Records what a backup job committed on the server under sequence `seq`.
    pub fn record_commit(
        &mut self,
        source: SourceId,
        seq: i64,
        entries: &[CommitEntry],
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut set_version = tx.prepare_cached(
                "UPDATE files SET committed_seq = ?3, content_hash = ?4, error = NULL,
                     state = CASE WHEN size = ?5 AND mtime_ns = ?6 AND ctime_ns = ?7 AND inode = ?8
                                  THEN 'committed' ELSE 'pending' END
                 WHERE source_id = ?1 AND path = ?2 AND state != 'deleted'",
            )?;
            let mut set_blobs = tx.prepare_cached(
                "INSERT INTO file_blobs (source_id, path, blobs) VALUES (?1, ?2, ?3)
                 ON CONFLICT (source_id, path) DO UPDATE SET blobs = excluded.blobs",
            )?;
            let mut state_of =
                tx.prepare_cached("SELECT state FROM files WHERE source_id = ?1 AND path = ?2")?;
            let mut unqueue =
                tx.prepare_cached("DELETE FROM queue WHERE source_id = ?1 AND path = ?2")?;
            let mut drop_deleted = tx.prepare_cached(
                "DELETE FROM files WHERE source_id = ?1 AND path = ?2 AND state = 'deleted'",
            )?;
            for e in entries {
                match e {
                    CommitEntry::Version {
                        key,
                        size,
                        mtime_ns,
                        ctime_ns,
                        inode,
                        content_hash,
                        blobs,
                    } => {
                        let n = set_version.execute(params![
                            source,
                            key,
                            seq,
                            content_hash.as_ref().map(|h| h.as_slice()),
                            *size as i64,
                            mtime_ns,
                            ctime_ns,
                            *inode as i64,
                        ])?;
                        if n == 0 {
                            continue;
                        }
                        set_blobs.execute(params![source, key, encode_blob_list(blobs)])?;
                        let state: String =
                            state_of.query_row(params![source, key], |r| r.get(0))?;
                        if state == "committed" {
                            unqueue.execute(params![source, key])?;
                        }
                    }
                    CommitEntry::Deletion { key } => {
                        drop_deleted.execute(params![source, key])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    // ---- server blobs --------------------------------------------------------------------

    /// The server's garbage-collection epoch this catalog trusts.
    pub fn server_epoch(&self) -> Result<i64> {
        let v: String = self.conn.query_row(
            "SELECT value FROM agent_state WHERE key = 'server_gc_epoch'",
            [],
            |r| r.get(0),
        )?;
        v.parse()
            .map_err(|_| CatalogError::Corrupt(format!("server_gc_epoch {v:?}")))
    }

    /// Moves to a new server epoch: every blob confirmed under another epoch stops counting
    /// as present (the server may have collected it).
    pub fn set_server_epoch(&mut self, epoch: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE agent_state SET value = ?1 WHERE key = 'server_gc_epoch'",
            [epoch.to_string()],
        )?;
        Ok(())
    }

    /// Records blobs the server confirmed holding, stamped with the current epoch.
    pub fn record_server_blobs(&mut self, blobs: &[BlobRef]) -> Result<()> {
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let epoch: String = tx.query_row(
            "SELECT value FROM agent_state WHERE key = 'server_gc_epoch'",
            [],
            |r| r.get(0),
        )?;
        let epoch: i64 = epoch
            .parse()
            .map_err(|_| CatalogError::Corrupt(format!("server_gc_epoch {epoch:?}")))?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO server_blobs (blob_id, plaintext_len, server_epoch, confirmed_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (blob_id) DO UPDATE SET server_epoch = excluded.server_epoch,
                     confirmed_at = excluded.confirmed_at, plaintext_len = excluded.plaintext_len",
            )?;
            for b in blobs {
                st.execute(params![b.id.as_slice(), b.len as i64, epoch, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether the server is known to hold `id` under the current epoch.
    pub fn server_has_blob(&self, id: &BlobId) -> Result<bool> {
        let mut st = self.conn.prepare_cached(
            "SELECT 1 FROM server_blobs WHERE blob_id = ?1
               AND server_epoch = (SELECT CAST(value AS INTEGER) FROM agent_state WHERE key = 'server_gc_epoch')",
        )?;
        Ok(st.exists([id.as_slice()])?)
    }

    /// The ids among `ids` not known to be on the server under the current epoch.
    pub fn unknown_blobs(&self, ids: &[BlobId]) -> Result<Vec<BlobId>> {
        let mut out = Vec::new();
        for id in ids {
            if !self.server_has_blob(id)? {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// Deletes blob confirmations from old epochs; returns how many.
    pub fn prune_stale_blobs(&mut self) -> Result<u64> {
        let n = self.conn.execute(
            "DELETE FROM server_blobs WHERE server_epoch !=
               (SELECT CAST(value AS INTEGER) FROM agent_state WHERE key = 'server_gc_epoch')",
            [],
        )?;
        Ok(n as u64)
    }

    /// Files of `source` not yet committed in their current version: (count, bytes).
    pub fn pending_files(&self, source: SourceId) -> Result<(u64, u64)> {
        let mut st = self.conn.prepare_cached(
            "SELECT count(*), coalesce(sum(size), 0) FROM files
              WHERE source_id = ?1 AND kind = 0 AND state IN ('pending', 'uploaded', 'error')",
        )?;
        let (n, b): (i64, i64) = st.query_row([source], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((n.max(0) as u64, b.max(0) as u64))
    }

    /// Calls `f(path, size)` for up to `limit` regular files of `source` not yet committed in
    /// their current version (in path order); returns how many it visited.
    pub fn for_each_pending(
        &self,
        source: SourceId,
        limit: u64,
        mut f: impl FnMut(&[u8], u64),
    ) -> Result<u64> {
        let mut st = self.conn.prepare_cached(
            "SELECT path, size FROM files
              WHERE source_id = ?1 AND kind = 0 AND state IN ('pending', 'uploaded', 'error')
              ORDER BY path LIMIT ?2",
        )?;
        let mut rows = st.query(rusqlite::params![source, limit.min(i64::MAX as u64) as i64])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let path: Vec<u8> = r.get(0)?;
            let size: i64 = r.get(1)?;
            f(&path, size.max(0) as u64);
            n += 1;
        }
        Ok(n)
    }

    /// Regular files of `source` under `prefix` (raw relative path bytes, no trailing slash;
    /// empty for the whole source) by state: (committed, not committed).
    pub fn files_under(&self, source: SourceId, prefix: &[u8]) -> Result<(u64, u64)> {
        let mut lo = prefix.to_vec();
        let mut hi = prefix.to_vec();
        if !prefix.is_empty() {
            lo.push(b'/');
            hi.push(b'0');
        } else {
            hi = vec![0xff; 1];
        }
        let mut st = self.conn.prepare_cached(
            "SELECT count(*) FILTER (WHERE state = 'committed'),
                    count(*) FILTER (WHERE state IN ('pending', 'uploaded', 'error'))
               FROM files
              WHERE source_id = ?1 AND kind = 0
                AND ((path >= ?2 AND path < ?3) OR path = ?4)",
        )?;
        let (c, p): (i64, i64) = st.query_row(rusqlite::params![source, lo, hi, prefix], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok((c.max(0) as u64, p.max(0) as u64))
    }

    /// Forgets that the server holds `ids` (it reported them missing: e.g. collected by the
    /// server's garbage collector), so they are uploaded again.
    pub fn forget_server_blobs(&mut self, ids: &[BlobId]) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = 0;
        {
            let mut st = tx.prepare_cached("DELETE FROM server_blobs WHERE blob_id = ?1")?;
            for id in ids {
                n += st.execute([id.as_slice()])? as u64;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    // ---- queue ---------------------------------------------------------------------------

    /// Queues (or re-queues) a path.
    pub fn enqueue(
        &mut self,
        source: SourceId,
        key: &[u8],
        reason: QueueReason,
        priority: Priority,
    ) -> Result<()> {
        let now = now_ms();
        self.conn.prepare_cached(
            "INSERT INTO queue (source_id, path, reason, priority, enqueued_at, attempts, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?5)
             ON CONFLICT (source_id, path) DO UPDATE SET
                 reason = excluded.reason, priority = min(queue.priority, excluded.priority),
                 enqueued_at = excluded.enqueued_at, attempts = 0,
                 next_attempt_at = excluded.next_attempt_at, last_error = NULL",
        )?
        .execute(params![source, key, reason.as_str(), priority as i64, now])?;
        Ok(())
    }

    /// Work that is due at `now` (ms), highest priority first, oldest first within a class.
    pub fn due_work(&self, now: i64, limit: usize) -> Result<Vec<QueueItem>> {
        let mut st = self.conn.prepare_cached(
            "SELECT source_id, path, reason, priority, enqueued_at, attempts, next_attempt_at, last_error
             FROM queue WHERE next_attempt_at <= ?1
             ORDER BY priority, next_attempt_at, enqueued_at LIMIT ?2",
        )?;
        let rows = st.query_map(params![now, limit as i64], |r| {
            let reason: String = r.get(2)?;
            Ok((
                reason,
                QueueItem {
                    source_id: r.get(0)?,
                    key: r.get(1)?,
                    reason: QueueReason::New,
                    priority: Priority::from_i64(r.get(3)?),
                    enqueued_at: r.get(4)?,
                    attempts: r.get(5)?,
                    next_attempt_at: r.get(6)?,
                    last_error: r.get(7)?,
                },
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (reason, mut item) = r?;
            item.reason = QueueReason::parse(&reason)
                .ok_or_else(|| CatalogError::Corrupt(format!("queue reason {reason:?}")))?;
            out.push(item);
        }
        Ok(out)
    }

    /// Records a failed attempt: retried not before `next_attempt_at`.
    pub fn defer(
        &mut self,
        source: SourceId,
        key: &[u8],
        next_attempt_at: i64,
        error: &str,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE queue SET attempts = attempts + 1, next_attempt_at = ?3, last_error = ?4
             WHERE source_id = ?1 AND path = ?2",
            params![source, key, next_attempt_at, error],
        )?;
        tx.execute(
            "UPDATE files SET state = 'error', error = ?3
             WHERE source_id = ?1 AND path = ?2 AND state IN ('pending', 'uploaded', 'error')",
            params![source, key, error],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Number of queued items.
    pub fn queue_len(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM queue", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    // ---- jobs ----------------------------------------------------------------------------

    /// Starts a job in the history.
    pub fn start_job(&mut self, kind: &str, source: Option<SourceId>) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO jobs (kind, source_id, started_at, status) VALUES (?1, ?2, ?3, 'running')",
            params![kind, source, now_ms()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Finishes a job.
    pub fn finish_job(
        &mut self,
        id: i64,
        status: JobStatus,
        counters: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE jobs SET status = ?2, finished_at = ?3, counters = ?4, error = ?5 WHERE id = ?1",
            params![id, status.as_str(), now_ms(), counters, error],
        )?;
        Ok(())
    }

    /// The most recent jobs, newest first.
    pub fn recent_jobs(&self, limit: usize) -> Result<Vec<JobRecord>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, kind, source_id, started_at, finished_at, status, counters, error
             FROM jobs ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok((
                r.get::<_, String>(5)?,
                JobRecord {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    source_id: r.get(2)?,
                    started_at: r.get(3)?,
                    finished_at: r.get(4)?,
                    status: JobStatus::Running,
                    counters: r.get(6)?,
                    error: r.get(7)?,
                },
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (status, mut job) = r?;
            job.status = JobStatus::parse(&status)
                .ok_or_else(|| CatalogError::Corrupt(format!("job status {status:?}")))?;
            out.push(job);
        }
        Ok(out)
    }

    // ---- checks --------------------------------------------------------------------------

    /// Checks the database (`PRAGMA integrity_check`, foreign keys) and the catalog's own
    /// invariants.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut problems = Vec::new();
        {
            let mut st = self.conn.prepare("PRAGMA integrity_check")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            for r in rows {
                let r = r?;
                if r != "ok" {
                    problems.push(format!("integrity_check: {r}"));
                }
            }
        }
        {
            let mut st = self.conn.prepare("PRAGMA foreign_key_check")?;
            let rows =
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(2)?)))?;
            for r in rows {
                let (table, parent) = r?;
                problems.push(format!("foreign key violation: {table} -> {parent}"));
            }
        }
        let checks: &[(&str, &str)] = &[
            (
                "scan_missing rows of scans that are not running",
                "SELECT count(*) FROM scan_missing WHERE scan_id NOT IN (SELECT id FROM scans WHERE status = 'running')",
            ),
            (
                "committed or deleted rows without a committed version",
                "SELECT count(*) FROM files WHERE state IN ('committed', 'deleted') AND committed_seq IS NULL",
            ),
            (
                "folder keys without a trailing '/' or other keys with one",
                "SELECT count(*) FROM files WHERE (kind = 1) != (substr(path, length(path), 1) = x'2f')",
            ),
            (
                "queued deletions of rows not in state deleted",
                "SELECT count(*) FROM queue q JOIN files f USING (source_id, path)
                 WHERE q.reason = 'deleted' AND f.state != 'deleted'",
            ),
            (
                "rows needing backup that are not queued",
                "SELECT count(*) FROM files f WHERE f.state IN ('pending', 'deleted')
                 AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.source_id = f.source_id AND q.path = f.path)",
            ),
        ];
        for (what, sql) in checks {
            let n: i64 = self.conn.query_row(sql, [], |r| r.get(0))?;
            if n != 0 {
                problems.push(format!("{what}: {n}"));
            }
        }
        Ok(VerifyReport { problems })
    }
}

/// An exclusive lock on the catalog for one writer process (a catalog-updating scan, later
/// the daemon). Released when dropped or when the process dies.
#[derive(Debug)]
pub struct WriterLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl WriterLock {
    /// Takes the lock file `path` without waiting.
    pub fn acquire(path: &Path) -> Result<WriterLock> {
        let io_err = |e| CatalogError::Io {
            path: path.display().to_string(),
            source: e,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(CatalogError::Locked(path.display().to_string()));
                }
                return Err(io_err(e));
            }
        }
        Ok(WriterLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_list_roundtrip() {
        let blobs = vec![
            BlobRef {
                id: [1; 32],
                len: 0,
            },
            BlobRef {
                id: [2; 32],
                len: 127,
            },
            BlobRef {
                id: [3; 32],
                len: 1 << 20,
            },
            BlobRef {
                id: [4; 32],
                len: u64::MAX,
            },
        ];
        let enc = encode_blob_list(&blobs);
        assert_eq!(enc.len(), 1 + 4 * 32 + 1 + 1 + 3 + 10);
        assert_eq!(decode_blob_list(&enc).unwrap(), blobs);
        assert_eq!(decode_blob_list(&encode_blob_list(&[])).unwrap(), vec![]);
    }

    #[test]
    fn blob_list_rejects_garbage() {
        assert!(decode_blob_list(&[]).is_err());
        assert!(decode_blob_list(&[9]).is_err());
        assert!(decode_blob_list(&[1, 0, 0]).is_err());
        let mut enc = encode_blob_list(&[BlobRef {
            id: [7; 32],
            len: 300,
        }]);
        enc.pop();
        assert!(decode_blob_list(&enc).is_err());
        let mut over = vec![1u8];
        over.extend_from_slice(&[0; 32]);
        over.extend_from_slice(&[0xff; 10]);
        over.push(0x01);
        assert!(decode_blob_list(&over).is_err());
    }

    #[test]
    fn states_roundtrip() {
        for s in [
            FileState::Pending,
            FileState::Uploaded,
            FileState::Committed,
            FileState::Deleted,
            FileState::Error,
        ] {
            assert_eq!(FileState::parse(s.as_str()), Some(s));
        }
    }
}
