//! The target machine's side of a recovery job, under a lease: claiming the next job
//! (`SELECT ... FOR UPDATE SKIP LOCKED` on `recovery_jobs`, then `UPDATE` to `claimed` with
//! `lease_seconds`, `lease_expires_at` and `attempts`), progress reports (`running` /
//! `verifying`, totals, extending the lease), log lines (`recovery_logs`), and finishing
//! (`recovery_validations`, `completed` or `failed`, the lease cleared, and for a passed whole
//! restore `recovery_points.data_integrity_verified`). The log, validation and failure-message
//! helpers are shared with [`super::drills`].
//!
//! Nothing here commits: every function runs inside the transaction its caller opened, and the
//! caller commits, so a server crash before the commit leaves the previous state (a claim, a
//! report or a finish with its log lines and validation happens entirely or not at all). When
//! the agent crashes or goes away instead, its job stays `claimed`/`running`/`verifying` until
//! `lease_expires_at` passes; no sweeper resets it: the next [`claim`] by the same target
//! machine takes the expired job again (attempts + 1, logged as claimed again).

use chrono::{DateTime, Utc};
use keepsake_common::api::{
    ClaimRecoveryRequest, RecoveryFinish, RecoveryJobInfo, RecoveryLogEntry,
    RecoveryProgressReport, ValidationReport,
};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::jobs::{job_info, JOB_COLS};
use super::{RecoveryError, Result};
use crate::db::{self, Actor};

/// Longest lease an agent may ask for.
pub const MAX_LEASE_SECONDS: u32 = 24 * 3600;
/// Lease extension when a job has no recorded lease length (jobs claimed before 0009).
const DEFAULT_LEASE_SECONDS: i32 = 300;
/// Log levels of the `log_level` enum.
pub const LOG_LEVELS: &[&str] = &["debug", "info", "warning", "error", "critical"];

pub(super) async fn agent_name(tx: &Transaction<'_>, agent: Uuid) -> Result<String> {
    Ok(tx
        .query_opt("SELECT name FROM agents WHERE id = $1", &[&agent])
        .await?
        .map(|r| r.get(0))
        .unwrap_or_else(|| agent.to_string()))
}

pub(super) async fn log(
    tx: &Transaction<'_>,
    org: Uuid,
    job: Uuid,
    agent: Option<Uuid>,
    step: &str,
    level: &str,
    message: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO recovery_logs (organization_id, recovery_job_id, agent_id, step, level, message) \
         VALUES ($1, $2, $3, $4, $5::text::log_level, $6)",
        &[&org, &job, &agent, &step, &level, &message],
    )
    .await?;
    Ok(())
}

