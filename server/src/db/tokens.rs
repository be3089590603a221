//! API tokens (`api_tokens`) of people and machines: their kinds, making a new one and its hash,
//! resolving a presented token's hash, the caller's role in its organisation, user tokens,
//! revocation. Enrolment tokens are made by [`super::orgs`] and spent by [`super::agents::enroll`].
//!
//! Only hashes are stored or compared; the token itself never reaches the database. Each call
//! runs in the caller's transaction, so a crash leaves a token either fully created/revoked or
//! untouched.

use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::DbError;

/// What kind of principal a token authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    User,
    Agent,
    Enroll,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::User => "ksu_",
            TokenKind::Agent => "ksa_",
            TokenKind::Enroll => "kse_",
        }
    }

    pub fn as_db(self) -> &'static str {
        match self {
            TokenKind::User => "user",
            TokenKind::Agent => "agent",
            TokenKind::Enroll => "enroll",
        }
    }
}

/// A new random token of `kind` and its stored hash.
pub fn new_token(kind: TokenKind) -> (String, [u8; 32]) {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("operating system random source");
    let token = format!("{}{}", kind.prefix(), hex::encode(raw));
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> [u8; 32] {
    *blake3::hash(token.trim().as_bytes()).as_bytes()
}

/// A resolved user or agent token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub token_id: Uuid,
    /// `user`, `agent` (or `enroll`, which callers refuse).
    pub kind: String,
    pub org: Uuid,
    pub user: Option<Uuid>,
    pub agent: Option<Uuid>,
}

/// The active token with hash `hash` (run as the anonymous actor).
pub async fn resolve(tx: &Transaction<'_>, hash: &[u8]) -> Result<Option<Resolved>, DbError> {
    Ok(tx
        .query_opt(
            "SELECT token_id, kind::text, organization_id, user_id, agent_id FROM auth.resolve_token($1)",
            &[&hash],
        )
        .await?
        .map(|r| Resolved {
            token_id: r.get(0),
            kind: r.get(1),
            org: r.get(2),
            user: r.get(3),
            agent: r.get(4),
        }))
}

/// The acting user's role in the organisation (`owner`, `admin`, `member`, ...), if any.
pub async fn org_role(tx: &Transaction<'_>) -> Result<Option<String>, DbError> {
    Ok(tx
        .query_one("SELECT auth.org_role()::text", &[])
        .await?
        .get(0))
}

/// The member of the organisation with e-mail `email` (case-insensitive).
pub async fn member_by_email(tx: &Transaction<'_>, email: &str) -> Result<Option<Uuid>, DbError> {
    Ok(tx
        .query_opt(
            "SELECT u.id FROM auth.users u JOIN user_profiles p ON p.user_id = u.id \
             WHERE u.email = lower($1)",
            &[&email],
        )
        .await?
        .map(|r| r.get(0)))
}

/// A user token for `user`; its id.
pub async fn create_user_token(
    tx: &Transaction<'_>,
    org: Uuid,
    user: Uuid,
    hash: &[u8],
    label: Option<&str>,
    created_by: Uuid,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Uuid, DbError> {
    Ok(tx
        .query_one(
            "INSERT INTO api_tokens (organization_id, kind, user_id, token_hash, label, created_by, expires_at) \
             VALUES ($1, 'user', $2, $3, $4, $5, $6) RETURNING id",
            &[&org, &user, &hash, &label, &created_by, &expires_at],
        )
        .await?
        .get(0))
}

/// Revokes token `id` when the caller may see it; how many were revoked (0 or 1).
pub async fn revoke(tx: &Transaction<'_>, id: Uuid) -> Result<u64, DbError> {
    Ok(tx
        .execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?)
}
