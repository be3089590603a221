//! Recovery management: recovery jobs requested centrally (by a user over the API or by the
//! `keepsake-server admin recovery` command) and executed by the target machine, which claims
//! them with a lease, reports progress and logs, and finishes them with a validation of what it
//! restored; restore drills; disaster scenarios.
//!
//! Every query lives here and runs inside a transaction the caller opened for an actor
//! ([`crate::db::begin`]): the HTTP handlers (`http::recovery`) and the admin command
//! (`cli`) share them. Row-level security decides what each actor sees and changes. Lookups an
//! emergency contact may not make itself (machines, sources) and records only the server writes
//! (emergency notifications, log lines of user actions) run as the organisation's system actor
//! for one step, and the transaction then switches back to the caller.

use chrono::{DateTime, Utc};
use keepsake_common::api::{
    ClaimRecoveryRequest, DisasterScenarioInfo, NewRecoveryJob, RecoveryDrillReport,
    RecoveryFinish, RecoveryJobDetail, RecoveryJobInfo, RecoveryLogEntry, RecoveryLogInfo,
    RecoveryProgressReport, RecoveryType, RecoveryValidationInfo, StartScenarioRequest,
    ValidationReport,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::db::{self, Actor, DbError};

/// Longest lease an agent may ask for.
pub const MAX_LEASE_SECONDS: u32 = 24 * 3600;
/// Lease extension when a job has no recorded lease length (jobs claimed before 0009).
const DEFAULT_LEASE_SECONDS: i32 = 300;
/// Log levels of the `log_level` enum.
pub const LOG_LEVELS: &[&str] = &["debug", "info", "warning", "error", "critical"];

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The request cannot work as sent (400).
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Something the request names does not exist for the caller (404).
    #[error("{0}")]
    NotFound(String),
    /// The job is not in a state that allows this (409).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for RecoveryError {
    fn from(e: tokio_postgres::Error) -> Self {
        // Our SQL functions report "nothing there" as no_data_found with a readable message.
        if let Some(dbe) = e.as_db_error() {
            if *dbe.code() == SqlState::NO_DATA_FOUND {
                return RecoveryError::NotFound(dbe.message().to_string());
            }
        }
        RecoveryError::Db(DbError::from(e))
    }
}

type Result<T> = std::result::Result<T, RecoveryError>;

/// The `recovery_type_enum` value of a type.
pub fn type_to_db(t: RecoveryType) -> &'static str {
    match t {
        RecoveryType::FullRecovery => "full_recovery",
        RecoveryType::PartialRecovery => "partial_recovery",
        RecoveryType::FileRecovery => "file_recovery",
        RecoveryType::PointInTimeRecovery => "point_in_time_recovery",
        RecoveryType::EmergencyRecovery => "emergency_recovery",
    }
}

