//! Recovery management over HTTP: users request recovery jobs and start disaster scenarios; the
//! target machine claims its jobs with a lease, reports progress and log lines, and finishes
//! them with a validation; agents record restore drills. The queries live in
//! [`crate::recovery`], shared with `keepsake-server admin recovery|scenario`.
//!
//! Crash behaviour: the handlers keep no state; their changes are the data layer's transactions,
//! whole or absent after a crash.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keepsake_common::api::{
    ClaimRecoveryRequest, DisasterScenarioInfo, NewRecoveryJob, RecoveryDrillReport,
    RecoveryFinish, RecoveryJobDetail, RecoveryJobInfo, RecoveryLogEntry, RecoveryProgressReport,
    StartScenarioRequest, StartScenarioResponse,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::admin::require_manager;
use super::{in_tx, require_agent, require_user, ApiError, AppState};
use crate::auth::Principal;
use crate::recovery::{self, RecoveryError};

impl From<RecoveryError> for ApiError {
    fn from(e: RecoveryError) -> ApiError {
        match e {
            RecoveryError::Invalid(m) => ApiError::bad_request(m),
            RecoveryError::Forbidden(m) => ApiError::forbidden(m),
            RecoveryError::NotFound(m) => ApiError::not_found(m),
            RecoveryError::Conflict(m) => ApiError::conflict(m),
            RecoveryError::Db(e) => ApiError::from(e),
        }
    }
}

/// `POST /v1/recovery-jobs` (users): a recovery job for a target machine; 201 with the job.
pub async fn create_job(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<NewRecoveryJob>,
) -> Result<(StatusCode, Json<RecoveryJobInfo>), ApiError> {
    require_user(&p)?;
    let actor = p.actor();
    let job = in_tx!(state, &actor, |tx| {
        Ok(recovery::create_job(&tx, &actor, &req).await?)
    });
    Ok((StatusCode::CREATED, Json(job)))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub status: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /v1/recovery-jobs`: the jobs the caller may see (an emergency contact: the emergency
/// ones; an agent: those targeted at it), newest first.
pub async fn list_jobs(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<RecoveryJobInfo>>, ApiError> {
    let jobs = in_tx!(state, &p.actor(), |tx| {
        Ok(recovery::list_jobs(&tx, q.status.as_deref(), q.limit.unwrap_or(500)).await?)
    });
    Ok(Json(jobs))
}

/// `GET /v1/recovery-jobs/{id}`: the job with its log (oldest first) and validations.
pub async fn get_job(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<RecoveryJobDetail>, ApiError> {
    let detail = in_tx!(state, &p.actor(), |tx| {
        Ok(recovery::job_detail(&tx, id).await?)
    })
    .ok_or_else(|| ApiError::not_found(format!("no recovery job {id} visible to you")))?;
    Ok(Json(detail))
}

/// `POST /v1/recovery-jobs/{id}/cancel` (admins/owners).
pub async fn cancel_job(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<RecoveryJobInfo>, ApiError> {
    require_manager(&state, &p).await?;
    let actor = p.actor();
    let job = in_tx!(state, &actor, |tx| {
        Ok(recovery::cancel_job(&tx, &actor, id).await?)
    });
    Ok(Json(job))
}

/// `POST /v1/recovery-jobs/claim` (agents): 200 with the claimed job, or 204.
pub async fn claim(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<ClaimRecoveryRequest>,
) -> Result<Response, ApiError> {
    let agent = require_agent(&p)?;
    let job = in_tx!(state, &p.actor(), |tx| {
        Ok(recovery::claim(&tx, p.org, agent, &req).await?)
    });
    Ok(match job {
        Some(job) => Json(job).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `POST /v1/recovery-jobs/{id}/progress` (the claiming agent).
pub async fn progress(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Json(req): Json<RecoveryProgressReport>,
) -> Result<Json<RecoveryJobInfo>, ApiError> {
    let agent = require_agent(&p)?;
    let job = in_tx!(state, &p.actor(), |tx| {
        Ok(recovery::progress(&tx, agent, id, &req).await?)
    });
    Ok(Json(job))
}

#[derive(Debug, Serialize)]
pub struct LogCreated {
    pub id: i64,
}

/// `POST /v1/recovery-jobs/{id}/logs` (the claiming agent): 201.
pub async fn add_log(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Json(req): Json<RecoveryLogEntry>,
) -> Result<(StatusCode, Json<LogCreated>), ApiError> {
    let agent = require_agent(&p)?;
    let log_id = in_tx!(state, &p.actor(), |tx| {
        Ok(recovery::add_log(&tx, p.org, agent, id, &req).await?)
    });
    Ok((StatusCode::CREATED, Json(LogCreated { id: log_id })))
}

/// `POST /v1/recovery-jobs/{id}/finish` (the claiming agent).
pub async fn finish(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Json(req): Json<RecoveryFinish>,
) -> Result<Json<RecoveryJobInfo>, ApiError> {
    let agent = require_agent(&p)?;
    let job = in_tx!(state, &p.actor(), |tx| {
        Ok(recovery::finish(&tx, p.org, agent, id, &req).await?)
    });
    Ok(Json(job))
}

/// `POST /v1/recovery-drills` (agents): 201 with the recorded job.
pub async fn record_drill(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<RecoveryDrillReport>,
) -> Result<(StatusCode, Json<RecoveryJobInfo>), ApiError> {
    let agent = require_agent(&p)?;
    let job = in_tx!(state, &p.actor(), |tx| {
        Ok(recovery::record_drill(&tx, p.org, agent, &req).await?)
    });
    Ok((StatusCode::CREATED, Json(job)))
}

/// `GET /v1/disaster-scenarios` (users).
pub async fn list_scenarios(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<DisasterScenarioInfo>>, ApiError> {
    require_user(&p)?;
    let list = in_tx!(state, &p.actor(), |tx| {
        Ok(recovery::list_scenarios(&tx).await?)
    });
    Ok(Json(list))
}

/// `POST /v1/disaster-scenarios/{id}/start` (users whose role is among the scenario's
/// responsible roles): 201 with the created jobs.
pub async fn start_scenario(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Json(req): Json<StartScenarioRequest>,
) -> Result<(StatusCode, Json<StartScenarioResponse>), ApiError> {
    require_user(&p)?;
    let actor = p.actor();
    let ids = in_tx!(state, &actor, |tx| {
        Ok(recovery::start_scenario(&tx, &actor, id, &req).await?)
    });
    Ok((
        StatusCode::CREATED,
        Json(StartScenarioResponse {
            recovery_job_ids: ids,
        }),
    ))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsealedKeySetting {
    pub allowed: bool,
}

/// `PUT /v1/org-settings/unsealed-key` (admins/owners): whether agents may keep the unsealed
/// organisation key on disk (so they can restore unattended); agents read it from
/// `GET /v1/policy` (`agents_keep_unsealed_key`).
pub async fn put_unsealed_key(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<UnsealedKeySetting>,
) -> Result<Json<UnsealedKeySetting>, ApiError> {
    require_manager(&state, &p).await?;
    in_tx!(state, &p.actor(), |tx| {
        Ok(recovery::set_unsealed_key_allowed(&tx, p.org, req.allowed).await?)
    });
    Ok(Json(req))
}
