//! The `scans` and `scan_missing` tables: a scan's session (generation, job, resume
//! checkpoint), its batches of changes to `files` and `queue`, and its completion.
//!
//! Crash behaviour: starting, each batch, completing and abandoning a scan are one
//! `BEGIN IMMEDIATE` transaction each. A batch writes its changed rows, their queue entries, the
//! keys it did not see (into `scan_missing`) and the checkpoint together, so after a crash the
//! scan is still `running` with a checkpoint that matches the rows written; the next
//! [`Catalog::begin_scan`] continues it under a new job and marks the old job `interrupted`.
//! Rows not seen become deletions (or vanish if never committed) only in the transaction that
//! completes the scan. A batch or completion for a scan that is no longer running fails with
//! [`CatalogError::ScanNotRunning`] and writes nothing.

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{now_ms, Catalog, CatalogError, JobStatus, Priority, QueueReason, Result, SourceId};
use crate::entry::Entry;

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

impl Catalog {
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
}
