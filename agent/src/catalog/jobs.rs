//! The `jobs` table: the local history of jobs (scans, backups, restores) with status,
//! counters and error.
//!
//! Crash behaviour: starting and finishing a job are single statements (each its own
//! transaction). A job whose process dies stays `running` in the history; the scan
//! transactions mark a scan's earlier job `interrupted` when they continue or abandon that scan
//! (see `scans`), and completing a scan finishes its job in the same transaction.

use rusqlite::params;
use serde::Serialize;

use super::{now_ms, Catalog, CatalogError, Result, SourceId};

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
    pub(super) fn as_str(self) -> &'static str {
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

impl Catalog {
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
}
