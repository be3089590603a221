//! Disaster scenarios (`disaster_scenarios`): what a scenario prescribes, and starting the
//! recovery jobs it calls for.
//!
//! Crash behaviour: none; plain wire types, no state.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::RecoveryType;

/// A disaster scenario (`disaster_scenarios`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DisasterScenarioInfo {
    pub id: Uuid,
    pub name: String,
    pub scenario_kind: String,
    pub description: Option<String>,
    /// `[{"title", "instructions", "role"}]`.
    pub steps: serde_json::Value,
    pub responsible_roles: Vec<String>,
    pub expected_rto_seconds: Option<i64>,
    pub expected_rpo_seconds: Option<i64>,
    pub recovery_type: RecoveryType,
    pub last_executed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /v1/disaster-scenarios/{id}/start`: create the recovery jobs the scenario prescribes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartScenarioRequest {
    /// The machine that restores (e.g. the replacement laptop).
    pub target_agent_id: Uuid,
    pub target_directory: String,
    /// The machine that was lost (scenarios about one machine restore its sources).
    #[serde(default)]
    pub lost_agent_id: Option<Uuid>,
    /// Restore the state at this time (default: now; e.g. before ransomware struck).
    #[serde(default)]
    pub point_in_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// Answer of starting a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartScenarioResponse {
    pub recovery_job_ids: Vec<Uuid>,
}
