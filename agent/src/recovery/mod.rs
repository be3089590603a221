//! Recovery requests: restores asked for centrally (by a person, on the server) and executed by
//! the target machine, the only place where the data can be decrypted.
//!
//! One claimed job ([`execute`]) goes through these steps, each logged to the server
//! (`recovery_logs`), with one entry per problem:
//!
//! 1. **claimed** — what is restored, from which point, into which folder. The job's path
//!    prefixes are checked by the shared rules ([`keepsake_common::prefix`]); invalid ones fail
//!    the job here, before anything is listed or written.
//! 2. **space_check** — before anything is written: the sizes of the files to restore (the
//!    point's listing under the job's path prefixes, less files already complete in the target)
//!    against the free space of the target's file system ([`free_space`]). Not enough: the job
//!    fails with a clear error and nothing is written, not even the target folder.
//! 3. **restore** — each path prefix with [`crate::restore`] into the target folder: never
//!    outside it, existing different files kept (the restored copy goes beside them) unless the
//!    job says `overwrite`, names the target OS cannot hold mapped to safe names (reported). A
//!    reporter thread posts progress about every second, with an estimated completion time;
//!    failed reports never stop the restore.
//! 4. **validate** — every restored file re-read from disk and its keyed content hash compared
//!    with the point's ([`validate`]); mismatches, missing and extra files are counted.
//! 5. **finish** — the outcome, with the validation. The server marks the job completed only if
//!    the restore succeeded and the validation passed.
//!
//! A restore drill ([`drill`]) does the same on a sample of recent files in a scratch folder and
//! reports the result (`POST /v1/recovery-drills`). [`daemon_tick`] is what the daemon does with
//! recovery requests on each policy refresh.
//!
//! Where things live: `claim` (asking the server for the next job, the daemon's loop), `execute`
//! (running one job through the steps), `plan` (listing a point, the space check), `validate`
//! (re-reading a restored tree), `report` (the job's log entries and progress reports),
//! `progress` (live counters for displays), `outcome` (what a job did), `drill`.
//!
//! When the process dies mid-job nothing here is lost that a rerun cannot redo. The claim is a
//! lease ([`DEFAULT_LEASE_SECONDS`]) that every progress report extends; once reports stop, the
//! job stays claimed on the server until the lease runs out, and the next claim by this machine
//! (the daemon's next policy refresh, or `keepsake recover`) takes it again and runs it from the
//! start: listing and space check, the restore, the whole validation. The same happens when the
//! finish report does not reach the server. On disk, the target folder keeps every file already
//! renamed into place and may hold temporary files of the interrupted writes; the rerun skips
//! files already complete (same size and keyed content hash) and removes those leftovers in the
//! folders it visits ([`crate::restore`]); folder modes and times are set only at the end of a
//! restore. A drill that dies leaves its scratch folder (`drill-*` under the folder it was given)
//! behind; the drill's result is simply not recorded.

mod claim;
mod drill;
mod execute;
mod outcome;
mod plan;
mod progress;
mod report;
mod validate;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

use crate::client::ClientError;
use crate::restore;

pub use claim::{claim, daemon_tick, DEFAULT_LEASE_SECONDS};
pub use drill::{drill, DrillOutcome, DEFAULT_DRILL_FILES};
pub use execute::{execute, ExecuteOptions, PROGRESS_INTERVAL_ENV};
pub use outcome::RecoveryOutcome;
pub use plan::{check_space, for_each_entry, free_space, plan_restore, RestorePlan, SpaceCheck};
pub use progress::{phase, JobProgress};
pub use validate::{validate, validate_from, ValidateProgress, MAX_PROBLEMS_LISTED};

/// Errors that stop a recovery step before it has a result.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The restore could not run.
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    /// A local file or folder problem.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        #[source]
        source: io::Error,
    },
    /// Anything else, explained.
    #[error("{0}")]
    Other(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RecoveryError + '_ {
    move |source| RecoveryError::Io {
        path: path.to_path_buf(),
        source,
    }
}
