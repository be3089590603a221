//! Fixtures shared by the behaviour tests: an organisation with one agent, source and
//! destination (`World`), recovery points and backup strategies inserted as the schema owner.

use crate::schema_support::*;
use uuid::Uuid;

pub struct World {
    pub org: Org,
    pub agent: Uuid,
    pub source: Uuid,
    pub destination: Uuid,
}

pub async fn world(owner: &tokio_postgres::Client, slug: &str, hemisphere: &str) -> World {
    let org = create_org(owner, slug, hemisphere).await;
    let agent = add_agent(owner, org.id, &format!("{slug}-laptop")).await;
    let source = add_source(owner, org.id, agent, "/Users/me/Shoots").await;
    let destination = add_destination(owner, org.id, &format!("{slug}-local")).await;
    World {
        org,
        agent,
        source,
        destination,
    }
}

pub async fn recovery_point(
    owner: &tokio_postgres::Client,
    w: &World,
    seq: i64,
    expires: &str,
    legal_hold: bool,
) -> Uuid {
    owner
        .query_one(
            &format!(
                "INSERT INTO recovery_points (organization_id, agent_id, source_id, seq, point_in_time, recovery_type,
                     backup_size_bytes, file_count, retention_expires_at, legal_hold)
                 VALUES ($1, $2, $3, $4, now() - interval '400 days', 'full_recovery', 10, 1, {expires}, $5) RETURNING id"
            ),
            &[&w.org.id, &w.agent, &w.source, &seq, &legal_hold],
        )
        .await
        .unwrap()
        .get(0)
}

pub async fn strategy(
    owner: &tokio_postgres::Client,
    org: Uuid,
    name: &str,
    optimized: bool,
) -> Uuid {
    owner
        .query_one(
            "INSERT INTO backup_strategies (organization_id, name, strategy_type, backup_frequency, retention_period, wedding_season_optimized)
             VALUES ($1, $2, 'incremental_backup', 'monthly', '1 year', $3) RETURNING id",
            &[&org, &name, &optimized],
        )
        .await
        .unwrap()
        .get(0)
}

/// The organisation's default strategy (every organisation has exactly one).
pub async fn default_strategy(owner: &tokio_postgres::Client, org: Uuid) -> Uuid {
    owner
        .query_one(
            "SELECT id FROM backup_strategies WHERE organization_id = $1 AND is_default",
            &[&org],
        )
        .await
        .unwrap()
        .get(0)
}
