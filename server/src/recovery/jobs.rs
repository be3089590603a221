//! Recovery jobs as users and the admin command see them: reading jobs (`recovery_jobs`, with
//! their `recovery_logs` and `recovery_validations`), resolving what a request restores
//! (`recovery_points`, `backup_sources`, `backup_files_at`), creating a job (`INSERT INTO
//! recovery_jobs`, status `queued`) and cancelling one (`UPDATE recovery_jobs` to `cancelled`
//! plus a `recovery_logs` line). The job columns ([`JOB_COLS`], [`job_info`]) and the
//! requester checks are shared with the other sub-modules.
//!
//! Nothing here commits: every function runs inside the transaction its caller opened, and the
//! caller commits. A crash before that commit rolls everything back, so the previous state
//! remains: a job is created together with its emergency page
//! ([`super::emergency::notify_emergency`]) or not at all, and a cancellation together with
//! its log line or not at all.

use chrono::{DateTime, Utc};
use keepsake_common::api::{
    NewRecoveryJob, RecoveryJobDetail, RecoveryJobInfo, RecoveryLogInfo, RecoveryType,
    RecoveryValidationInfo,
};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::emergency::notify_emergency;
use super::lease::is_active;
use super::validate::{normalize_prefixes, validate_shape, validate_target_directory};
use super::{type_from_db, type_to_db, RecoveryError, Result};
use crate::db::{self, Actor};

pub(super) const JOB_COLS: &str = "j.id, j.recovery_type::text, j.status::text, j.recovery_point_id, j.source_id, \
     j.point_in_time, j.path_prefixes, j.target_agent_id, j.target_directory, j.overwrite, \
     j.is_emergency_recovery, j.progress_percentage, j.files_total, j.bytes_total, \
     j.files_recovered::bigint, j.bytes_recovered, j.estimated_completion, \
     CASE WHEN j.claimed_at IS NULL AND j.status IN ('initiated', 'queued') THEN NULL ELSE j.started_at END, \
     j.completed_at, j.verification_passed, j.claimed_by, j.attempts, j.waiting_reason, j.error_message, \
     j.disaster_scenario_id, j.created_at";

pub(super) fn job_info(r: &tokio_postgres::Row) -> Result<RecoveryJobInfo> {
    Ok(RecoveryJobInfo {
        id: r.get(0),
        recovery_type: type_from_db(r.get(1))?,
        status: r.get(2),
        recovery_point_id: r.get(3),
        source_id: r.get(4),
        point_in_time: r.get(5),
        path_prefixes: r.get(6),
        target_agent_id: r.get(7),
        target_directory: r.get(8),
        overwrite: r.get(9),
        is_emergency: r.get(10),
        progress_percentage: r.get(11),
        files_total: r.get(12),
        bytes_total: r.get(13),
        files_recovered: r.get(14),
        bytes_recovered: r.get(15),
        estimated_completion: r.get(16),
        started_at: r.get(17),
        completed_at: r.get(18),
        verification_passed: r.get(19),
        claimed_by: r.get(20),
        attempts: r.get(21),
        waiting_reason: r.get(22),
        error_message: r.get(23),
        disaster_scenario_id: r.get(24),
        created_at: r.get(25),
    })
}

