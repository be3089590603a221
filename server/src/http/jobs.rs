//! Sources and backup jobs: start, delta parts, commit, fail.
//!
//! Crash behaviour: delta parts are staged and the commit is one transaction (`catalog::commit`),
//! so a crash mid-commit leaves no half point; the agent commits again, and a job nobody returns to
//! ends when its lease runs out.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keepsake_common::api::{
    CommitMissing, CommitRequest, FailJobRequest, JobKind, JobStarted, PartStored,
    RegisterSourceRequest, SourceInfo, StartJobRequest, MAX_DELTA_PART_BODY,
};
use uuid::Uuid;

use super::{in_tx, limits, require_agent, ApiError, AppState};
use crate::auth::Principal;
use crate::catalog::{self, CatalogError, CommitOutcome};

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        match e {
            CatalogError::NotFound(m) => ApiError::not_found(m),
            CatalogError::Conflict(m) => ApiError::conflict(m),
            e @ CatalogError::BadDelta(_) => {
                ApiError::bad_request(e.to_string()).with_code("bad_delta")
            }
            CatalogError::Db(e) => e.into(),
            CatalogError::Spool(e) => {
                tracing::error!(error = %e, "cannot spool a delta part");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server storage unavailable",
                )
            }
        }
    }
}

/// `POST /v1/sources`: registers a watched root of the calling machine (idempotent).
pub async fn register_source(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<RegisterSourceRequest>,
) -> Result<Json<SourceInfo>, ApiError> {
    let agent = require_agent(&p)?;
    let root = req.root_path.trim();
    if root.is_empty() || root.len() > 4096 || root.contains('\0') {
        return Err(ApiError::bad_request(
            "root_path must be 1 to 4096 bytes without NUL",
        ));
    }
    let info = in_tx!(state, &p.actor(), |tx| {
        Ok(catalog::register_source(&tx, p.org, agent, root, req.label.as_deref()).await?)
    });
    Ok(Json(info))
}

/// `GET /v1/sources`: an agent's own sources; a user sees the organisation's.
pub async fn list_sources(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<SourceInfo>>, ApiError> {
    let agent = p.agent_id();
    let sources = in_tx!(state, &p.actor(), |tx| {
        Ok(catalog::list_sources(&tx, agent).await?)
    });
    Ok(Json(sources))
}

/// `POST /v1/jobs`: starts a backup job of one of the caller's sources.
pub async fn start_job(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<StartJobRequest>,
) -> Result<(StatusCode, Json<JobStarted>), ApiError> {
    let agent = require_agent(&p)?;
    let (dest_id, _) = state.primary_destination(&p.actor()).await?;
    let kind = match req.kind {
        JobKind::Incremental => "incremental",
        JobKind::Full => "full",
    };
    let new = catalog::NewJob {
        org: p.org,
        agent,
        source: req.source_id,
        destination: dest_id,
        kind,
        wedding_critical: req.wedding_critical,
    };
    let (job_id, parent_seq) = in_tx!(state, &p.actor(), |tx| {
        catalog::start_job(&tx, &new).await?.ok_or_else(|| {
            ApiError::not_found(format!("no source {} of this machine", req.source_id))
        })
    });
    let started = JobStarted { job_id, parent_seq };
    Ok((StatusCode::CREATED, Json(started)))
}

/// `PUT /v1/jobs/{id}/parts/{part}`: one part of the job's delta (streamed).
pub async fn put_part(
    State(state): State<AppState>,
    p: Principal,
    Path((job, part)): Path<(Uuid, u32)>,
    body: Body,
) -> Result<Json<PartStored>, ApiError> {
    let agent = require_agent(&p)?;
    if part > 1_000_000 {
        return Err(ApiError::bad_request("part number out of range"));
    }
    let (reader, too_large) = limits::streamed(body);
    let staged = catalog::stage_part(state.db(), p.org, agent, job, part, reader).await;
    let (entries, new) = match staged {
        Err(_) if too_large.get() => return Err(limits::TooLarge::error(MAX_DELTA_PART_BODY)),
        other => other?,
    };
    Ok(Json(PartStored { part, entries, new }))
}

/// `POST /v1/jobs/{id}/commit`: 200 with the recovery point, or 409 with the missing blob IDs.
pub async fn commit(
    State(state): State<AppState>,
    p: Principal,
    Path(job): Path<Uuid>,
    Json(req): Json<CommitRequest>,
) -> Result<Response, ApiError> {
    let agent = require_agent(&p)?;
    match catalog::commit(state.db(), p.org, agent, job, &req).await? {
        CommitOutcome::Committed(c) => {
            tracing::info!(job = %job, seq = c.seq, added = c.files_added, changed = c.files_changed,
                deleted = c.files_deleted, "job committed");
            Ok(Json(c).into_response())
        }
        CommitOutcome::Missing { missing, truncated } => Ok((
            StatusCode::CONFLICT,
            Json(CommitMissing {
                error: format!(
                    "{}{} referenced blob(s) are not stored; upload them and commit again",
                    missing.len(),
                    if truncated { "+" } else { "" }
                ),
                missing,
                truncated,
            }),
        )
            .into_response()),
    }
}

/// `POST /v1/jobs/{id}/fail`.
pub async fn fail(
    State(state): State<AppState>,
    p: Principal,
    Path(job): Path<Uuid>,
    Json(req): Json<FailJobRequest>,
) -> Result<StatusCode, ApiError> {
    let agent = require_agent(&p)?;
    catalog::fail(state.db(), p.org, agent, job, &req.error).await?;
    Ok(StatusCode::NO_CONTENT)
}
