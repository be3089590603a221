//! Live counters of one job, shared with a progress display and the progress reports: the phase,
//! the totals from the plan, and the restore's and the validation's counters. In memory only: a
//! crash loses them, and a rerun counts again from zero.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::ValidateProgress;
use crate::restore::RestoreProgress;

/// Phases of a job, for displays.
pub mod phase {
    /// Listing and checking space.
    pub const PLANNING: u8 = 0;
    /// Writing files.
    pub const RESTORING: u8 = 1;
    /// Re-reading them.
    pub const VERIFYING: u8 = 2;
    /// Finished.
    pub const DONE: u8 = 3;
}

/// Live counters of one job (shared with a progress display).
#[derive(Debug, Default)]
pub struct JobProgress {
    /// One of [`phase`].
    pub phase: AtomicU8,
    /// Files and symlinks to restore.
    pub files_total: AtomicU64,
    /// Bytes to restore.
    pub bytes_total: AtomicU64,
    /// The restore's counters.
    pub restore: RestoreProgress,
    /// The validation's counters.
    pub validate: ValidateProgress,
}

impl JobProgress {
    /// Files done so far (at most the total).
    pub fn files_done(&self) -> u64 {
        let total = self.files_total.load(Ordering::Relaxed);
        self.restore.files.load(Ordering::Relaxed).min(total)
    }

    /// Bytes done so far, written or found complete (at most the total).
    pub fn bytes_done(&self) -> u64 {
        let total = self.bytes_total.load(Ordering::Relaxed);
        (self.restore.bytes.load(Ordering::Relaxed)
            + self.restore.bytes_skipped.load(Ordering::Relaxed))
        .min(total)
    }
}
