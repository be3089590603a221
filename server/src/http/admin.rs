//! Administration: organisations (platform), enrolment and user tokens, users' roles, agents.
//!
//! Nobody gains rights through another: a user token is made only for a member whose role ranks
//! at or below the caller's, and a role changes only by the rules of [`crate::db::roles`]. These
//! handlers refuse with 403 and a clear message; the database refuses again (migration 0012).
//!
//! Crash behaviour: the handlers keep no state; their changes are the data layer's transactions,
//! whole or absent after a crash.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use keepsake_common::api::{
    CreateEnrollTokenRequest, CreateOrgRequest, CreateOrgResponse, CreateUserTokenRequest,
    SetRoleRequest, TokenCreated, UserRole, WhoAmI,
};
use uuid::Uuid;

use super::{check_throttle, in_tx, require_user, ApiError, AppState, ClientIp};
use crate::auth::{hash_token, new_token, Principal, TokenKind, Who};
use crate::db::orgs::{self, OrgError};
use crate::db::roles::{self, Role};
use crate::db::{agents, tokens};

/// A JSON body that may be absent (empty or `null` means the defaults).
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice(trimmed)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

pub async fn whoami(p: Principal) -> Json<WhoAmI> {
    Json(WhoAmI {
        organization_id: p.org,
        kind: match p.who {
            Who::User(_) => "user".into(),
            Who::Agent(_) => "agent".into(),
        },
        user_id: p.user_id(),
        agent_id: p.agent_id(),
    })
}

/// Admin or owner of the caller's organisation?
pub(crate) async fn require_manager(st: &AppState, p: &Principal) -> Result<(), ApiError> {
    let state = st;
    require_user(p)?;
    let role = in_tx!(state, &p.actor(), |tx| { Ok(tokens::org_role(&tx).await?) });
    match role.as_deref() {
        Some("admin") | Some("owner") => Ok(()),
        _ => Err(ApiError::forbidden(
            "only an admin or owner of the organisation may do this",
        )),
    }
}

/// `POST /v1/orgs`: platform administrators create organisations.
pub async fn create_org(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(req): Json<CreateOrgRequest>,
) -> Result<(StatusCode, Json<CreateOrgResponse>), ApiError> {
    check_throttle(&state, ip)?;
    let Some(expected) = state.inner.settings.platform_token_hash else {
        return Err(ApiError::forbidden(
            "organisation creation over the API is disabled (no platform token configured); \
             use `keepsake-server admin create-org`",
        ));
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(hash_token);
    if presented != Some(expected) {
        state.inner.throttle.failed(ip);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a platform administrator token is required",
        ));
    }
    let Some(cfg) = &state.inner.owner_config else {
        return Err(ApiError::internal("no owner connection configured"));
    };
    let owner = crate::db::connect_owner(cfg).await?;
    let kind = state.inner.default_storage.kind();
    match orgs::create_org(
        &owner,
        state.db(),
        &req.name,
        req.slug.as_deref(),
        &req.admin_email,
        kind,
    )
    .await
    {
        Ok(created) => Ok((StatusCode::CREATED, Json(created))),
        Err(OrgError::Invalid(m)) => Err(ApiError::bad_request(m)),
        Err(e @ OrgError::SlugTaken(_)) => Err(ApiError::conflict(e.to_string())),
        Err(OrgError::Db(e)) => Err(e.into()),
    }
}

/// `POST /v1/enroll-tokens`: an admin creates a single-use enrolment token for a new machine.
pub async fn create_enroll_token(
    State(state): State<AppState>,
    p: Principal,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    require_manager(&state, &p).await?;
    let req: CreateEnrollTokenRequest = optional_json(&body)?;
    let hours = req.valid_hours.unwrap_or(orgs::ENROLL_TOKEN_HOURS);
    if hours == 0 || hours > 720 {
        return Err(ApiError::bad_request(
            "valid_hours must be between 1 and 720",
        ));
    }
    let (token, id, expires) = in_tx!(state, &p.actor(), |tx| {
        Ok(orgs::insert_enroll_token(&tx, p.org, p.user_id(), hours, req.label.as_deref()).await?)
    });
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            token_id: id,
            token,
            expires_at: Some(expires),
        }),
    ))
}