/// The type of a `recovery_type_enum` value.
pub fn type_from_db(s: &str) -> Result<RecoveryType> {
    Ok(match s {
        "full_recovery" => RecoveryType::FullRecovery,
        "partial_recovery" => RecoveryType::PartialRecovery,
        "file_recovery" => RecoveryType::FileRecovery,
        "point_in_time_recovery" => RecoveryType::PointInTimeRecovery,
        "emergency_recovery" => RecoveryType::EmergencyRecovery,
        other => {
            return Err(RecoveryError::Invalid(format!(
                "unknown recovery type `{other}`"
            )))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Validation of what a request names
// ---------------------------------------------------------------------------------------------

/// An absolute folder on the target machine: `/...`, `C:\...` / `C:/...`, or `\\server\share`.
pub fn validate_target_directory(dir: &str) -> Result<()> {
    if dir.is_empty() || dir.len() > 4096 {
        return Err(RecoveryError::Invalid(
            "target_directory must be 1 to 4096 bytes".into(),
        ));
    }
    if dir.chars().any(char::is_control) {
        return Err(RecoveryError::Invalid(
            "target_directory contains control characters".into(),
        ));
    }
    let b = dir.as_bytes();
    let windows_drive =
        b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'\\' | b'/');
    if !(dir.starts_with('/') || windows_drive || dir.starts_with("\\\\")) {
        return Err(RecoveryError::Invalid(format!(
            "target_directory `{dir}` is not an absolute path on the target machine"
        )));
    }
    Ok(())
}

/// Relative, '/'-separated paths without empty, `.` or `..` components (the database's
/// `relative_paths_valid`). A trailing '/' is dropped; duplicates are removed.
pub fn normalize_prefixes(prefixes: &[String]) -> Result<Vec<String>> {
    if prefixes.len() > 1000 {
        return Err(RecoveryError::Invalid(
            "at most 1000 path_prefixes per job".into(),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        let trimmed = p.strip_suffix('/').unwrap_or(p);
        let bad = |why: &str| {
            RecoveryError::Invalid(format!(
                "path prefix `{p}` {why}: prefixes are relative to the source root, '/'-separated, \
                 without `.` or `..`"
            ))
        };
        if trimmed.is_empty() {
            return Err(bad("is empty"));
        }
        if trimmed.starts_with('/') {
            return Err(bad("is absolute"));
        }
        if trimmed.len() > 32768 {
            return Err(bad("is too long"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(bad("contains control characters"));
        }
        if trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("has an empty, `.` or `..` component"));
        }
        if !out.iter().any(|x| x == trimmed) {
            out.push(trimmed.to_string());
        }
    }
    Ok(out)
}

/// What each recovery type requires of the paths and the point.
fn validate_shape(req: &NewRecoveryJob, prefixes: &[String]) -> Result<()> {
    match req.recovery_type {
        RecoveryType::FullRecovery if !prefixes.is_empty() => Err(RecoveryError::Invalid(
            "a full recovery restores the whole source; use partial_recovery for some folders"
                .into(),
        )),
        RecoveryType::PartialRecovery if prefixes.is_empty() => Err(RecoveryError::Invalid(
            "a partial recovery needs at least one path prefix (path_prefixes)".into(),
        )),
        RecoveryType::FileRecovery if prefixes.len() != 1 => Err(RecoveryError::Invalid(format!(
            "a file recovery restores exactly one file (path_prefixes has {})",
            prefixes.len()
        ))),
        RecoveryType::PointInTimeRecovery
            if req.point_in_time.is_none() && req.recovery_point_id.is_none() =>
        {
            Err(RecoveryError::Invalid(
                "a point-in-time recovery needs point_in_time (or a recovery_point_id)".into(),
            ))
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading jobs
// ---------------------------------------------------------------------------------------------

const JOB_COLS: &str = "j.id, j.recovery_type::text, j.status::text, j.recovery_point_id, j.source_id, \
     j.point_in_time, j.path_prefixes, j.target_agent_id, j.target_directory, j.overwrite, \
     j.is_emergency_recovery, j.progress_percentage, j.files_total, j.bytes_total, \
     j.files_recovered::bigint, j.bytes_recovered, j.estimated_completion, \
     CASE WHEN j.claimed_at IS NULL AND j.status IN ('initiated', 'queued') THEN NULL ELSE j.started_at END, \
     j.completed_at, j.verification_passed, j.claimed_by, j.attempts, j.waiting_reason, j.error_message, \
     j.disaster_scenario_id, j.created_at";

fn job_info(r: &tokio_postgres::Row) -> Result<RecoveryJobInfo> {
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

// ---------------------------------------------------------------------------------------------
// Creating jobs
// ---------------------------------------------------------------------------------------------

/// Who requests a job, and whether they are limited to emergency recoveries.
struct Requester {
    org: Uuid,
    user: Option<Uuid>,
    role: Option<String>,
}

async fn requester(tx: &Transaction<'_>, actor: &Actor) -> Result<Requester> {
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
async fn active_agent_name(tx: &Transaction<'_>, agent: Uuid) -> Result<String> {
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

/// Pages the emergency contacts about an emergency job: one `emergency_notifications` row
/// (written by the server, i.e. the system actor) listing the active contacts who take critical
/// pages, in priority order.
async fn notify_emergency(
    tx: &Transaction<'_>,
    actor: &Actor,
    org: Uuid,
    job: &RecoveryJobInfo,
    target_name: &str,
) -> Result<()> {
    db::set_identity(tx, &Actor::System { org }).await?;
    let contacts: serde_json::Value = tx
        .query_one(
            "SELECT coalesce(jsonb_agg(jsonb_build_object('name', name, 'email', email, 'phone', phone, \
                     'priority_order', priority_order, 'user_id', user_id) ORDER BY priority_order, name, id), '[]'::jsonb) \
             FROM emergency_contacts WHERE is_active AND 'critical' = ANY (notify_on)",
            &[],
        )
        .await?
        .get(0);
    let requested_by: Option<String> = match actor {
        Actor::User { user, .. } => tx
            .query_opt("SELECT email FROM auth.users WHERE id = $1", &[user])
            .await?
            .map(|r| r.get(0)),
        _ => None,
    };
    let what = if job.path_prefixes.is_empty() {
        "the whole source".to_string()
    } else {
        job.path_prefixes.join(", ")
    };
    let mut message = format!(
        "Emergency recovery {} requested by {}: restore {} onto {}:{}",
        job.id,
        requested_by
            .as_deref()
            .unwrap_or("the server administrator"),
        what,
        target_name,
        job.target_directory.as_deref().unwrap_or("")
    );
    if message.len() > 3900 {
        let mut cut = 3900;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    let metadata = serde_json::json!({
        "recovery_job_id": job.id,
        "recovery_type": type_to_db(job.recovery_type),
        "recovery_point_id": job.recovery_point_id,
        "source_id": job.source_id,
        "target_agent_id": job.target_agent_id,
        "target_agent_name": target_name,
        "target_directory": job.target_directory,
        "path_prefixes": job.path_prefixes,
        "disaster_scenario_id": job.disaster_scenario_id,
        "requested_by": requested_by,
        "contacts": contacts,
    });
    tx.execute(
        "INSERT INTO emergency_notifications (organization_id, notification_type, severity, message, metadata, recovery_job_id) \
         VALUES ($1, 'emergency_recovery', 'critical', $2, $3, $4)",
        &[&org, &message, &metadata, &job.id],
    )
    .await?;
    db::set_identity(tx, actor).await?;
    Ok(())
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

// ---------------------------------------------------------------------------------------------
// The target agent: claim, progress, logs, finish, drills
// ---------------------------------------------------------------------------------------------

async fn agent_name(tx: &Transaction<'_>, agent: Uuid) -> Result<String> {
    Ok(tx
        .query_opt("SELECT name FROM agents WHERE id = $1", &[&agent])
        .await?
        .map(|r| r.get(0))
        .unwrap_or_else(|| agent.to_string()))
}

async fn log(
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

fn is_active(status: &str) -> bool {
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_i32(v: u64) -> i32 {
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

async fn insert_validation(
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
fn failure_message(restore_ok: bool, error: Option<&str>, v: Option<&ValidationReport>) -> String {
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

// ---------------------------------------------------------------------------------------------
// Disaster scenarios
// ---------------------------------------------------------------------------------------------

/// The organisation's active disaster scenarios, by name.
pub async fn list_scenarios(tx: &Transaction<'_>) -> Result<Vec<DisasterScenarioInfo>> {
    tx.query(
        "SELECT id, name, scenario_kind::text, description, steps, responsible_roles::text[], \
                EXTRACT(EPOCH FROM expected_rto)::bigint, EXTRACT(EPOCH FROM expected_rpo)::bigint, \
                recovery_type::text, last_executed_at \
         FROM disaster_scenarios WHERE is_active ORDER BY name",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(DisasterScenarioInfo {
            id: r.get(0),
            name: r.get(1),
            scenario_kind: r.get(2),
            description: r.get(3),
            steps: r.get(4),
            responsible_roles: r.get(5),
            expected_rto_seconds: r.get(6),
            expected_rpo_seconds: r.get(7),
            recovery_type: type_from_db(r.get(8))?,
            last_executed_at: r.get(9),
        })
    })
    .collect()
}

/// A scenario by id or (case-insensitive) name.
pub async fn find_scenario(tx: &Transaction<'_>, name_or_id: &str) -> Result<Uuid> {
    let row = match Uuid::parse_str(name_or_id) {
        Ok(id) => {
            tx.query_opt("SELECT id FROM disaster_scenarios WHERE id = $1", &[&id])
                .await?
        }
        Err(_) => {
            tx.query_opt(
                "SELECT id FROM disaster_scenarios WHERE lower(name) = lower($1) ORDER BY created_at LIMIT 1",
                &[&name_or_id],
            )
            .await?
        }
    };
    row.map(|r| r.get(0)).ok_or_else(|| {
        RecoveryError::NotFound(format!(
            "no disaster scenario `{name_or_id}` in this organisation"
        ))
    })
}

/// Starts a disaster scenario: the recovery jobs its templates prescribe, created by
/// `start_disaster_recovery` for the caller (users whose role is among the scenario's
/// responsible roles, or the system actor). Emergency jobs page the emergency contacts.
pub async fn start_scenario(
    tx: &Transaction<'_>,
    actor: &Actor,
    scenario: Uuid,
    req: &StartScenarioRequest,
) -> Result<Vec<Uuid>> {
    let who = requester(tx, actor).await?;
    validate_target_directory(&req.target_directory)?;
    let sc = tx
        .query_opt(
            "SELECT name, responsible_roles::text[] FROM disaster_scenarios WHERE id = $1 AND is_active",
            &[&scenario],
        )
        .await?
        .ok_or_else(|| {
            RecoveryError::NotFound(format!("no active disaster scenario {scenario} in this organisation"))
        })?;
    let (name, roles): (String, Vec<String>) = (sc.get(0), sc.get(1));
    if let Some(role) = &who.role {
        if !roles.contains(role) {
            return Err(RecoveryError::Forbidden(format!(
                "the disaster scenario \"{name}\" is started by {}; your role is {role}",
                roles.join(", ")
            )));
        }
    }
    db::set_identity(tx, &Actor::System { org: who.org }).await?;
    let target_name = active_agent_name(tx, req.target_agent_id).await?;
    if let Some(lost) = req.lost_agent_id {
        if tx
            .query_opt("SELECT 1 FROM agents WHERE id = $1", &[&lost])
            .await?
            .is_none()
        {
            return Err(RecoveryError::Invalid(format!(
                "lost machine {lost} is not a machine of this organisation"
            )));
        }
    }
    db::set_identity(tx, actor).await?;
    let ids: Vec<Uuid> = tx
        .query(
            "SELECT public.start_disaster_recovery($1, $2, $3, $4, $5, $6)",
            &[
                &scenario,
                &req.target_agent_id,
                &format!("{target_name}:{}", req.target_directory),
                &req.point_in_time,
                &req.target_directory,
                &req.lost_agent_id,
            ],
        )
        .await
        .map_err(|e| {
            // The function's refusals are for the caller to read.
            match e.as_db_error() {
                Some(dbe) if dbe.code() == &SqlState::NULL_VALUE_NOT_ALLOWED => {
                    RecoveryError::Invalid(dbe.message().to_string())
                }
                _ => RecoveryError::from(e),
            }
        })?
        .iter()
        .map(|r| r.get(0))
        .collect();
    db::set_identity(tx, &Actor::System { org: who.org }).await?;
    let mut emergency = Vec::new();
    for id in &ids {
        if let Some(job) = get_job(tx, *id).await? {
            if job.is_emergency {
                emergency.push(job);
            }
        }
    }
    db::set_identity(tx, actor).await?;
    for job in &emergency {
        notify_emergency(tx, actor, who.org, job, &target_name).await?;
    }
    tracing::info!(scenario = %scenario, jobs = ids.len(), "disaster scenario started");
    Ok(ids)
}

// ---------------------------------------------------------------------------------------------
// Organisation settings and lookups for the admin command
// ---------------------------------------------------------------------------------------------

/// Whether agents may keep the unsealed organisation key on disk (`GET /v1/policy` tells them).
pub async fn set_unsealed_key_allowed(
    tx: &Transaction<'_>,
    org: Uuid,
    allowed: bool,
) -> Result<()> {
    let n = tx
        .execute(
            "UPDATE organizations SET settings = settings || \
                 jsonb_build_object('agents_keep_unsealed_key', $2::boolean, 'allow_unsealed_key_on_disk', $2::boolean) \
             WHERE id = $1",
            &[&org, &allowed],
        )
        .await?;
    if n == 0 {
        return Err(RecoveryError::Forbidden(
            "only an admin or owner of the organisation may change its settings".into(),
        ));
    }
    tracing::info!(org = %org, allowed, "unsealed-key setting changed");
    Ok(())
}

/// A machine by id or name (a live machine first, else the most recently revoked one: a stolen
/// laptop is usually revoked already).
pub async fn find_agent(tx: &Transaction<'_>, name_or_id: &str) -> Result<Uuid> {
    let row = match Uuid::parse_str(name_or_id) {
        Ok(id) => {
            tx.query_opt("SELECT id FROM agents WHERE id = $1", &[&id])
                .await?
        }
        Err(_) => {
            tx.query_opt(
                "SELECT id FROM agents WHERE name = $1 \
                 ORDER BY revoked_at IS NOT NULL, revoked_at DESC, created_at DESC LIMIT 1",
                &[&name_or_id],
            )
            .await?
        }
    };
    row.map(|r| r.get(0)).ok_or_else(|| {
        RecoveryError::NotFound(format!("no machine `{name_or_id}` in this organisation"))
    })
}

/// A machine's only (or first registered) source.
pub async fn first_source(tx: &Transaction<'_>, agent: Uuid) -> Result<Uuid> {
    tx.query_opt(
        "SELECT id FROM backup_sources WHERE agent_id = $1 ORDER BY created_at, id LIMIT 1",
        &[&agent],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or_else(|| RecoveryError::NotFound(format!("machine {agent} has no backed-up source")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_directories_must_be_absolute() {
        for ok in [
            "/Users/ana/Restore",
            "C:\\Restore",
            "d:/restore",
            "\\\\nas\\share",
        ] {
            assert!(validate_target_directory(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Restore", "./x", "C:", "C:Restore", "/tmp/a\nb"] {
            assert!(validate_target_directory(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_are_relative_and_normalised() {
        let p =
            |v: &[&str]| normalize_prefixes(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            p(&["2025/Smith/", "2025/Smith", "a"]).unwrap(),
            vec!["2025/Smith".to_string(), "a".to_string()]
        );
        for bad in ["/abs", "..", "a/../b", "a//b", "./a", "", "/", "a/."] {
            assert!(p(&[bad]).is_err(), "{bad:?}");
        }
    }

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
