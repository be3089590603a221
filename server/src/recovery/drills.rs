//! Restore drills: a drill the agent ran on its own (restore a sample of a recovery point into
//! a scratch folder and verify it) is recorded as an already finished `file_recovery` row in
//! `recovery_jobs` (`completed` or `failed`, written as the system actor: agents cannot insert
//! recovery jobs), with its `recovery_validations` row and a `recovery_logs` line.
//!
//! A drill takes no lease. The job row, its validation and its log line are written inside the
//! transaction the caller opened and commits: a crash before the commit records none of them,
//! so a drill is recorded entirely or not at all.

use keepsake_common::api::{RecoveryDrillReport, RecoveryJobInfo};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::jobs::get_job;
use super::lease::{agent_name, failure_message, insert_validation, log, to_i32, to_i64};
use super::{RecoveryError, Result};
use crate::db::{self, Actor};

/// Records a restore drill of `agent` as a finished `file_recovery` job of that machine with its
/// validation (written by the server: agents cannot insert recovery jobs).
pub async fn record_drill(
    tx: &Transaction<'_>,
    org: Uuid,
    agent: Uuid,
    d: &RecoveryDrillReport,
) -> Result<RecoveryJobInfo> {
    let point = tx
        .query_opt(
            "SELECT source_id FROM recovery_points WHERE id = $1 AND source_id IS NOT NULL",
            &[&d.recovery_point_id],
        )
        .await?
        .ok_or_else(|| {
            RecoveryError::NotFound(format!(
                "no recovery point {} in this organisation",
                d.recovery_point_id
            ))
        })?;
    let source: Uuid = point.get(0);
    let name = agent_name(tx, agent).await?;
    let passed = d.error.is_none() && d.validation.passed();
    let error = (!passed)
        .then(|| failure_message(d.error.is_none(), d.error.as_deref(), Some(&d.validation)));
    let actor = Actor::Agent { org, agent };
    db::set_identity(tx, &Actor::System { org }).await?;
    let id: Uuid = tx
        .query_one(
            "INSERT INTO recovery_jobs (organization_id, recovery_point_id, source_id, point_in_time, initiated_by, \
                 recovery_type, target_location, target_agent_id, status, progress_percentage, started_at, completed_at, \
                 files_total, bytes_total, files_recovered, bytes_recovered, verification_passed, claimed_by, claimed_at, \
                 attempts, notes, error_message) \
             SELECT $1, rp.id, rp.source_id, rp.point_in_time, NULL, 'file_recovery', $3, $4, \
                 CASE WHEN $5 THEN 'completed' ELSE 'failed' END::recovery_job_status, CASE WHEN $5 THEN 100 ELSE 0 END, \
                 LEAST($6::timestamptz, now()), now(), $7, $8, $9, $8, $5, $4, LEAST($6::timestamptz, now()), 1, \
                 'restore drill', $10 \
             FROM recovery_points rp WHERE rp.id = $2 \
             RETURNING id",
            &[
                &org,
                &d.recovery_point_id,
                &format!("{name}:restore drill"),
                &agent,
                &passed,
                &d.started_at,
                &to_i64(d.files_restored),
                &to_i64(d.bytes_restored),
                &to_i32(d.files_restored),
                &error,
            ],
        )
        .await?
        .get(0);
    insert_validation(tx, org, agent, id, &d.validation, Some(d.started_at)).await?;
    let message = match &error {
        None => format!(
            "restore drill of source {source}: {} files, {} bytes restored and verified",
            d.files_restored, d.bytes_restored
        ),
        Some(e) => format!("restore drill of source {source} failed: {e}"),
    };
    log(
        tx,
        org,
        id,
        Some(agent),
        "drill",
        if passed { "info" } else { "error" },
        &message,
    )
    .await?;
    db::set_identity(tx, &actor).await?;
    tracing::info!(job = %id, agent = %agent, passed, "restore drill recorded");
    get_job(tx, id)
        .await?
        .ok_or_else(|| RecoveryError::NotFound(format!("no recovery job {id}")))
}