/// Claims the next job targeted at `agent`: emergency jobs first, then the oldest; a job whose
/// claim's lease expired is claimable again. Exactly one concurrent caller gets each job
/// (`FOR UPDATE SKIP LOCKED`, then the claim in the same transaction). With `can_decrypt`
/// false nothing is claimed: the machine's waiting jobs say that they wait for its key.
pub async fn claim(
    tx: &Transaction<'_>,
    org: Uuid,
    agent: Uuid,
    req: &ClaimRecoveryRequest,
) -> Result<Option<RecoveryJobInfo>> {
    if req.lease_seconds == 0 || req.lease_seconds > MAX_LEASE_SECONDS {
        return Err(RecoveryError::Invalid(format!(
            "lease_seconds must be between 1 and {MAX_LEASE_SECONDS}"
        )));
    }
    let name = agent_name(tx, agent).await?;
    if !req.can_decrypt {
        let reason = format!("waiting for the key to be unlocked on {name}");
        let marked = tx
            .query(
                "UPDATE recovery_jobs SET waiting_reason = $2 \
                 WHERE target_agent_id = $1 AND status IN ('initiated', 'queued') \
                   AND waiting_reason IS DISTINCT FROM $2 \
                 RETURNING id",
                &[&agent, &reason],
            )
            .await?;
        for r in &marked {
            log(
                tx,
                org,
                r.get(0),
                Some(agent),
                "waiting",
                "warning",
                &format!(
                    "{name} cannot decrypt yet: unlock the organisation key there \
                     (passphrase or paper key) to start this recovery"
                ),
            )
            .await?;
        }
        return Ok(None);
    }
    let Some(row) = tx
        .query_opt(
            "SELECT id, attempts FROM recovery_jobs \
             WHERE target_agent_id = $1 \
               AND (status IN ('initiated', 'queued') \
                    OR (status IN ('claimed', 'running', 'verifying') AND lease_expires_at < now())) \
             ORDER BY is_emergency_recovery DESC, created_at, id \
             LIMIT 1 FOR UPDATE SKIP LOCKED",
            &[&agent],
        )
        .await?
    else {
        return Ok(None);
    };
    let id: Uuid = row.get(0);
    let previous: i32 = row.get(1);
    let lease = req.lease_seconds as i32;
    let job = tx
        .query_one(
            &format!(
                "UPDATE recovery_jobs j SET status = 'claimed', claimed_by = $2, claimed_at = now(), \
                     lease_seconds = $3, lease_expires_at = now() + $3::integer * interval '1 second', \
                     attempts = j.attempts + 1, \
                     started_at = CASE WHEN j.attempts = 0 THEN now() ELSE j.started_at END, \
                     waiting_reason = NULL \
                 WHERE j.id = $1 RETURNING {JOB_COLS}"
            ),
            &[&id, &agent, &lease],
        )
        .await?;
    let job = job_info(&job)?;
    let message = if previous == 0 {
        format!("claimed by {name} (lease {lease} s)")
    } else {
        format!(
            "claimed again by {name} after the lease of attempt {previous} expired (attempt {}, lease {lease} s)",
            previous + 1
        )
    };
    log(tx, org, id, Some(agent), "claimed", "info", &message).await?;
    tracing::info!(job = %id, agent = %agent, attempt = previous + 1, "recovery job claimed");
    Ok(Some(job))
}

/// The state of a job as its target agent sees it.
struct AgentView {
    status: String,
    claimed_by: Option<Uuid>,
}

async fn job_for_agent(tx: &Transaction<'_>, agent: Uuid, id: Uuid) -> Result<AgentView> {
    // An agent sees only the jobs targeted at it (row-level security); the target is checked
    // again so that the answer does not depend on the actor of the transaction.
    let row = tx
        .query_opt(
            "SELECT status::text, claimed_by FROM recovery_jobs WHERE id = $1 AND target_agent_id = $2",
            &[&id, &agent],
        )
        .await?
        .ok_or_else(|| {
            RecoveryError::NotFound(format!("no recovery job {id} for this machine"))
        })?;
    Ok(AgentView {
        status: row.get(0),
        claimed_by: row.get(1),
    })
}

pub(super) fn is_active(status: &str) -> bool {
    matches!(status, "claimed" | "running" | "verifying")
}

fn require_claimed(view: &AgentView, agent: Uuid, id: Uuid) -> Result<()> {
    if !is_active(&view.status) && view.status != "initiated" && view.status != "queued" {
        return Err(RecoveryError::Conflict(format!(
            "recovery job {id} is already {}",
            view.status
        )));
    }
    if view.claimed_by != Some(agent) || !is_active(&view.status) {
        return Err(RecoveryError::Conflict(format!(
            "recovery job {id} is not claimed by this machine (claim it first)"
        )));
    }
    Ok(())
}

