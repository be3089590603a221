//! Organisations, tokens and enrolment: creating an organisation, enrolment and user tokens,
//! users' roles, an agent's enrolment, and who the caller is.
//!
//! Crash behaviour: none; plain wire types, no state.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /v1/orgs` (platform administrators).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    pub name: String,
    #[serde(default)]
    pub slug: Option<String>,
    pub admin_email: String,
}

/// Answer of organisation creation (API and `keepsake-server admin create-org`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateOrgResponse {
    pub organization_id: Uuid,
    pub slug: String,
    pub admin_user_id: Uuid,
    /// A user token for the first admin (shown once).
    pub admin_token: String,
    /// A single-use enrolment token for the first machine (shown once).
    pub enroll_token: String,
    pub enroll_token_expires_at: chrono::DateTime<chrono::Utc>,
}

/// `POST /v1/enroll-tokens` (admins).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollTokenRequest {
    /// Validity in hours (default 72, at most 720).
    #[serde(default)]
    pub valid_hours: Option<u32>,
    #[serde(default)]
    pub label: Option<String>,
}

/// A freshly created token (shown once; only its hash is stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token_id: Uuid,
    pub token: String,
    #[serde(default)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /v1/tokens` (a user token for the caller, or for another user by an admin).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserTokenRequest {
    #[serde(default)]
    pub user_email: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub valid_days: Option<u32>,
}

/// `PUT /v1/users/{id}/role`: an admin or owner changes another user's role in the organisation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRoleRequest {
    /// `owner`, `admin`, `member` or `emergency_contact`.
    pub role: String,
}

/// Answer of a role change: the user and their role now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRole {
    pub user_id: Uuid,
    pub role: String,
}

/// `POST /v1/enroll`: an agent exchanges an enrolment token for its own agent token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub enroll_token: String,
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub agent_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub organization_id: Uuid,
    pub organization_name: String,
    pub agent_id: Uuid,
    pub agent_token: String,
    /// Whether the organisation lets agents keep the unsealed key bundle on disk.
    pub allow_unsealed_key_on_disk: bool,
}

/// Who the caller is (`GET /v1/whoami`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    pub organization_id: Uuid,
    pub kind: String,
    #[serde(default)]
    pub user_id: Option<Uuid>,
    #[serde(default)]
    pub agent_id: Option<Uuid>,
}
