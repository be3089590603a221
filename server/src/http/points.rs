//! Recovery points and browsing a source's files at a point.

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

const POINT_COLS: &str = "rp.id, rp.source_id, rp.agent_id, a.name, s.root_path, rp.seq, rp.point_in_time, \
     rp.file_count::bigint, rp.backup_size_bytes, rp.is_wedding_critical \
     FROM recovery_points rp JOIN agents a ON a.id = rp.agent_id JOIN backup_sources s ON s.id = rp.source_id";

fn point(r: &tokio_postgres::Row) -> RecoveryPointInfo {
    RecoveryPointInfo {
        id: r.get(0),
        source_id: r.get(1),
        agent_id: r.get(2),
        agent_name: r.get(3),
        root_path: r.get(4),
        seq: r.get(5),
        point_in_time: r.get(6),
        file_count: r.get(7),
        backup_size_bytes: r.get(8),
        is_wedding_critical: r.get(9),
    }
}

/// `GET /v1/points`: recovery points of the organisation, newest first.
pub async fn list_points(
    State(state): State<AppState>,
    p: Principal,
    Query(q): Query<PointsQuery>,
) -> Result<Json<Vec<RecoveryPointInfo>>, ApiError> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let rows = in_tx!(state, &p.actor(), |tx| {
        Ok(tx
            .query(
                &format!(
                    "SELECT {POINT_COLS} WHERE rp.source_id IS NOT NULL \
                     AND ($1::uuid IS NULL OR rp.source_id = $1) AND ($2::uuid IS NULL OR rp.agent_id = $2) \
                     ORDER BY rp.point_in_time DESC, rp.seq DESC LIMIT $3"
                ),
                &[&q.source_id, &q.agent_id, &limit],
            )
            .await?)
    });
    Ok(Json(rows.iter().map(point).collect()))
}

/// `GET /v1/points/{id}`.
pub async fn get_point(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<RecoveryPointInfo>, ApiError> {
    let row = in_tx!(state, &p.actor(), |tx| {
        Ok(tx
            .query_opt(&format!("SELECT {POINT_COLS} WHERE rp.id = $1"), &[&id])
            .await?)
    })
    .ok_or_else(|| ApiError::not_found(format!("no recovery point {id}")))?;
    Ok(Json(point(&row)))
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
        let row = tx
            .query_opt(
                "SELECT source_id, seq FROM recovery_points WHERE id = $1 AND source_id IS NOT NULL",
                &[&id],
            )
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no recovery point {id}")))?;
        Ok(catalog::files_at(
            &tx,
            row.get(0),
            row.get(1),
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
