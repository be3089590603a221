//! Schema migrations: the versioned [`MIGRATIONS`] list (the definition of every catalog
//! table) and the `schema_migrations` table recording which ones were applied.
//!
//! Crash behaviour: each migration runs in its own `BEGIN IMMEDIATE` transaction together with
//! the row that records it in `schema_migrations`, so a crash leaves the catalog at the version
//! before that migration and the next open applies it again. The applied version is read again
//! inside that transaction, so two processes opening the same catalog do not apply a migration
//! twice. A migration flagged `foreign_keys_off` turns enforcement off on this connection
//! only (outside the transaction, where the pragma takes effect) and checks the keys before
//! committing; a catalog newer than the list is refused ([`CatalogError::TooNew`]).

use rusqlite::{params, TransactionBehavior};

use super::{now_ms, Catalog, CatalogError, Result};

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

impl Catalog {
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
}