/// `POST /v1/tokens`: a user token for the caller, or (admins) for another member.
pub async fn create_user_token(
    State(state): State<AppState>,
    p: Principal,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let me = require_user(&p)?;
    let req: CreateUserTokenRequest = optional_json(&body)?;
    if req.user_email.is_some() {
        require_manager(&state, &p).await?;
    }
    let expires = match req.valid_days {
        Some(0) => return Err(ApiError::bad_request("valid_days must be at least 1")),
        Some(d) => Some(chrono::Utc::now() + chrono::Duration::days(i64::from(d.min(3650)))),
        None => None,
    };
    let (token, hash) = new_token(TokenKind::User);
    let id = in_tx!(state, &p.actor(), |tx| {
        let user = match &req.user_email {
            None => me,
            Some(email) => tokens::member_by_email(&tx, email).await?.ok_or_else(|| {
                ApiError::not_found(format!("no member `{email}` in this organisation"))
            })?,
        };
        if user != me {
            let caller = caller_role(&tx).await?;
            let target = roles::of(&tx, user).await?.ok_or_else(|| {
                ApiError::not_found("that user is not a member of this organisation")
            })?;
            roles::may_mint_for(caller, target).map_err(ApiError::forbidden)?;
        }
        Ok(
            tokens::create_user_token(&tx, p.org, user, &hash, req.label.as_deref(), me, expires)
                .await?,
        )
    });
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            token_id: id,
            token,
            expires_at: expires,
        }),
    ))
}

/// The acting user's role; 403 when they have none in this organisation.
async fn caller_role(tx: &tokio_postgres::Transaction<'_>) -> Result<Role, ApiError> {
    tokens::org_role(tx)
        .await?
        .as_deref()
        .and_then(Role::parse)
        .ok_or_else(|| ApiError::forbidden("you have no role in this organisation"))
}

/// `PUT /v1/users/{id}/role`: an admin or owner changes another user's role, never their own,
/// never one above their own rank and never to a role above it.
pub async fn set_user_role(
    State(state): State<AppState>,
    p: Principal,
    Path(user): Path<Uuid>,
    Json(req): Json<SetRoleRequest>,
) -> Result<Json<UserRole>, ApiError> {
    let me = require_user(&p)?;
    let new = Role::parse(&req.role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown role `{}` (owner, admin, member or emergency_contact)",
            req.role
        ))
    })?;
    in_tx!(state, &p.actor(), |tx| {
        let caller = caller_role(&tx).await?;
        if !caller.is_manager() {
            return Err(ApiError::forbidden(
                "only an admin or owner of the organisation may change roles",
            ));
        }
        let current = roles::of(&tx, user)
            .await?
            .ok_or_else(|| ApiError::not_found("no such user in this organisation"))?;
        roles::may_change(caller, user == me, current, new).map_err(ApiError::forbidden)?;
        if roles::set(&tx, user, new).await? == 0 {
            return Err(ApiError::not_found("no such user in this organisation"));
        }
        Ok(())
    });
    tracing::info!(%user, role = new.as_str(), by = %me, "role changed");
    Ok(Json(UserRole {
        user_id: user,
        role: new.as_str().to_string(),
    }))
}

/// `DELETE /v1/tokens/{id}`: revokes a token (admins: any token of the organisation; users:
/// their own).
pub async fn revoke_token(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    require_user(&p)?;
    let n = in_tx!(state, &p.actor(), |tx| {
        Ok(tokens::revoke(&tx, id).await?)
    });
    if n == 0 {
        return Err(ApiError::not_found("no such active token visible to you"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/agents`: the organisation's machines.
pub async fn list_agents(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Json<Vec<agents::AgentInfo>>, ApiError> {
    let list = in_tx!(state, &p.actor(), |tx| { Ok(agents::list(&tx).await?) });
    Ok(Json(list))
}

/// `POST /v1/agents/{id}/revoke`: an admin cuts a (stolen) machine off. Its backups stay.
pub async fn revoke_agent(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    require_manager(&state, &p).await?;
    let n = in_tx!(state, &p.actor(), |tx| {
        Ok(agents::revoke(&tx, id).await?)
    });
    if n == 0 {
        return Err(ApiError::not_found("no such active agent"));
    }
    Ok(StatusCode::NO_CONTENT)
}
