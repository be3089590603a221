//! No privilege escalation between roles (owner > admin > member = emergency contact), over real
//! HTTP on 127.0.0.1 and directly in PostgreSQL as the application role with the caller's
//! identity set: for every pair of caller role and target role, who may make a user token for
//! whom (`POST /v1/tokens`, `INSERT INTO api_tokens`) and who may change whose role to what
//! (`PUT /v1/users/{id}/role`, `UPDATE user_profiles`). Allowed pairs succeed; forbidden ones get
//! 403 or a database error and change nothing.

#[path = "../schema_support/mod.rs"]
mod schema_support;

mod minting;
mod role_changes;
mod support;
