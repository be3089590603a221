//! What executing one job did ([`RecoveryOutcome`], printed by `keepsake recover` and logged by
//! the daemon), and adding up the reports of several restores (one per prefix, or per drilled
//! file). Plain values: nothing here touches the disk or the server.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use keepsake_common::api::{RecoveryType, ValidationReport};
use serde::Serialize;
use uuid::Uuid;

use super::SpaceCheck;
use crate::restore::{self, RenamedPath, RestoreFailure, RestoreReport};

/// What executing one job did.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryOutcome {
    /// The job.
    pub job_id: Uuid,
    /// Its type.
    pub recovery_type: RecoveryType,
    /// Emergency job.
    pub is_emergency: bool,
    /// The point restored.
    pub recovery_point_id: Option<Uuid>,
    /// The target folder.
    pub target_directory: Option<String>,
    /// The prefixes restored (`[""]`: everything); as the job named them when they break the
    /// rules ([`keepsake_common::prefix`]).
    pub prefixes: Vec<String>,
    /// `completed` or `failed` (as reported to the server).
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Files and symlinks in the point under the prefixes.
    pub files_total: u64,
    /// Their bytes.
    pub bytes_total: u64,
    /// Files restored (written, or already complete).
    pub files_recovered: u64,
    /// Their bytes.
    pub bytes_recovered: u64,
    /// Files written beside an existing different file.
    pub files_beside: u64,
    /// The space check, when it ran.
    pub space: Option<SpaceCheck>,
    /// Files that could not be restored (the first few hundred).
    pub failures: Vec<RestoreFailure>,
    /// Paths restored under a safe name.
    pub renamed: Vec<RenamedPath>,
    /// How many.
    pub renamed_count: u64,
    /// The validation, when it ran.
    pub validation: Option<ValidationReport>,
    /// Whether the server took the finish report (else the job's lease runs out and it is
    /// claimed again).
    pub finish_reported: bool,
    /// Duration in milliseconds.
    pub elapsed_ms: u64,
}

impl RecoveryOutcome {
    /// Restored and validated.
    pub fn succeeded(&self) -> bool {
        self.status == "completed"
    }
}

pub(super) fn summarize_failures(failures: &[RestoreFailure]) -> String {
    match failures.first() {
        Some(f) => format!(
            "{} file(s) could not be restored (first: {}: {})",
            failures.len(),
            f.path,
            f.error
        ),
        None => String::new(),
    }
}

/// Adds the report of one restore to the running total (lists capped).
pub(super) fn merge(total: &mut RestoreReport, r: RestoreReport) {
    total.files_restored += r.files_restored;
    total.files_skipped += r.files_skipped;
    total.bytes_skipped += r.bytes_skipped;
    total.files_beside += r.files_beside;
    total.dirs += r.dirs;
    total.symlinks += r.symlinks;
    total.fifos += r.fifos;
    total.hard_links += r.hard_links;
    total.hard_links_copied += r.hard_links_copied;
    total.refused += r.refused;
    total.copies_rejected += r.copies_rejected;
    total.copies_adopted += r.copies_adopted;
    total.leftovers_removed += r.leftovers_removed;
    total.case_insensitive |= r.case_insensitive;
    total.bytes += r.bytes;
    total.elapsed += r.elapsed;
    if total.time_to_first_byte.is_none() {
        total.time_to_first_byte = r.time_to_first_byte;
    }
    total.renamed_count += r.renamed_count;
    let room = restore::MAX_RENAMED_LISTED.saturating_sub(total.renamed.len());
    total.renamed.extend(r.renamed.into_iter().take(room));
    let room = 10_000usize.saturating_sub(total.failures.len());
    total.failures.extend(r.failures.into_iter().take(room));
}
