//! The `queue` table: paths waiting to be backed up or to have their deletion committed, with
//! a priority class, retry count and the time of the next attempt.
//!
//! Crash behaviour: [`Catalog::enqueue`] is a single upsert statement (its own transaction);
//! [`Catalog::defer`] updates the queue entry and the file row's error state in one
//! `BEGIN IMMEDIATE` transaction. A crash leaves either write whole or not at all. Scans and
//! recorded commits also add and remove entries, inside their own transactions (see `scans`
//! and `commits`).

use rusqlite::{params, TransactionBehavior};
use serde::Serialize;

use super::{now_ms, Catalog, CatalogError, Result, SourceId};

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
    pub(super) fn as_str(self) -> &'static str {
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

impl Catalog {
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
}
