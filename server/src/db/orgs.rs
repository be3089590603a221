//! Organisations and their tokens: creation of an organisation with its first admin, default
//! storage destination and first enrolment token; enrolment tokens.
//!
//! Creating an organisation is one transaction: a crash leaves either nothing or the
//! organisation with its admin, destination and tokens (whose clear text, shown once, is lost
//! with the crash: the administrator then makes new tokens with `keepsake-server admin`).

use chrono::{DateTime, Duration, Utc};
use keepsake_common::api::CreateOrgResponse;
use uuid::Uuid;

use super::tokens::{new_token, TokenKind};
use crate::db::{self, Actor, Db, DbError};

#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error("invalid organisation: {0}")]
    Invalid(String),
    #[error("an organisation with slug `{0}` already exists")]
    SlugTaken(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for OrgError {
    fn from(e: tokio_postgres::Error) -> Self {
        OrgError::Db(DbError::from(e))
    }
}

/// Default validity of an enrolment token.
pub const ENROLL_TOKEN_HOURS: u32 = 72;

/// A lower-case, dash-separated slug from a display name ("Smith & Jones Photo" →
/// "smith-jones-photo").
pub fn slugify(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-');
    let mut s: String = trimmed.chars().take(63).collect();
    while s.ends_with('-') {
        s.pop();
    }
    if s.is_empty() {
        s = format!("org-{}", &Uuid::new_v4().simple().to_string()[..8]);
    }
    s
}

/// Creates an organisation, its first user (role owner), a primary destination on the server's
/// default storage, a user token for that user and a first enrolment token.
///
/// `owner` is a connection with the schema owner's rights (organisation creation is a platform
/// operation, not something an application-role session can do).
pub async fn create_org(
    owner: &tokio_postgres::Client,
    db: &Db,
    name: &str,
    slug: Option<&str>,
    admin_email: &str,
    default_storage_kind: &str,
) -> Result<CreateOrgResponse, OrgError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(OrgError::Invalid("the name is empty".into()));
    }
    let email = admin_email.trim().to_lowercase();
    if !email.contains('@') || email.starts_with('@') || email.ends_with('@') {
        return Err(OrgError::Invalid(format!(
            "`{admin_email}` is not an e-mail address"
        )));
    }
    let slug = slug.map(str::to_string).unwrap_or_else(|| slugify(name));
    let org: Uuid = match owner
        .query_one(
            "SELECT public.create_organization($1, $2, $3)",
            &[&name, &slug, &email],
        )
        .await
    {
        Ok(row) => row.get(0),
        Err(e) => {
            if let Some(dbe) = e.as_db_error() {
                match dbe.code().code() {
                    "23505" => return Err(OrgError::SlugTaken(slug)),
                    c if c.starts_with("23") || c.starts_with("22") => {
                        return Err(OrgError::Invalid(dbe.message().to_string()))
                    }
                    _ => {}
                }
            }
            return Err(e.into());
        }
    };

    let mut client = db.client().await?;
    let tx = db::begin(&mut client, &Actor::System { org }).await?;
    let admin: Uuid = tx
        .query_one(
            "SELECT user_id FROM user_profiles WHERE role = 'owner' ORDER BY created_at LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    let dest_type = if default_storage_kind == "s3" {
        "cloud_storage"
    } else {
        "local_storage"
    };
    tx.execute(
        "INSERT INTO backup_destinations (organization_id, name, destination_type, connection_config, is_primary) \
         VALUES ($1, 'server-default', $2::text::backup_destination_type, '{\"kind\": \"server_default\"}', true)",
        &[&org, &dest_type],
    )
    .await?;
    let (admin_token, hash) = new_token(TokenKind::User);
    tx.execute(
        "INSERT INTO api_tokens (organization_id, kind, user_id, token_hash, label, created_by) \
         VALUES ($1, 'user', $2, $3, 'first admin', $2)",
        &[&org, &admin, &hash.as_slice()],
    )
    .await?;
    let (enroll_token, _, expires) = insert_enroll_token(
        &tx,
        org,
        Some(admin),
        ENROLL_TOKEN_HOURS,
        Some("first machine"),
    )
    .await?;
    tx.commit().await?;
    Ok(CreateOrgResponse {
        organization_id: org,
        slug,
        admin_user_id: admin,
        admin_token,
        enroll_token,
        enroll_token_expires_at: expires,
    })
}

/// Inserts a single-use enrolment token valid for `hours`.
pub async fn insert_enroll_token(
    tx: &tokio_postgres::Transaction<'_>,
    org: Uuid,
    created_by: Option<Uuid>,
    hours: u32,
    label: Option<&str>,
) -> Result<(String, Uuid, DateTime<Utc>), DbError> {
    let (token, hash) = new_token(TokenKind::Enroll);
    let expires = Utc::now() + Duration::hours(i64::from(hours.clamp(1, 720)));
    let id: Uuid = tx
        .query_one(
            "INSERT INTO api_tokens (organization_id, kind, token_hash, label, created_by, expires_at) \
             VALUES ($1, 'enroll', $2, $3, $4, $5) RETURNING id",
            &[&org, &hash.as_slice(), &label, &created_by, &expires],
        )
        .await?
        .get(0);
    Ok((token, id, expires))
}

/// Finds an organisation by id or slug (owner connection).
pub async fn find_org(owner: &tokio_postgres::Client, org: &str) -> Result<Uuid, OrgError> {
    let row = match Uuid::parse_str(org) {
        Ok(id) => {
            owner
                .query_opt("SELECT id FROM public.organizations WHERE id = $1", &[&id])
                .await?
        }
        Err(_) => {
            owner
                .query_opt(
                    "SELECT id FROM public.organizations WHERE slug = $1",
                    &[&org],
                )
                .await?
        }
    };
    row.map(|r| r.get(0))
        .ok_or_else(|| OrgError::Invalid(format!("no organisation `{org}`")))
}

#[cfg(test)]
mod tests {
    use super::slugify;

    #[test]
    fn slugs_are_valid() {
        assert_eq!(slugify("Smith & Jones Photo"), "smith-jones-photo");
        assert_eq!(slugify("  --Ünïcode Studio--  "), "n-code-studio");
        assert!(slugify("!!!").starts_with("org-"));
        assert!(slugify(&"x".repeat(200)).len() <= 63);
    }
}
