//! The organisation's rules for its machines: exclusions (`backup_exclusions`), wedding-critical
//! folders (`wedding_critical_data`), scan schedules (`backup_schedules`, under the organisation's
//! default strategy), vendor settings (`vendor_backup_configs`) and the wedding season; and
//! the effective policy one machine is sent.
//!
//! Every function runs in the caller's transaction (row-level security decides what the caller
//! sees and may change), so a crash leaves either the previous rules or the new ones.

use keepsake_common::api::{
    AgentPolicy, CriticalRule, ExclusionRule, NewCriticalRule, NewExclusion, NewSchedule,
    ScheduleRule, VendorSettings,
};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::DbError;

/// The effective policy of machine `agent` of organisation `org`.
pub async fn agent_policy(
    tx: &Transaction<'_>,
    org: Uuid,
    agent: Uuid,
) -> Result<AgentPolicy, DbError> {
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
            &[&org],
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
}

/// Adds an exclusion rule with `scope` (`organization`, `agent` or `source`); its id.
pub async fn add_exclusion(
    tx: &Transaction<'_>,
    org: Uuid,
    scope: &str,
    req: &NewExclusion,
    created_by: Option<Uuid>,
) -> Result<Uuid, DbError> {
    Ok(tx
        .query_one(
            "INSERT INTO backup_exclusions (organization_id, scope, agent_id, source_id, pattern, reason, rule_order, created_by) \
             VALUES ($1, $2::text::exclusion_scope, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[&org, &scope, &req.agent_id, &req.source_id, &req.pattern, &req.reason,
              &req.rule_order.unwrap_or(0), &created_by],
        )
        .await?
        .get(0))
}

/// Deletes exclusion `id`; how many rows went (0: none visible).
pub async fn delete_exclusion(tx: &Transaction<'_>, id: Uuid) -> Result<u64, DbError> {
    Ok(tx
        .execute("DELETE FROM backup_exclusions WHERE id = $1", &[&id])
        .await?)
}

/// Adds a wedding-critical rule; its id.
pub async fn add_critical(
    tx: &Transaction<'_>,
    org: Uuid,
    req: &NewCriticalRule,
) -> Result<Uuid, DbError> {
    Ok(tx
        .query_one(
            "INSERT INTO wedding_critical_data (organization_id, wedding_name, couple_names, wedding_date, path_patterns, \
                 agent_id, window_before_days, window_after_days, priority, delivery_date) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[&org, &req.wedding_name, &req.couple_names, &req.wedding_date, &req.path_patterns,
              &req.agent_id, &req.window_before_days.unwrap_or(7), &req.window_after_days.unwrap_or(30),
              &req.priority.unwrap_or(1), &req.delivery_date],
        )
        .await?
        .get(0))
}

/// Sets the vendor settings of a supplier type for one machine (`agent`) or the organisation.
pub async fn put_vendor_config(
    tx: &Transaction<'_>,
    org: Uuid,
    agent: Option<Uuid>,
    req: &VendorSettings,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO vendor_backup_configs (organization_id, supplier_type, agent_id, settle_window_seconds, \
             bandwidth_limit_kbps, schedule_window_start, schedule_window_end, realtime_enabled, max_file_size_bytes, priority_extensions) \
         VALUES ($1, $2::text::vendor_supplier_type, $10, $3, $4, $5::text::time, $6::text::time, $7, $8, $9) \
         ON CONFLICT (organization_id, supplier_type, agent_id) DO UPDATE SET \
             settle_window_seconds = EXCLUDED.settle_window_seconds, bandwidth_limit_kbps = EXCLUDED.bandwidth_limit_kbps, \
             schedule_window_start = EXCLUDED.schedule_window_start, schedule_window_end = EXCLUDED.schedule_window_end, \
             realtime_enabled = EXCLUDED.realtime_enabled, max_file_size_bytes = EXCLUDED.max_file_size_bytes, \
             priority_extensions = EXCLUDED.priority_extensions, updated_at = now()",
        &[&org, &req.supplier_type, &(req.settle_window_seconds as i32),
          &req.bandwidth_limit_kbps.map(|v| v as i32), &req.schedule_window_start, &req.schedule_window_end,
          &req.realtime_enabled, &req.max_file_size_bytes.map(|v| v as i64), &req.priority_extensions,
          &agent],
    )
    .await?;
    Ok(())
}

/// Adds a scan schedule under the organisation's default strategy (every organisation has one:
/// the schema creates it with the organisation); its id.
pub async fn add_schedule(
    tx: &Transaction<'_>,
    org: Uuid,
    req: &NewSchedule,
) -> Result<Uuid, DbError> {
    let strategy: Uuid = tx
        .query_one(
            "SELECT id FROM backup_strategies WHERE organization_id = $1 AND is_default",
            &[&org],
        )
        .await?
        .get(0);
    Ok(tx
        .query_one(
            "INSERT INTO backup_schedules (organization_id, strategy_id, name, cron_expression, timezone, \
                 wedding_season_cron, agent_id, full_scan) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[&org, &strategy, &req.name, &req.cron_expression, &req.timezone.clone().unwrap_or_else(|| "UTC".into()),
              &req.wedding_season_cron, &req.agent_id, &req.full_scan.unwrap_or(true)],
        )
        .await?
        .get(0))
}
