//! The PostgreSQL schema against a real database: migrations, the seed's objects, and the
//! behaviour of every function and trigger — including the cases where the seed's versions
//! misbehaved.

#[path = "../schema_support/mod.rs"]
mod schema_support;

mod catalog;
mod file_history;
mod fixtures;
mod identity;
mod maintenance;
mod strategies;
mod triggers;
mod usage_and_alerts;
mod validation;
