//! The HTTP API: router, shared state, authentication and error mapping.
//!
//! Data flow of a backup through these modules: `enroll` (an agent joins) → `keys` (the sealed
//! key bundle) → `blobs` (which blobs are missing, pack uploads) → `jobs` (delta parts, commit) →
//! `points` (recovery points, browsing, blob reads for restore).
//!
//! Crash behaviour: the handlers keep no state; each request's changes are transactions of the data
//! layer, so a crash mid-request leaves the state before or after each of them, and every agent
//! call is safe to repeat.

mod admin;
mod blobs;
mod client_ip;
mod enroll;
mod health;
mod jobs;
mod keys;
pub mod limits;
mod points;
mod policy;
mod recovery;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use std::convert::Infallible;

use axum::{middleware, Json, Router};
use keepsake_common::api::{ErrorBody, MAX_DELTA_PART_BODY, MAX_PACK_BODY};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use uuid::Uuid;

pub(crate) use self::client_ip::ClientIp;
use crate::auth::{self, FailureThrottle, Principal};
use crate::db::{self, Actor, Db, DbError};
use crate::destinations::{Destination, DestinationConfig, DestinationError};

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// How long blobs reported present stay protected from garbage collection.
    pub protect_grace: Duration,
    /// BLAKE3 hash of the platform administrator token (organisation creation over the API);
    /// `None` disables that endpoint.
    pub platform_token_hash: Option<[u8; 32]>,
    /// Authentication failures per address before it is throttled, and the window.
    pub auth_failure_limit: u32,
    pub auth_failure_window: Duration,
    /// Requests one token may have in flight at once (more get 429).
    pub max_requests_per_token: usize,
    /// A streamed upload that sends nothing for this long is cut off.
    pub body_idle_timeout: Duration,
    /// Reverse proxies whose `X-Forwarded-For` is believed (see [`client_ip`]).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            protect_grace: Duration::from_secs(24 * 3600),
            platform_token_hash: None,
            auth_failure_limit: 20,
            auth_failure_window: Duration::from_secs(60),
            max_requests_per_token: 16,
            body_idle_timeout: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
        }
    }
}

/// State shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub db: Db,
    /// Where packs go for organisations whose destination is the server default.
    pub default_storage: Destination,
    pub settings: HttpSettings,
    pub throttle: FailureThrottle,
    /// Requests in flight per token.
    pub limiter: limits::TokenLimiter,
    /// Owner connection settings, for platform operations (organisation creation).
    pub owner_config: Option<tokio_postgres::Config>,
    destinations: RwLock<HashMap<Uuid, Destination>>,
}

impl AppState {
    pub fn new(
        db: Db,
        default_storage: Destination,
        settings: HttpSettings,
        owner_config: Option<tokio_postgres::Config>,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                db,
                owner_config,
                default_storage,
                throttle: FailureThrottle::new(
                    settings.auth_failure_limit,
                    settings.auth_failure_window,
                ),
                limiter: limits::TokenLimiter::new(settings.max_requests_per_token),
                settings,
                destinations: RwLock::new(HashMap::new()),
            }),
        }
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The organisation's primary destination (opened once and cached).
    pub async fn primary_destination(
        &self,
        actor: &Actor,
    ) -> Result<(Uuid, Destination), ApiError> {
        let mut client = self.db().client().await?;
        let tx = db::begin(
            &mut client,
            &Actor::System {
                org: actor
                    .org()
                    .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "no organisation"))?,
            },
        )
        .await?;
        let row = db::destinations::primary(&tx).await?;
        tx.commit().await.map_err(DbError::from)?;
        let row = row.ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the organisation has no active primary storage destination",
            )
        })?;
        let (id, name, config) = row;
        let dest = self.destination(id, name, config)?;
        Ok((id, dest))
    }

    /// Opens (or returns the cached) destination `id` from its stored configuration.
    pub fn destination(
        &self,
        id: Uuid,
        name: String,
        config: serde_json::Value,
    ) -> Result<Destination, ApiError> {
        if let Some(d) = self
            .inner
            .destinations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(d.clone());
        }
        let cfg: DestinationConfig = serde_json::from_value(config).map_err(|e| {
            ApiError::internal(format!(
                "destination {id} has an invalid configuration: {e}"
            ))
        })?;
        let dest = match cfg {
            DestinationConfig::ServerDefault => self.inner.default_storage.clone(),
            other => Destination::open(&name, &other).map_err(ApiError::internal)?,
        };
        self.inner
            .destinations
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, dest.clone());
        Ok(dest)
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let idle = state.inner.settings.body_idle_timeout;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/whoami", get(admin::whoami))
        .route("/v1/orgs", post(admin::create_org))
        .route("/v1/enroll-tokens", post(admin::create_enroll_token))
        .route("/v1/tokens", post(admin::create_user_token))
        .route("/v1/tokens/{id}", delete(admin::revoke_token))
        .route("/v1/users/{id}/role", put(admin::set_user_role))
        .route("/v1/agents", get(admin::list_agents))
        .route("/v1/agents/{id}/revoke", post(admin::revoke_agent))
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/keys", get(keys::get_keys).post(keys::register_key))
        .route("/v1/blobs/missing", post(blobs::missing))
        .route("/v1/blobs/adopt", post(blobs::adopt))
        .route(
            "/v1/packs",
            post(blobs::upload_pack)
                .layer::<_, Infallible>(RequestBodyLimitLayer::new(MAX_PACK_BODY as usize))
                .layer(RequestBodyTimeoutLayer::new(idle)),
        )
        .route("/v1/blobs/read", post(blobs::read_blobs))
        .route(
            "/v1/sources",
            post(jobs::register_source).get(jobs::list_sources),
        )
        .route("/v1/jobs", post(jobs::start_job))
        .route(
            "/v1/jobs/{id}/parts/{part}",
            put(jobs::put_part)
                .layer::<_, Infallible>(RequestBodyLimitLayer::new(MAX_DELTA_PART_BODY as usize))
                .layer(RequestBodyTimeoutLayer::new(idle)),
        )
        .route("/v1/jobs/{id}/commit", post(jobs::commit))
        .route("/v1/jobs/{id}/fail", post(jobs::fail))
        .route("/v1/policy", get(policy::get_policy))
        .route("/v1/heartbeat", post(policy::heartbeat))
        .route("/v1/exclusions", post(policy::add_exclusion))
        .route("/v1/exclusions/{id}", delete(policy::delete_exclusion))
        .route("/v1/wedding-critical", post(policy::add_critical))
        .route("/v1/vendor-config", put(policy::put_vendor_config))
        .route("/v1/schedules", post(policy::add_schedule))
        .route(
            "/v1/recovery-jobs",
            post(recovery::create_job).get(recovery::list_jobs),
        )
        .route("/v1/recovery-jobs/claim", post(recovery::claim))
        .route("/v1/recovery-jobs/{id}", get(recovery::get_job))
        .route("/v1/recovery-jobs/{id}/cancel", post(recovery::cancel_job))
        .route("/v1/recovery-jobs/{id}/progress", post(recovery::progress))
        .route("/v1/recovery-jobs/{id}/logs", post(recovery::add_log))
        .route("/v1/recovery-jobs/{id}/finish", post(recovery::finish))
        .route("/v1/recovery-drills", post(recovery::record_drill))
        .route("/v1/disaster-scenarios", get(recovery::list_scenarios))
        .route(
            "/v1/disaster-scenarios/{id}/start",
            post(recovery::start_scenario),
        )
        .route(
            "/v1/org-settings/unsealed-key",
            put(recovery::put_unsealed_key),
        )
        .route("/v1/points", get(points::list_points))
        .route("/v1/points/{id}", get(points::get_point))
        .route("/v1/points/{id}/files", get(points::list_files))
        .layer(DefaultBodyLimit::max(4 * 1024 * 1024))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::per_token,
        ))
        .with_state(state)
}

