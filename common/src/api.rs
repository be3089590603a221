//! JSON types of the `/v1` HTTP API, shared by agent and server.
//!
//! Binary bodies (blob uploads and downloads) use [`crate::framing`]; job deltas use
//! [`crate::delta`]. Every request carries `Authorization: Bearer <token>` except enrolment,
//! which presents the enrolment token in its body.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delta::ChunkRef;
use crate::ids::{BlobId, CipherHash, ContentHash, DeltaDigest, EntryMac};
use crate::mac::{EntryFacts, FactKind};

/// Version string of the HTTP API.
pub const API_VERSION: &str = "v1";

/// Most blob IDs one `blobs/missing` request may ask about.
pub const MAX_MISSING_QUERY: usize = 10_000;
/// Largest pack upload body the server accepts (a pack is tens of MiB).
pub const MAX_PACK_BODY: u64 = 256 * 1024 * 1024;
/// Most blobs one `blobs/read` request may ask for.
pub const MAX_READ_BLOBS: usize = 1_024;
/// Largest delta part body the server accepts.
pub const MAX_DELTA_PART_BODY: u64 = 256 * 1024 * 1024;

/// Body of `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub database: bool,
    pub migrations_current: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Organisations, tokens, enrolment
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// One registered data key: its public recipient and the sealed bundle (never a private key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: Uuid,
    pub key_id: String,
    pub recipient: String,
    /// The key bundle JSON (see `keys::KeyBundle`).
    pub bundle: String,
    pub is_active: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysResponse {
    /// The active key (absent until the first machine has set the organisation up).
    #[serde(default)]
    pub active: Option<KeyRecord>,
}

/// `POST /v1/keys`: the first machine registers the organisation's key; a rotation registers the
/// next one (the bundle then holds the whole ring).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterKeyRequest {
    pub key_id: String,
    pub recipient: String,
    pub bundle: String,
    #[serde(default)]
    pub extra_recipients: Vec<String>,
    /// For a rotation: the key id this one replaces (must be the active one).
    #[serde(default)]
    pub replaces_key_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Blobs and packs
// ---------------------------------------------------------------------------------------------

/// `POST /v1/blobs/missing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingRequest {
    pub ids: Vec<BlobId>,
}

/// The IDs of the request for which the server holds no copy the calling machine uploaded or
/// verified itself (a copy another machine uploaded could be wrong, and the server cannot check
/// ciphertext without keys). The others are protected from garbage collection for
/// `protected_seconds`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingResponse {
    pub missing: Vec<BlobId>,
    pub protected_seconds: u64,
    /// Those of `missing` that other machines did upload: a machine holding the organisation's
    /// identity may read and check those copies and adopt them (`POST /v1/blobs/adopt`) instead
    /// of uploading its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<BlobId>,
}

/// One stored copy of a blob, named by the BLAKE3 of its ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobCopy {
    pub id: BlobId,
    pub cipher_hash: CipherHash,
}

/// `POST /v1/blobs/adopt`: copies the calling machine has read back, decrypted and checked
/// against their blob IDs; from then on they count as its own for `blobs/missing` and commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptRequest {
    pub copies: Vec<BlobCopy>,
}

/// Answer of `POST /v1/blobs/adopt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdoptResponse {
    /// Copies newly adopted (already adopted or own copies are not counted).
    pub adopted: u64,
}

/// Most copies one `blobs/adopt` request may name.
pub const MAX_ADOPT: usize = 10_000;

/// Answer of `POST /v1/packs` (body: a framed blob stream).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackStored {
    pub pack_id: Uuid,
    pub blobs: u64,
    /// Copies this pack added for the uploading machine (the others it already held).
    pub new_blobs: u64,
    pub bytes: u64,
    /// False when the pack added no copy and was not kept.
    #[serde(default = "yes")]
    pub kept: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/blobs/read`: the answer is a framed blob stream of the requested blobs, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBlobsRequest {
    pub ids: Vec<BlobId>,
    /// Copies not to send (the reader found them wrong): the server sends another copy of those
    /// blobs, or answers 404 `blobs_missing` when it has none left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<CipherHash>,
}

// ---------------------------------------------------------------------------------------------
// Sources, jobs, commits
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Recovery points and browsing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecoveryPointInfo {
    pub id: Uuid,
    pub source_id: Uuid,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub root_path: String,
    pub seq: i64,
    pub point_in_time: chrono::DateTime<chrono::Utc>,
    pub file_count: i64,
    pub backup_size_bytes: i64,
    pub is_wedding_critical: bool,
}

/// One line of `GET /v1/points/{id}/files` (NDJSON): a file, link or directory live at the point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileAtPoint {
    pub path: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::delta::b64_opt"
    )]
    pub raw_path: Option<Vec<u8>>,
    pub kind: FileKind,
    pub size: u64,
    #[serde(default)]
    pub mtime_ns: Option<i64>,
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// Content hash and chunk list (files only; omitted with `chunks=false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<ContentHash>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    /// Hard-link group (files recorded with more than one name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u64>,
    /// The agent's MAC over the entry's metadata ([`crate::mac`]); restore refuses an entry
    /// whose MAC is absent or does not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<EntryMac>,
}

impl FileAtPoint {
    /// The metadata the entry's MAC covers.
    pub fn facts(&self) -> EntryFacts<'_> {
        let file = self.kind == FileKind::File;
        EntryFacts {
            kind: match self.kind {
                FileKind::File => FactKind::File,
                FileKind::Directory => FactKind::Dir,
                FileKind::Symlink => FactKind::Symlink,
                FileKind::Fifo => FactKind::Fifo,
            },
            path: &self.path,
            mode: if self.kind == FileKind::Symlink {
                0
            } else {
                self.mode.unwrap_or(0)
            },
            size: if file { self.size } else { 0 },
            content_hash: if file {
                self.content_hash.as_ref()
            } else {
                None
            },
            target: self.symlink_target.as_deref(),
            link: if file { self.link } else { None },
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Symlink,
    Directory,
    /// A named pipe.
    Fifo,
}

// ---------------------------------------------------------------------------------------------
// Policy and heartbeats
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Recovery: requests made centrally, executed by the target agent (only agents can decrypt)
// ---------------------------------------------------------------------------------------------

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