/// One job visible to the transaction's actor.
pub async fn get_job(tx: &Transaction<'_>, id: Uuid) -> Result<Option<RecoveryJobInfo>> {
    tx.query_opt(
        &format!("SELECT {JOB_COLS} FROM recovery_jobs j WHERE j.id = $1"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(job_info)
    .transpose()
}

/// The jobs visible to the transaction's actor, newest first (optionally of one status).
pub async fn list_jobs(
    tx: &Transaction<'_>,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<RecoveryJobInfo>> {
    tx.query(
        &format!(
            "SELECT {JOB_COLS} FROM recovery_jobs j \
             WHERE ($1::text IS NULL OR j.status::text = $1) \
             ORDER BY j.created_at DESC, j.id LIMIT $2"
        ),
        &[&status, &limit.clamp(1, 10_000)],
    )
    .await?
    .iter()
    .map(job_info)
    .collect()
}

/// A job with its log (oldest first) and validations.
pub async fn job_detail(tx: &Transaction<'_>, id: Uuid) -> Result<Option<RecoveryJobDetail>> {
    let Some(job) = get_job(tx, id).await? else {
        return Ok(None);
    };
    let logs = tx
        .query(
            "SELECT step, level::text, message, agent_id, created_at FROM recovery_logs \
             WHERE recovery_job_id = $1 ORDER BY created_at, id",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| RecoveryLogInfo {
            step: r.get(0),
            level: r.get(1),
            message: r.get(2),
            agent_id: r.get(3),
            created_at: r.get(4),
        })
        .collect();
    let validations = tx
        .query(
            "SELECT files_checked, bytes_checked, mismatches, missing, extra, passed, completed_at \
             FROM recovery_validations WHERE recovery_job_id = $1 ORDER BY completed_at, created_at, id",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| RecoveryValidationInfo {
            files_checked: r.get(0),
            bytes_checked: r.get(1),
            mismatches: r.get(2),
            missing: r.get(3),
            extra: r.get(4),
            passed: r.get(5),
            completed_at: r.get(6),
        })
        .collect();
    Ok(Some(RecoveryJobDetail {
        job,
        logs,
        validations,
    }))
}

/// Who requests a job, and whether they are limited to emergency recoveries.
pub(super) struct Requester {
    pub(super) org: Uuid,
    user: Option<Uuid>,
    pub(super) role: Option<String>,
}

pub(super) async fn requester(tx: &Transaction<'_>, actor: &Actor) -> Result<Requester> {
    match actor {
        Actor::User { org, user } => {
            let role: Option<String> = tx
                .query_one("SELECT auth.org_role()::text", &[])
                .await?
                .get(0);
            if role.is_none() {
                return Err(RecoveryError::Forbidden(
                    "you are not an active member of this organisation".into(),
                ));
            }
            Ok(Requester {
                org: *org,
                user: Some(*user),
                role,
            })
        }
        Actor::System { org } => Ok(Requester {
            org: *org,
            user: None,
            role: None,
        }),
        _ => Err(RecoveryError::Forbidden(
            "recovery jobs are requested by users of the organisation".into(),
        )),
    }
}

/// The resolved recovery point of a request.
#[derive(Debug, Clone)]
pub struct ResolvedPoint {
    pub id: Uuid,
    pub source_id: Uuid,
    pub seq: i64,
    pub point_in_time: DateTime<Utc>,
}

/// Resolves what a request restores: `recovery_point_id`; or `source_id` + `point_in_time` (the
/// newest point at or before it); or `source_id` alone (its newest point).
pub async fn resolve_point(
    tx: &Transaction<'_>,
    point: Option<Uuid>,
    source: Option<Uuid>,
    at: Option<DateTime<Utc>>,
) -> Result<ResolvedPoint> {
    let row = |r: tokio_postgres::Row| ResolvedPoint {
        id: r.get(0),
        source_id: r.get(1),
        seq: r.get(2),
        point_in_time: r.get(3),
    };
    match (point, source, at) {
        (Some(_), _, Some(_)) => Err(RecoveryError::Invalid(
            "give either recovery_point_id or point_in_time, not both".into(),
        )),
        (Some(p), source, None) => {
            let rp = tx
                .query_opt(
                    "SELECT id, source_id, seq, point_in_time FROM recovery_points \
                     WHERE id = $1 AND source_id IS NOT NULL",
                    &[&p],
                )
                .await?
                .map(row)
                .ok_or_else(|| {
                    RecoveryError::NotFound(format!("no recovery point {p} in this organisation"))
                })?;
            if let Some(s) = source {
                if s != rp.source_id {
                    return Err(RecoveryError::Invalid(format!(
                        "recovery point {p} is a point of source {}, not of source {s}",
                        rp.source_id
                    )));
                }
            }
            Ok(rp)
        }
        (None, Some(s), at) => {
            if tx
                .query_opt("SELECT 1 FROM backup_sources WHERE id = $1", &[&s])
                .await?
                .is_none()
            {
                return Err(RecoveryError::NotFound(format!(
                    "no source {s} in this organisation"
                )));
            }
            tx.query_opt(
                "SELECT id, source_id, seq, point_in_time FROM recovery_points \
                 WHERE source_id = $1 AND ($2::timestamptz IS NULL OR point_in_time <= $2) \
                 ORDER BY point_in_time DESC, seq DESC LIMIT 1",
                &[&s, &at],
            )
            .await?
            .map(row)
            .ok_or_else(|| {
                RecoveryError::NotFound(match at {
                    Some(t) => format!(
                        "source {s} has no recovery point at or before {}",
                        t.to_rfc3339()
                    ),
                    None => format!("source {s} has no recovery point yet"),
                })
            })
        }
        (None, None, _) => Err(RecoveryError::Invalid(
            "say what to restore: recovery_point_id, or source_id (with point_in_time for the \
             state at a time)"
                .into(),
        )),
    }
}

/// The name of an active (not revoked) machine of the organisation.
pub(super) async fn active_agent_name(tx: &Transaction<'_>, agent: Uuid) -> Result<String> {
    tx.query_opt(
        "SELECT name FROM agents WHERE id = $1 AND revoked_at IS NULL",
        &[&agent],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or_else(|| {
        RecoveryError::Invalid(format!(
            "target agent {agent} is not an active machine of this organisation"
        ))
    })
}

/// Creates a recovery job (status `queued`) for a user or the system actor. Emergency jobs are
/// flagged and page the organisation's emergency contacts in the same transaction.
pub async fn create_job(
    tx: &Transaction<'_>,
    actor: &Actor,
    req: &NewRecoveryJob,
) -> Result<RecoveryJobInfo> {
    let who = requester(tx, actor).await?;
    let emergency = req.recovery_type == RecoveryType::EmergencyRecovery;
    if who.role.as_deref() == Some("emergency_contact") && !emergency {
        return Err(RecoveryError::Forbidden(
            "an emergency contact may only request emergency recoveries \
             (recovery_type \"emergency_recovery\")"
                .into(),
        ));
    }
    validate_target_directory(&req.target_directory)?;
    let prefixes = normalize_prefixes(&req.path_prefixes)?;
    validate_shape(req, &prefixes)?;
    if req.notes.as_ref().is_some_and(|n| n.len() > 10_000) {
        return Err(RecoveryError::Invalid(
            "notes are limited to 10,000 bytes".into(),
        ));
    }

    // Machines and sources are looked up as the organisation (an emergency contact does not read
    // them itself); the job is then inserted as the caller, so its policies apply.
    db::set_identity(tx, &Actor::System { org: who.org }).await?;
    let target_name = active_agent_name(tx, req.target_agent_id).await?;
    let point = resolve_point(tx, req.recovery_point_id, req.source_id, req.point_in_time).await?;
    for p in &prefixes {
        let there: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM public.backup_files_at($1, $2, ARRAY[$3::text]))",
                &[&point.source_id, &point.seq, p],
            )
            .await?
            .get(0);
        if !there {
            return Err(RecoveryError::Invalid(format!(
                "nothing at `{p}` in recovery point {} (seq {})",
                point.id, point.seq
            )));
        }
    }
    db::set_identity(tx, actor).await?;

    let at = req.point_in_time.unwrap_or(point.point_in_time);
    let target_location = format!("{target_name}:{}", req.target_directory);
    let job = tx
        .query_one(
            &format!(
                "INSERT INTO recovery_jobs AS j (organization_id, recovery_point_id, source_id, point_in_time, \
                     initiated_by, recovery_type, target_location, target_agent_id, target_directory, path_prefixes, \
                     overwrite, status, started_at, is_emergency_recovery, notes) \
                 VALUES ($1, $2, $3, $4, $5, $6::text::recovery_type_enum, $7, $8, $9, $10, $11, 'queued', NULL, $12, $13) \
                 RETURNING {JOB_COLS}"
            ),
            &[
                &who.org,
                &point.id,
                &point.source_id,
                &at,
                &who.user,
                &type_to_db(req.recovery_type),
                &target_location,
                &req.target_agent_id,
                &req.target_directory,
                &prefixes,
                &req.overwrite,
                &emergency,
                &req.notes,
            ],
        )
        .await?;
    let job = job_info(&job)?;
    if emergency {
        notify_emergency(tx, actor, who.org, &job, &target_name).await?;
    }
    tracing::info!(
        job = %job.id,
        recovery_type = type_to_db(job.recovery_type),
        target_agent = %req.target_agent_id,
        emergency,
        "recovery job queued"
    );
    Ok(job)
}

/// Cancels a job that has not finished (admins/owners, or the system actor).
pub async fn cancel_job(tx: &Transaction<'_>, actor: &Actor, id: Uuid) -> Result<RecoveryJobInfo> {
    let org = actor
        .org()
        .ok_or_else(|| RecoveryError::Forbidden("no organisation".into()))?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE recovery_jobs j SET status = 'cancelled', completed_at = now(), lease_expires_at = NULL, \
                     waiting_reason = NULL \
                 WHERE j.id = $1 AND j.status IN ('initiated', 'queued', 'claimed', 'running', 'verifying') \
                 RETURNING {JOB_COLS}"
            ),
            &[&id],
        )
        .await?;
    let Some(row) = row else {
        return match tx
            .query_opt(
                "SELECT status::text FROM recovery_jobs WHERE id = $1",
                &[&id],
            )
            .await?
        {
            Some(r) => {
                let status: String = r.get(0);
                if is_active(&status) || status == "initiated" || status == "queued" {
                    Err(RecoveryError::Forbidden(
                        "only an admin or owner of the organisation may cancel a recovery job"
                            .into(),
                    ))
                } else {
                    Err(RecoveryError::Conflict(format!(
                        "recovery job {id} is already {status}"
                    )))
                }
            }
            None => Err(RecoveryError::NotFound(format!("no recovery job {id}"))),
        };
    };
    let job = job_info(&row)?;
    let by = match actor {
        Actor::User { user, .. } => format!("user {user}"),
        _ => "the server administrator".to_string(),
    };
    db::set_identity(tx, &Actor::System { org }).await?;
    tx.execute(
        "INSERT INTO recovery_logs (organization_id, recovery_job_id, step, level, message) \
         VALUES ($1, $2, 'cancelled', 'warning', $3)",
        &[&org, &id, &format!("cancelled by {by}")],
    )
    .await?;
    db::set_identity(tx, actor).await?;
    tracing::info!(job = %id, "recovery job cancelled");
    Ok(job)
}
