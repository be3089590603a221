//! Policy and heartbeats: the exclusion, wedding-critical and schedule rules and supplier
//! settings an agent follows, what it reports back, and the requests that add rules.
//!
//! Crash behaviour: none; plain wire types, no state.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One exclusion rule (gitignore syntax), in evaluation order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExclusionRule {
    pub pattern: String,
    /// `organization`, `agent` or `source`.
    pub scope: String,
    /// For source rules: the server source they apply to.
    #[serde(default)]
    pub source_id: Option<Uuid>,
}

/// Wedding-critical data: folders to protect first in a window around a wedding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CriticalRule {
    pub id: Uuid,
    pub wedding_name: String,
    pub wedding_date: chrono::NaiveDate,
    /// gitignore-style patterns relative to the source roots.
    pub path_patterns: Vec<String>,
    #[serde(default)]
    pub source_id: Option<Uuid>,
    pub critical_from: chrono::NaiveDate,
    pub critical_until: chrono::NaiveDate,
    /// 1 (highest) to 5.
    pub priority: i32,
    /// Whether today is inside the window.
    pub active: bool,
}

/// A cron schedule of full reconciliation scans (already the wedding-season variant when the
/// organisation is in season).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduleRule {
    pub id: Uuid,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub full_scan: bool,
    #[serde(default)]
    pub source_id: Option<Uuid>,
}

/// Per-supplier agent behaviour (`vendor_backup_configs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VendorSettings {
    /// `photographer`, `videographer`, `planner` or `venue`.
    pub supplier_type: String,
    /// A file is taken once its size and mtime have been stable this long.
    pub settle_window_seconds: u32,
    #[serde(default)]
    pub bandwidth_limit_kbps: Option<u32>,
    /// Daily upload window `HH:MM` (may wrap midnight); absent = any time.
    #[serde(default)]
    pub schedule_window_start: Option<String>,
    #[serde(default)]
    pub schedule_window_end: Option<String>,
    #[serde(default = "default_true")]
    pub realtime_enabled: bool,
    #[serde(default)]
    pub max_file_size_bytes: Option<u64>,
    /// Extensions uploaded first within a priority class.
    #[serde(default)]
    pub priority_extensions: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// `GET /v1/policy`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentPolicy {
    pub exclusions: Vec<ExclusionRule>,
    pub critical: Vec<CriticalRule>,
    pub schedules: Vec<ScheduleRule>,
    #[serde(default)]
    pub vendor: Option<VendorSettings>,
    pub in_wedding_season: bool,
    pub hemisphere: String,
    /// The organisation lets agents keep the unsealed key on disk, so the daemon can execute
    /// recovery requests unattended (off by default: a person unlocks with the passphrase).
    #[serde(default)]
    pub agents_keep_unsealed_key: bool,
}

/// `POST /v1/heartbeat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    /// `idle`, `backing_up`, `offline`, `paused`, `stopping`.
    pub state: String,
    /// Files waiting to be backed up (changed, not yet committed), by class.
    pub queue_critical: u64,
    pub queue_normal: u64,
    /// Last successful commit.
    #[serde(default)]
    pub last_success_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds since the newest recovery point.
    #[serde(default)]
    pub recovery_point_age_seconds: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
    pub agent_version: String,
}

/// `POST /v1/exclusions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewExclusion {
    pub pattern: String,
    #[serde(default)]
    pub agent_id: Option<Uuid>,
    #[serde(default)]
    pub source_id: Option<Uuid>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub rule_order: Option<i32>,
}

/// `POST /v1/wedding-critical`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCriticalRule {
    pub wedding_name: String,
    #[serde(default)]
    pub couple_names: Option<String>,
    pub wedding_date: chrono::NaiveDate,
    pub path_patterns: Vec<String>,
    #[serde(default)]
    pub agent_id: Option<Uuid>,
    #[serde(default)]
    pub window_before_days: Option<i32>,
    #[serde(default)]
    pub window_after_days: Option<i32>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub delivery_date: Option<chrono::NaiveDate>,
}

/// `POST /v1/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    pub name: String,
    pub cron_expression: String,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub wedding_season_cron: Option<String>,
    #[serde(default)]
    pub agent_id: Option<Uuid>,
    #[serde(default)]
    pub full_scan: Option<bool>,
}
