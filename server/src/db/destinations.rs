//! Storage destinations (`backup_destinations`): their names and stored configurations, read as
//! the organisation's system actor (agents may not read them). Opening a destination from its
//! configuration is [`crate::destinations`]' business.
//!
//! Read-only: a crash changes nothing.

use tokio_postgres::Transaction;
use uuid::Uuid;

use super::DbError;

/// The name and stored configuration of destinations `ids` (run as the system actor: their
/// configuration is not readable by agents).
pub async fn configs(
    tx: &Transaction<'_>,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, String, serde_json::Value)>, DbError> {
    let rows = tx
        .query(
            "SELECT id, name, connection_config FROM backup_destinations WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The organisation's active primary destination: id, name and configuration.
pub async fn primary(
    tx: &Transaction<'_>,
) -> Result<Option<(Uuid, String, serde_json::Value)>, DbError> {
    Ok(tx
        .query_opt(
            "SELECT id, name, connection_config FROM backup_destinations \
             WHERE is_primary AND is_active",
            &[],
        )
        .await?
        .map(|r| (r.get(0), r.get(1), r.get(2))))
}
