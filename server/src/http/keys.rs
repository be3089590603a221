//! The organisation's data key: public recipient plus the sealed key bundle. The server never
//! holds a key that opens file contents; it stores what the first machine generated and sealed.
//!
//! Crash behaviour: a registration is one transaction, so a crash leaves no key or the whole
//! record; when two first machines register at the same moment, one insert wins and the other
//! gets `key_exists` (nothing is overwritten) and unlocks the winner's bundle instead.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keepsake_common::api::{KeyRecord, KeysResponse, RegisterKeyRequest};
use keepsake_common::keys::KeyBundle;

use super::{in_tx, ApiError, AppState};
use crate::auth::{Principal, Who};
use crate::db::keys::{self, Registered};

fn valid_recipient(r: &str) -> bool {
    r.len() == 62
        && r.starts_with("age1")
        && r[4..]
            .chars()
            .all(|c| "qpzry9x8gf2tvdw0s3jn54khce6mua7l".contains(c))
}

/// `GET /v1/keys`: the active key and its sealed bundle.
pub async fn get_keys(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Json<KeysResponse>, ApiError> {
    let active = in_tx!(state, &p.actor(), |tx| { Ok(keys::active(&tx).await?) });
    Ok(Json(KeysResponse { active }))
}

/// `POST /v1/keys`: registers the organisation's first key (any enrolled machine or an admin), or
/// a rotation (admins only: a new key decides who can read all future backups).
pub async fn register_key(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<RegisterKeyRequest>,
) -> Result<(StatusCode, Json<KeyRecord>), ApiError> {
    let bundle = KeyBundle::from_json(&req.bundle)
        .map_err(|e| ApiError::bad_request(format!("invalid key bundle: {e}")))?;
    if bundle.key_id != req.key_id {
        return Err(ApiError::bad_request(format!(
            "the bundle's current key is {}, not {}",
            bundle.key_id, req.key_id
        )));
    }
    if !valid_recipient(&req.recipient) {
        return Err(ApiError::bad_request(
            "recipient is not an age X25519 public key (age1…)",
        ));
    }
    if let Some(bad) = req.extra_recipients.iter().find(|r| !valid_recipient(r)) {
        return Err(ApiError::bad_request(format!(
            "extra recipient `{bad}` is not an age public key"
        )));
    }
    if req.bundle.contains("AGE-SECRET-KEY-") {
        return Err(ApiError::bad_request(
            "the bundle contains a plaintext secret key; refusing to store it",
        ));
    }
    let compact = serde_json::to_string(&bundle).map_err(ApiError::internal)?;
    let record = in_tx!(state, &p.actor(), |tx| {
        let active = keys::active_id(&tx).await?;
        match (&active, &req.replaces_key_id) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(ApiError::conflict("there is no active key to replace"));
            }
            (Some((_, current)), None) => {
                return Err(ApiError::conflict(format!(
                    "the organisation already has key {current}; fetch it and unlock it with the passphrase"
                ))
                .with_code("key_exists"));
            }
            (Some((old, current)), Some(replaces)) => {
                if current != replaces {
                    return Err(ApiError::conflict(format!(
                        "the active key is {current}, not {replaces}"
                    )));
                }
                if !matches!(p.who, Who::User(_)) {
                    return Err(ApiError::forbidden(
                        "only an admin or owner may rotate the organisation's key",
                    ));
                }
                keys::retire(&tx, *old).await?;
            }
        }
        let new = keys::NewKey {
            org: p.org,
            key_id: &req.key_id,
            recipient: &req.recipient,
            bundle: &compact,
            extra_recipients: &req.extra_recipients,
            by_agent: p.agent_id(),
            by_user: p.user_id(),
        };
        match keys::insert(&tx, &new).await? {
            Registered::Stored { id, created_at } => Ok(KeyRecord {
                id,
                key_id: req.key_id.clone(),
                recipient: req.recipient.clone(),
                bundle: compact.clone(),
                is_active: true,
                created_at,
            }),
            // Two first machines at once: the other one won.
            Registered::Concurrent => Err(ApiError::conflict(
                "the organisation's key was registered concurrently by another machine; fetch it",
            )
            .with_code("key_exists")),
        }
    });
    Ok((StatusCode::CREATED, Json(record)))
}
