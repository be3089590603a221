//! Organisation settings and lookups for the admin command: whether agents may keep the
//! unsealed organisation key on disk (`organizations.settings`), and finding a machine
//! (`agents`) or its first source (`backup_sources`) by what an administrator types.
//!
//! The setting is one `UPDATE` inside the transaction the caller opened and commits: a crash
//! before the commit leaves the previous setting. The lookups only read.

use tokio_postgres::Transaction;
use uuid::Uuid;

use super::{RecoveryError, Result};

/// Whether agents may keep the unsealed organisation key on disk (`GET /v1/policy` tells them).
pub async fn set_unsealed_key_allowed(
    tx: &Transaction<'_>,
    org: Uuid,
    allowed: bool,
) -> Result<()> {
    let n = tx
        .execute(
            "UPDATE organizations SET settings = settings || \
                 jsonb_build_object('agents_keep_unsealed_key', $2::boolean, 'allow_unsealed_key_on_disk', $2::boolean) \
             WHERE id = $1",
            &[&org, &allowed],
        )
        .await?;
    if n == 0 {
        return Err(RecoveryError::Forbidden(
            "only an admin or owner of the organisation may change its settings".into(),
        ));
    }
    tracing::info!(org = %org, allowed, "unsealed-key setting changed");
    Ok(())
}

/// A machine by id or name (a live machine first, else the most recently revoked one: a stolen
/// laptop is usually revoked already).
pub async fn find_agent(tx: &Transaction<'_>, name_or_id: &str) -> Result<Uuid> {
    let row = match Uuid::parse_str(name_or_id) {
        Ok(id) => {
            tx.query_opt("SELECT id FROM agents WHERE id = $1", &[&id])
                .await?
        }
        Err(_) => {
            tx.query_opt(
                "SELECT id FROM agents WHERE name = $1 \
                 ORDER BY revoked_at IS NOT NULL, revoked_at DESC, created_at DESC LIMIT 1",
                &[&name_or_id],
            )
            .await?
        }
    };
    row.map(|r| r.get(0)).ok_or_else(|| {
        RecoveryError::NotFound(format!("no machine `{name_or_id}` in this organisation"))
    })
}

/// A machine's only (or first registered) source.
pub async fn first_source(tx: &Transaction<'_>, agent: Uuid) -> Result<Uuid> {
    tx.query_opt(
        "SELECT id FROM backup_sources WHERE agent_id = $1 ORDER BY created_at, id LIMIT 1",
        &[&agent],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or_else(|| RecoveryError::NotFound(format!("machine {agent} has no backed-up source")))
}
