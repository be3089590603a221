//! Blobs: which are missing, pack uploads, adoptions, and reads for restores. Handlers only; the
//! SQL is in `crate::packs`.
//!
//! Crash behaviour: a pack is stored durably on the destination before its index is written in one
//! transaction; a crash between the two leaves an unreferenced pack (the agent uploads its blobs
//! again, and nothing removes such packs yet), never an index entry without its pack.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keepsake_common::api::{
    AdoptRequest, AdoptResponse, MissingRequest, MissingResponse, PackStored, ReadBlobsRequest,
    MAX_ADOPT, MAX_MISSING_QUERY, MAX_PACK_BODY, MAX_READ_BLOBS,
};
use uuid::Uuid;

use super::{in_tx, limits, require_agent, ApiError, AppState};
use crate::auth::Principal;
use crate::db::{blobs, Actor};
use crate::packs::{self, PackError};

/// `POST /v1/blobs/missing`: the IDs of the request the calling machine holds no trusted copy
/// of (see `crate::packs`), and which of those other machines uploaded. Those it does hold are
/// protected from garbage collection for the grace period, so a commit that relies on them
/// cannot lose them to a concurrent prune.
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
    let agent = p.agent_id();
    let (present, foreign) = in_tx!(state, &p.actor(), |tx| {
        let (trusted, foreign) = blobs::trusted(&tx, agent, &req.ids).await?;
        blobs::protect(&tx, &trusted, grace).await?;
        Ok((trusted, foreign))
    });
    let present: std::collections::HashSet<_> = present.into_iter().collect();
    let missing = req
        .ids
        .iter()
        .filter(|i| !present.contains(*i))
        .copied()
        .collect();
    Ok(Json(MissingResponse {
        missing,
        protected_seconds: grace.as_secs(),
        foreign,
    }))
}

/// `POST /v1/blobs/adopt`: copies the calling machine read back and checked with its keys count
/// as its own from now on.
pub async fn adopt(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<AdoptRequest>,
) -> Result<Json<AdoptResponse>, ApiError> {
    let agent = require_agent(&p)?;
    if req.copies.len() > MAX_ADOPT {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ADOPT} copies per request"
        )));
    }
    let copies: Vec<_> = req.copies.iter().map(|c| (c.id, c.cipher_hash)).collect();
    let org = p.org;
    let adopted = in_tx!(state, &p.actor(), |tx| {
        Ok(blobs::adopt(&tx, org, agent, &copies).await?)
    });
    Ok(Json(AdoptResponse { adopted }))
}

/// `POST /v1/packs`: a framed blob stream, stored as one pack on the primary destination.
pub async fn upload_pack(
    State(state): State<AppState>,
    p: Principal,
    body: Body,
) -> Result<(StatusCode, Json<PackStored>), ApiError> {
    let agent = require_agent(&p)?;
    let (dest_id, dest) = state.primary_destination(&p.actor()).await?;
    let (mut reader, too_large) = limits::streamed(body);
    let result = packs::ingest(
        &mut reader,
        state.db(),
        &dest,
        dest_id,
        p.org,
        agent,
        MAX_PACK_BODY,
    )
    .await;
    match result {
        Ok(stored) => Ok((StatusCode::CREATED, Json(stored))),
        Err(_) if too_large.get() => Err(limits::TooLarge::error(MAX_PACK_BODY)),
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
    let agent = p.agent_id();
    let located = in_tx!(state, &p.actor(), |tx| {
        Ok(blobs::locate(&tx, agent, &req.ids, &req.avoid).await?)
    });
    let locations = match located {
        Ok(l) => l,
        Err(missing) => {
            let body = serde_json::json!({
                "error": format!("{} blob(s) have no stored copy left to send", missing.len()),
                "code": "blobs_missing",
                "missing": missing,
            });
            return Ok((StatusCode::NOT_FOUND, Json(body)).into_response());
        }
    };
    // Destinations are resolved as the system actor: their configuration is not agent-readable.
    let org = p.org;
    let mut wanted: Vec<Uuid> = locations
        .iter()
        .flat_map(|l| l.copies.iter().map(|c| c.destination_id))
        .collect();
    wanted.sort();
    wanted.dedup();
    let rows = in_tx!(state, &Actor::System { org }, |tx| {
        Ok(crate::db::destinations::configs(&tx, &wanted).await?)
    });
    let mut dests = HashMap::new();
    for (id, name, config) in rows {
        dests.insert(id, state.destination(id, name, config)?);
    }
    let body = Body::from_stream(packs::stream_blobs(locations, dests));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}
