//! Recovery management: recovery jobs requested centrally (by a user over the API or by the
//! `keepsake-server admin recovery` command) and executed by the target machine, which claims
//! them with a lease, reports progress and logs, and finishes them with a validation of what it
//! restored; restore drills; disaster scenarios.
//!
//! Every query lives in this module's sub-modules and runs inside a transaction the caller
//! opened for an actor ([`crate::db::begin`]): the HTTP handlers (`http::recovery`) and the
//! admin command (`cli`) share them. Row-level security decides what each actor sees and
//! changes. Lookups an emergency contact may not make itself (machines, sources) and records
//! only the server writes (emergency notifications, log lines of user actions) run as the
//! organisation's system actor for one step, and the transaction then switches back to the
//! caller.
//!
//! - `validate`: what a request names (target folder, path prefixes, type shape); no database;
//! - `jobs`: reading, creating and cancelling jobs;
//! - `emergency`: paging the emergency contacts about an emergency job;
//! - `lease`: the target machine's claim, progress, log lines and finish, under a lease;
//! - `drills`: restore drills recorded as finished jobs;
//! - `scenarios`: disaster scenarios;
//! - `admin`: organisation settings and lookups for the admin command.
//!
//! This file keeps the shared error type and the recovery-type conversions, and re-exports the
//! sub-modules' public items, so every path `crate::recovery::X` is unchanged.
//!
//! Crash behaviour: all state is in PostgreSQL, changed in transactions, so a server crash rolls
//! back the request in flight; a job claimed by a machine that died is handed out again when its
//! lease runs out.

mod admin;
mod drills;
mod emergency;
mod jobs;
mod lease;
mod scenarios;
mod validate;

use keepsake_common::api::RecoveryType;
use tokio_postgres::error::SqlState;

use crate::db::DbError;

pub use admin::{find_agent, first_source, set_unsealed_key_allowed};
pub use drills::record_drill;
pub use jobs::{
    cancel_job, create_job, get_job, job_detail, list_jobs, resolve_point, ResolvedPoint,
};
pub use lease::{
    add_log, claim, finish, progress, progress_percent, LOG_LEVELS, MAX_LEASE_SECONDS,
};
pub use scenarios::{find_scenario, list_scenarios, start_scenario};
pub use validate::{normalize_prefixes, validate_target_directory};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The request cannot work as sent (400).
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Something the request names does not exist for the caller (404).
    #[error("{0}")]
    NotFound(String),
    /// The job is not in a state that allows this (409).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for RecoveryError {
    fn from(e: tokio_postgres::Error) -> Self {
        // Our SQL functions report "nothing there" as no_data_found with a readable message.
        if let Some(dbe) = e.as_db_error() {
            if *dbe.code() == SqlState::NO_DATA_FOUND {
                return RecoveryError::NotFound(dbe.message().to_string());
            }
        }
        RecoveryError::Db(DbError::from(e))
    }
}

type Result<T> = std::result::Result<T, RecoveryError>;

/// The `recovery_type_enum` value of a type.
pub fn type_to_db(t: RecoveryType) -> &'static str {
    match t {
        RecoveryType::FullRecovery => "full_recovery",
        RecoveryType::PartialRecovery => "partial_recovery",
        RecoveryType::FileRecovery => "file_recovery",
        RecoveryType::PointInTimeRecovery => "point_in_time_recovery",
        RecoveryType::EmergencyRecovery => "emergency_recovery",
    }
}

/// The type of a `recovery_type_enum` value.
pub fn type_from_db(s: &str) -> Result<RecoveryType> {
    Ok(match s {
        "full_recovery" => RecoveryType::FullRecovery,
        "partial_recovery" => RecoveryType::PartialRecovery,
        "file_recovery" => RecoveryType::FileRecovery,
        "point_in_time_recovery" => RecoveryType::PointInTimeRecovery,
        "emergency_recovery" => RecoveryType::EmergencyRecovery,
        other => {
            return Err(RecoveryError::Invalid(format!(
                "unknown recovery type `{other}`"
            )))
        }
    })
}
