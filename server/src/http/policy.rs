//! Policy: what the organisation tells its agents (exclusions, wedding-critical rules, schedules,
//! vendor settings, wedding season), the agents' heartbeats, and the admin endpoints that manage
//! those rules.
//!
//! Crash behaviour: the handlers keep no state; their changes are the data layer's transactions,
//! whole or absent after a crash.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keepsake_common::api::{
    AgentPolicy, Heartbeat, NewCriticalRule, NewExclusion, NewSchedule, VendorSettings,
};
use uuid::Uuid;

use super::admin::require_manager;
use super::{in_tx, require_agent, ApiError, AppState};
use crate::auth::Principal;
use crate::db::{agents, policy};

/// `GET /v1/policy`: the calling agent's effective policy.
pub async fn get_policy(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Json<AgentPolicy>, ApiError> {
    let agent = require_agent(&p)?;
    let policy = in_tx!(state, &p.actor(), |tx| {
        Ok(policy::agent_policy(&tx, p.org, agent).await?)
    });
    Ok(Json(policy))
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// `POST /v1/heartbeat`: the agent's state, for the studio owner's overview and alerts.
pub async fn heartbeat(
    State(state): State<AppState>,
    p: Principal,
    Json(hb): Json<Heartbeat>,
) -> Result<StatusCode, ApiError> {
    let agent = require_agent(&p)?;
    let mut hb = hb;
    // Bounded: a heartbeat is a status line, not a log.
    if let Some(e) = hb.last_error.as_mut() {
        truncate_at_char(e, 2000);
    }
    truncate_at_char(&mut hb.state, 40);
    truncate_at_char(&mut hb.agent_version, 40);
    let doc = serde_json::to_value(&hb).map_err(ApiError::internal)?;
    in_tx!(state, &p.actor(), |tx| {
        Ok(agents::record_heartbeat(&tx, agent, &doc).await?)
    });
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/exclusions` (admins): a gitignore-style rule for the organisation, one machine or
/// one source.
pub async fn add_exclusion(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<NewExclusion>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    require_manager(&state, &p).await?;
    let scope = match (req.agent_id, req.source_id) {
        (None, None) => "organization",
        (Some(_), None) => "agent",
        (Some(_), Some(_)) => "source",
        (None, Some(_)) => return Err(ApiError::bad_request("a source rule names its agent too")),
    };
    let id = in_tx!(state, &p.actor(), |tx| {
        Ok(policy::add_exclusion(&tx, p.org, scope, &req, p.user_id()).await?)
    });
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

/// `DELETE /v1/exclusions/{id}` (admins).
pub async fn delete_exclusion(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    require_manager(&state, &p).await?;
    let n = in_tx!(state, &p.actor(), |tx| {
        Ok(policy::delete_exclusion(&tx, id).await?)
    });
    if n == 0 {
        return Err(ApiError::not_found("no such exclusion"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/wedding-critical` (admins): folders of a wedding to protect first around its date.
pub async fn add_critical(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<NewCriticalRule>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    require_manager(&state, &p).await?;
    let id = in_tx!(state, &p.actor(), |tx| {
        Ok(policy::add_critical(&tx, p.org, &req).await?)
    });
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

/// `PUT /v1/vendor-config` (admins): settle window, bandwidth limit, schedule window, ... for a
/// supplier type (optionally one machine).
pub async fn put_vendor_config(
    State(state): State<AppState>,
    p: Principal,
    Json(body): Json<serde_json::Value>,
) -> Result<StatusCode, ApiError> {
    require_manager(&state, &p).await?;
    // The settings plus an optional `agent_id` (one machine; absent = the organisation's
    // default). Unknown fields are refused: a misspelt `agent_id` must not silently change
    // every machine's settings.
    let mut obj = match body {
        serde_json::Value::Object(o) => o,
        _ => {
            return Err(ApiError::bad_request(
                "the vendor configuration must be a JSON object",
            ))
        }
    };
    let agent_id: Option<Uuid> = match obj.remove("agent_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value(v)
                .map_err(|_| ApiError::bad_request("agent_id must be a machine's id"))?,
        ),
    };
    let req: VendorSettings = serde_json::from_value(serde_json::Value::Object(obj.clone()))
        .map_err(|e| ApiError::bad_request(format!("invalid vendor configuration: {e}")))?;
    // The known fields are the settings' own (serde ignores the others while parsing).
    let known = match serde_json::to_value(&req).map_err(ApiError::internal)? {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    if let Some(k) = obj.keys().find(|k| !known.contains_key(k.as_str())) {
        let expected: Vec<&str> = known.keys().map(String::as_str).collect();
        return Err(ApiError::bad_request(format!(
            "unknown field `{k}` (expected agent_id or one of: {})",
            expected.join(", ")
        )));
    }
    in_tx!(state, &p.actor(), |tx| {
        Ok(policy::put_vendor_config(&tx, p.org, agent_id, &req).await?)
    });
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/schedules` (admins): a cron schedule of full reconciliation scans.
pub async fn add_schedule(
    State(state): State<AppState>,
    p: Principal,
    Json(req): Json<NewSchedule>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    require_manager(&state, &p).await?;
    let id = in_tx!(state, &p.actor(), |tx| {
        Ok(policy::add_schedule(&tx, p.org, &req).await?)
    });
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}
