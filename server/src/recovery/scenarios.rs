//! Disaster scenarios: listing the organisation's active scenarios (`disaster_scenarios`),
//! finding one by id or name, and starting one, which creates the recovery jobs its templates
//! prescribe through the SQL function `start_disaster_recovery` (it inserts the
//! `recovery_jobs` and sets `disaster_scenarios.last_executed_at`) and then pages the emergency
//! contacts about the emergency jobs among them (`emergency_notifications`).
//!
//! Nothing here commits: a scenario is started inside the transaction its caller opened and
//! commits, so a crash before the commit leaves no job, no page and the previous
//! `last_executed_at`; the scenario can simply be started again.

use keepsake_common::api::{DisasterScenarioInfo, StartScenarioRequest};
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::emergency::notify_emergency;
use super::jobs::{active_agent_name, get_job, requester};
use super::validate::validate_target_directory;
use super::{type_from_db, RecoveryError, Result};
use crate::db::{self, Actor};

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
