//! Machines (`agents`) and their lifecycle: enrolment (which spends the enrolment token, creates
//! the agent with its own token and an audit row), listing, revocation (agent and its tokens
//! together) and heartbeats.
//!
//! Enrolment is one transaction: a crash before its commit leaves the enrolment token unused and
//! no agent, so the machine simply enrols again; after the commit the agent exists and the
//! machine, if it crashed before saving its token, needs a new enrolment token (the name is then
//! taken until an administrator revokes the half-enrolled machine).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::DbError;

/// The enrolment token with hash `hash` when it is valid: `(token id, organisation)`.
pub async fn resolve_enroll_token(
    tx: &Transaction<'_>,
    hash: &[u8],
) -> Result<Option<(Uuid, Uuid)>, DbError> {
    Ok(tx
        .query_opt(
            "SELECT token_id, organization_id FROM auth.resolve_token($1) WHERE kind = 'enroll'",
            &[&hash],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// A machine to enrol.
#[derive(Debug, Clone, Copy)]
pub struct NewAgent<'a> {
    pub org: Uuid,
    pub name: &'a str,
    pub hostname: Option<&'a str>,
    pub platform: Option<&'a str>,
    pub version: Option<&'a str>,
    /// Hash of the agent token the machine will hold.
    pub token_hash: &'a [u8],
}

/// How an enrolment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// The enrolment token was spent meanwhile.
    TokenUsed,
    /// An active machine already has this name.
    NameTaken,
    /// Enrolled.
    Done {
        agent: Uuid,
        org_name: String,
        allow_unsealed_key_on_disk: bool,
    },
}

/// Spends enrolment token `token_id` and enrols `new` (run as the organisation's system actor).
/// On [`Enrolled::NameTaken`] the token has been marked used in this transaction: the caller
/// rolls it back so the token stays good for another try.
pub async fn enroll(
    tx: &Transaction<'_>,
    token_id: Uuid,
    new: &NewAgent<'_>,
) -> Result<Enrolled, DbError> {
    let used = tx
        .execute(
            "UPDATE api_tokens SET used_at = now() WHERE id = $1 AND kind = 'enroll' AND used_at IS NULL",
            &[&token_id],
        )
        .await?;
    if used == 0 {
        return Ok(Enrolled::TokenUsed);
    }
    let taken = tx
        .query_opt(
            "SELECT 1 FROM agents WHERE name = $1 AND revoked_at IS NULL",
            &[&new.name],
        )
        .await?
        .is_some();
    if taken {
        return Ok(Enrolled::NameTaken);
    }
    let agent: Uuid = tx
        .query_one(
            "INSERT INTO agents (organization_id, name, hostname, platform, agent_version, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, now()) RETURNING id",
            &[&new.org, &new.name, &new.hostname, &new.platform, &new.version],
        )
        .await?
        .get(0);
    tx.execute(
        "INSERT INTO api_tokens (organization_id, kind, agent_id, token_hash, label) \
         VALUES ($1, 'agent', $2, $3, $4)",
        &[&new.org, &agent, &new.token_hash, &new.name],
    )
    .await?;
    tx.execute(
        "INSERT INTO backup_audit_trail (organization_id, actor, action, resource_type, resource_id, new_values) \
         VALUES ($1, 'system', 'agent.enrolled', 'agent', $2, jsonb_build_object('name', $3::text, 'hostname', $4::text))",
        &[&new.org, &agent, &new.name, &new.hostname],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT name, coalesce((settings->>'allow_unsealed_key_on_disk')::boolean, false) \
             FROM organizations WHERE id = $1",
            &[&new.org],
        )
        .await?;
    Ok(Enrolled::Done {
        agent,
        org_name: row.get(0),
        allow_unsealed_key_on_disk: row.get(1),
    })
}

/// A machine as the organisation's members see it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub id: Uuid,
    pub name: String,
    pub hostname: Option<String>,
    pub platform: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

/// The machines the caller may see, by name.
pub async fn list(tx: &Transaction<'_>) -> Result<Vec<AgentInfo>, DbError> {
    let rows = tx
        .query(
            "SELECT id, name, hostname, platform, created_at, last_seen_at, revoked_at IS NOT NULL \
             FROM agents ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AgentInfo {
            id: r.get(0),
            name: r.get(1),
            hostname: r.get(2),
            platform: r.get(3),
            created_at: r.get(4),
            last_seen_at: r.get(5),
            revoked: r.get(6),
        })
        .collect())
}

/// Revokes machine `id` and every token it holds; how many machines were revoked (0 or 1).
pub async fn revoke(tx: &Transaction<'_>, id: Uuid) -> Result<u64, DbError> {
    let n = tx
        .execute(
            "UPDATE agents SET revoked_at = now(), revoked_reason = 'revoked by an administrator' \
             WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?;
    tx.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE agent_id = $1 AND revoked_at IS NULL",
        &[&id],
    )
    .await?;
    Ok(n)
}

/// Records machine `agent`'s heartbeat document and that it was seen now.
pub async fn record_heartbeat(
    tx: &Transaction<'_>,
    agent: Uuid,
    doc: &serde_json::Value,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE agents SET last_seen_at = now(), last_heartbeat = $2, updated_at = now() WHERE id = $1",
        &[&agent, doc],
    )
    .await?;
    Ok(())
}
