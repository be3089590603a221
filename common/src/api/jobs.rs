//! Sources, backup jobs and commits: registering a watched root, starting a job, storing its
//! delta parts, committing or failing it.
//!
//! Crash behaviour: none; plain wire types, no state.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{BlobId, DeltaDigest};

/// Largest delta part body the server accepts.
pub const MAX_DELTA_PART_BODY: u64 = 256 * 1024 * 1024;

/// `POST /v1/sources`: registers (idempotently) a watched root of the calling agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSourceRequest {
    pub root_path: String,
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceInfo {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub root_path: String,
    #[serde(default)]
    pub label: Option<String>,
    pub last_committed_seq: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Changes since the parent state.
    Incremental,
    /// The complete state: live files not mentioned are closed.
    Full,
}

/// `POST /v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartJobRequest {
    pub source_id: Uuid,
    pub kind: JobKind,
    #[serde(default)]
    pub wedding_critical: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStarted {
    pub job_id: Uuid,
    /// The source's last committed sequence number when the job started.
    pub parent_seq: i64,
}

/// Answer of `PUT /v1/jobs/{id}/parts/{n}` (body: a delta, see [`crate::delta`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartStored {
    pub part: u32,
    pub entries: u64,
    /// False when the part had been received before (a retry); nothing changed then.
    pub new: bool,
}

/// `POST /v1/jobs/{id}/commit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// Number of parts sent (0..parts); the commit fails if one is missing.
    pub parts: u32,
    #[serde(default)]
    pub files_failed: u32,
    #[serde(default)]
    pub bytes_read: u64,
    #[serde(default)]
    pub bytes_sent: u64,
    /// The [`crate::delta::DeltaDigester`] digest of every entry sent, in order (parts 0, 1, …).
    /// The server recomputes it from what it staged and refuses the commit if they differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_digest: Option<DeltaDigest>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Committed {
    pub job_id: Uuid,
    pub seq: i64,
    pub recovery_point_id: Uuid,
    pub files_added: i64,
    pub files_changed: i64,
    pub files_deleted: i64,
    pub file_count: i64,
    pub total_bytes: i64,
}

/// 409 answer of a commit that references blobs the server does not hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitMissing {
    pub error: String,
    pub missing: Vec<BlobId>,
    /// True when more IDs are missing than listed.
    pub truncated: bool,
}

/// `POST /v1/jobs/{id}/fail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailJobRequest {
    pub error: String,
}
