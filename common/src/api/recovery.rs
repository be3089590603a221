//! Recovery jobs, requested centrally and executed by the target agent (only agents can
//! decrypt): requesting, claiming, progress, logs, the post-restore validation, finishing, and
//! restore drills.
//!
//! Crash behaviour: none; plain wire types, no state.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a recovery job restores (`recovery_type_enum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryType {
    /// A whole source at a recovery point.
    FullRecovery,
    /// Some folders (path prefixes) of a source.
    PartialRecovery,
    /// One file.
    FileRecovery,
    /// A source as it was at a time: the newest recovery point at or before `point_in_time`.
    PointInTimeRecovery,
    /// Anything, ahead of every other queue, with the emergency contacts notified.
    EmergencyRecovery,
}

/// `POST /v1/recovery-jobs` (users: admin, owner, member; emergency contacts only emergency
/// jobs). What to restore is either `recovery_point_id`, or `source_id` with `point_in_time`
/// (the newest point at or before it), or `source_id` alone (its newest point).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRecoveryJob {
    pub recovery_type: RecoveryType,
    #[serde(default)]
    pub recovery_point_id: Option<Uuid>,
    #[serde(default)]
    pub source_id: Option<Uuid>,
    #[serde(default)]
    pub point_in_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Relative '/'-separated paths (folders or files); required for partial and file
    /// recoveries (exactly one for a file recovery), empty = everything.
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    /// The machine that restores.
    pub target_agent_id: Uuid,
    /// Absolute folder on the target machine.
    pub target_directory: String,
    /// Replace newer local files (default: restore beside them).
    #[serde(default)]
    pub overwrite: bool,
    #[serde(default)]
    pub notes: Option<String>,
}

/// A recovery job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryJobInfo {
    pub id: Uuid,
    pub recovery_type: RecoveryType,
    /// `initiated`, `queued`, `claimed`, `running`, `verifying`, `completed`, `failed`,
    /// `cancelled`.
    pub status: String,
    /// The resolved recovery point.
    pub recovery_point_id: Option<Uuid>,
    pub source_id: Option<Uuid>,
    pub point_in_time: Option<chrono::DateTime<chrono::Utc>>,
    pub path_prefixes: Vec<String>,
    pub target_agent_id: Option<Uuid>,
    pub target_directory: Option<String>,
    pub overwrite: bool,
    pub is_emergency: bool,
    pub progress_percentage: i32,
    pub files_total: Option<i64>,
    pub bytes_total: Option<i64>,
    pub files_recovered: i64,
    pub bytes_recovered: i64,
    pub estimated_completion: Option<chrono::DateTime<chrono::Utc>>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub verification_passed: Option<bool>,
    pub claimed_by: Option<Uuid>,
    pub attempts: i32,
    /// While waiting: why (e.g. waiting for the passphrase on the target machine).
    pub waiting_reason: Option<String>,
    pub error_message: Option<String>,
    pub disaster_scenario_id: Option<Uuid>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// `POST /v1/recovery-jobs/claim` (agents): claim the next job targeted at this machine
/// (emergency first, then oldest). `can_decrypt` false: nothing is claimed; the waiting jobs
/// are marked as waiting for the key to be unlocked on this machine. Answer: 200 with
/// [`RecoveryJobInfo`], or 204 when there is nothing to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRecoveryRequest {
    pub can_decrypt: bool,
    /// How long the claim holds without progress reports (an expired claim can be taken again).
    pub lease_seconds: u32,
}

/// `POST /v1/recovery-jobs/{id}/progress` (the claiming agent). The server keeps progress
/// monotonic and below 100 until the job completes, and extends the lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryProgressReport {
    /// `running` or `verifying`.
    pub status: String,
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_recovered: u64,
    pub bytes_recovered: u64,
    #[serde(default)]
    pub estimated_completion: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /v1/recovery-jobs/{id}/logs` (the claiming agent): one `recovery_logs` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryLogEntry {
    pub step: String,
    /// `debug`, `info`, `warning`, `error`, `critical` (the `log_level` enum).
    pub level: String,
    pub message: String,
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}

/// The post-restore check of every restored file against the catalog's content hash.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationReport {
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub mismatches: u32,
    pub missing: u32,
    pub extra: u32,
    /// Up to a few hundred problem paths with what was wrong.
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}

impl ValidationReport {
    /// Passed: nothing mismatched, nothing missing.
    pub fn passed(&self) -> bool {
        self.mismatches == 0 && self.missing == 0
    }
}

/// `POST /v1/recovery-jobs/{id}/finish` (the claiming agent). The job becomes `completed` (and
/// `verification_passed`) only when the restore succeeded and the validation passed; else
/// `failed` with `error`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryFinish {
    pub restore_ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    pub files_recovered: u64,
    pub bytes_recovered: u64,
    /// Absent when the restore failed before anything could be validated.
    #[serde(default)]
    pub validation: Option<ValidationReport>,
}

/// One `recovery_logs` row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryLogInfo {
    pub step: String,
    pub level: String,
    pub message: String,
    pub agent_id: Option<Uuid>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// One `recovery_validations` row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryValidationInfo {
    pub files_checked: i64,
    pub bytes_checked: i64,
    pub mismatches: i32,
    pub missing: i32,
    pub extra: i32,
    pub passed: bool,
    pub completed_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /v1/recovery-jobs/{id}`: the job with its log and validations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryJobDetail {
    pub job: RecoveryJobInfo,
    pub logs: Vec<RecoveryLogInfo>,
    pub validations: Vec<RecoveryValidationInfo>,
}

/// `POST /v1/recovery-drills` (agents): the result of a restore drill (a sample of recent files
/// restored into a scratch folder and validated). Recorded as a completed or failed
/// `file_recovery` job of this machine with its validation, so drills show in the analytics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryDrillReport {
    pub recovery_point_id: Uuid,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub files_restored: u64,
    pub bytes_restored: u64,
    pub validation: ValidationReport,
    #[serde(default)]
    pub error: Option<String>,
}
