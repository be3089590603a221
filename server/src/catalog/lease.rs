//! Leases of running backup jobs. Every request an agent makes about a job (start, each delta
//! part, commit) renews the job's `heartbeat_at`; a job not heard of for longer than the lease is
//! abandoned — its agent crashed, lost its disk or was switched off mid-job — and
//! [`expire_abandoned`] marks it failed with the reason, deletes its staging rows and logs it.
//! The agent's next run starts a new job; nothing it committed before is touched.
//!
//! Several server processes may sweep at once: the database function claims jobs with
//! `FOR UPDATE SKIP LOCKED`, so each abandoned job is failed exactly once. A crash mid-sweep
//! rolls back that sweep's transaction; the next sweep does the work.

use std::time::Duration;

use uuid::Uuid;

use super::CatalogError;
use crate::db::{Db, DbError};

/// Renews the lease of running job `job` (a no-op for jobs in any other state).
pub async fn touch(tx: &tokio_postgres::Transaction<'_>, job: Uuid) -> Result<(), CatalogError> {
    tx.execute(
        "UPDATE backup_jobs SET heartbeat_at = now() WHERE id = $1 AND status = 'running'",
        &[&job],
    )
    .await?;
    Ok(())
}

/// Fails the running jobs of every organisation not heard of within `lease`. Returns how many.
pub async fn expire_abandoned(db: &Db, lease: Duration) -> Result<u64, DbError> {
    let client = db.client().await?;
    let secs = format!("{} seconds", lease.as_secs().max(1));
    let row = client
        .query_one(
            "SELECT public.expire_abandoned_backup_jobs($1::text::interval)",
            &[&secs],
        )
        .await?;
    Ok(row.get::<_, i32>(0).max(0) as u64)
}
