//! Liveness and readiness probes. They answer anyone, so they say only yes or no: why the
//! server is not ready (the database's error, which migrations are pending or edited) goes to
//! the log.
//!
//! Crash behaviour: read-only probes; nothing to lose.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use keepsake_common::api::Readiness;

use super::AppState;
use crate::db::migrate;

/// `/healthz`: the process is up and serving HTTP.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

fn not_ready(database: bool) -> (StatusCode, Json<Readiness>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Readiness {
            ready: false,
            database,
            migrations_current: false,
        }),
    )
}

/// `/readyz`: the database answers and its schema matches this binary's migrations.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let check = async {
        let client = state.db().client().await.map_err(|e| e.to_string())?;
        crate::db::ping(&client).await.map_err(|e| e.to_string())?;
        migrate::status(&client).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), check).await {
        Ok(Ok(status)) if status.is_current() => (
            StatusCode::OK,
            Json(Readiness {
                ready: true,
                database: true,
                migrations_current: true,
            }),
        ),
        Ok(Ok(status)) => {
            tracing::warn!(
                pending = ?status.pending,
                edited = ?status.edited,
                "not ready: the database schema does not match this binary's migrations"
            );
            not_ready(true)
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "not ready: the database cannot be reached");
            not_ready(false)
        }
        Err(_) => {
            tracing::warn!("not ready: the database did not answer within 5 s");
            not_ready(false)
        }
    }
}
