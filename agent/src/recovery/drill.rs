//! Restore drills: the most recently modified files of this machine's newest recovery point
//! restored into a scratch folder, validated, reported to the server and deleted. A crash
//! mid-drill leaves the scratch folder behind and records nothing on the server.

use std::collections::BinaryHeap;
use std::io;
use std::path::Path;
use std::time::Instant;

use chrono::Utc;
use keepsake_common::api::{FileKind, RecoveryDrillReport, ValidationReport};
use keepsake_common::keys::OrgKeys;
use serde::Serialize;
use uuid::Uuid;

use super::outcome::{merge, summarize_failures};
use super::{for_each_entry, io_at, validate, RecoveryError, ValidateProgress};
use crate::client::ApiClient;
use crate::restore::names::NameRules;
use crate::restore::{self, RestoreOptions, RestoreProgress, RestoreReport};

/// Files sampled by a drill unless told otherwise.
pub const DEFAULT_DRILL_FILES: usize = 20;

/// What a restore drill did.
#[derive(Debug, Clone, Serialize)]
pub struct DrillOutcome {
    /// The point sampled (this machine's newest).
    pub recovery_point_id: Uuid,
    /// Its source folder.
    pub root_path: String,
    /// The sampled paths.
    pub files: Vec<String>,
    /// Files restored.
    pub files_restored: u64,
    /// Their bytes.
    pub bytes_restored: u64,
    /// The validation.
    pub validation: ValidationReport,
    /// Restore problems.
    pub error: Option<String>,
    /// Restored and validated.
    pub passed: bool,
    /// Whether the server recorded the drill.
    pub reported: bool,
    /// Duration in milliseconds.
    pub elapsed_ms: u64,
}

/// Restores the `files` most recently modified files of this machine's newest recovery point
/// into a new folder under `scratch_parent`, validates them, reports the drill to the server and
/// deletes the folder.
pub fn drill(
    client: &ApiClient,
    keys: &OrgKeys,
    agent_id: Uuid,
    scratch_parent: &Path,
    files: usize,
) -> Result<DrillOutcome, RecoveryError> {
    let started_at = Utc::now();
    let started = Instant::now();
    let point = client
        .points(None, Some(agent_id))?
        .into_iter()
        .next()
        .ok_or_else(|| RecoveryError::Other("this machine has no recovery point yet".into()))?;
    // The newest files by modification time (a bounded heap over the streamed listing).
    let want = files.max(1);
    let mut heap: BinaryHeap<std::cmp::Reverse<(i64, String)>> = BinaryHeap::new();
    for_each_entry(client, point.id, &[String::new()], false, |f| {
        if f.kind == FileKind::File {
            heap.push(std::cmp::Reverse((f.mtime_ns.unwrap_or(0), f.path)));
            if heap.len() > want {
                heap.pop();
            }
        }
        Ok(())
    })?;
    let mut sample: Vec<String> = heap.into_iter().map(|r| r.0 .1).collect();
    sample.sort();
    if sample.is_empty() {
        return Err(RecoveryError::Other(format!(
            "recovery point {} has no file to restore",
            point.id
        )));
    }
    crate::home::create_private_dir(scratch_parent).map_err(io_at(scratch_parent))?;
    // A fresh folder, created exclusively under a random name (mode 0700).
    let scratch =
        crate::home::private_temp_dir(scratch_parent, "drill-").map_err(io_at(scratch_parent))?;
    let dir = scratch.path().to_path_buf();
    let result = drill_in(client, keys, point.id, &sample, &dir);
    if let Err(e) = scratch.close() {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the drill's scratch folder");
        }
    }
    let (total, validation) = result?;
    let error = (!total.failures.is_empty()).then(|| summarize_failures(&total.failures));
    let report = RecoveryDrillReport {
        recovery_point_id: point.id,
        started_at,
        files_restored: total.files_restored + total.files_skipped,
        bytes_restored: total.bytes + total.bytes_skipped,
        validation: validation.clone(),
        error: error.clone(),
    };
    let reported = match client.recovery_drill(&report) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "the drill's result did not reach the server");
            false
        }
    };
    Ok(DrillOutcome {
        recovery_point_id: point.id,
        root_path: point.root_path,
        files: sample,
        files_restored: report.files_restored,
        bytes_restored: report.bytes_restored,
        passed: error.is_none() && validation.passed(),
        validation,
        error,
        reported,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

fn drill_in(
    client: &ApiClient,
    keys: &OrgKeys,
    point: Uuid,
    sample: &[String],
    scratch: &Path,
) -> Result<(RestoreReport, ValidationReport), RecoveryError> {
    let progress = RestoreProgress::default();
    let mut total = RestoreReport::default();
    for path in sample {
        let mut ro = RestoreOptions::new(point, scratch);
        ro.prefix = path.clone();
        ro.workers = 1;
        let r = restore::restore(client, keys, &ro, &progress)?;
        merge(&mut total, r);
    }
    let v = validate(
        client,
        &keys.chunk_id_key,
        point,
        sample,
        scratch,
        NameRules::native(),
        &ValidateProgress::default(),
    )?;
    Ok((total, v))
}
