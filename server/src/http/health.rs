//! Liveness and readiness probes.
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

/// `/readyz`: the database answers and its schema matches this binary's migrations.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let check = async {
        let client = state.db().client().await.map_err(|e| e.to_string())?;
        crate::db::ping(&client).await.map_err(|e| e.to_string())?;
        migrate::status(&client).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), check).await {
        Ok(Ok(status)) => {
            let current = status.is_current();
            let detail = (!current).then(|| {
                format!(
                    "pending migrations: {:?}; edited migrations: {:?}",
                    status.pending, status.edited
                )
            });
            let code = if current {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (
                code,
                Json(Readiness {
                    ready: current,
                    database: true,
                    migrations_current: current,
                    detail,
                }),
            )
        }
        Ok(Err(detail)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                ready: false,
                database: false,
                migrations_current: false,
                detail: Some(detail),
            }),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                ready: false,
                database: false,
                migrations_current: false,
                detail: Some("database did not answer within 5 s".into()),
            }),
        ),
    }
}
