//! Sources (`backup_sources`: the watched roots of each machine) and the start of a backup job
//! (`backup_jobs` rows in status `running`).
//!
//! Registering a source is idempotent (an existing root is returned as it is). Starting a job
//! records the source's last committed sequence as the job's parent and starts its lease; the
//! schema links the job to its strategy (the machine's vendor configuration's, else the
//! organisation's default: `backup_jobs_link_strategy`). Each call runs in the caller's
//! transaction, so a crash leaves either nothing or the whole row; a job started and then
//! abandoned is ended by [`super::lease`].

use keepsake_common::api::SourceInfo;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::db::DbError;

const COLS: &str = "id, agent_id, root_path, label, last_committed_seq";

fn source_info(r: &tokio_postgres::Row) -> SourceInfo {
    SourceInfo {
        id: r.get(0),
        agent_id: r.get(1),
        root_path: r.get(2),
        label: r.get(3),
        last_committed_seq: r.get(4),
    }
}

/// The source of `agent` at `root`, registered now when it is new.
pub async fn register_source(
    tx: &Transaction<'_>,
    org: Uuid,
    agent: Uuid,
    root: &str,
    label: Option<&str>,
) -> Result<SourceInfo, DbError> {
    if let Some(r) = tx
        .query_opt(
            &format!("SELECT {COLS} FROM backup_sources WHERE agent_id = $1 AND root_path = $2"),
            &[&agent, &root],
        )
        .await?
    {
        return Ok(source_info(&r));
    }
    let r = tx
        .query_one(
            &format!(
                "INSERT INTO backup_sources (organization_id, agent_id, root_path, label) \
                 VALUES ($1, $2, $3, $4) RETURNING {COLS}"
            ),
            &[&org, &agent, &root, &label],
        )
        .await?;
    Ok(source_info(&r))
}

/// The sources of `agent`, or of every machine the caller may see when `None`, by root.
pub async fn list_sources(
    tx: &Transaction<'_>,
    agent: Option<Uuid>,
) -> Result<Vec<SourceInfo>, DbError> {
    let rows = tx
        .query(
            &format!(
                "SELECT {COLS} FROM backup_sources \
                 WHERE $1::uuid IS NULL OR agent_id = $1 ORDER BY root_path"
            ),
            &[&agent],
        )
        .await?;
    Ok(rows.iter().map(source_info).collect())
}

/// What a new job needs to know.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub org: Uuid,
    pub agent: Uuid,
    pub source: Uuid,
    pub destination: Uuid,
    /// `incremental` or `full`.
    pub kind: &'a str,
    pub wedding_critical: bool,
}

/// Starts a running job of `agent`'s `source`: `(job id, parent sequence)`, or `None` when the
/// source is not this machine's.
pub async fn start_job(
    tx: &Transaction<'_>,
    job: &NewJob<'_>,
) -> Result<Option<(Uuid, i64)>, DbError> {
    let Some(row) = tx
        .query_opt(
            "SELECT last_committed_seq FROM backup_sources WHERE id = $1 AND agent_id = $2",
            &[&job.source, &job.agent],
        )
        .await?
    else {
        return Ok(None);
    };
    let parent: i64 = row.get(0);
    let id: Uuid = tx
        .query_one(
            "INSERT INTO backup_jobs (organization_id, agent_id, source_id, destination_id, job_type, status, \
                 started_at, parent_seq, wedding_critical_priority, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5::text::backup_job_type, 'running', now(), $6, $7, now()) RETURNING id",
            &[&job.org, &job.agent, &job.source, &job.destination, &job.kind, &parent, &job.wedding_critical],
        )
        .await?
        .get(0);
    Ok(Some((id, parent)))
}
