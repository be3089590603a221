//! Sources and backup jobs: start, delta parts, commit, fail.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use keepsake_common::api::{
    CommitMissing, CommitRequest, FailJobRequest, JobKind, JobStarted, PartStored,
    RegisterSourceRequest, SourceInfo, StartJobRequest,
};
use tokio_util::io::StreamReader;
use uuid::Uuid;

use super::{in_tx, require_agent, ApiError, AppState};
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
        }
    }
}

fn source_info(r: &tokio_postgres::Row) -> SourceInfo {
    SourceInfo {
        id: r.get(0),
        agent_id: r.get(1),
        root_path: r.get(2),
        label: r.get(3),
        last_committed_seq: r.get(4),
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
        const COLS: &str = "id, agent_id, root_path, label, last_committed_seq";
        if let Some(r) = tx
            .query_opt(
                &format!(
                    "SELECT {COLS} FROM backup_sources WHERE agent_id = $1 AND root_path = $2"
                ),
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
                &[&p.org, &agent, &root, &req.label],
            )
            .await?;
        Ok(source_info(&r))
    });
    Ok(Json(info))
}

/// `GET /v1/sources`: an agent's own sources; a user sees the organisation's.
pub async fn list_sources(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<SourceInfo>>, ApiError> {
    let agent = p.agent_id();
    let rows = in_tx!(state, &p.actor(), |tx| {
        Ok(tx
            .query(
                "SELECT id, agent_id, root_path, label, last_committed_seq FROM backup_sources \
                 WHERE $1::uuid IS NULL OR agent_id = $1 ORDER BY root_path",
                &[&agent],
            )
            .await?)
    });
    Ok(Json(rows.iter().map(source_info).collect()))
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
    let started = in_tx!(state, &p.actor(), |tx| {
        let parent: i64 = tx
            .query_opt(
                "SELECT last_committed_seq FROM backup_sources WHERE id = $1 AND agent_id = $2",
                &[&req.source_id, &agent],
            )
            .await?
            .ok_or_else(|| {
                ApiError::not_found(format!("no source {} of this machine", req.source_id))
            })?
            .get(0);
        let job: Uuid = tx
            .query_one(
                "INSERT INTO backup_jobs (organization_id, agent_id, source_id, destination_id, job_type, status, \
                     started_at, parent_seq, wedding_critical_priority, heartbeat_at) \
                 VALUES ($1, $2, $3, $4, $5::text::backup_job_type, 'running', now(), $6, $7, now()) RETURNING id",
                &[&p.org, &agent, &req.source_id, &dest_id, &kind, &parent, &req.wedding_critical],
            )
            .await?
            .get(0);
        Ok(JobStarted {
            job_id: job,
            parent_seq: parent,
        })
    });
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
    let stream = body
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let reader = StreamReader::new(stream);
    let (entries, new) = catalog::stage_part(state.db(), p.org, agent, job, part, reader).await?;
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