/// An error answer: status plus a JSON body with a clear message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            code: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        if let DbError::Pg(pg) = &e {
            if let Some(dbe) = pg.as_db_error() {
                let code = dbe.code().code();
                let msg = dbe.message().to_string();
                return match code {
                    "42501" => ApiError::forbidden(format!("refused: {msg}")),
                    "23505" => ApiError::conflict(format!("already exists: {msg}")),
                    "23503" => ApiError::bad_request(format!("unknown reference: {msg}")),
                    c if c.starts_with("23") || c.starts_with("22") => {
                        ApiError::bad_request(format!("invalid value: {msg}"))
                    }
                    _ => ApiError::internal(db::describe(pg)),
                };
            }
        }
        match e {
            DbError::Pool(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> ApiError {
        ApiError::from(DbError::from(e))
    }
}

impl From<DestinationError> for ApiError {
    fn from(e: DestinationError) -> ApiError {
        tracing::error!(error = %e, "storage error");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage destination unavailable",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code.map(str::to_string),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim())
}

/// Checks the throttle for `ip`; answers 429 while it is blocked.
pub(crate) fn check_throttle(state: &AppState, ip: IpAddr) -> Result<(), ApiError> {
    if let Some(secs) = state.inner.throttle.blocked(ip) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentication attempts; try again later",
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    Ok(())
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        check_throttle(state, ip)?;
        let Some(token) = bearer(parts) else {
            state.inner.throttle.failed(ip);
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing bearer token (Authorization: Bearer <token>)",
            ));
        };
        match auth::resolve(state.db(), token).await? {
            Some(p) => {
                state.inner.throttle.succeeded(ip);
                Ok(p)
            }
            None => {
                state.inner.throttle.failed(ip);
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid, expired or revoked token",
                ))
            }
        }
    }
}

/// The caller must be an enrolled agent.
pub(crate) fn require_agent(p: &Principal) -> Result<Uuid, ApiError> {
    p.agent_id()
        .ok_or_else(|| ApiError::forbidden("this endpoint is for enrolled agents"))
}

/// The caller must be a user.
pub(crate) fn require_user(p: &Principal) -> Result<Uuid, ApiError> {
    p.user_id()
        .ok_or_else(|| ApiError::forbidden("this endpoint is for users, not agents"))
}

/// Runs a block in a transaction acting as an actor: `in_tx!(state, &actor, |tx| { ... })`.
/// The block evaluates to `Result<T, ApiError>`; the transaction commits when it is `Ok`.
macro_rules! in_tx {
    ($state:expr, $actor:expr, |$tx:ident| $body:block) => {{
        let mut __client = $state.db().client().await?;
        let $tx = $crate::db::begin(&mut __client, $actor).await?;
        let __out: Result<_, $crate::http::ApiError> = async { $body }.await;
        let __value = __out?;
        $tx.commit().await.map_err($crate::db::DbError::from)?;
        __value
    }};
}
pub(crate) use in_tx;
