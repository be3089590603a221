//! The organisation's data keys (`backup_encryption_keys`): the active public recipient with its
//! sealed key bundle, the first registration and rotations.
//!
//! At most one key is active (a unique index); registering runs in the caller's transaction, so
//! a crash leaves either the old active key or the new one, never none; two first machines
//! registering at once: one wins, the other gets [`Registered::Concurrent`].

use chrono::{DateTime, Utc};
use keepsake_common::api::KeyRecord;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::DbError;

/// The active key with its sealed bundle.
pub async fn active(tx: &Transaction<'_>) -> Result<Option<KeyRecord>, DbError> {
    Ok(tx
        .query_opt(
            "SELECT id, key_hash, recipient, convert_from(key_bundle, 'UTF8'), is_active, created_at \
             FROM backup_encryption_keys WHERE is_active",
            &[],
        )
        .await?
        .map(|r| KeyRecord {
            id: r.get(0),
            key_id: r.get(1),
            recipient: r.get(2),
            bundle: r.get(3),
            is_active: r.get(4),
            created_at: r.get(5),
        }))
}

/// The active key's row id and key id.
pub async fn active_id(tx: &Transaction<'_>) -> Result<Option<(Uuid, String)>, DbError> {
    Ok(tx
        .query_opt(
            "SELECT id, key_hash FROM backup_encryption_keys WHERE is_active",
            &[],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Retires key row `id` (a rotation, before the new key is inserted).
pub async fn retire(tx: &Transaction<'_>, id: Uuid) -> Result<(), DbError> {
    tx.execute(
        "UPDATE backup_encryption_keys SET is_active = false, retired_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    Ok(())
}

/// A key to register.
#[derive(Debug, Clone, Copy)]
pub struct NewKey<'a> {
    pub org: Uuid,
    pub key_id: &'a str,
    pub recipient: &'a str,
    /// The sealed bundle, compact JSON.
    pub bundle: &'a str,
    pub extra_recipients: &'a [String],
    pub by_agent: Option<Uuid>,
    pub by_user: Option<Uuid>,
}

/// How a registration ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// Stored as the active key: its row id and creation time.
    Stored { id: Uuid, created_at: DateTime<Utc> },
    /// Another machine registered the organisation's key concurrently.
    Concurrent,
}

/// Inserts `key` as the active key (the previous one must be retired first).
pub async fn insert(tx: &Transaction<'_>, key: &NewKey<'_>) -> Result<Registered, DbError> {
    match tx
        .query_one(
            "INSERT INTO backup_encryption_keys (organization_id, key_name, recipient, key_hash, key_bundle, \
                 extra_recipients, next_rotation_date, created_by_agent_id, created_by_user_id) \
             VALUES ($1, $2, $3, $4, convert_to($5, 'UTF8'), $6, CURRENT_DATE + 365, $7, $8) \
             RETURNING id, created_at",
            &[
                &key.org,
                &format!("data key {}", key.key_id),
                &key.recipient,
                &key.key_id,
                &key.bundle,
                &key.extra_recipients,
                &key.by_agent,
                &key.by_user,
            ],
        )
        .await
    {
        Ok(row) => Ok(Registered::Stored {
            id: row.get(0),
            created_at: row.get(1),
        }),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            Ok(Registered::Concurrent)
        }
        Err(e) => Err(e.into()),
    }
}
