//! Policy: what the organisation tells its agents (exclusions, wedding-critical rules, schedules,
//! vendor settings, wedding season), the agents' heartbeats, and the admin endpoints that manage
//! those rules.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keepsake_common::api::{
    AgentPolicy, CriticalRule, ExclusionRule, Heartbeat, NewCriticalRule, NewExclusion,
    NewSchedule, ScheduleRule, VendorSettings,
};
use uuid::Uuid;

use super::admin::require_manager;
use super::{in_tx, require_agent, ApiError, AppState};
use crate::auth::Principal;

/// `GET /v1/policy`: the calling agent's effective policy.
pub async fn get_policy(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Json<AgentPolicy>, ApiError> {
    let agent = require_agent(&p)?;
    let policy = in_tx!(state, &p.actor(), |tx| {
        let exclusions = tx
            .query(
                "SELECT pattern, source_id, scope::text FROM backup_exclusions \
                 WHERE enabled AND (scope = 'organization' OR agent_id = $1) \
                 ORDER BY CASE scope WHEN 'organization' THEN 0 WHEN 'agent' THEN 1 ELSE 2 END, rule_order, id",
                &[&agent],
            )
            .await?
            .iter()
            .map(|r| ExclusionRule {
                pattern: r.get(0),
                source_id: r.get(1),
                scope: r.get(2),
            })
            .collect();
        let critical = tx
            .query(
                "SELECT id, wedding_name, wedding_date, path_patterns, source_id, critical_from, critical_until, priority, \
                        CURRENT_DATE BETWEEN critical_from AND critical_until \
                 FROM wedding_critical_data \
                 WHERE (agent_id IS NULL OR agent_id = $1) AND status IN ('upcoming', 'active') \
                 ORDER BY priority, wedding_date",
                &[&agent],
            )
            .await?
            .iter()
            .map(|r| CriticalRule {
                id: r.get(0),
                wedding_name: r.get(1),
                wedding_date: r.get(2),
                path_patterns: r.get(3),
                source_id: r.get(4),
                critical_from: r.get(5),
                critical_until: r.get(6),
                priority: r.get(7),
                active: r.get(8),
            })
            .collect();
        let season: bool = tx
            .query_one(
                "SELECT coalesce(public.is_wedding_season(CURRENT_DATE), false)",
                &[],
            )
            .await?
            .get(0);
        let schedules = tx
            .query(
                "SELECT id, name, CASE WHEN $2 AND wedding_season_cron IS NOT NULL THEN wedding_season_cron \
                                       ELSE cron_expression END, timezone, full_scan, source_id \
                 FROM backup_schedules WHERE enabled AND (agent_id IS NULL OR agent_id = $1) ORDER BY name",
                &[&agent, &season],
            )
            .await?
            .iter()
            .map(|r| ScheduleRule {
                id: r.get(0),
                name: r.get(1),
                cron: r.get(2),
                timezone: r.get(3),
                full_scan: r.get(4),
                source_id: r.get(5),
            })
            .collect();
        let vendor = tx
            .query_opt(
                "SELECT supplier_type::text, settle_window_seconds, bandwidth_limit_kbps, \
                        to_char(schedule_window_start, 'HH24:MI'), to_char(schedule_window_end, 'HH24:MI'), \
                        realtime_enabled, max_file_size_bytes, priority_extensions \
                 FROM vendor_backup_configs WHERE agent_id = $1 OR agent_id IS NULL \
                 ORDER BY agent_id IS NULL, supplier_type LIMIT 1",
                &[&agent],
            )
            .await?
            .map(|r| VendorSettings {
                supplier_type: r.get(0),
                settle_window_seconds: r.get::<_, i32>(1) as u32,
                bandwidth_limit_kbps: r.get::<_, Option<i32>>(2).map(|v| v as u32),
                schedule_window_start: r.get(3),
                schedule_window_end: r.get(4),
                realtime_enabled: r.get(5),
                max_file_size_bytes: r.get::<_, Option<i64>>(6).map(|v| v as u64),
                priority_extensions: r.get(7),
            });
        let org = tx
            .query_one(
                "SELECT coalesce(settings->>'hemisphere', 'north'), \
                        coalesce(settings->>'agents_keep_unsealed_key', 'false') = 'true' \
                 FROM organizations WHERE id = $1",
                &[&p.org],
            )
            .await?;
        let hemisphere: String = org.get(0);
        let agents_keep_unsealed_key: bool = org.get(1);
        Ok(AgentPolicy {
            exclusions,
            critical,
            schedules,
            vendor,
            in_wedding_season: season,
            hemisphere,
            agents_keep_unsealed_key,
        })
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
        tx.execute(
            "UPDATE agents SET last_seen_at = now(), last_heartbeat = $2, updated_at = now() WHERE id = $1",
            &[&agent, &doc],
        )
        .await?;
        Ok(())
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
    let id: Uuid = in_tx!(state, &p.actor(), |tx| {
        Ok(tx
            .query_one(
                "INSERT INTO backup_exclusions (organization_id, scope, agent_id, source_id, pattern, reason, rule_order, created_by) \
                 VALUES ($1, $2::text::exclusion_scope, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[&p.org, &scope, &req.agent_id, &req.source_id, &req.pattern, &req.reason,
                  &req.rule_order.unwrap_or(0), &p.user_id()],
            )
            .await?
            .get(0))
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
        Ok(tx
            .execute("DELETE FROM backup_exclusions WHERE id = $1", &[&id])
            .await?)
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
    let id: Uuid = in_tx!(state, &p.actor(), |tx| {
        Ok(tx
            .query_one(
                "INSERT INTO wedding_critical_data (organization_id, wedding_name, couple_names, wedding_date, path_patterns, \
                     agent_id, window_before_days, window_after_days, priority, delivery_date) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                &[&p.org, &req.wedding_name, &req.couple_names, &req.wedding_date, &req.path_patterns,
                  &req.agent_id, &req.window_before_days.unwrap_or(7), &req.window_after_days.unwrap_or(30),
                  &req.priority.unwrap_or(1), &req.delivery_date],
            )
            .await?
            .get(0))
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
        tx.execute(
            "INSERT INTO vendor_backup_configs (organization_id, supplier_type, agent_id, settle_window_seconds, \
                 bandwidth_limit_kbps, schedule_window_start, schedule_window_end, realtime_enabled, max_file_size_bytes, priority_extensions) \
             VALUES ($1, $2::text::vendor_supplier_type, $10, $3, $4, $5::text::time, $6::text::time, $7, $8, $9) \
             ON CONFLICT (organization_id, supplier_type, agent_id) DO UPDATE SET \
                 settle_window_seconds = EXCLUDED.settle_window_seconds, bandwidth_limit_kbps = EXCLUDED.bandwidth_limit_kbps, \
                 schedule_window_start = EXCLUDED.schedule_window_start, schedule_window_end = EXCLUDED.schedule_window_end, \
                 realtime_enabled = EXCLUDED.realtime_enabled, max_file_size_bytes = EXCLUDED.max_file_size_bytes, \
                 priority_extensions = EXCLUDED.priority_extensions, updated_at = now()",
            &[&p.org, &req.supplier_type, &(req.settle_window_seconds as i32),
              &req.bandwidth_limit_kbps.map(|v| v as i32), &req.schedule_window_start, &req.schedule_window_end,
              &req.realtime_enabled, &req.max_file_size_bytes.map(|v| v as i64), &req.priority_extensions,
              &agent_id],
        )
        .await?;
        Ok(())
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
    let id: Uuid = in_tx!(state, &p.actor(), |tx| {
        let strategy: Uuid = match tx
            .query_opt(
                "SELECT id FROM backup_strategies WHERE name = 'default'",
                &[],
            )
            .await?
        {
            Some(r) => r.get(0),
            None => {
                // Concurrent first schedules race to create it: the loser waits for the winner's
                // row (ON CONFLICT) and reads it with the next statement's snapshot.
                tx.execute(
                    "INSERT INTO backup_strategies (organization_id, name, strategy_type, backup_frequency, retention_period) \
                     VALUES ($1, 'default', 'continuous_backup', 'real_time', interval '10 years') \
                     ON CONFLICT (organization_id, name) DO NOTHING",
                    &[&p.org],
                )
                .await?;
                tx.query_one(
                    "SELECT id FROM backup_strategies WHERE name = 'default'",
                    &[],
                )
                .await?
                .get(0)
            }
        };
        Ok(tx
            .query_one(
                "INSERT INTO backup_schedules (organization_id, strategy_id, name, cron_expression, timezone, \
                     wedding_season_cron, agent_id, full_scan) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[&p.org, &strategy, &req.name, &req.cron_expression, &req.timezone.clone().unwrap_or_else(|| "UTC".into()),
                  &req.wedding_season_cron, &req.agent_id, &req.full_scan.unwrap_or(true)],
            )
            .await?
            .get(0))
    });
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}
