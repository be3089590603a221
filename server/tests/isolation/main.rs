//! Tenant isolation enforced by PostgreSQL itself: two organisations, users of every role and
//! agents, all connected as `keepsake_app` (like the server's pool) with the identity set per
//! transaction. The tables checked are derived from the catalog, so a new table with an
//! organization_id must get a fixture here (and policies) or these tests fail.

#[path = "../schema_support/mod.rs"]
mod schema_support;

mod fixtures;
mod privileges;
mod roles;
mod visibility;
mod world;
mod writes;
