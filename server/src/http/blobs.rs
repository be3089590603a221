//! Blobs: which are missing, pack uploads, and reads for restores.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use keepsake_common::api::{
    MissingRequest, MissingResponse, PackStored, ReadBlobsRequest, MAX_MISSING_QUERY,
    MAX_PACK_BODY, MAX_READ_BLOBS,
};
use tokio_util::io::StreamReader;
use uuid::Uuid;

use super::{in_tx, require_agent, ApiError, AppState};
use crate::auth::Principal;
use crate::db::Actor;
use crate::packs::{self, PackError};

/// `POST /v1/blobs/missing`: the IDs of the request the organisation does not hold. Those it does
/// hold are protected from garbage collection for the grace period, so a commit that relies on
/// them cannot lose them to a concurrent prune.
pub async fn missing(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<MissingRequest>,
) -> Result<Json<MissingResponse>, ApiError> {
    if req.ids.len() > MAX_MISSING_QUERY {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_MISSING_QUERY} ids per request"
        )));
    }
    let grace = state.inner.settings.protect_grace;
    let raw: Vec<&[u8]> = req.ids.iter().map(|i| i.as_bytes().as_slice()).collect();
    let present: Vec<Vec<u8>> = in_tx!(state, &p.actor(), |tx| {
        let rows = tx
            .query("SELECT blob_id FROM blobs WHERE blob_id = ANY($1)", &[&raw])
            .await?;
        let present: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
        if !present.is_empty() {
            let secs = format!("{} seconds", grace.as_secs());
            tx.execute(
                "SELECT public.protect_blobs($1, $2::text::interval)",
                &[&present, &secs],
            )
            .await?;
        }
        Ok(present)
    });
    let present: std::collections::HashSet<Vec<u8>> = present.into_iter().collect();
    let missing = req
        .ids
        .iter()
        .filter(|i| !present.contains(i.as_bytes().as_slice()))
        .copied()
        .collect();
    Ok(Json(MissingResponse {
        missing,
        protected_seconds: grace.as_secs(),
    }))
}

/// `POST /v1/packs`: a framed blob stream, stored as one pack on the primary destination.
pub async fn upload_pack(
    State(state): State<AppState>,
    p: Principal,
    body: Body,
) -> Result<(StatusCode, Json<PackStored>), ApiError> {
    let agent = require_agent(&p)?;
    let (dest_id, dest) = state.primary_destination(&p.actor()).await?;
    let stream = body
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let mut reader = StreamReader::new(stream);
    match packs::ingest(
        &mut reader,
        state.db(),
        &dest,
        dest_id,
        p.org,
        agent,
        MAX_PACK_BODY,
    )
    .await
    {
        Ok(stored) => Ok((StatusCode::CREATED, Json(stored))),
        Err(e @ (PackError::Malformed(_) | PackError::HashMismatch(_) | PackError::Truncated)) => {
            Err(ApiError::bad_request(e.to_string()).with_code("bad_pack"))
        }
        Err(PackError::Storage(e)) => Err(e.into()),
        Err(PackError::Db(e)) => Err(e.into()),
    }
}

/// `POST /v1/blobs/read`: the requested blobs as a framed stream, in request order.
pub async fn read_blobs(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<ReadBlobsRequest>,
) -> Result<Response, ApiError> {
    if req.ids.is_empty() || req.ids.len() > MAX_READ_BLOBS {
        return Err(ApiError::bad_request(format!(
            "ask for 1 to {MAX_READ_BLOBS} blobs per request"
        )));
    }
    let located = in_tx!(state, &p.actor(), |tx| {
        Ok(packs::locate(&tx, &req.ids).await?)
    });
    let locations = match located {
        Ok(l) => l,
        Err(missing) => {
            let body = serde_json::json!({
                "error": format!("{} blob(s) are not stored", missing.len()),
                "code": "blobs_missing",
                "missing": missing,
            });
            return Ok((StatusCode::NOT_FOUND, Json(body)).into_response());
        }
    };
    // Destinations are resolved as the system actor: their configuration is not agent-readable.
    let org = p.org;
    let mut wanted: Vec<Uuid> = locations.iter().map(|l| l.destination_id).collect();
    wanted.sort();
    wanted.dedup();
    let rows = in_tx!(state, &Actor::System { org }, |tx| {
        Ok(tx
            .query(
                "SELECT id, name, connection_config FROM backup_destinations WHERE id = ANY($1)",
                &[&wanted],
            )
            .await?)
    });
    let mut dests = HashMap::new();
    for r in rows {
        let id: Uuid = r.get(0);
        dests.insert(id, state.destination(id, r.get(1), r.get(2))?);
    }
    let mut with_dest = Vec::with_capacity(locations.len());
    for loc in locations {
        let d = dests.get(&loc.destination_id).cloned().ok_or_else(|| {
            ApiError::internal(format!("destination {} not found", loc.destination_id))
        })?;
        with_dest.push((loc, d));
    }
    let body = Body::from_stream(packs::stream_blobs(with_dest));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}
