//! Recovery points and browsing a source's files at a point.
//!
//! Crash behaviour: the handlers keep no state; their changes are the data layer's transactions,
//! whole or absent after a crash.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keepsake_common::api::RecoveryPointInfo;
use serde::Deserialize;
use uuid::Uuid;

use super::{in_tx, ApiError, AppState};
use crate::auth::Principal;
use crate::catalog;

#[derive(Debug, Deserialize)]
pub struct PointsQuery {
    pub source_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub limit: Option<i64>,
}

/// `GET /v1/points`: recovery points of the organisation, newest first.
pub async fn list_points(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<PointsQuery>,
) -> Result<Json<Vec<RecoveryPointInfo>>, ApiError> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let points = in_tx!(state, &p.actor(), |tx| {
        Ok(catalog::list_points(&tx, q.source_id, q.agent_id, limit).await?)
    });
    Ok(Json(points))
}

/// `GET /v1/points/{id}`.
pub async fn get_point(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<RecoveryPointInfo>, ApiError> {
    let point = in_tx!(state, &p.actor(), |tx| {
        Ok(catalog::get_point(&tx, id).await?)
    })
    .ok_or_else(|| ApiError::not_found(format!("no recovery point {id}")))?;
    Ok(Json(point))
}

#[derive(Debug, Deserialize)]
pub struct FilesQuery {
    #[serde(default)]
    pub prefix: String,
    pub after: Option<String>,
    pub limit: Option<i64>,
    pub chunks: Option<bool>,
}

/// `GET /v1/points/{id}/files`: NDJSON, one file per line, in path order; at most `limit` lines
/// (default 1000, at most 10000); page on with `after=<last path>`. The header
/// `x-keepsake-more: true` says another page follows.
pub async fn list_files(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Query(q): Query<FilesQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let with_chunks = q.chunks.unwrap_or(true);
    let files = in_tx!(state, &p.actor(), |tx| {
        let (source, seq) = catalog::point_source(&tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no recovery point {id}")))?;
        Ok(catalog::files_at(
            &tx,
            source,
            seq,
            &q.prefix,
            q.after.as_deref(),
            limit,
            with_chunks,
        )
        .await?)
    });
    let more = files.len() as i64 == limit;
    let mut body = Vec::with_capacity(files.len() * 200);
    for f in &files {
        serde_json::to_writer(&mut body, f).map_err(ApiError::internal)?;
        body.push(b'\n');
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::HeaderName::from_static("x-keepsake-more"),
                if more { "true" } else { "false" },
            ),
        ],
        body,
    )
        .into_response())
}
