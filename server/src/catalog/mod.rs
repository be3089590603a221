//! The server's file catalog: staging of job deltas, the commit that turns a delta into file
//! versions and a recovery point, the state of a source at a recovery point, and the end of jobs
//! whose agent went silent; also the sources, the start of a job and the recovery points.
//!
//! Data flow: [`stage`] receives a delta in numbered parts, each a complete
//! `keepsake_common::delta` stream, parsed as it streams into the staging tables
//! (`job_delta_entries`, `job_delta_chunks`); a part is immutable once stored, so a retried
//! upload is a no-op. [`commit`] recomputes the delta digest from what was staged and compares it
//! with the agent's, checks that the committing machine holds a trusted copy of every referenced
//! blob, then, in one transaction: advances the source's sequence, records the machine's new
//! contents and their chunk lists, closes the versions the delta replaces or deletes, adds the new
//! versions, and writes the manifest, checksum, recovery point and log rows. [`files`] answers the
//! state at a point. [`lease`] fails running jobs nobody reports on any more. [`sources`] registers
//! sources and starts jobs; [`points`] lists recovery points. Neither side holds a
//! delta whole in memory.
//!
//! On a crash: staging rows of an uncommitted job stay until the job commits, fails, or its lease
//! lapses; a commit is one transaction, so it is either fully applied or not at all.

mod commit;
mod files;
mod lease;
mod points;
mod sources;
mod stage;

pub use commit::{commit, fail, CommitOutcome, MAX_MISSING_LISTED};
pub use files::files_at;
pub use lease::{expire_abandoned, touch};
pub use points::{get_point, list_points, point_source};
pub use sources::{list_sources, register_source, start_job, NewJob};
pub use stage::stage_part;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::DbError;

/// Content hash that stands for "no content" (links, folders and named pipes).
pub const NO_CONTENT: [u8; 32] = [0u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid delta: {0}")]
    BadDelta(String),
    /// The server could not keep an incoming part in a temporary file.
    #[error("temporary file for a delta part: {0}")]
    Spool(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for CatalogError {
    fn from(e: tokio_postgres::Error) -> Self {
        CatalogError::Db(DbError::from(e))
    }
}

/// The job a request refers to, as seen by its agent.
pub struct JobRow {
    pub source_id: Uuid,
    pub status: String,
    pub seq: Option<i64>,
    pub parent_seq: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
    pub job_type: String,
    pub wedding_critical: bool,
    /// Never NULL: the schema links every job to a strategy.
    pub strategy_id: Uuid,
}

async fn job_of(
    tx: &tokio_postgres::Transaction<'_>,
    job: Uuid,
    agent: Uuid,
    lock: bool,
) -> Result<JobRow, CatalogError> {
    let sql = format!(
        "SELECT source_id, status::text, seq, parent_seq, started_at, job_type::text, \
                wedding_critical_priority, strategy_id \
         FROM backup_jobs WHERE id = $1 AND agent_id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = tx
        .query_opt(&sql, &[&job, &agent])
        .await?
        .ok_or_else(|| CatalogError::NotFound(format!("no job {job} of this machine")))?;
    Ok(JobRow {
        source_id: row
            .get::<_, Option<Uuid>>(0)
            .ok_or_else(|| CatalogError::Conflict("the job has no source".into()))?,
        status: row.get(1),
        seq: row.get(2),
        parent_seq: row.get(3),
        started_at: row.get(4),
        job_type: row.get(5),
        wedding_critical: row.get(6),
        strategy_id: row.get(7),
    })
}
