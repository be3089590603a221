//! Enrolment: a machine exchanges a single-use enrolment token for its own agent token.
//!
//! Crash behaviour: spending the token and creating the agent (with its token hash) are one
//! transaction, so a crash or a refusal (name taken, token used) leaves the token unspent and no
//! agent; after the commit the agent exists even if the answer never reaches the machine (its
//! owner then issues a new token; the half-enrolled machine is listed and can be revoked). The
//! agent side finishes a half-done enrolment (keys not yet set up) with the agent token it saved.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keepsake_common::api::{EnrollRequest, EnrollResponse};

use super::{check_throttle, in_tx, ApiError, AppState, ClientIp};
use crate::auth::{hash_token, new_token, TokenKind};
use crate::db::agents::{self, Enrolled};
use crate::db::Actor;

fn clean(s: &str, what: &str, max: usize) -> Result<String, ApiError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {max} printable characters"
        )));
    }
    Ok(t.to_string())
}

pub async fn enroll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    check_throttle(&state, ip)?;
    let name = clean(&req.name, "name", 200)?;
    let hostname = req
        .hostname
        .as_deref()
        .map(|h| clean(h, "hostname", 255))
        .transpose()?;
    let platform = req
        .platform
        .as_deref()
        .map(|h| clean(h, "platform", 64))
        .transpose()?;
    let version = req
        .agent_version
        .as_deref()
        .map(|h| clean(h, "agent_version", 64))
        .transpose()?;

    let hash = hash_token(&req.enroll_token);
    let resolved = in_tx!(state, &Actor::Anonymous, |tx| {
        Ok(agents::resolve_enroll_token(&tx, &hash).await?)
    });
    let Some((token_id, org)) = resolved else {
        state.inner.throttle.failed(ip);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid, expired, revoked or already used enrolment token",
        ));
    };
    let (agent_token, agent_hash) = new_token(TokenKind::Agent);
    let new = agents::NewAgent {
        org,
        name: &name,
        hostname: hostname.as_deref(),
        platform: platform.as_deref(),
        version: version.as_deref(),
        token_hash: &agent_hash,
    };
    // A refusal returns an error from inside the transaction, so it rolls back and the
    // enrolment token stays unspent.
    let out = in_tx!(state, &Actor::System { org }, |tx| {
        match agents::enroll(&tx, token_id, &new).await? {
            Enrolled::TokenUsed => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this enrolment token has already been used",
            )),
            Enrolled::NameTaken => Err(ApiError::conflict(format!(
                "a machine named `{name}` is already enrolled; choose another name or revoke the old one"
            ))),
            Enrolled::Done {
                agent,
                org_name,
                allow_unsealed_key_on_disk,
            } => Ok(EnrollResponse {
                organization_id: org,
                organization_name: org_name,
                agent_id: agent,
                agent_token: agent_token.clone(),
                allow_unsealed_key_on_disk,
            }),
        }
    });
    state.inner.throttle.succeeded(ip);
    tracing::info!(org = %org, agent = %out.agent_id, "agent enrolled");
    Ok((StatusCode::CREATED, Json(out)))
}