/// Percentage done: by bytes, or by files when there are no bytes; at most 99 (100 is for a
/// completed job only).
pub fn progress_percent(
    files_total: u64,
    files_recovered: u64,
    bytes_total: u64,
    bytes_recovered: u64,
) -> i32 {
    let (done, total) = if bytes_total > 0 {
        (bytes_recovered, bytes_total)
    } else {
        (files_recovered, files_total)
    };
    if total == 0 {
        return 0;
    }
    let pct = u128::from(done.min(total)) * 100 / u128::from(total);
    (pct as i32).min(99)
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn to_i32(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// A progress report of the claiming agent: `running` or `verifying`, totals and what is done.
/// The percentage never goes down and stays below 100; the lease is extended.
pub async fn progress(
    tx: &Transaction<'_>,
    agent: Uuid,
    id: Uuid,
    rep: &RecoveryProgressReport,
) -> Result<RecoveryJobInfo> {
    if rep.status != "running" && rep.status != "verifying" {
        return Err(RecoveryError::Invalid(format!(
            "status must be \"running\" or \"verifying\", not {:?}",
            rep.status
        )));
    }
    let view = job_for_agent(tx, agent, id).await?;
    require_claimed(&view, agent, id)?;
    let pct = progress_percent(
        rep.files_total,
        rep.files_recovered,
        rep.bytes_total,
        rep.bytes_recovered,
    );
    let row = tx
        .query_opt(
            &format!(
                "UPDATE recovery_jobs j SET status = $3::text::recovery_job_status, files_total = $4, bytes_total = $5, \
                     files_recovered = $6, bytes_recovered = $7, \
                     progress_percentage = LEAST(GREATEST(j.progress_percentage, $8), 99), \
                     estimated_completion = $9, \
                     lease_expires_at = now() + coalesce(j.lease_seconds, $10) * interval '1 second', \
                     waiting_reason = NULL \
                 WHERE j.id = $1 AND j.claimed_by = $2 AND j.status IN ('claimed', 'running', 'verifying') \
                 RETURNING {JOB_COLS}"
            ),
            &[
                &id,
                &agent,
                &rep.status,
                &to_i64(rep.files_total),
                &to_i64(rep.bytes_total),
                &to_i32(rep.files_recovered),
                &to_i64(rep.bytes_recovered),
                &pct,
                &rep.estimated_completion,
                &DEFAULT_LEASE_SECONDS,
            ],
        )
        .await?
        .ok_or_else(|| {
            RecoveryError::Conflict(format!("recovery job {id} changed meanwhile; claim it again"))
        })?;
    job_info(&row)
}

/// A log line of the claiming agent. Returns the log row's id.
pub async fn add_log(
    tx: &Transaction<'_>,
    org: Uuid,
    agent: Uuid,
    id: Uuid,
    entry: &RecoveryLogEntry,
) -> Result<i64> {
    if !LOG_LEVELS.contains(&entry.level.as_str()) {
        return Err(RecoveryError::Invalid(format!(
            "level must be one of {}, not {:?}",
            LOG_LEVELS.join(", "),
            entry.level
        )));
    }
    let step_len = entry.step.chars().count();
    if step_len == 0 || entry.step.len() > 100 {
        return Err(RecoveryError::Invalid(
            "step must be 1 to 100 characters".into(),
        ));
    }
    if entry.message.len() > 20_000 {
        return Err(RecoveryError::Invalid(
            "message is limited to 20,000 characters".into(),
        ));
    }
    let view = job_for_agent(tx, agent, id).await?;
    if view.claimed_by != Some(agent) {
        return Err(RecoveryError::Conflict(format!(
            "recovery job {id} is not claimed by this machine (claim it first)"
        )));
    }
    Ok(tx
        .query_one(
            "INSERT INTO recovery_logs (organization_id, recovery_job_id, agent_id, step, level, message, details) \
             VALUES ($1, $2, $3, $4, $5::text::log_level, $6, $7) RETURNING id",
            &[&org, &id, &agent, &entry.step, &entry.level, &entry.message, &entry.details],
        )
        .await?
        .get(0))
}

pub(super) async fn insert_validation(
    tx: &Transaction<'_>,
    org: Uuid,
    agent: Uuid,
    job: Uuid,
    v: &ValidationReport,
    started_at: Option<DateTime<Utc>>,
) -> Result<()> {
    tx.execute(
        "INSERT INTO recovery_validations (organization_id, recovery_job_id, agent_id, files_checked, bytes_checked, \
             mismatches, missing, extra, passed, details, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &org,
            &job,
            &agent,
            &to_i64(v.files_checked),
            &to_i64(v.bytes_checked),
            &to_i32(u64::from(v.mismatches)),
            &to_i32(u64::from(v.missing)),
            &to_i32(u64::from(v.extra)),
            &v.passed(),
            &v.details,
            &started_at,
        ],
    )
    .await?;
    Ok(())
}

/// Why a restore that did not pass failed.
pub(super) fn failure_message(
    restore_ok: bool,
    error: Option<&str>,
    v: Option<&ValidationReport>,
) -> String {
    let mut msg = match (error, restore_ok, v) {
        (Some(e), _, _) if !e.trim().is_empty() => e.trim().to_string(),
        (_, false, _) => "the restore failed".to_string(),
        (_, true, None) => {
            "the restore finished without a validation of the restored files".to_string()
        }
        (_, true, Some(v)) => format!(
            "validation failed: {} of {} files mismatched, {} missing",
            v.mismatches, v.files_checked, v.missing
        ),
    };
    if msg.len() > 2000 {
        let mut cut = 2000;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    msg
}

/// The claiming agent finishes a job: `completed` (progress 100, verification passed) only when
/// the restore succeeded and a validation was given and passed; otherwise `failed` with the
/// reason, progress below 100. Finishing a finished job is a conflict.
pub async fn finish(
    tx: &Transaction<'_>,
    org: Uuid,
    agent: Uuid,
    id: Uuid,
    f: &RecoveryFinish,
) -> Result<RecoveryJobInfo> {
    let view = job_for_agent(tx, agent, id).await?;
    require_claimed(&view, agent, id)?;
    if let Some(v) = &f.validation {
        insert_validation(tx, org, agent, id, v, None).await?;
    }
    let passed = f.restore_ok && f.validation.as_ref().is_some_and(ValidationReport::passed);
    let error =
        (!passed).then(|| failure_message(f.restore_ok, f.error.as_deref(), f.validation.as_ref()));
    let row = tx
        .query_opt(
            &format!(
                "UPDATE recovery_jobs j SET \
                     status = CASE WHEN $3 THEN 'completed' ELSE 'failed' END::recovery_job_status, \
                     completed_at = now(), \
                     progress_percentage = CASE WHEN $3 THEN 100 ELSE LEAST(j.progress_percentage, 99) END, \
                     verification_passed = $3, error_message = $4, \
                     files_recovered = $5, bytes_recovered = $6, \
                     lease_expires_at = NULL, waiting_reason = NULL \
                 WHERE j.id = $1 AND j.claimed_by = $2 AND j.status IN ('claimed', 'running', 'verifying') \
                 RETURNING {JOB_COLS}"
            ),
            &[
                &id,
                &agent,
                &passed,
                &error,
                &to_i32(f.files_recovered),
                &to_i64(f.bytes_recovered),
            ],
        )
        .await?
        .ok_or_else(|| RecoveryError::Conflict(format!("recovery job {id} is already finished")))?;
    let job = job_info(&row)?;
    if passed {
        // A whole recovery point restored and re-read file by file against its content hashes:
        // that is what `data_integrity_verified` means (commits leave it false). A partial
        // restore or a drill's sample does not verify the whole point.
        db::set_identity(tx, &Actor::System { org }).await?;
        tx.execute(
            "UPDATE recovery_points rp SET data_integrity_verified = true \
             FROM recovery_jobs j \
             WHERE j.id = $1 AND rp.id = j.recovery_point_id AND cardinality(j.path_prefixes) = 0 \
               AND NOT rp.data_integrity_verified",
            &[&id],
        )
        .await?;
        db::set_identity(tx, &Actor::Agent { org, agent }).await?;
    }
    let message = match &error {
        None => format!(
            "completed: {} files, {} bytes restored and verified",
            f.files_recovered, f.bytes_recovered
        ),
        Some(e) => format!("failed: {e}"),
    };
    log(
        tx,
        org,
        id,
        Some(agent),
        "finished",
        if passed { "info" } else { "error" },
        &message,
    )
    .await?;
    tracing::info!(job = %id, status = %job.status, "recovery job finished");
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_by_bytes_then_files_and_below_100() {
        assert_eq!(progress_percent(10, 5, 1000, 500), 50);
        assert_eq!(progress_percent(10, 10, 1000, 1000), 99);
        assert_eq!(progress_percent(4, 1, 0, 0), 25);
        assert_eq!(progress_percent(0, 0, 0, 0), 0);
        assert_eq!(progress_percent(1, 5, 10, 50), 99);
        assert_eq!(progress_percent(0, 0, u64::MAX, u64::MAX / 2), 49);
    }
}
