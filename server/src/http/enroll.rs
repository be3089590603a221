//! Enrolment: a machine exchanges a single-use enrolment token for its own agent token.

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use keepsake_common::api::{EnrollRequest, EnrollResponse};
use uuid::Uuid;

use super::{check_throttle, in_tx, ApiError, AppState};
use crate::auth::{hash_token, new_token, TokenKind};
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
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    Json(req): Json<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    let ip = addr.ip();
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
    let resolved: Option<(Uuid, Uuid)> = in_tx!(state, &Actor::Anonymous, |tx| {
        Ok(tx
            .query_opt(
                "SELECT token_id, organization_id FROM auth.resolve_token($1) WHERE kind = 'enroll'",
                &[&hash.as_slice()],
            )
            .await?
            .map(|r| (r.get(0), r.get(1))))
    });
    let Some((token_id, org)) = resolved else {
        state.inner.throttle.failed(ip);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid, expired, revoked or already used enrolment token",
        ));
    };
    let (agent_token, agent_hash) = new_token(TokenKind::Agent);
    let out = in_tx!(state, &Actor::System { org }, |tx| {
        let used = tx
            .execute(
                "UPDATE api_tokens SET used_at = now() WHERE id = $1 AND kind = 'enroll' AND used_at IS NULL",
                &[&token_id],
            )
            .await?;
        if used == 0 {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this enrolment token has already been used",
            ));
        }
        let taken = tx
            .query_opt(
                "SELECT 1 FROM agents WHERE name = $1 AND revoked_at IS NULL",
                &[&name],
            )
            .await?
            .is_some();
        if taken {
            return Err(ApiError::conflict(format!(
                "a machine named `{name}` is already enrolled; choose another name or revoke the old one"
            )));
        }
        let agent: Uuid = tx
            .query_one(
                "INSERT INTO agents (organization_id, name, hostname, platform, agent_version, last_seen_at) \
                 VALUES ($1, $2, $3, $4, $5, now()) RETURNING id",
                &[&org, &name, &hostname, &platform, &version],
            )
            .await?
            .get(0);
        tx.execute(
            "INSERT INTO api_tokens (organization_id, kind, agent_id, token_hash, label) \
             VALUES ($1, 'agent', $2, $3, $4)",
            &[&org, &agent, &agent_hash.as_slice(), &name],
        )
        .await?;
        tx.execute(
            "INSERT INTO backup_audit_trail (organization_id, actor, action, resource_type, resource_id, new_values) \
             VALUES ($1, 'system', 'agent.enrolled', 'agent', $2, jsonb_build_object('name', $3::text, 'hostname', $4::text))",
            &[&org, &agent, &name, &hostname],
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT name, coalesce((settings->>'allow_unsealed_key_on_disk')::boolean, false) \
                 FROM organizations WHERE id = $1",
                &[&org],
            )
            .await?;
        Ok(EnrollResponse {
            organization_id: org,
            organization_name: row.get(0),
            agent_id: agent,
            agent_token: agent_token.clone(),
            allow_unsealed_key_on_disk: row.get(1),
        })
    });
    state.inner.throttle.succeeded(ip);
    tracing::info!(org = %org, agent = %out.agent_id, "agent enrolled");
    Ok((StatusCode::CREATED, Json(out)))
}
